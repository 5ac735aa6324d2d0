"""The schema of layout.json: every field raspicl reads, with its type and range.

`raspicl.export.load` calls `validate_layout` on a parsed layout.json together with the tensor
shapes of model.safetensors (read from the file's header) *before* it allocates the model or
hands the layout to CompiledModel, so that a malformed or hand-edited layout is a LoadError
naming the field by its JSON path, e.g.

    layout.json: architecture.layernorm.eps[2] must be a positive finite number, got -1

and never an AttributeError, a RecursionError or a 112 TB allocation deep inside torch, the
guards or raspicl.inspect. `raspicl.export.save` runs the same validation on what it is about
to write, so it never writes a model that this raspicl cannot load back.

The schema is declarative: LAYOUT below is one nested description built from a handful of
checkers (Int, Number, Str, Const, Nullable, Array, Obj, Map, NumArray), read top to bottom in
the order the file is checked. A checker may record a value it has checked (`define=`) as a
named size, and later checkers bound indices by such sizes (Int(below="d_model")), so
`output.rows[0]` is checked against the d_model the architecture declared, and the declared
sizes were themselves checked against the tensors' actual shapes first (TENSORS). Relations
that no single field can state (n_tokens == 2 n + 1, a register's rows cover its shape, ...)
are the RULES at the bottom, each a small function. Keys the schema does not name are
allowed, so that a newer compiler can add fields (a `monitor`, a domain `tolerance`) without
breaking this loader; the integrity digest (raspicl.export) covers them all the same.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from raspicl.arch import ACT_FNS, ARCHITECTURES, GPT2_ACT_FNS
from raspicl.errors import LoadError
from raspicl.lang.reads import ROLES
from raspicl.layout_records import FORMAT_VERSION
from raspicl.model import GADGET_DTYPES
from raspicl.slots import attn_slot, run_of, stage_of

# architecture sizes, each a positive integer, in the order they are checked
SIZES = ("d_model", "n_layers", "n_heads", "d_head", "d_mlp", "n_ctx", "d_token", "d_out")

# The tensors of model.safetensors and their shapes in terms of the sizes (docs/architecture.md
# §2; raspicl.model.Transformer's state_dict). "{l}" runs over the blocks 0 .. n_layers - 1.
TENSORS: dict[str, tuple[str, ...]] = {
    "embed.W_E": ("d_token", "d_model"),
    "pos_embed.W_pos": ("n_ctx", "d_model"),
    "blocks.{l}.attn.W_Q": ("n_heads", "d_model", "d_head"),
    "blocks.{l}.attn.W_K": ("n_heads", "d_model", "d_head"),
    "blocks.{l}.attn.W_V": ("n_heads", "d_model", "d_head"),
    "blocks.{l}.attn.W_O": ("n_heads", "d_head", "d_model"),
    "blocks.{l}.attn.b_Q": ("n_heads", "d_head"),
    "blocks.{l}.attn.b_K": ("n_heads", "d_head"),
    "blocks.{l}.attn.b_V": ("n_heads", "d_head"),
    "blocks.{l}.attn.b_O": ("d_model",),
    "blocks.{l}.ln2.w": ("d_model",),
    "blocks.{l}.ln2.b": ("d_model",),
    "blocks.{l}.mlp.W_in": ("d_model", "d_mlp"),
    "blocks.{l}.mlp.b_in": ("d_mlp",),
    "blocks.{l}.mlp.W_out": ("d_mlp", "d_model"),
    "blocks.{l}.mlp.b_out": ("d_model",),
    "unembed.W_U": ("d_model", "d_out"),
    "unembed.b_U": ("d_out",),
}

# The tensors a target adds to TENSORS (raspicl.arch): gpt2's LayerNorm before attention and
# its final LayerNorm.
ARCH_TENSORS: dict[str, dict[str, tuple[str, ...]]] = {
    "paper": {},
    "gpt2": {"blocks.{l}.ln1.w": ("d_model",), "blocks.{l}.ln1.b": ("d_model",),
             "ln_final.w": ("d_model",), "ln_final.b": ("d_model",)},
}


def tensors_of(arch: str = "paper") -> dict[str, tuple[str, ...]]:
    """TENSORS with the tensors architecture `arch` adds."""
    return {**TENSORS, **ARCH_TENSORS[arch]}

WEIGHTS_FILE = "model.safetensors"
WEIGHT_DTYPES = tuple(str(d).removeprefix("torch.") for d in GADGET_DTYPES)
SLOT = re.compile(r"embedding|block \d+ (attn|mlp)|run \d+ \(block \d+\) (attn|mlp)")
HEX64 = re.compile(r"[0-9a-f]{64}")
INTEGRITY_ALGORITHM = "sha256"
INTEGRITY_COVERS = ("sha256 of the canonical JSON of layout.json without integrity.digest "
                    "(sort_keys, separators ',' ':', ASCII, Python's Infinity/NaN), a newline, "
                    "then the bytes of model.safetensors")


def fail(path: str, message: str) -> LoadError:
    """The LoadError for field `path` (a JSON path such as `output.rows[1]`)."""
    return LoadError(f"layout.json: {path or 'the top level'} {message}")


def show(value: Any) -> str:
    """A short rendering of a JSON value for an error message: JSON for scalars (so 14.0
    stays 14.0 and None reads null), the kind for containers."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return f"a list of {len(value)}"
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------------------- checkers


class Context(dict):
    """The sizes checked so far, by name: architecture.d_model as `d_model`, ...,
    len(architecture.block_order) as `runs`, prompt.n_tokens as `n_tokens`."""

    def size(self, name: str) -> int:
        if name not in self:  # a schema bug, not a bad file
            raise RuntimeError(f"schema uses size {name!r} before defining it")
        return self[name]


class Check:
    """One node of the schema: `what` a value must be, and a test of it."""

    what: str = "valid"

    def __call__(self, value: Any, path: str, ctx: Context) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        """`what`, for the documentation table."""
        return self.what

    def children(self, path: str) -> Iterator[tuple[str, Check]]:
        """(path, check) of every field below this one, for the documentation table."""
        return iter(())


@dataclass
class Int(Check):
    """An integer (not a bool, not a float such as 14.0) with `lo <= value`, and
    `value < ctx[below]` or `value == ctx[equals]` when those are given."""

    lo: int | None = 0
    below: str | None = None
    equals: str | None = None
    define: str | None = None

    @property
    def what(self) -> str:
        if self.equals:
            return f"an integer equal to {self.equals}"
        if self.below:
            return f"an integer in range({self.below})"
        return {0: "a non-negative integer", 1: "a positive integer",
                None: "an integer"}.get(self.lo, f"an integer >= {self.lo}")

    def __call__(self, value: Any, path: str, ctx: Context) -> None:
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and self.lo is not None:
            ok = value >= self.lo
        what = self.what
        if ok and self.below:
            n = ctx.size(self.below)
            ok = value < n
            what = f"an integer in range({self.below}) = 0..{n - 1}"
        if ok and self.equals:
            ok = value == ctx.size(self.equals)
            what = f"an integer equal to {self.equals} = {ctx.size(self.equals)}"
        if not ok:
            raise fail(path, f"must be {what}, got {show(value)}")
        if self.define:
            ctx[self.define] = value


@dataclass
class Number(Check):
    """A JSON number (int or float, not a bool): `positive` (> 0) or else >= 0 when `lo0`,
    finite unless `inf` (then +inf is allowed; NaN never is)."""

    positive: bool = False
    lo0: bool = False
    inf: bool = False

    @property
    def what(self) -> str:
        sign = "positive " if self.positive else "non-negative " if self.lo0 else ""
        return f"a {sign}number (+inf allowed)" if self.inf else f"a {sign}finite number"

    def __call__(self, value: Any, path: str, ctx: Context) -> None:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok:
            try:
                v = float(value)
            except OverflowError:  # an integer beyond float range
                v = math.inf if value > 0 else -math.inf
            ok = not math.isnan(v) and (math.isfinite(v) or (self.inf and v > 0))
            ok = ok and (v > 0 if self.positive else v >= 0 if self.lo0 else True)
        if not ok:
            raise fail(path, f"must be {self.what}, got {show(value)}")


@dataclass
class Str(Check):
    """A string; one of `choices`, or matching `pattern` in full, when given."""

    choices: tuple[str, ...] | None = None
    pattern: re.Pattern | None = None
    label: str | None = None  # how `what` names the pattern

    @property
    def what(self) -> str:
        if self.choices:
            return "one of " + ", ".join(json.dumps(c) for c in self.choices)
        if self.pattern is not None:
            return f"a string {self.label or 'matching ' + self.pattern.pattern}"
        return "a string"

    def __call__(self, value: Any, path: str, ctx: Context) -> None:
        ok = isinstance(value, str)
        if ok and self.choices is not None:
            ok = value in self.choices
        if ok and self.pattern is not None:
            ok = self.pattern.fullmatch(value) is not None
        if not ok:
            raise fail(path, f"must be {self.what}, got {show(value)}")


@dataclass
class Const(Check):
    """Exactly `value` (of the same type: true is not 1)."""

    value: Any

    @property
    def what(self) -> str:
        return json.dumps(self.value)

    def __call__(self, value: Any, path: str, ctx: Context) -> None:
        if type(value) is not type(self.value) or value != self.value:
            raise fail(path, f"must be {self.what}, got {show(value)}")


@dataclass
class Nullable(Check):
    """null, or what `check` accepts."""

    check: Check

    def describe(self) -> str:
        return f"null or {self.check.describe()}"

    def __call__(self, value: Any, path: str, ctx: Context) -> None:
        if value is None:
            return
        if isinstance(self.check, Obj | Array | Map):  # its own message names the inner field
            self.check(value, path, ctx)
            return
        try:
            self.check(value, path, ctx)
        except LoadError:
            raise fail(path, f"must be {self.describe()}, got {show(value)}") from None

    def children(self, path: str) -> Iterator[tuple[str, Check]]:
        return self.check.children(path)


@dataclass
class Array(Check):
    """A list of items that `item` accepts; of exactly ctx[length] (or `length`) items when
    given, else of at least `min_len`. `define` records the length as a size."""

    item: Check
    length: str | int | None = None
    min_len: int = 0
    define: str | None = None

    def describe(self) -> str:
        if self.length is not None:
            n = f" of {self.length} entries"
        elif self.min_len == 1:
            n = " (non-empty)"
        elif self.min_len:
            n = f" of at least {self.min_len} entries"
        else:
            n = ""
        return f"a list{n}, each {self.item.describe()}"

    def __call__(self, value: Any, path: str, ctx: Context) -> None:
        if not isinstance(value, list):
            raise fail(path, f"must be {self.describe()}, got {show(value)}")
        if self.length is not None:
            n = ctx.size(self.length) if isinstance(self.length, str) else self.length
            if len(value) != n:
                named = f"{self.length} = {n}" if isinstance(self.length, str) else str(n)
                raise fail(path, f"must have {named} entries, got {len(value)}")
        elif len(value) < self.min_len:
            raise fail(path, f"must have at least {self.min_len} entries, got {len(value)}")
        for i, v in enumerate(value):
            self.item(v, f"{path}[{i}]", ctx)
        if self.define:
            ctx[self.define] = len(value)

    def children(self, path: str) -> Iterator[tuple[str, Check]]:
        return self.item.children(f"{path}[i]")


@dataclass
class Obj(Check):
    """An object with the `required` keys and, where present, the `optional` ones, checked in
    the order listed. Other keys are allowed and not checked."""

    required: dict[str, Check]
    optional: dict[str, Check] = field(default_factory=dict)
    what: str = "an object"

    def __call__(self, value: Any, path: str, ctx: Context) -> None:
        if not isinstance(value, dict):
            raise fail(path, f"must be an object, got {show(value)}")
        for key, check in self.required.items():
            sub = _join(path, key)
            if key not in value:
                raise fail(sub, f"is missing (it must be {check.describe()})")
            check(value[key], sub, ctx)
        for key, check in self.optional.items():
            if key in value:
                check(value[key], _join(path, key), ctx)

    def children(self, path: str) -> Iterator[tuple[str, Check]]:
        for key, check in {**self.required, **self.optional}.items():
            sub = _join(path, key)
            yield (sub if key in self.required else f"{sub} (optional)"), check
            yield from check.children(sub)


@dataclass
class Map(Check):
    """An object whose keys are names (any string) and whose values `value` accepts."""

    value: Check
    key: str = "name"

    def describe(self) -> str:
        return f"an object: {self.key} -> {self.value.describe()}"

    def __call__(self, value: Any, path: str, ctx: Context) -> None:
        if not isinstance(value, dict):
            raise fail(path, f"must be {self.describe()}, got {show(value)}")
        for k, v in value.items():
            self.value(v, _join(path, k), ctx)

    def children(self, path: str) -> Iterator[tuple[str, Check]]:
        return self.value.children(f"{path}.<{self.key}>")


@dataclass
class NumArray(Check):
    """A finite number or a list of them, nested at most `depth` deep: a constant's array
    value (checked without recursion, so no nesting can exhaust the stack)."""

    depth: int = 16
    what: str = "a finite number or a (nested) list of them"

    def __call__(self, value: Any, path: str, ctx: Context) -> None:
        stack = [(value, path, 0)]
        while stack:
            v, p, d = stack.pop()
            if not isinstance(v, list):
                Number()(v, p, ctx)
            elif d >= self.depth:
                raise fail(p, f"is nested more than {self.depth} deep")
            else:
                stack.extend((x, f"{p}[{i}]", d + 1) for i, x in enumerate(v))


class Anything(Check):
    """Any JSON value (a program parameter: inspect only prints it)."""

    what = "any JSON value"

    def __call__(self, value: Any, path: str, ctx: Context) -> None:
        return None


class Bool(Check):
    """true or false."""

    what = "true or false"

    def __call__(self, value: Any, path: str, ctx: Context) -> None:
        if not isinstance(value, bool):
            raise fail(path, f"must be {self.what}, got {show(value)}")


@dataclass
class Tuple(Check):
    """A list of exactly len(items) entries, entry i accepted by items[i] (a term such as
    [out, coef, read, component])."""

    items: tuple[Check, ...]
    label: str = ""

    def describe(self) -> str:
        return f"a list [{self.label}]"

    def __call__(self, value: Any, path: str, ctx: Context) -> None:
        if not isinstance(value, list) or len(value) != len(self.items):
            raise fail(path, f"must be {self.describe()}, got {show(value)}")
        for i, (v, check) in enumerate(zip(value, self.items, strict=True)):
            check(v, f"{path}[{i}]", ctx)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# ---------------------------------------------------------------------------------- the schema

ROW = Int(below="d_model")
ROWS = Array(ROW)
TOKEN = Int(below="n_ctx")
RUN = Int(below="runs")
BLOCK = Int(below="n_layers")
SLOT_NAME = Nullable(Str(pattern=SLOT, label="naming a sublayer: embedding, block L attn, "
                                             "block L mlp, run R (block L) attn or run R "
                                             "(block L) mlp"))
SHAPE = Array(Int())
STRINGS = Array(Str())
SHA256 = Str(pattern=HEX64, label="of 64 lowercase hex digits")

ARCH_NAME = Str(choices=tuple(ARCHITECTURES))
ARCHITECTURE = Obj(
    {"name": ARCH_NAME,
     **{name: Int(lo=1, define=name) for name in SIZES},
     "layernorm": Obj({"eps": Array(Number(positive=True), length="n_layers")},
                      {"before_attention": Bool(), "before_mlp": Const(True),
                       "final": Bool()}),
     "block_order": Array(BLOCK, min_len=1, define="runs")},
    {"act_fn": Str(choices=tuple(ACT_FNS)), "attention_score_divisor": Const("sqrt(d_head)"),
     "ln_eps": Number(positive=True), "ln_anchor": Number(positive=True),
     "ln_restore_anchor": Number(positive=True)})

PROMPT = Obj({"format": Str(), "d": Int(lo=1), "n_examples": Int(lo=0),
              "n_tokens": Int(equals="n_ctx", define="n_tokens"),
              "d_token": Int(equals="d_token"),
              "roles": Array(Str(choices=ROLES), length="n_tokens"),
              "token_components": Map(Array(Int(below="d_token")), key="component")})

# A sublayer as a typed record (raspicl.layout_records.Slot); rule _slot_records checks that
# run, stage and block agree with the slot number and architecture.block_order.
SLOT_RECORD = Obj({"slot": Int(lo=-1), "run": Nullable(RUN),
                   "stage": Str(choices=("embedding", "attn", "mlp")), "block": Nullable(BLOCK)})

VERSION = Obj({"version": Int(), "label": Str(), "rows": ROWS, "op": Nullable(Int()),
               "written": SLOT_NAME, "written_slot": SLOT_RECORD,
               "written_after": Int(below="residuals"), "cleared": SLOT_NAME,
               "cleared_slot": Nullable(SLOT_RECORD)},
              {"overwritten": SLOT_NAME, "overwritten_slot": Nullable(SLOT_RECORD),
               "bound": Nullable(Number(lo0=True, inf=True)), "absorbed_by": Array(Int())})

TEMPORARY = Obj({"label": Str(), "rows": ROWS, "written_slot": SLOT_RECORD,
                 "cleared_slot": Nullable(SLOT_RECORD), "for_op": Int(), "operand": Str()},
                {"name": Str(), "written": SLOT_NAME, "cleared": SLOT_NAME,
                 "bound": Nullable(Number(lo0=True, inf=True))})

REGISTER = Obj({"shape": SHAPE, "kind": Str(), "versions": Array(VERSION, min_len=1)})

DIVISOR = Obj({"op": Int(), "register": Str(), "abs_min": Number(lo0=True, inf=True)},
              {"version": Int(), "tokens": Array(TOKEN)})

# The place a head attends to (also a monitor read's place).
PLACE = Obj({"kind": Str(choices=("here", "offset", "at", "mean"))},
            {"k": Int(lo=1), "index": TOKEN, "role": Str(choices=ROLES),
             # an offset read at token max(t - k, 0) (absent: strict, undefined at t < k)
             "clamp": Bool()})

HEAD_WRITE = Obj({"kind": Str(choices=("move", "clear", "anchor", "temporary")), "run": RUN,
                  "value": Str(), "rows": ROWS},
                 {"op": Nullable(Int()), "source": Nullable(Str()), "reads": STRINGS})

HEAD = Obj({"head": Int(below="n_heads"), "place": Str(), "where": PLACE, "purpose": STRINGS,
            "writes": Array(Obj({"from": Str(), "to": Str(), "from_row": ROW, "to_row": ROW,
                                 "coef": Number()})),
            "actions": Array(HEAD_WRITE)})

BLOCK_ENTRY = Obj({"block": BLOCK, "runs": Array(RUN), "heads": Array(HEAD),
                   "mlp": Obj({"mode": Str(), "divisor": Nullable(Str()),
                               "ln_eps": Number(positive=True), "units": Int(),
                               "ops": STRINGS})})

OP = Obj({"index": Int(), "kind": Str(), "dst": Str(), "source": Str(), "text": Str(),
          "block": BLOCK, "run": RUN, "stage": Str()}, {"absorbed_by": Array(Int())})

# The runtime monitor's record (raspicl.monitor): indices inside terms are checked against the
# instruction's own reads and widths by the rule _monitor_references.
LINEAR_TERM = Tuple((Int(), Number(), Int(), Int()), "out, coef, read, component")
PRODUCT_TERM = Tuple((Int(), Number(), Int(), Int(), Int(), Int()),
                     "out, coef, read_a, component_a, read_b, component_b")
PAIR = Obj({"a": Tuple((Int(), Int()), "read, component"),
            "b": Tuple((Int(), Int()), "read, component"),
            "k": Number(positive=True), "e": Number(positive=True),
            "richardson": Bool(),
            "outputs": Array(Tuple((Int(), Number()), "component, coef"))})
# an apply's function on its range, and its gadget (compiler/gadgets/elementwise.py)
FUNCTION = Obj({"name": Str(), "lo": Number(), "hi": Number(), "param": Number(lo0=True),
                "alpha": Number(), "beta": Number(), "units": Int(lo=0),
                "epsilon": Number(positive=True), "magnitude": Number(lo0=True),
                "slope_sum": Number(lo0=True), "shift_sum": Number(lo0=True),
                "form": Str(choices=("none", "tanh"))},
               {"user": Bool(), "slope": Number(lo0=True), "curvature": Number(lo0=True)})
INSTRUCTION = Obj(
    {"op": Int(), "kind": Str(), "dst": Str(), "source": Str(), "run": RUN,
     "stage": Str(choices=("attn", "mlp", "attn+mlp", "fused")), "defined": Array(TOKEN),
     "reads": Array(Obj({"value": Str(), "place": PLACE}, {"temp_rows": ROWS})),
     "linear": Array(LINEAR_TERM), "bias": Array(Number(), min_len=1)},
    {"pairs": Array(PAIR), "products": Array(PRODUCT_TERM), "divisor": Nullable(Str()),
     "mask": Nullable(Str()), "gated": Array(LINEAR_TERM), "gated_bias": Array(Number()),
     "gate_bound": Array(Number(lo0=True)), "function": FUNCTION})
MONITOR = Obj(
    {"tolerance": Number(positive=True),
     "values": Map(Obj({"kind": Str(choices=("input", "const", "mask", "op", "fused")),
                        "rows": ROWS,
                        "written_after": Int(below="residuals")}, {"width": Int(lo=1)}),
                   key="value"),
     "instructions": Array(INSTRUCTION),
     "anchors": Array(Nullable(Number(positive=True)), length="n_layers"),
     "output": Str()},
    {"calibration": Obj({}, {"prompts": Int(), "accepted": Number(lo0=True),
                             "tuning_passes": Int()})})

LAYOUT = Obj(
    {"format_version": Const(FORMAT_VERSION),
     "architecture": ARCHITECTURE,
     "prompt": PROMPT,
     "program": Obj({"name": Str(), "params": Map(Anything(), key="param")}),
     "fixed_rows": Map(ROW),
     "row_names": Array(Str(), length="d_model"),
     "registers": Map(REGISTER, key="register"),
     "output": Obj({"register": Str(), "roles": Array(Str(choices=ROLES)),
                    "positions": Array(TOKEN, min_len=1), "rows": Array(ROW, length="d_out"),
                    "shape": SHAPE}),
     "domain": Obj({"x_abs_max": Number(lo0=True), "y_abs_max": Number(lo0=True),
                    "divisors": Array(DIVISOR)}),
     "temporaries": Array(TEMPORARY),
     "ops": Array(OP),
     "blocks": Array(BLOCK_ENTRY, length="n_layers"),
     "compiler": Obj({"attention_margin": Number(positive=True),
                      "rounding_factor": Number(positive=True)},
                     {"division_anchor": Number(positive=True)}, what="an object"),
     "monitor": MONITOR,
     "weights": Obj({"file": Const(WEIGHTS_FILE), "sha256": SHA256,
                     "dtype": Str(choices=WEIGHT_DTYPES)},
                    {"precision": Str(choices=WEIGHT_DTYPES)}),
     "integrity": Obj({"algorithm": Const(INTEGRITY_ALGORITHM),
                       "covers": Const(INTEGRITY_COVERS), "digest": SHA256})},
    {"masks": Map(Obj({"row": ROW, "values": Array(Number(), length="n_ctx"), "label": Str(),
                       "written_slot": SLOT_RECORD, "cleared_slot": Nullable(SLOT_RECORD)}),
                  key="mask"),
     "constants": Map(NumArray(), key="constant"),
     "loops": Array(Obj({"blocks": Array(BLOCK), "repeat": Int(lo=1),
                         "first_runs": Array(RUN)})),
     "depth": Obj({"critical_path": Nullable(Int(lo=1)), "blocks": Int(lo=1)},
                  {"fused": Array(Obj({"value": Str(), "op": Int(),
                                       "absorbed_by": Array(Int())})),
                   "note": Str(),
                   # compiler/cse.py: duplicates read as their survivors
                   "common": Array(Obj({"value": Str(), "op": Int(), "alias_of": Str(),
                                        "survivor_op": Int()})),
                   "merged_constants": Array(Obj({"value": Str(), "alias_of": Str()})),
                   "common_kept_for_loops": Int()})})


# ---------------------------------------------------------------------------------- rules


def _prompt_sizes(layout: dict, ctx: Context) -> None:
    """n_tokens = 2 n_examples + 1 and d_token = d + 1 (the alternating encoding)."""
    p = layout["prompt"]
    if p["n_tokens"] != 2 * p["n_examples"] + 1:
        raise fail("prompt.n_tokens", f"must be 2 n_examples + 1 = {2 * p['n_examples'] + 1}, "
                                      f"got {p['n_tokens']}")
    if p["d_token"] != p["d"] + 1:
        raise fail("prompt.d_token", f"must be d + 1 = {p['d'] + 1}, got {p['d_token']}")


def _register_widths(layout: dict, ctx: Context) -> None:
    """Each version's rows hold its register's shape: len(rows) = product of shape."""
    for name, reg in layout["registers"].items():
        width = math.prod(reg["shape"])
        for i, v in enumerate(reg["versions"]):
            if len(v["rows"]) != width and not v.get("absorbed_by"):  # fused: no rows
                raise fail(f"registers.{name}.versions[{i}].rows",
                           f"must have {width} entries (the product of shape {reg['shape']}), "
                           f"got {len(v['rows'])}")


def _references(layout: dict, ctx: Context) -> None:
    """Names that point elsewhere in the layout name something that is there."""
    regs = layout["registers"]
    if layout["output"]["register"] not in regs:
        raise fail("output.register", f"must name a register of `registers`, got "
                                      f"{show(layout['output']['register'])}")
    for i, div in enumerate(layout["domain"]["divisors"]):
        name = div["register"].split("@")[0]
        if name not in regs:
            raise fail(f"domain.divisors[{i}].register",
                       f"must name a register of `registers`, got {show(div['register'])}")
        versions = [v["version"] for v in regs[name]["versions"]]
        if "version" in div and div["version"] not in versions:
            raise fail(f"domain.divisors[{i}].version",
                       f"must be a version of register {name} ({versions}), got "
                       f"{div['version']}")
        if "version" not in div and not any(v["op"] is None or v["op"] < div["op"]
                                            for v in regs[name]["versions"]):
            raise fail(f"domain.divisors[{i}]", f"names no version of register {name} that is "
                                                f"live at op {div['op']}")
    names = layout["row_names"]
    for b, blk in enumerate(layout["blocks"]):
        for h, head in enumerate(blk["heads"]):
            for w, write in enumerate(head["writes"]):
                for end in ("from", "to"):
                    row = write[f"{end}_row"]
                    if write[end] != names[row]:
                        raise fail(f"blocks[{b}].heads[{h}].writes[{w}].{end}",
                                   f"must be row_names[{row}] = {show(names[row])}, got "
                                   f"{show(write[end])}")


def _block_entries(layout: dict, ctx: Context) -> None:
    """blocks[l] describes block l, with the LayerNorm eps the model runs it with."""
    eps = layout["architecture"]["layernorm"]["eps"]
    for i, blk in enumerate(layout["blocks"]):
        if blk["block"] != i:
            raise fail(f"blocks[{i}].block", f"must be {i}, got {show(blk['block'])}")
        if blk["mlp"]["ln_eps"] != eps[i]:
            raise fail(f"blocks[{i}].mlp.ln_eps", f"must equal architecture.layernorm.eps[{i}]"
                                                  f" = {show(eps[i])}, got "
                                                  f"{show(blk['mlp']['ln_eps'])}")
        if blk["mlp"]["units"] > ctx.size("d_mlp"):
            raise fail(f"blocks[{i}].mlp.units", f"must be at most d_mlp = {ctx.size('d_mlp')}, "
                                                 f"got {blk['mlp']['units']}")


def _monitor_references(layout: dict, ctx: Context) -> None:
    """The monitor's instructions name values it lists, and their term indices address their
    own reads, components and outputs."""
    mon = layout["monitor"]
    values = mon["values"]

    def width(label: str, path: str) -> int:
        if label not in values:
            raise fail(path, f"must name a value of monitor.values, got {show(label)}")
        v = values[label]
        return int(v["width"]) if v["kind"] == "fused" else len(v["rows"])  # fused: no rows

    width(mon["output"], "monitor.output")
    for i, ins in enumerate(mon["instructions"]):
        at = f"monitor.instructions[{i}]"
        out_width = width(ins["dst"], f"{at}.dst")
        if len(ins["bias"]) != out_width:
            raise fail(f"{at}.bias", f"must have {out_width} entries (the width of "
                                     f"{ins['dst']}), got {len(ins['bias'])}")
        widths = [width(r["value"], f"{at}.reads[{j}].value") for j, r in enumerate(ins["reads"])]
        for key in ("divisor", "mask"):
            if ins.get(key) is not None:
                width(ins[key], f"{at}.{key}")

        for key in ("linear", "gated"):
            for j, (o, _, r, c) in enumerate(ins.get(key, [])):
                if not 0 <= o < out_width:
                    raise fail(f"{at}.{key}[{j}]", f"writes component {o} of a {out_width}-wide "
                                                   f"value")
                _operand(widths, r, c, f"{at}.{key}[{j}]")
        for j, (o, _, ra, ca, rb, cb) in enumerate(ins.get("products", [])):
            if not 0 <= o < out_width:
                raise fail(f"{at}.products[{j}]", f"writes component {o} of a {out_width}-wide "
                                                  f"value")
            _operand(widths, ra, ca, f"{at}.products[{j}]")
            _operand(widths, rb, cb, f"{at}.products[{j}]")
        for j, pair in enumerate(ins.get("pairs", [])):
            _operand(widths, *pair["a"], f"{at}.pairs[{j}].a")
            _operand(widths, *pair["b"], f"{at}.pairs[{j}].b")
            for o, _ in pair["outputs"]:
                if not 0 <= o < out_width:
                    raise fail(f"{at}.pairs[{j}].outputs", f"writes component {o} of a "
                                                           f"{out_width}-wide value")
        for key in ("gated_bias", "gate_bound"):
            if ins.get("mask") is not None and len(ins.get(key, [])) != out_width:
                raise fail(f"{at}.{key}", f"must have {out_width} entries for a select")


def _operand(widths: list[int], read: int, comp: int, path: str) -> None:
    """(read, comp) addresses one of an instruction's reads and a component within it."""
    if not 0 <= read < len(widths) or not 0 <= comp < widths[read]:
        raise fail(path, f"must address one of the {len(widths)} reads and a component within "
                         f"its width, got read {read}, component {comp}")


def _slot_records(layout: dict, ctx: Context) -> None:
    """Every slot record agrees with itself: slot -1 is the embedding (no run, no block); slot
    s < 2 runs names run s // 2 and stage attn (s even) or mlp (s odd). (Its block, the one
    block_order runs then, is left to the digest: an edited block_order is refused as an
    edit, not as a schema error.)"""
    order = layout["architecture"]["block_order"]
    records = []
    for name, reg in layout["registers"].items():
        for i, v in enumerate(reg["versions"]):
            for key in ("written_slot", "cleared_slot", "overwritten_slot"):
                records.append((f"registers.{name}.versions[{i}].{key}", v.get(key)))
    for i, t in enumerate(layout["temporaries"]):
        for key in ("written_slot", "cleared_slot"):
            records.append((f"temporaries[{i}].{key}", t[key]))
    for name, m in layout.get("masks", {}).items():
        for key in ("written_slot", "cleared_slot"):
            records.append((f"masks.{name}.{key}", m[key]))
    for path, rec in records:
        if rec is None:
            continue
        slot = rec["slot"]
        if slot == -1:
            want = {"slot": -1, "run": None, "stage": "embedding", "block": None}
        elif run_of(slot) < len(order):
            want = {"slot": slot, "run": run_of(slot), "stage": stage_of(slot).value}
        else:
            raise fail(f"{path}.slot", f"must be below 2 runs = {attn_slot(len(order))}, got "
                                       f"{slot}")
        for key, value in want.items():
            if rec[key] != value:
                raise fail(f"{path}.{key}", f"must be {show(value)} for slot {slot}, got "
                                            f"{show(rec[key])}")


def _head_actions(layout: dict, ctx: Context) -> None:
    """A head's actions happen in runs of its own block and name values the layout places (a
    register version's label, a temporary, a mask or a fixed row)."""
    labels = set(layout["fixed_rows"])
    labels |= {v["label"] for reg in layout["registers"].values() for v in reg["versions"]}
    labels |= {t["label"] for t in layout["temporaries"]}
    labels |= {m["label"] for m in layout.get("masks", {}).values()}
    for b, blk in enumerate(layout["blocks"]):
        for h, head in enumerate(blk["heads"]):
            for a, act in enumerate(head["actions"]):
                at = f"blocks[{b}].heads[{h}].actions[{a}]"
                if act["run"] not in blk["runs"]:
                    raise fail(f"{at}.run", f"must be a run of block {b} ({blk['runs']}), got "
                                            f"{show(act['run'])}")
                if act["value"] not in labels:
                    raise fail(f"{at}.value", f"must name a value the layout places, got "
                                              f"{show(act['value'])}")


def _architecture_facts(layout: dict, ctx: Context) -> None:
    """The architecture record states its target's facts (raspicl.arch): paper has no
    LayerNorm before attention, no final one and the erf GeLU; gpt2 has both, one eps
    (ln_eps) for every LayerNorm, the constant anchors' ln_anchor, GeLU gelu or gelu_new,
    n_heads * d_head == d_model and no shared blocks."""
    a = layout["architecture"]
    ln = a["layernorm"]
    name = a["name"]
    gpt2 = name == "gpt2"
    for key in ("before_attention", "final"):
        if ln.get(key, False) != gpt2:
            raise fail(f"architecture.layernorm.{key}", f"must be {str(gpt2).lower()} for the "
                                                        f"{name} architecture, got "
                                                        f"{show(ln.get(key))}")
    acts = GPT2_ACT_FNS if gpt2 else ("gelu_erf",)
    if a.get("act_fn", "gelu_erf") not in acts:
        raise fail("architecture.act_fn", f"must be one of {', '.join(acts)} for the {name} "
                                          f"architecture, got {show(a.get('act_fn'))}")
    if not gpt2:
        return
    for key in ("ln_eps", "ln_anchor"):
        if key not in a:
            raise fail(f"architecture.{key}", "is missing (the gpt2 architecture needs it)")
    for i, e in enumerate(ln["eps"]):
        if e != a["ln_eps"]:
            raise fail(f"architecture.layernorm.eps[{i}]", f"must equal architecture.ln_eps = "
                                                          f"{show(a['ln_eps'])} (gpt2 has one "
                                                          f"eps), got {show(e)}")
    if a["n_heads"] * a["d_head"] != a["d_model"]:
        raise fail("architecture.n_heads", f"times d_head must equal d_model under gpt2: "
                                           f"{a['n_heads']} * {a['d_head']} != {a['d_model']}")
    if list(a["block_order"]) != list(range(a["n_layers"])):
        raise fail("architecture.block_order", f"must be 0 .. n_layers - 1 under gpt2 (no "
                                               f"shared blocks), got {show(a['block_order'])}")


RULES: tuple[Callable[[dict, Context], None], ...] = (
    _architecture_facts, _prompt_sizes, _register_widths, _references, _block_entries,
    _monitor_references, _slot_records, _head_actions)


# ---------------------------------------------------------------------------------- tensors


def expected_shapes(sizes: dict[str, int], arch: str = "paper") -> dict[str, tuple[int, ...]]:
    """Every tensor's name and shape for architecture sizes `sizes` (bounded: call it only
    with an n_layers that the file's own tensors confirm)."""
    out = {}
    for pattern, dims in tensors_of(arch).items():
        shape = tuple(sizes[d] for d in dims)
        blocks = range(sizes["n_layers"]) if "{l}" in pattern else [None]
        for layer in blocks:
            out[pattern.format(l=layer)] = shape
    return out


def check_tensor_shapes(sizes: dict[str, int], shapes: dict[str, tuple[int, ...]],
                        arch: str = "paper") -> None:
    """The architecture's sizes against the weights file's actual tensors: each size agrees
    with the first tensor axis it sizes (so the error names the layout field), then the whole
    set of names and shapes agrees."""
    blocks = {int(m.group(1)) for name in shapes
              if (m := re.fullmatch(r"blocks\.(\d+)\..*", name))}
    if blocks != set(range(len(blocks))) or len(blocks) != sizes["n_layers"]:
        raise fail("architecture.n_layers",
                   f"is {sizes['n_layers']} but {WEIGHTS_FILE} holds blocks "
                   f"{_ranges(sorted(blocks))}")
    checked: set[str] = {"n_layers"}
    for pattern, dims in TENSORS.items():
        name = pattern.format(l=0)
        if name not in shapes:
            raise LoadError(f"{WEIGHTS_FILE} has no tensor {name}, which every model of the "
                            f"{arch} architecture has")
        shape = tuple(shapes[name])
        if len(shape) != len(dims):
            raise LoadError(f"{WEIGHTS_FILE}: tensor {name} has shape {list(shape)}; it must "
                            f"have {len(dims)} axes [{', '.join(dims)}]")
        for axis, dim in enumerate(dims):
            if dim not in checked:
                checked.add(dim)
                if shape[axis] != sizes[dim]:
                    raise fail(f"architecture.{dim}",
                               f"is {sizes[dim]} but {WEIGHTS_FILE}'s tensor {name} has shape "
                               f"{list(shape)}, whose axis {axis} is {dim}")
    want = expected_shapes(sizes, arch)
    extra = sorted(set(shapes) - set(want))
    if extra:
        raise LoadError(f"{WEIGHTS_FILE} holds tensors the {arch} architecture does not have: "
                        f"{', '.join(extra[:5])}")
    for name, shape in want.items():
        if name not in shapes:
            raise LoadError(f"{WEIGHTS_FILE} has no tensor {name}, which the layout's "
                            f"architecture (n_layers = {sizes['n_layers']}) needs")
        if tuple(shapes[name]) != shape:
            raise LoadError(f"{WEIGHTS_FILE}: tensor {name} has shape {list(shapes[name])}, the "
                            f"layout's architecture needs {list(shape)}")


def _ranges(values: list[int]) -> str:
    if not values:
        return "none"
    if values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}..{values[-1]}" if len(values) > 1 else str(values[0])
    return ", ".join(map(str, values[:8])) + (", ..." if len(values) > 8 else "")


# ---------------------------------------------------------------------------------- entry


def validate_layout(layout: dict, tensor_shapes: dict[str, tuple[int, ...]]) -> None:
    """Check a parsed layout.json against the schema and the weights file's tensor shapes
    (name -> shape, from its header); raise LoadError naming the first bad field.

    Order: the top level and format_version; the architecture's sizes, then those sizes
    against the tensors (so nothing sized by the layout is ever allocated before it is known to
    match the file); then every field of LAYOUT; then the RULES."""
    if not isinstance(layout, dict):
        raise fail("", f"must be an object, got {show(layout)}")
    version = layout.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise fail("format_version", f"is {show(version)}; this raspicl reads format "
                                     f"{FORMAT_VERSION} only (the model was written by another "
                                     f"raspicl version): compile the model again")
    if "integrity" not in layout:
        raise fail("integrity", "is missing: the layout carries no digest over itself and the "
                                "weights (written by an older raspicl?); compile the model "
                                "again")
    ctx = Context()
    arch = layout.get("architecture")
    Obj({"name": ARCH_NAME, **{name: Int(lo=1, define=name) for name in SIZES}})(
        arch, "architecture", ctx)
    check_tensor_shapes(dict(ctx), tensor_shapes, arch["name"])
    # The whole architecture next, for block_order's length `runs`: `residuals` (the length of
    # the residual list, §5 of docs/architecture.md) is derived from it before LAYOUT's fields
    # that index that list are reached. LAYOUT then checks the architecture again, harmlessly.
    ARCHITECTURE(arch, "architecture", ctx)
    ctx["residuals"] = 1 + 2 * ctx["runs"]
    LAYOUT(layout, "", ctx)
    for rule in RULES:
        rule(layout, ctx)


def schema_table() -> list[tuple[str, str]]:
    """(JSON path, constraint) for every field of LAYOUT, in order: the source of the table in
    docs/architecture.md."""
    return [(path, check.describe()) for path, check in LAYOUT.children("")
            if not isinstance(check, Obj)]
