"""The compiler's intermediate form: register *values* and the instructions over them.

lower.py builds these (fold.py, ssa.py and bounds.py each set some of the fields, as their
module docs say, from calibrate.py's statistics); schedule.py's passes set Instr.block, stage
and temps and Value.write_slot, last_read and overwritten_at (placement.py and temporaries.py);
liveness.py hands on the clear slots as a result of its own, not as fields; layout.py sets
Value.rows; loops.py sets Value.template and replaces; feasibility.py raises Instr.gate_floor;
fusion.py sets Value.absorbed_by (a fused value: computed inside its readers, no rows); cse.py
sets Value.alias_of and absorbed_by of a duplicate (an alias: its survivor's op computes it).

The fusion pass leaves its result on Lowered as typed records: `Lowered.fusion` (what it fused
and the critical-path depth, records.py, for the layout) and `Lowered.fused_defs` (the fused
values' definitions, `FusedDefinitions`), which is all that placement, temporaries, assembly
and describe need to know of fusion: they read it and never call into fusion.py.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from raspicl.compiler.records import CommonSubexpressions, Fusion
from raspicl.lang.functions import Elementwise
from raspicl.lang.ops import Op
from raspicl.lang.program import Program
from raspicl.lang.reads import Here, Where, compose

if TYPE_CHECKING:
    from raspicl.compiler.calibrate import Calibration


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
    # Looped compilation (schedule.py, layout.py): the iteration-0 value whose rows this one
    # reuses, and rows fixed in advance.
    template: Value | None = None
    replaces: Value | None = None  # a var's last write in an iteration takes over these rows
    overwritten_at: int | None = None  # the MLP slot that subtracts it as it writes its successor
    # fusion.py: the op indices of the instructions that compute this (linear) value inside
    # their own heads or units; a fused value has no rows
    absorbed_by: list[int] = field(default_factory=list)
    # cse.py: the survivor whose value this duplicate is (fused, absorbed_by = its op)
    alias_of: Value | None = None

    @property
    def fused(self) -> bool:
        return bool(self.absorbed_by)

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
    """An op over values: dst = bias + linear + products (over `reads`), / |divisor|; for an
    apply, dst = f(bias + linear)."""

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
    # its product gadgets' scales e are this times what the bounds give (feasibility.py)
    product_gain: float = 1.0
    # apply: dst = f(bias + linear), f elementwise (lang/functions.py): the linear terms and
    # bias are f's argument (compiler/gadgets/elementwise.py)
    function: Elementwise | None = None

    @property
    def registers_read(self) -> list[Value]:
        return [v for v, _ in self.reads] + ([self.divisor] if self.divisor is not None else [])

    @property
    def is_linear(self) -> bool:
        return (not self.products and self.divisor is None and self.mask is None
                and self.function is None)

    @property
    def fused(self) -> bool:
        """Fused away (fusion.py): its readers compute it; it gets no sublayer of its own."""
        return self.dst.fused


@dataclass(frozen=True, eq=False)
class FusedDefinitions:
    """The fusion pass's result as the passes after it read it: every fused value and the
    instruction that defines it.

    A fused value (fusion.py fused it, or cse.py made it an alias of its survivor) has no rows
    and no sublayer: each reader computes it from its definition (that instruction's reads,
    terms and bias), so a read of it at a place stands for its definition's reads at the
    composed places (lang/reads.compose). fusion.fuse records this once, after it has decided
    (Lowered.fused_defs); placement, temporaries, assemble and describe ask it here. Empty (the
    default) for a Lowered that the pass has not run on, where nothing may be fused yet: a
    fused value it does not know is an error, not a value read as if it had rows.
    """

    definitions: Mapping[Value, Instr] = field(default_factory=dict)

    def definition(self, v: Value) -> Instr:
        """The instruction that defines the fused value v."""
        try:
            return self.definitions[v]
        except KeyError:
            raise KeyError(f"{v.label} is fused but has no recorded definition: fusion.fuse "
                           "records them, and must run before scheduling") from None

    def places(self, v: Value, at: Where) -> list[tuple[Value, Where]]:
        """The values (and composed places) the fused value v, read at `at`, stands for."""
        return [(r, compose(at, p)) for r, p in self.definition(v).reads]

    def stored(self, v: Value) -> list[Value]:
        """The values with rows that v stands for: its fused definition's reads, or v itself."""
        return [r for r, _ in self.definition(v).reads] if v.fused else [v]

    def operands(self, ins: Instr) -> list[tuple[Value, bool]]:
        """Every stored value `ins` reads through its reads, with whether attention moves it (a
        remote read, or part of a fused factor that needs a temporary). A fused factor's reads
        take its place."""
        out: list[tuple[Value, bool]] = []
        for v, at in ins.reads:
            if v.fused:
                parts = self.places(v, at)
                remote = any(not isinstance(p, Here) for _, p in parts)
                out += [(r, remote) for r, _ in parts]
            else:
                out.append((v, not isinstance(at, Here)))
        return out

    def needs_temp(self, v: Value, at: Where) -> bool:
        """Whether an MLP operand v read at `at` is moved into a temporary by its block's
        attention: a read at another token, or a fused factor with a read at another token."""
        if v.fused:
            return any(not isinstance(p, Here) for _, p in self.places(v, at))
        return not isinstance(at, Here)


@dataclass
class Lowered:
    """What lowering hands to the scheduler: the instructions, every value, the output value
    and the calibration the bounds came from."""

    program: Program
    instrs: list[Instr]
    inputs: dict[str, Value]  # 'x', 'y'
    consts: dict[str, Value]  # constant registers (and var inits) kept in the residual
    masks: dict[str, tuple[Value, np.ndarray]]  # token masks of selects: 0/1 rows in W_pos
    values: list[Value]
    output: Value
    calibration: Calibration
    fusion: Fusion | None = None  # what fusion.py fused (None: the pass did not run)
    # the fused values' definitions, which the passes after fusion read (fusion.py sets it)
    fused_defs: FusedDefinitions = field(default_factory=FusedDefinitions)
    cse: CommonSubexpressions | None = None  # what cse.py eliminated (None: it did not run)


def copy_lowered(low: Lowered) -> Lowered:
    """A deep copy of the instructions and values (the program, its ops and the calibration
    are shared), for scheduling an alternative (compile_program lays out the program fused and
    as written)."""
    memo = {id(low.program): low.program, id(low.calibration): low.calibration}
    for op in low.program.ops:
        memo[id(op)] = op
    return copy.deepcopy(low, memo)
