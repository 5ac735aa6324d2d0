"""Scheduling: placement, then temporaries, then anchors (the paper's Lemma 7).

`schedule` runs the three passes in order and gathers their results in a Schedule:
- placement.py sets every instruction's run and stage, its dst's write slot and its operands'
  last reads, and decides each run's MLP mode (MlpMode.NEUTRAL or a divisor) and the loops;
- temporaries.py sets `Instr.temps`: the rows a block's attention moves remote MLP operands to;
- anchors.py finds the runs whose attention writes division anchors.
Which slot clears each value is decided afterwards by liveness.py. Slots: raspicl.slots.
The Schedule carries the target Architecture (raspicl.arch) on to assembly and describe, and
`schedule` refuses what the target cannot express (a division or shared blocks under gpt2).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raspicl.arch import PAPER, Architecture
from raspicl.compiler.anchors import find_anchors
from raspicl.compiler.lower import Instr, Lowered, Value
from raspicl.compiler.placement import NEVER, Loop, MlpMode, Mode, place
from raspicl.compiler.temporaries import make_temporaries
from raspicl.errors import CompileError

__all__ = ["NEVER", "Loop", "MlpMode", "Schedule", "schedule"]


@dataclass
class Schedule:
    n_blocks: int
    mlp_mode: dict[int, Mode]  # run -> MlpMode.NEUTRAL or the divisor Value
    instrs: list[Instr]
    temps: list[Value] = field(default_factory=list)
    anchors: dict[int, Value] = field(default_factory=dict)  # run -> divisor whose anchors
    loops: list[Loop] = field(default_factory=list)
    arch: Architecture = PAPER


def schedule(low: Lowered, share_loops: bool = False, arch: Architecture = PAPER) -> Schedule:
    """Place every instruction, then make the temporaries and find the anchors (module doc).
    With share_loops, each iteration of a `p.loop` starts on a fresh block (placement.py)."""
    if share_loops and not arch.shared_blocks:
        raise CompileError(f"the {arch.name} target has no shared (looped) blocks: compile "
                           f"{low.program.name} with loops='unroll'")
    if not arch.divides:
        for ins in low.instrs:
            if ins.divisor is not None:
                raise CompileError(
                    f"{ins.op.where()}: the {arch.name} target cannot divide yet (a division "
                    f"through a pre-attention LayerNorm, docs/architecture.md); compile "
                    f"{low.program.name} for the paper target")
    placed = place(low, share_loops)
    temps = make_temporaries(low)
    anchors = find_anchors(low)
    return Schedule(placed.n_blocks, placed.mlp_mode, low.instrs, temps, anchors, placed.loops,
                    arch)
