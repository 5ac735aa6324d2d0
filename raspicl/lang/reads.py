"""Where an op reads a register: at the current token, at an earlier one, or averaged over a role.

These are the K(t) of the paper's read-arithmetic-write operator. A read from any token other
than the current one is carried out by an attention head in the compiled model.
"""

from __future__ import annotations

from dataclasses import dataclass

from raspicl.lang.registers import Arithmetic, Register

ROLES = ("x", "y", "query")


@dataclass(frozen=True)
class Here:
    """The current token t."""

    def describe(self) -> str:
        return "here"


@dataclass(frozen=True)
class Offset:
    """The token k places back, t − k (k >= 0). Undefined at tokens t < k."""

    k: int

    def describe(self) -> str:
        return f"offset {self.k} back"


@dataclass(frozen=True)
class At:
    """The absolute token index i (0-based). Undefined at tokens t < i (it lies in the future)."""

    index: int

    def describe(self) -> str:
        return f"token {self.index}"


@dataclass(frozen=True)
class Mean:
    """The mean over all tokens s <= t whose role is `role` ('x', 'y' or 'query').

    Undefined at tokens before the first token of that role.
    """

    role: str

    def describe(self) -> str:
        return f"mean over {self.role} tokens"


Where = Here | Offset | At | Mean


def place_record(at: Where) -> dict:
    """A place as layout.json writes it ({"kind": "here" | "offset" | "at" | "mean", ...})."""
    if isinstance(at, Here):
        return {"kind": "here"}
    if isinstance(at, Offset):
        return {"kind": "offset", "k": at.k}
    if isinstance(at, At):
        return {"kind": "at", "index": at.index}
    if isinstance(at, Mean):
        return {"kind": "mean", "role": at.role}
    raise TypeError(f"unknown place {at!r}")


def place_from_record(rec: dict) -> Where:
    """The place a layout record names: the inverse of place_record."""
    kind = rec["kind"]
    if kind == "here":
        return Here()
    if kind == "offset":
        return Offset(int(rec["k"]))
    if kind == "at":
        return At(int(rec["index"]))
    if kind == "mean":
        return Mean(str(rec["role"]))
    raise ValueError(f"unknown place {rec!r}")


@dataclass(frozen=True)
class Read(Arithmetic):
    """A register read at a place."""

    register: Register
    at: Where = Here()

    @property
    def here(self) -> bool:
        return isinstance(self.at, Here)

    def describe(self) -> str:
        return f"{self.register.name} ({self.at.describe()})"
