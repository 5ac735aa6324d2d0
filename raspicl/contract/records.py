"""The monitor record: every instruction of a compiled program as the runtime contract walks
it (the rows it reads and writes, its coefficients, its gadget's constants), as the compiler
writes it into layout['monitor'] (compiler/describe.py) and the walk reads it back."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Read:
    """An operand: a value read at a place, and, for an MLP's remote operand, the rows of the
    temporary the block's attention moves it into."""

    value: str
    place: dict  # {"kind": "here" | "offset" | "at" | "mean", "k" | "index" | "role": ...}
    temp_rows: tuple[int, ...] = ()
    # gpt2: the temporary's components whose rows the same attention clears (None: paper)
    temp_cleared: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ProductPair:
    """The units of one product gadget: sq(k a + b / k) - sq(k a - b / k) (or sq(a)), with
    the operands as (read, component) and its output coefficient per dst component."""

    a: tuple[int, int]
    b: tuple[int, int]
    k: float
    e: float
    richardson: bool
    outputs: dict[int, float]  # dst component -> coefficient


@dataclass(frozen=True)
class Instruction:
    """One instruction of the program as compiled (see the module doc)."""

    op: int
    kind: str
    dst: str
    source: str
    run: int
    stage: str
    defined: list[int]
    reads: list[Read]
    linear: list[tuple[int, float, int, int]]
    bias: list[float]
    pairs: list[ProductPair] = field(default_factory=list)
    products: list[tuple[int, float, int, int, int, int]] = field(default_factory=list)
    divisor: str | None = None
    mask: str | None = None
    gated: list[tuple[int, float, int, int]] = field(default_factory=list)
    gated_bias: list[float] = field(default_factory=list)
    gate_bound: list[float] = field(default_factory=list)
    # gpt2: the dst components whose rows the writing sublayer clears or overwrites (the
    # others hold what an earlier clear left); None: paper, where a clear leaves zero
    landing_cleared: list[int] | None = None
    # apply: its function (lang/functions.Elementwise.record) and gadget
    # (compiler/gadgets/elementwise.ElementwiseGadget.record) with the GeLU form, in one dict;
    # its linear terms and bias are then the function's argument
    function: dict | None = None
    # the walk's index arrays for this instruction's term lists (_Terms), made once
    cache: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, d: dict) -> Instruction:
        return cls(
            op=int(d["op"]), kind=str(d["kind"]), dst=str(d["dst"]), source=str(d["source"]),
            run=int(d["run"]), stage=str(d["stage"]), defined=[int(t) for t in d["defined"]],
            reads=[Read(str(r["value"]), dict(r["place"]),
                        tuple(int(x) for x in r.get("temp_rows", [])),
                        None if r.get("temp_cleared") is None
                        else tuple(int(x) for x in r["temp_cleared"])) for r in d["reads"]],
            linear=[(int(o), float(c), int(r), int(k)) for o, c, r, k in d["linear"]],
            bias=[float(b) for b in d["bias"]],
            pairs=[ProductPair((int(p["a"][0]), int(p["a"][1])), (int(p["b"][0]), int(p["b"][1])),
                               float(p["k"]), float(p["e"]), bool(p["richardson"]),
                               {int(o): float(c) for o, c in p["outputs"]})
                   for p in d.get("pairs", [])],
            products=[tuple(int(x) if i != 1 else float(x) for i, x in enumerate(t))
                      for t in d.get("products", [])],
            divisor=d.get("divisor"), mask=d.get("mask"),
            gated=[(int(o), float(c), int(r), int(k)) for o, c, r, k in d.get("gated", [])],
            gated_bias=[float(b) for b in d.get("gated_bias", [])],
            gate_bound=[float(b) for b in d.get("gate_bound", [])],
            landing_cleared=None if d.get("landing_cleared") is None
            else [int(k) for k in d["landing_cleared"]],
            function=None if d.get("function") is None else dict(d["function"]),
        )

    def where(self) -> str:
        return f"op {self.op} ({self.kind} writing '{self.dst}', {self.source})"


def _read_record(r: Read) -> dict:
    out = {"value": r.value, "place": r.place, "temp_rows": list(r.temp_rows)}
    if r.temp_cleared is not None:
        out["temp_cleared"] = list(r.temp_cleared)
    return out


def instruction_record(ins: Instruction) -> dict:
    """The JSON form of an Instruction (what layout['monitor']['instructions'] holds)."""
    extra = {} if ins.landing_cleared is None else {"landing_cleared": ins.landing_cleared}
    if ins.function is not None:
        extra["function"] = ins.function
    return {
        "op": ins.op, "kind": ins.kind, "dst": ins.dst, "source": ins.source, "run": ins.run,
        "stage": ins.stage, "defined": ins.defined,
        "reads": [_read_record(r) for r in ins.reads],
        "linear": [list(t) for t in ins.linear], "bias": ins.bias,
        "pairs": [{"a": list(p.a), "b": list(p.b), "k": p.k, "e": p.e,
                   "richardson": p.richardson, "outputs": [[o, c] for o, c in p.outputs.items()]}
                  for p in ins.pairs],
        "products": [list(t) for t in ins.products],
        "divisor": ins.divisor, "mask": ins.mask, "gated": [list(t) for t in ins.gated],
        "gated_bias": ins.gated_bias, "gate_bound": ins.gate_bound, **extra,
    }


# ---------------------------------------------------------------------- the result


def parse_instructions(layout: dict) -> list[Instruction]:
    """The layout's monitor instructions, parsed."""
    return [Instruction.from_dict(rec) for rec in layout["monitor"]["instructions"]]
