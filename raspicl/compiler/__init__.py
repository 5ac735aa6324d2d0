"""The compiler: Program -> validate -> lower -> schedule -> lay out -> gadgets -> model.

Each stage is a function of the last; `compile_program` runs them all and records, in the
layout, everything a reader needs to interpret the weights.
"""

from __future__ import annotations

from raspicl.compiled import CompiledModel
from raspicl.compiler.assemble import assemble, build_blocks
from raspicl.compiler.config import CompilerConfig
from raspicl.compiler.describe import describe
from raspicl.compiler.layout import lay_out
from raspicl.compiler.lower import lower
from raspicl.compiler.schedule import schedule
from raspicl.lang.program import Program

__all__ = ["CompilerConfig", "compile_program"]


def compile_program(program: Program, config: CompilerConfig | None = None) -> CompiledModel:
    """Compile a program into a float64 transformer and its layout."""
    config = config or CompilerConfig()
    low = lower(program, config)
    sched = schedule(low)
    layout = lay_out(low, sched)
    blocks = build_blocks(low, sched, layout, config)
    model = assemble(low, sched, layout, blocks, config)
    return CompiledModel(model, describe(low, sched, layout, blocks, config, model.cfg))
