"""Lowering: a validated Program becomes a list of instructions over register *values*.

Each write of a register makes a new value (its version), so the later stages see a dataflow
graph with no overwrites. Reads of constant registers are folded into coefficients and biases
(a product with a constant is linear), and each value gets the bound on its entries that the
gadgets' scales are chosen from, calibrated by running the interpreter on prompts from the
domain the model must serve (bounds.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from raspicl.compiler.bounds import (
    Calibration,
    Domain,
    abs_max,
    calibrate,
    choose_bound,
    interval_bound,
)
from raspicl.compiler.config import CompilerConfig
from raspicl.errors import CompileError
from raspicl.lang.ops import Op
from raspicl.lang.program import Program
from raspicl.lang.reads import Where


@dataclass(eq=False)
class Value:
    """One version of a register (or an attention temporary) in the residual stream."""

    name: str
    version: int
    width: int
    kind: str  # 'input', 'const', 'op', 'temp'
    bound: float = 1.0
    op: Op | None = None
    write_slot: int = -1
    last_read: int = -1
    rows: list[int] = field(default_factory=list)
    versioned: bool = False  # a var: its label carries the version
    # per token: defined (finite) on the calibration prompts; None for inputs, constants and
    # masks, which are defined everywhere
    defined: np.ndarray | None = None
    # Looped compilation (schedule.py, layout.py): a clear slot that replaces the computed one,
    # the iteration-0 value whose rows this one reuses, and rows fixed in advance.
    clear_override: int | None = None
    template: Value | None = None
    replaces: Value | None = None  # a var's last write in an iteration takes over these rows
    overwritten_at: int | None = None  # the MLP slot that subtracts it as it writes its successor

    @property
    def label(self) -> str:
        """'w_next'; 'w@2' for the version of a var after its second write; 'tmp:...'."""
        if self.kind == "temp":
            return f"tmp:{self.name}"
        return f"{self.name}@{self.version}" if self.versioned else self.name

    def read_at(self, slot: int) -> None:
        self.last_read = max(self.last_read, slot)


@dataclass(eq=False)
class Instr:
    """An op over values: dst = bias + linear + products (over `reads`), / |divisor|."""

    op: Op
    dst: Value
    reads: list[tuple[Value, Where]]
    linear: list[tuple[int, float, int, int]]  # (out, coef, read, comp)
    products: list[tuple[int, float, int, int, int, int]]  # (out, coef, ra, ca, rb, cb)
    bias: np.ndarray
    divisor: Value | None = None
    divisor_min: float = 0.0  # smallest |divisor| seen in calibration, over the margin
    divisor_tokens: list[int] = field(default_factory=list)  # where the quotient is defined;
    # elsewhere the divisor is computed from undefined reads (or is an exact zero)
    block: int = -1
    stage: str = ""  # 'attn', 'mlp' or 'attn+mlp'
    temps: dict[int, Value] = field(default_factory=dict)
    # select: dst = linear + bias + mask(t) * (gated + gated_bias), mask a 0/1 row per token
    mask: Value | None = None
    gated: list[tuple[int, float, int, int]] = field(default_factory=list)
    gated_bias: np.ndarray | None = None
    gate_floor: float = 0.0  # a gate's bound is at least this (feasibility.py measures it)

    @property
    def registers_read(self) -> list[Value]:
        return [v for v, _ in self.reads] + ([self.divisor] if self.divisor is not None else [])

    @property
    def is_linear(self) -> bool:
        return not self.products and self.divisor is None and self.mask is None


@dataclass
class Lowered:
    program: Program
    instrs: list[Instr]
    inputs: dict[str, Value]  # 'x', 'y'
    consts: dict[str, Value]  # constant registers (and var inits) kept in the residual
    masks: dict[str, tuple[Value, np.ndarray]]  # token masks of selects: 0/1 rows in W_pos
    values: list[Value]
    output: Value
    calibration: Calibration


def lower(program: Program, config: CompilerConfig, domain: Domain | None = None) -> Lowered:
    """Program -> instructions over values, with constants folded and bounds calibrated on
    prompts from `domain` (default: raspicl.prompts.PromptDistribution())."""
    program.validate()
    if getattr(program, "is_symbolic", lambda: False)():
        raise CompileError(f"program '{program.name}' has symbolic coefficients; compile a "
                           f"numeric instance")
    cal = calibrate(program, config, domain)
    trace = cal.trace
    m = config.bound_margin
    bounds_in = {"x": abs_max(trace.final["x"]) * m, "y": abs_max(trace.final["y"]) * m}
    arrays = {"x": trace.tokens[:, :, 1:], "y": trace.tokens[:, :, :1]}
    for name, value in program.constants.items():  # consts and var inits, at every token
        arrays[name] = np.broadcast_to(np.asarray(value, dtype=np.float64),
                                       trace.tokens.shape[:2] + (np.asarray(value).size,))
    current: dict[str, Value] = {}
    values: list[Value] = []
    inputs = {
        "x": Value("x", 0, program.d, "input", bounds_in["x"]),
        "y": Value("y", 0, 1, "input", bounds_in["y"]),
    }
    current.update(inputs)
    values += inputs.values()
    const_values = {name: np.asarray(v, dtype=np.float64)
                    for name, v in program.constants.items()}
    folded_consts = {name for name, reg in program.registers.items() if reg.kind == "const"}
    consts: dict[str, Value] = {}
    for name, arr in const_values.items():
        v = Value(name, 0, arr.size, "const", float(np.abs(arr).max(initial=0.0)),
                  versioned=program.registers[name].kind == "var")
        current[name] = v
        if name not in folded_consts:
            consts[name] = v
            values.append(v)
    versions: dict[str, int] = {}
    masks: dict[str, tuple[Value, np.ndarray]] = {}
    instrs = []
    for op in program.ops:
        reads = []
        index_map = {}
        bias = op.bias.copy()
        lin: list[tuple[int, float, int, int]] = []
        prod: list[tuple[int, float, int, int, int, int]] = []
        folded = {i for i, r in enumerate(op.reads) if r.register.name in folded_consts}
        for i, r in enumerate(op.reads):
            if i not in folded:
                index_map[i] = len(reads)
                reads.append((current[r.register.name], r.at))
        lin += _fold_linear(op, op.linear, folded, const_values, index_map, bias)
        P = op.products
        for o, c, ra, ca, rb, cb in zip(P.out, P.coef, P.read_a, P.comp_a, P.read_b, P.comp_b,
                                        strict=True):
            fa, fb = ra in folded, rb in folded
            if fa and fb:
                bias[o] += (c * const_values[op.reads[ra].register.name][ca]
                            * const_values[op.reads[rb].register.name][cb])
            elif fa:
                k = c * const_values[op.reads[ra].register.name][ca]
                lin.append((int(o), float(k), index_map[rb], int(cb)))
            elif fb:
                k = c * const_values[op.reads[rb].register.name][cb]
                lin.append((int(o), float(k), index_map[ra], int(ca)))
            else:
                prod.append((int(o), float(c), index_map[ra], int(ca), index_map[rb], int(cb)))
        gated: list[tuple[int, float, int, int]] = []
        gated_bias = np.zeros(op.dst.width)
        if op.gated is not None:
            gated = _fold_linear(op, op.gated, folded, const_values, index_map, gated_bias)
        lin = [t for t in lin if t[1] != 0.0]
        prod = [t for t in prod if t[1] != 0.0]
        gated = [t for t in gated if t[1] != 0.0]
        used = ({t[2] for t in lin} | {t[2] for t in prod} | {t[4] for t in prod}
                | {t[2] for t in gated})
        reads, lin, prod, gated = _drop_unused(reads, lin, prod, gated, used)
        mask = None
        if op.mask is not None:
            mask = _mask_value(masks, op.mask, program.format.roles())
            if mask not in values:
                values.append(mask)
        divisor = None
        divisor_min = 0.0
        divisor_tokens: list[int] = []
        defined = cal.defined(trace.after[op.index])
        if op.divisor is not None:
            if op.divisor.register.name in folded_consts:
                s = float(const_values[op.divisor.register.name][0])
                if s == 0.0:
                    raise CompileError(f"{op.where()}: divides by the constant 0")
                bias = bias / abs(s)
                lin = [(o, c / abs(s), r, k) for o, c, r, k in lin]
            else:
                divisor = current[op.divisor.register.name]
                divisor_tokens = [int(t) for t in np.flatnonzero(defined)]
                s_arr = np.abs(np.broadcast_to(
                    arrays.get(op.divisor.register.name, np.array([np.inf])),
                    trace.after[op.index].shape[:2] + (1,)))[:, divisor_tokens]
                divisor_min = float(s_arr[np.isfinite(s_arr)].min(initial=np.inf)) / m
        read_bounds = [v.bound for v, _ in reads]
        interval = interval_bound(bias, lin, prod, read_bounds, op.dst.width)
        if mask is not None:
            interval = max(interval, interval_bound(bias + gated_bias, lin + gated, [],
                                                    read_bounds, op.dst.width))
        if divisor is not None:
            interval = interval / divisor_min if divisor_min > 0 else np.inf
        versions[op.dst.name] = versions.get(op.dst.name, 0) + 1
        bound = choose_bound(abs_max(trace.after[op.index]), interval, config)
        dst = Value(op.dst.name, versions[op.dst.name], op.dst.width, "op", bound, op,
                    versioned=op.dst.kind == "var", defined=defined)
        values.append(dst)
        current[op.dst.name] = dst
        arrays[op.dst.name] = trace.after[op.index]
        instrs.append(Instr(op, dst, reads, lin, prod, bias, divisor, divisor_min,
                            divisor_tokens=divisor_tokens, mask=mask, gated=gated,
                            gated_bias=gated_bias if op.mask is not None else None))
    out_name = program.output_spec.register.name
    output = current[out_name]
    if output.kind == "const" and out_name in folded_consts:
        raise CompileError(f"the output '{out_name}' is a constant; nothing to compile")
    return Lowered(program, instrs, inputs, consts, masks, values, output, cal)


def _fold_linear(op: Op, terms, folded: set[int], const_values: dict[str, np.ndarray],
                 index_map: dict[int, int], bias: np.ndarray) -> list[tuple[int, float, int, int]]:
    """Linear terms over the kept reads; terms on folded constants go into `bias` (in place)."""
    out = []
    for o, c, ri, ci in zip(terms.out, terms.coef, terms.read, terms.comp, strict=True):
        if ri in folded:
            bias[o] += c * const_values[op.reads[ri].register.name][ci]
        else:
            out.append((int(o), float(c), index_map[ri], int(ci)))
    return out


def _drop_unused(reads, lin, prod, gated, used):
    keep = [i for i in range(len(reads)) if i in used]
    remap = {old: new for new, old in enumerate(keep)}
    reads = [reads[i] for i in keep]
    lin = [(o, c, remap[r], k) for o, c, r, k in lin]
    prod = [(o, c, remap[ra], ca, remap[rb], cb) for o, c, ra, ca, rb, cb in prod]
    gated = [(o, c, remap[r], k) for o, c, r, k in gated]
    return reads, lin, prod, gated


def _mask_value(masks: dict, mask: np.ndarray, roles: list[str]) -> Value:
    """The residual row holding a select's token mask (one row per distinct mask)."""
    chosen = [t for t in range(len(mask)) if mask[t]]
    role_set = sorted({roles[t] for t in chosen})
    if chosen and all(mask[t] == (roles[t] in role_set) for t in range(len(mask))):
        name = "mask:" + "+".join(role_set)
    else:
        name = "mask:t in {" + ",".join(map(str, chosen)) + "}"
    if name not in masks:
        masks[name] = (Value(name, 0, 1, "mask", 1.0), mask.astype(np.float64))
    return masks[name][0]


