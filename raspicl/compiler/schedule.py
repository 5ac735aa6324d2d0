"""Scheduling: placement, then temporaries, then anchors (the paper's Lemma 7).

`schedule` runs the three passes in order and gathers their results in a Schedule:
- placement.py sets every instruction's run and stage, its dst's write slot and its operands'
  last reads, and decides each run's MLP mode (MlpMode.NEUTRAL or a divisor) and the loops;
- temporaries.py sets `Instr.temps`: the rows a block's attention moves remote MLP operands to;
- anchors.py finds the runs whose attention writes division anchors.
Which slot clears each value is decided afterwards by liveness.py. Slots: raspicl.slots.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raspicl.compiler.anchors import find_anchors
from raspicl.compiler.lower import Instr, Lowered, Value
from raspicl.compiler.placement import NEVER, Loop, MlpMode, Mode, place
from raspicl.compiler.temporaries import make_temporaries

__all__ = ["NEVER", "Loop", "MlpMode", "Schedule", "schedule"]


@dataclass
class Schedule:
    n_blocks: int
    mlp_mode: dict[int, Mode]  # run -> MlpMode.NEUTRAL or the divisor Value
    instrs: list[Instr]
    temps: list[Value] = field(default_factory=list)
    anchors: dict[int, Value] = field(default_factory=dict)  # run -> divisor whose anchors
    loops: list[Loop] = field(default_factory=list)


def schedule(low: Lowered, share_loops: bool = False) -> Schedule:
    """Place every instruction, then make the temporaries and find the anchors (module doc).
    With share_loops, each iteration of a `p.loop` starts on a fresh block (placement.py)."""
    placed = place(low, share_loops)
    temps = make_temporaries(low)
    anchors = find_anchors(low)
    return Schedule(placed.n_blocks, placed.mlp_mode, low.instrs, temps, anchors, placed.loops)
