"""Accurate float64 sums, vectorised: what keeps the interpreter's reference (raspicl.interpret)
within about one rounding of the exact value of every sum it forms.

u = 2^-53 is float64's unit roundoff, gamma_n = n u / (1 - n u). Two error-free
transformations, exact in float64 barring overflow and underflow: `two_sum` (Knuth:
a + b = s + e for s = fl(a + b)) and `split_prod` (Dekker's product with Veltkamp's split:
a b = p + e for p = fl(a b), |a|, |b| <= SPLIT_LIMIT).

`group_sum` is Ogita, Rump and Oishi's Sum2 / Dot2 ("Accurate sum and dot product", SIAM J.
Sci. Comput. 26(6), 2005), run on many sums at once: the terms' rounded values p_i are added
in a chain of two_sums, and their rounding errors (the chain's, and the terms' own e_i:
a c b = p_i + e_i up to a third-order rounding) are added plainly beside it. For a sum
S = sum t_i of n terms (an op's bias, coefficient times value and coefficient times product
at one output), the result hi, and hi + lo, satisfy (Dot2's bound, with the terms' errors
|e_i| <= 2u |t_i| among the errors summed plainly)

    |hi - S| <= u |S| + 10 n^2 u^2 sum |t_i|,     |hi + lo - S| <= 10 n^2 u^2 sum |t_i|.

`cumulative_sum` runs the same chain along an axis and keeps every prefix: the k-th within
u |S_k| + 10 k^2 u^2 sum_(i<=k) |t_i|. `divide` turns (hi, lo) / d into a quotient within
u (1 + 2u) |S / d| plus the second term over |d|: the remainder hi - q d of the rounded
quotient q is exact (split_prod(q, d), then Sterbenz), so only the small correction of
q + (rem + lo) / d rounds.

Where the bounds do not hold, and what is done there: a sum with a NaN or infinite term, or
one that overflows, gives what the plain sum gives (callers route rows with non-finite
operands to the plain sums); split_prod needs |a|, |b| <= SPLIT_LIMIT = 2^995 (callers route
rows beyond it to the plain sums too); a product's error below 2^-1022 may be lost to
underflow (at most 2^-1074 per term).
"""

from __future__ import annotations

import numpy as np

# Veltkamp's splitter for float64 (53 bits = 27 + 26): SPLITTER * a must not overflow.
SPLITTER = 2.0**27 + 1.0
SPLIT_LIMIT = 2.0**995


def two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(s, e) with s = fl(a + b) and s + e = a + b exactly (Knuth; any order of a and b)."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


def split(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Veltkamp: a = hi + lo exactly, hi with 26 significant bits, lo with 27 (|a| <= 2^995)."""
    with np.errstate(over="ignore", invalid="ignore"):
        c = SPLITTER * a
        hi = c - (c - a)
        return hi, a - hi


def split_prod(a: np.ndarray, a_split: tuple, b: np.ndarray, b_split: tuple
               ) -> tuple[np.ndarray, np.ndarray]:
    """(p, e) with p = fl(a b) and p + e = a b exactly (Dekker), from the factors and their
    splits (split(a), split(b)); no check: the caller knows |a|, |b| <= SPLIT_LIMIT and a b
    finite (and e may lose bits to underflow below 2^-1022)."""
    (ah, al), (bh, bl) = a_split, b_split
    with np.errstate(over="ignore", invalid="ignore"):
        p = a * b
        return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def group_sum(p: np.ndarray, e: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(hi, lo): the sums over axis 0 of p [c, ...] (c terms per sum, padded with zeros) plus
    their errors e (p's shape, or None), hi within u |S| + 10 n^2 u^2 sum |t| of each exact
    sum S and hi + lo within the second term (module doc). Where hi is not finite (a
    non-finite term, an overflow), the plain sum (lo 0)."""
    with np.errstate(over="ignore", invalid="ignore"):
        s = p[0].copy()
        err = np.zeros_like(s) if e is None else e[0].copy()
        for j in range(1, p.shape[0]):
            s, f = two_sum(s, p[j])
            err += f
            if e is not None:
                err += e[j]
        hi, lo = two_sum(s, err)
    return _plain_where_not_finite(hi, lo, lambda: p.sum(axis=0))


def cumulative_sum(V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every prefix sum of V [B, n, W] along axis 1: (hi, lo) of V's shape, the k-th as
    group_sum's sum of the first k terms. Where a prefix is not finite, the running plain
    sum's value (NaN and infinity spread to the later prefixes as in any running sum)."""
    hi, lo = np.empty_like(V), np.empty_like(V)
    with np.errstate(over="ignore", invalid="ignore"):
        s = V[:, 0].copy()
        err = np.zeros_like(s)
        hi[:, 0], lo[:, 0] = s, err
        for k in range(1, V.shape[1]):
            s, f = two_sum(s, V[:, k])
            err += f
            hi[:, k], lo[:, k] = two_sum(s, err)
    return _plain_where_not_finite(hi, lo, lambda: np.cumsum(V, axis=1))


def _plain_where_not_finite(hi: np.ndarray, lo: np.ndarray, plain) -> tuple[np.ndarray,
                                                                            np.ndarray]:
    """hi, lo, with the plain sum (a callable: computed only if needed) and lo 0 where hi or
    lo is not finite."""
    good = np.isfinite(hi) & np.isfinite(lo)
    if good.all():
        return hi, lo
    return np.where(good, hi, plain()), np.where(good, lo, 0.0)


def divide(hi: np.ndarray, lo: np.ndarray, d: np.ndarray) -> np.ndarray:
    """(hi + lo) / d within u (1 + 2u) |(hi + lo) / d| (module doc): the quotient q = hi / d
    corrected by (rem + lo) / d, rem = hi - q d exact. Where q is 0 or not finite, d beyond
    SPLIT_LIMIT or the correction not finite, hi / d as it is."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q = hi / d
        p, e = split_prod(q, split(q), d, split(d))
        fixed = q + (((hi - p) - e) + lo) / d
    good = (np.isfinite(fixed) & (q != 0) & (np.abs(q) <= SPLIT_LIMIT)
            & (np.abs(d) <= SPLIT_LIMIT))
    return np.where(good, fixed, q)


__all__ = ["SPLIT_LIMIT", "cumulative_sum", "divide", "group_sum", "split", "split_prod",
           "two_sum"]
