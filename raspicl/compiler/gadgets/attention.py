"""Attention gadgets: heads that move values between tokens, and the self-head.

A head reads the token its score pattern singles out and copies chosen rows there (W_V) into
rows at the current token (W_O), with any coefficients. Patterns, with p the token index and
M the config's attention_margin (scores as the model computes them, after 1/sqrt(d_head)):

    Here        score(t, s) = M p_s                     (s = t wins by >= M)
    Offset(k)   score(t, s) = M (2 p_s (p_t - k) - p_s^2) (s = t - k wins by >= M)
    At(i)       score(t, s) = M (2 p_s i - p_s^2)       (s = i wins by >= M, once t >= i)
    Mean(role)  score(t, s) = M [role(s) == role]       (uniform over the role's tokens)

At t < k the Offset(k) pattern singles out token 0: score(t, s) = -M p_s (2 (k - t) + p_s) is 0
at s = 0 and at most -3M at every s >= 1, so token 0 wins by >= M there too. That is the
clamped read, Offset(k, clamp=True): token max(t - k, 0). A strict and a clamped Offset(k) have
the same weights and share one head (`place_key` leaves the clamp out); the language calls the
strict read undefined at t < k, where the head holds token 0's value.

Error bound: the tokens not singled out share a weight of at most T exp(-M) (Mean: per token
exp(-M) relative to the role's tokens), so the value read is off by at most
T exp(-M) max|value| — 2e-22 of the largest value for M = 50, T <= 100. The Here head is how
the compiler applies exact linear maps at the current token before the LayerNorm: clearing
dead rows, writing division anchors, and linear ops placed in attention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from raspicl.lang.reads import At, Here, Mean, Offset, Where


@dataclass
class HeadSpec:
    """One head: the place it reads, its value columns (source rows) and its writes."""

    place: Where
    columns: list[int] = field(default_factory=list)
    writes: list[tuple[int, int, float]] = field(default_factory=list)  # (column, row, coef)
    purposes: list[str] = field(default_factory=list)
    cleared: set[int] = field(default_factory=set)

    def column(self, row: int) -> int:
        if row not in self.columns:
            self.columns.append(row)
        return self.columns.index(row)

    def copy(self, src_row: int, dst_row: int, coef: float = 1.0) -> None:
        self.writes.append((self.column(src_row), dst_row, coef))

    def clear(self, row: int) -> None:
        """Zero a row (once, however often asked)."""
        if row not in self.cleared:
            self.cleared.add(row)
            self.writes.append((self.column(row), row, -1.0))

    def note(self, text: str) -> None:
        if text not in self.purposes:
            self.purposes.append(text)


def place_key(place: Where) -> tuple:
    """Which head a read needs: places with the same score pattern share one (a clamped
    Offset(k) is the strict one's head, see the module doc)."""
    if isinstance(place, Offset):
        return ("Offset", place.k)
    return (type(place).__name__,) + tuple(vars(place).values())


def pattern_weights(place: Where, rows: dict[str, int], d_model: int, d_head: int,
                    n_ctx: int, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """W_Q and W_K [d_model, d_head] of a head whose scores follow `place` (see module doc)."""
    wq = np.zeros((d_model, d_head))
    wk = np.zeros((d_model, d_head))
    for w, entries in zip((wq, wk), pattern_entries(place, rows, d_head, margin, n_ctx),
                          strict=True):
        for index, v in entries.items():
            w[index] = v
    return wq, wk


def pattern_entries(place: Where, rows: dict[str, int], d_head: int, margin: float,
                    n_ctx: int) -> tuple[dict[tuple[int, int], float],
                                         dict[tuple[int, int], float]]:
    """`pattern_weights` by entries, {(row, column): value} for W_Q and for W_K (the values
    it writes, explicit zeros included), without the [d_model, d_head] arrays."""
    wq: dict[tuple[int, int], float] = {}
    wk: dict[tuple[int, int], float] = {}
    s = math.sqrt(d_head) * margin
    one, pos, pos_sq = rows["one"], rows["pos"], rows["pos_sq"]
    P = float(n_ctx)
    if isinstance(place, Here):
        wq[one, 0] = s
        wk[pos, 0] = P
    elif isinstance(place, Offset | At):
        if isinstance(place, Offset):
            wq[pos, 0] = 2 * s * P
            wq[one, 0] = -2 * s * place.k
        else:
            wq[one, 0] = 2 * s * place.index
        wq[one, 1] = s
        wk[pos, 0] = P
        wk[pos_sq, 1] = -P * P
    elif isinstance(place, Mean):
        wq[one, 0] = s
        wk[rows[f"is_{place.role}"], 0] = 1.0
    else:
        raise TypeError(f"unknown place {place!r}")
    return wq, wk
