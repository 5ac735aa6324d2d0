"""Lowering: a validated Program becomes a list of instructions over register *values*.

Four passes, each in a module of its own with a typed result:

1. calibrate (calibrate.py -> Calibration): the float64 interpreter on prompts from the domain
   the model must serve, kept as running per-op statistics;
2. fold (fold.py -> Folded per op): reads of `const` registers folded into coefficients and
   biases (a product with a constant is linear);
3. SSA renaming (ssa.py -> SSA): each write of a register makes a new value (its version), so
   the later stages see a dataflow graph with no overwrites;
4. bounds (bounds.py, in place on the SSA): each value's bound on its entries, which the
   gadgets' scales are chosen from, and where it is defined.

The result, Lowered, is what the scheduler reads. Value, Instr and Lowered live in ir.py and are
re-exported here.
"""

from __future__ import annotations

from raspicl.compiler.bounds import attach_bounds
from raspicl.compiler.calibrate import Domain, calibrate
from raspicl.compiler.config import CompilerConfig
from raspicl.compiler.fold import fold_program
from raspicl.compiler.ir import Instr, Lowered, Value
from raspicl.compiler.ssa import rename
from raspicl.errors import CompileError
from raspicl.lang.program import Program

__all__ = ["Instr", "Lowered", "Value", "lower"]


def lower(program: Program, config: CompilerConfig, domain: Domain | None = None) -> Lowered:
    """Program -> instructions over values, with constants folded and bounds calibrated on
    prompts from `domain` (default: raspicl.prompts.PromptDistribution())."""
    program.validate()
    if getattr(program, "is_symbolic", lambda: False)():
        raise CompileError(f"program '{program.name}' has symbolic coefficients; compile a "
                           f"numeric instance")
    cal = calibrate(program, config, domain)
    ssa = rename(program, fold_program(program))
    attach_bounds(ssa, cal, program, config)
    return Lowered(program, ssa.instrs, ssa.inputs, ssa.consts, ssa.masks, ssa.values,
                   ssa.output, cal)
