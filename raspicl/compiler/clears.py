"""Clear slots: the rule that says which attention slot's self-head clears a value's rows, and
the record of every value's (`Liveness`).

The rule (`clear_slot_of`): a value is cleared by the first attention after its last read and
after the sublayer that wrote it; it is never cleared if it is live to the end (the output,
whose last read placement sets to NEVER) or if an MLP overwrites it in place (a shared loop's
state). Placement applies the rule to know when a replaced value's rows are free; the
liveness pass (liveness.py) applies it to every value, with the loops' adjustments, and its
Liveness goes on to layout, assemble and describe. This module sits below all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from raspicl.compiler.lower import Value
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
