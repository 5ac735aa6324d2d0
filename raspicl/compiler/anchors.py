"""Anchors: the runs that divide, and by what.

Runs after placement; sets nothing. A division's run writes the anchors +-N s (rows
`anchor_pos`, `anchor_neg`) from the divisor s in its attention, so that its MLP's LayerNorm
divides by about N |s| (docs/compiler.md); the next run clears them (assemble.build_blocks).

A target that reads every sublayer through a LayerNorm (gpt2) also keeps the constant anchors
+-N in two fixed rows, `ln_pos` and `ln_neg`, at every token (layout.with_ln_anchors: those
rows are a change of the layout, made after it).
"""

from __future__ import annotations

from raspicl.compiler.lower import Lowered, Value


def find_anchors(low: Lowered) -> dict[int, Value]:
    """run -> the divisor whose anchors that run's attention writes."""
    return {ins.block: ins.divisor for ins in low.instrs if ins.divisor is not None}
