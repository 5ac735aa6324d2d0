"""The compiler's intermediate form: register *values* and the instructions over them.

lower.py builds these (fold.py, ssa.py and bounds.py each set some of the fields, as their
module docs say, from calibrate.py's statistics); schedule.py's passes set Instr.block, stage
and temps and Value.write_slot, last_read and overwritten_at (placement.py and temporaries.py);
liveness.py hands on the clear slots as a result of its own, not as fields; layout.py sets
Value.rows; loops.py sets Value.template and replaces; feasibility.py raises Instr.gate_floor;
fusion.py sets Value.absorbed_by (a fused value: computed inside its readers, no rows); cse.py
sets Value.alias_of and absorbed_by of a duplicate (an alias: its survivor's op computes it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from raspicl.compiler.records import CommonSubexpressions, Fusion
from raspicl.lang.functions import Elementwise
from raspicl.lang.ops import Op
from raspicl.lang.program import Program
from raspicl.lang.reads import Where

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
    cse: CommonSubexpressions | None = None  # what cse.py eliminated (None: it did not run)
