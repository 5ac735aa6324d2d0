"""Liveness: the attention slot whose self-head clears each value's rows.

Runs once, after scheduling (and before layout); sets no field. Its result, a Liveness, is
handed on to layout (which reuses a row once its value is cleared), assemble (which writes the
clears into the self-heads) and describe (which records them), so that all three agree.

The rule (`clear_slot_of`): a value is cleared by the first attention after its last read and
after the sublayer that wrote it; it is never cleared if it is live to the end (the output) or
if an MLP overwrites it in place (a shared loop's state). In a shared loop
(loops.defer_clears) values from before the loop, and the state the last iteration leaves,
are cleared only after the loop; and the clears that every later iteration's first block
does for the previous iteration are done by iteration 0's first block too
(loops.wraparound_clears: on rows still zero then).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raspicl.compiler.lower import Lowered, Value
from raspicl.slots import attn_after, attn_at_or_after, run_of

NEVER = 10**9  # last_read of values that stay live to the end (the output; placement sets it)


@dataclass
class Liveness:
    """The clear slot of every value (None: never cleared) and the extra clears of shared loops
    (run -> values its self-head clears besides those whose clear slot is there)."""

    clears: dict[Value, int | None]
    wraparound: dict[int, list[Value]] = field(default_factory=dict)

    def clear_slot(self, v: Value) -> int | None:
        """The attention slot that zeroes v's rows, or None if they are never zeroed."""
        try:
            return self.clears[v]
        except KeyError:
            raise KeyError(f"liveness has no clear slot for {v.label}: it is not a value of "
                           f"the lowered program or a temporary of the schedule") from None

    def cleared_by(self, v: Value) -> list[int]:
        """Every run whose self-head zeroes v's rows."""
        c = self.clears.get(v)
        runs = [run_of(c)] if c is not None else []
        return runs + [run for run, vs in self.wraparound.items() if any(w is v for w in vs)]


def clear_slot_of(v: Value) -> int | None:
    """The rule of the module doc on v's own slots (write_slot, last_read, overwritten_at)."""
    if v.overwritten_at is not None or v.fused:  # a fused value has no rows to clear
        return None
    if v.last_read >= NEVER:
        return None
    return max(attn_at_or_after(v.last_read), attn_after(v.write_slot))


def liveness(low: Lowered, sched, share_loops: bool = False) -> Liveness:
    """Clear slots of every value of `low` and temporary of `sched` (a Schedule)."""
    from raspicl.compiler.loops import defer_clears, wraparound_clears

    clears = {v: clear_slot_of(v) for v in low.values + sched.temps}
    if share_loops:
        defer_clears(low, sched, clears)
    return Liveness(clears, wraparound_clears(low, sched, clears))
