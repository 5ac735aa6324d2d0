"""Who holds which residual row when, from the layout's typed records (raspicl.layout_records).

Rows are reused over time (compiler/layout.py), so a row's meaning depends on the sublayer:
`Rows.live(row, slot)` is the value a sublayer at `slot` reads from `row`, `Rows.target` the
value a write there builds. Slots: raspicl.slots.
"""

from __future__ import annotations

from raspicl.layout_records import ANCHOR_ROWS, Occupant, occupants
from raspicl.slots import attn_slot, slot_name


class Rows:
    """The layout's rows over time: which value a sublayer reads from a row and writes into it."""

    def __init__(self, layout: dict):
        self.layout = layout
        self.names: list[str] = list(layout["row_names"])
        self.order: list[int] = list(layout["architecture"]["block_order"])
        self.end = attn_slot(len(self.order))  # the slot after the last sublayer
        self.occupants: list[Occupant] = occupants(layout)
        self.fixed = {o.label: o for o in self.occupants if o.kind == "fixed"}

    def slot_name(self, slot: int | None) -> str:
        """The layout's name for a slot ('block 1 mlp', 'run 4 (block 1) attn')."""
        if slot is None or slot >= self.end:
            return "live to end"
        return slot_name(slot, self.order)

    def live(self, row: int, slot: int) -> Occupant | None:
        """The value a sublayer at `slot` reads from `row` (written before it, not yet cleared)."""
        best = None
        for o in self.occupants:
            if row in o.rows and o.written < slot and (o.cleared is None or o.cleared >= slot):
                if best is None or o.written > best.written:
                    best = o
        return best

    def written_at(self, row: int, slot: int) -> Occupant | None:
        for o in self.occupants:
            if row in o.rows and o.written == slot:
                return o
        return None

    def target(self, row: int, slot: int) -> tuple[Occupant | None, bool]:
        """The value a write into `row` at `slot` builds, and whether it is new at this slot."""
        new = self.written_at(row, slot)
        if new is not None:
            return new, True
        old = self.live(row, slot)
        return old, bool(old is not None and old.kind == "fixed" and old.label in ANCHOR_ROWS)

    def label_read(self, row: int, slot: int) -> str:
        o = self.live(row, slot)
        return f"{row} {o.elem(row) if o else '(empty)'}"

    def label_write(self, row: int, slot: int) -> str:
        o, _ = self.target(row, slot)
        return f"{row} {o.elem(row) if o else '(empty)'}"
