"""Anchors: the runs that divide, and by what.

Runs after placement; sets nothing. A division's run writes the anchors +-N s (rows
`anchor_pos`, `anchor_neg`) from the divisor s in its attention, so that its MLP's LayerNorm
divides by about N |s| (docs/compiler.md); the next run clears them (assemble.build_blocks).

A target that reads every sublayer through a LayerNorm (gpt2) also keeps the constant anchors
+-N in two fixed rows, `ln_pos` and `ln_neg`, at every token (`with_ln_anchors`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from raspicl.arch import LN_ANCHOR_ROWS
from raspicl.compiler.lower import Lowered, Value

if TYPE_CHECKING:  # layout.py imports the schedule, which imports this module
    from raspicl.compiler.layout import Layout


def find_anchors(low: Lowered) -> dict[int, Value]:
    """run -> the divisor whose anchors that run's attention writes."""
    return {ins.block: ins.divisor for ins in low.instrs if ins.divisor is not None}


def with_ln_anchors(layout: Layout) -> Layout:
    """The layout with the rows ln_pos and ln_neg appended (fixed rows, never cleared, never
    read by any head or unit: W_pos writes +N and -N there at every token)."""
    fixed = dict(layout.fixed)
    names = list(layout.row_names)
    for name in LN_ANCHOR_ROWS:
        fixed[name] = len(names)
        names.append(name)
    return replace(layout, d_model=len(names), fixed=fixed, row_names=names)
