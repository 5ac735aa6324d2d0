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
    """The token k places back, t − k (k >= 0). Undefined at tokens t < k, unless `clamp`:
    then it reads token max(t − k, 0), so token 0 at every t < k (defined everywhere).

    A clamped read is what the compiled head computes anyway (its score pattern singles out
    token 0 at t < k, gadgets/attention.py); the language only calls those tokens undefined
    for the strict read. A scan reads its state clamped when the start value is a fixed
    point at token 0 (scan.py)."""

    k: int
    clamp: bool = False

    def describe(self) -> str:
        if self.clamp:
            return f"offset {self.k} back, clamped to token 0"
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
        # "clamp" only where set, so a strict read's record is what it was before clamps
        return (
            {"kind": "offset", "k": at.k, "clamp": True}
            if at.clamp
            else {"kind": "offset", "k": at.k}
        )
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
        return Offset(int(rec["k"]), bool(rec.get("clamp", False)))
    if kind == "at":
        return At(int(rec["index"]))
    if kind == "mean":
        return Mean(str(rec["role"]))
    raise ValueError(f"unknown place {rec!r}")


def compose(outer: Where, inner: Where) -> Where | None:
    """The place of `inner` as seen from a read at `outer`: reading (at `outer`) a value that
    reads R at `inner` reads R at the returned place, or None when no single place is that.

    Wherever the two-step read is defined, the composed read is defined and reads the same
    token; it is undefined wherever the two-step read is, except that At(i) of an offset
    becomes an At that is defined from an earlier token on. With s = max(t − a, 0):
    - Offset(a) of Offset(b) = Offset(a + b), clamped of clamped = clamped(a + b);
    - clamped(a) of strict(b > 0) = strict(a + b): at t < a + b the inner read, from a token
      s < b, is undefined;
    - strict(a > 0) of clamped(b > 0): undefined at t < a, token max(t − a − b, 0) after: no
      single place (None); with a = 0 or b = 0 it is the other read;
    - At(i) of Offset(b) = At(i − b) (None if i < b), of clamped(b) = At(max(i − b, 0));
    - a Mean of anything but the current token, an offset of an At or a Mean: None."""
    if isinstance(inner, Here):
        return outer
    if isinstance(outer, Here):
        return inner
    if isinstance(outer, Offset) and isinstance(inner, Offset):
        a, b = outer.k, inner.k
        if outer.clamp == inner.clamp:
            return Offset(a + b, outer.clamp)
        if b == 0:
            return outer
        if a == 0:
            return inner
        return Offset(a + b) if outer.clamp else None
    if isinstance(outer, At) and isinstance(inner, Offset):
        if inner.clamp:
            return At(max(outer.index - inner.k, 0))
        return At(outer.index - inner.k) if outer.index >= inner.k else None
    return None


def source_token(at: Where, t: int) -> int | None:
    """The one token an Offset or At read at token t reads (None where it is undefined)."""
    if isinstance(at, Offset):
        if t >= at.k:
            return t - at.k
        return 0 if at.clamp else None
    if isinstance(at, At):
        return at.index if t >= at.index else None
    raise TypeError(f"{at!r} does not read one token")


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
