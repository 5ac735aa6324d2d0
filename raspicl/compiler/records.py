"""The records the optional passes leave on Lowered: what fusion.py fused (`Fusion`) and what
cse.py eliminated (`CommonSubexpressions`).

They are plain data, by labels and op indices, so that ir.py can name them as fields of
Lowered without importing the passes (which build on ir.py); the passes re-export them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class FusedValue:
    """One value fused away: its label, the op that defined it and the ops that absorbed it."""

    label: str
    op: int
    absorbed_by: tuple[int, ...]


@dataclass
class Fusion:
    """What the pass did: the fused values (program order) and the critical-path depth."""

    fused: list[FusedValue] = field(default_factory=list)
    critical_path: int = 1
    rejected: int = 0  # values the pass fused in a layout that was not kept
    note: str | None = None  # why the fused layout was not kept, when it failed to compile


@dataclass(frozen=True)
class Common:
    """One duplicate: its value's label and op, and the survivor it reads instead."""

    label: str
    op: int
    survivor: str
    survivor_op: int


@dataclass
class CommonSubexpressions:
    """What the pass did: the duplicates (program order), the constants a shared loop's
    first iteration reads in place of an equal one (label, survivor label), and how many
    duplicates were left computed so that a shared loop's iterations stay identical."""

    common: list[Common] = field(default_factory=list)
    merged: list[tuple[str, str]] = field(default_factory=list)
    kept_for_loops: int = 0
