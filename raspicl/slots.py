"""Sublayer slots: the forward pass's sublayers numbered in the order they run.

Run r (the r-th block the forward pass executes, `block_order[r]` its stored block) has its
attention at slot 2r and its MLP at slot 2r + 1; the embedding is slot -1. A value written at
slot w is in the residual stream from residual w + 1 on (`written_after`). The compiler's
passes (placement, liveness, layout), describe and inspect all count in slots; these helpers
are the one place that knows the numbering.
"""

from __future__ import annotations

from enum import Enum

EMBEDDING = -1  # the slot of the embedding (token and position), before run 0


class Stage(str, Enum):
    """The two sublayers of a block."""

    ATTN = "attn"
    MLP = "mlp"


def attn_slot(run: int) -> int:
    """The slot of run `run`'s attention."""
    return 2 * run


def mlp_slot(run: int) -> int:
    """The slot of run `run`'s MLP."""
    return 2 * run + 1


def run_of(slot: int) -> int:
    """The run a (non-embedding) slot belongs to."""
    return slot // 2


def is_attn(slot: int) -> bool:
    return slot % 2 == 0


def is_mlp(slot: int) -> bool:
    return slot % 2 == 1


def stage_of(slot: int) -> Stage:
    return Stage.ATTN if is_attn(slot) else Stage.MLP


def attn_at_or_after(slot: int) -> int:
    """The first attention slot at or after `slot`."""
    return slot if is_attn(slot) else slot + 1


def attn_after(slot: int) -> int:
    """The first attention slot strictly after `slot`."""
    return slot + 1 if is_mlp(slot) else slot + 2


def slot_name(slot: int, order: list[int]) -> str:
    """The human name of a slot in a forward pass running stored blocks `order`: 'embedding',
    'block 3 attn', or 'run 7 (block 1) mlp' where the run is not its block's index."""
    if slot == EMBEDDING:
        return "embedding"
    run, stage = run_of(slot), stage_of(slot).value
    block = order[run]
    return f"block {block} {stage}" if run == block else f"run {run} (block {block}) {stage}"
