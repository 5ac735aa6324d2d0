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
from raspicl.compiler.loops import fix_clears, link_iterations
from raspicl.compiler.lower import lower
from raspicl.compiler.schedule import schedule
from raspicl.lang.program import Program

__all__ = ["CompilerConfig", "compile_program"]


def compile_program(program: Program, config: CompilerConfig | None = None,
                    loops: str = "unroll") -> CompiledModel:
    """Compile a program into a float64 transformer and its layout.

    loops: 'unroll' gives every iteration of a `p.loop` its own blocks; 'share' compiles the
    body once into a group of blocks that the forward pass runs once per iteration (a looped
    transformer with shared weights, recorded in the layout's block_order and loops).
    """
    if loops not in ("unroll", "share"):
        raise ValueError(f"loops must be 'unroll' or 'share', got {loops!r}")
    config = config or CompilerConfig()
    share = loops == "share"
    low = lower(program, config)
    link_iterations(low, share_rows=share)
    sched = schedule(low, share_loops=share)
    if share:
        fix_clears(low, sched)
    layout = lay_out(low, sched)
    blocks = build_blocks(low, sched, layout, config)
    model, order = assemble(low, sched, layout, blocks, config)
    return CompiledModel(model, describe(low, sched, layout, blocks, order, config, model.cfg))
