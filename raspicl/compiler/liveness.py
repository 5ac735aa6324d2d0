"""Liveness: the attention slot whose self-head clears each value's rows.

Runs once, after scheduling (and before layout); sets no field. Its result, a Liveness, is
handed on to layout (which reuses a row once its value is cleared), assemble (which writes the
clears into the self-heads) and describe (which records them), so that all three agree.

The rule (`clear_slot_of`, clears.py, where placement reads it too): a value is cleared by the
first attention after its last read and after the sublayer that wrote it; it is never cleared
if it is live to the end (the output) or if an MLP overwrites it in place (a shared loop's
state). In a shared loop
(loops.defer_clears) values from before the loop, and the state the last iteration leaves,
are cleared only after the loop; and the clears that every later iteration's first block
does for the previous iteration are done by iteration 0's first block too
(loops.wraparound_clears: on rows still zero then).
"""

from __future__ import annotations

from raspicl.compiler.clears import Liveness, clear_slot_of
from raspicl.compiler.loops import defer_clears, wraparound_clears
from raspicl.compiler.lower import Lowered
from raspicl.compiler.schedule import Schedule

__all__ = ["Liveness", "clear_slot_of", "liveness"]


def liveness(low: Lowered, sched: Schedule, share_loops: bool = False) -> Liveness:
    """Clear slots of every value of `low` and temporary of `sched`."""
    clears = {v: clear_slot_of(v) for v in low.values + sched.temps}
    if share_loops:
        defer_clears(low, sched, clears)
    return Liveness(clears, wraparound_clears(low, sched, clears))
