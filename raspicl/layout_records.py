"""Typed records of layout.json: the facts describe writes and inspect, export and the schema
read, so that nothing has to parse the prose glosses the layout also carries.

    Slot         a sublayer of the forward pass: slot number, run, stage, stored block
                 (registers.*.versions[].written_slot / cleared_slot / overwritten_slot,
                 temporaries[].written_slot / cleared_slot, masks.*.cleared_slot)
    HeadWrite    one thing a head does in one run (blocks[].heads[].actions[]): move a value
                 (an attention op's result), clear a value's rows, write a division's
                 anchors, or fill a temporary (an MLP op's remote operand); with the value's
                 label, the op and its source line, and the rows it writes
    Occupant     one value in the residual stream over time (a register version, a mask, a
                 temporary, a fixed row): its label, rows, write slot and clear slot;
                 `occupants(layout)` lists them all

Every record has `to_json` and `from_json`; the JSON forms are the ones raspicl.schema checks.
The prose fields beside them ('written': 'block 1 mlp', 'purpose': ['clear w@2', ...]) are a
human gloss only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from raspicl.slots import EMBEDDING, run_of, stage_of

# layout.json's format, which describe writes and the schema and export check.
# 3: typed records (labels, slot records, head actions, temporaries' slots, MLP divisors)
FORMAT_VERSION = 3

FIXED_SLOT = -(10**9)  # fixed rows hold their meaning from before the embedding on
ANCHOR_ROWS = ("anchor_pos", "anchor_neg")  # the fixed rows a division's anchors +-N s go to


@dataclass(frozen=True)
class Slot:
    """A sublayer: `slot` -1 the embedding, 2r run r's attention, 2r + 1 its MLP (raspicl.slots);
    `block` the stored block run r executes (architecture.block_order[r])."""

    slot: int
    run: int | None  # None: the embedding
    stage: str  # 'embedding', 'attn' or 'mlp'
    block: int | None

    @classmethod
    def of(cls, slot: int, order: list[int]) -> Slot:
        if slot == EMBEDDING:
            return cls(EMBEDDING, None, "embedding", None)
        run = run_of(slot)
        return cls(slot, run, stage_of(slot).value, order[run])

    def to_json(self) -> dict:
        return {"slot": self.slot, "run": self.run, "stage": self.stage, "block": self.block}

    @classmethod
    def from_json(cls, d: dict | None) -> Slot | None:
        if d is None:
            return None
        return cls(d["slot"], d["run"], d["stage"], d["block"])


def slot_json(slot: int | None, order: list[int]) -> dict | None:
    """A slot number as its JSON record; None (never) and slots past the last run as null."""
    if slot is None or run_of(slot) >= len(order):
        return None
    return Slot.of(slot, order).to_json()


def slot_number(d: dict | None) -> int | None:
    """The slot number of a JSON slot record (None for null)."""
    return None if d is None else d["slot"]


class HeadWriteKind(str, Enum):
    MOVE = "move"  # an attention op's result (value: its dst)
    CLEAR = "clear"  # zero a dead value's rows (value: the value, or a fixed anchor row)
    ANCHOR = "anchor"  # +-N s into anchor_pos / anchor_neg (value: the divisor s)
    TEMPORARY = "temporary"  # an MLP op's remote operand moved to its rows (value: the temp)


@dataclass(frozen=True)
class HeadWrite:
    """One thing a head does in one run, over the residual rows `rows` it writes."""

    kind: HeadWriteKind
    run: int
    value: str  # label of the value written or cleared (see HeadWriteKind)
    rows: tuple[int, ...]
    op: int | None = None  # the op it serves (move, temporary, anchor)
    source: str | None = None  # that op's source line
    reads: tuple[str, ...] = ()  # labels of the values the head reads for it

    def to_json(self) -> dict:
        return {"kind": self.kind.value, "run": self.run, "value": self.value,
                "rows": list(self.rows), "op": self.op, "source": self.source,
                "reads": list(self.reads)}

    @classmethod
    def from_json(cls, d: dict) -> HeadWrite:
        return cls(HeadWriteKind(d["kind"]), d["run"], d["value"], tuple(d["rows"]), d.get("op"),
                   d.get("source"), tuple(d.get("reads", ())))


def head_writes(head: dict) -> list[HeadWrite]:
    """A layout head's actions (blocks[].heads[].actions) as records."""
    return [HeadWrite.from_json(a) for a in head["actions"]]


@dataclass(frozen=True)
class Occupant:
    """One value in the residual stream: a register version, a mask, a temporary, a fixed row.
    It holds its rows from after slot `written` up to and including slot `cleared` (the
    sublayer that reads it last sees it; None: never cleared)."""

    label: str  # as the layout names it: 'x_prev', 'w@2', 'tmp:x@Offset', 'anchor_pos'
    rows: tuple[int, ...]
    written: int  # slot; -1 the embedding, FIXED_SLOT a fixed row
    cleared: int | None
    kind: str  # a register's kind ('input', 'var', 'const', ...), 'mask', 'temp', 'fixed'
    shape: tuple[int, ...] = ()
    op: int | None = None
    bound: float | None = None
    version: int | None = None

    def elem(self, row: int) -> str:
        """'w@2[1]': the element of this value that `row` holds."""
        if len(self.rows) == 1:
            return self.label
        return f"{self.label}[{self.rows.index(row)}]"


def occupants(layout: dict) -> list[Occupant]:
    """Every value the layout places in the residual stream, from its typed records."""
    occ = [Occupant(name, (row,), FIXED_SLOT, None, "fixed")
           for name, row in layout["fixed_rows"].items()]
    for reg in layout["registers"].values():
        for v in reg["versions"]:
            if v.get("absorbed_by"):  # fused away: no rows (see `fused_values`)
                continue
            occ.append(Occupant(v["label"], tuple(v["rows"]), slot_number(v["written_slot"]),
                                slot_number(v["cleared_slot"]), reg["kind"], tuple(reg["shape"]),
                                v["op"], v.get("bound"), v["version"]))
    for m in layout.get("masks", {}).values():
        occ.append(Occupant(m["label"], (m["row"],), slot_number(m["written_slot"]),
                            slot_number(m["cleared_slot"]), "mask", (1,)))
    for t in layout["temporaries"]:
        occ.append(Occupant(t["label"], tuple(t["rows"]), slot_number(t["written_slot"]),
                            slot_number(t["cleared_slot"]), "temp", (len(t["rows"]),),
                            t["for_op"], t.get("bound")))
    return occ


@dataclass
class MlpRecord:
    """A block's MLP (blocks[].mlp): neutral, or dividing by the value labelled `divisor`."""

    divisor: str | None
    ln_eps: float
    units: int
    ops: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, d: dict) -> MlpRecord:
        return cls(d["divisor"], d["ln_eps"], d["units"], list(d["ops"]))


@dataclass(frozen=True)
class Fused:
    """A value the fusion pass (compiler/fusion.py) did not store: the op that defines it and
    the ops that compute it inside their own heads or units."""

    label: str
    op: int
    absorbed_by: tuple[int, ...]


def fused_values(layout: dict) -> list[Fused]:
    """Every fused register version (program order), from the registers' versions."""
    out = [Fused(v["label"], int(v["op"]), tuple(int(i) for i in v["absorbed_by"]))
           for reg in layout["registers"].values() for v in reg["versions"]
           if v.get("absorbed_by")]
    return sorted(out, key=lambda f: f.op)
