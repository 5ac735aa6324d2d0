"""The benchmark's metrics, each against the ground truth (raspicl.groundtruth) and the exact
counterfactual (raspicl.counterfactual); numpy only.

    precision_recall(flagged, truth)        localisation: sites a method flags vs where the
                                            variable is
    auroc(scores, positives)                circuit discovery: edge or node scores vs the
                                            component graph (ties count one half), as
                                            InterpBench scores ACDC and edge attribution
    principal_cos2(U, D)                    subspace recovery: mean cos^2 of the principal
                                            angles between a recovered subspace and the
                                            variable's true directions (1: the same subspace)
    faithfulness(predicted, exact, base)    causal faithfulness: 1 - sum |predicted - exact| /
                                            sum |exact - base|, clipped to [0, 1]
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable

import numpy as np


def precision_recall(flagged: Iterable[Hashable], truth: Iterable[Hashable]
                     ) -> tuple[float, float]:
    """(precision, recall) of a flagged set against the true set (precision 1 for an empty
    flag set, recall 1 for an empty truth: nothing claimed is wrong, nothing is missed)."""
    f, t = set(flagged), set(truth)
    hit = len(f & t)
    return (hit / len(f) if f else 1.0), (hit / len(t) if t else 1.0)


def f1(precision: float, recall: float) -> float:
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def auroc(scores: dict[Hashable, float], positives: Iterable[Hashable]) -> float:
    """Area under the ROC curve of `scores` (higher: more likely positive) over its keys,
    `positives` the true ones among them; NaN without both classes. Ties share their rank
    (Mann-Whitney U)."""
    pos = set(positives) & set(scores)
    keys = list(scores)
    n_pos, n_neg = len(pos), len(keys) - len(pos)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    vals = np.array([scores[k] for k in keys], dtype=np.float64)
    vals = np.where(np.isfinite(vals), vals, -np.inf)
    order = np.argsort(vals, kind="mergesort")
    ranks = np.empty(len(vals))
    sorted_vals = vals[order]
    i = 0
    while i < len(vals):  # average ranks over ties
        j = i
        while j + 1 < len(vals) and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    r_pos = sum(ranks[k] for k, key in enumerate(keys) if key in pos)
    return float((r_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def orthonormal(M: np.ndarray, tol: float = 1e-10) -> np.ndarray:
    """An orthonormal basis [d, r] of the column space of M [d, k] (rank by SVD)."""
    M = np.asarray(M, dtype=np.float64)
    if M.size == 0:
        return M.reshape(M.shape[0], 0)
    U, s, _ = np.linalg.svd(M, full_matrices=False)
    return U[:, s > tol * max(s.max(), 1e-300)]


def principal_cos2(U: np.ndarray, D: np.ndarray) -> float:
    """The mean cos^2 of the principal angles between span(U) and span(D) ([d, k], [d, w]),
    over the true subspace's w dimensions (a recovered subspace of lower rank scores 0 on
    the missing ones): 1 when span(U) contains span(D), 0 when orthogonal."""
    Qd = orthonormal(D)
    if Qd.shape[1] == 0:
        return math.nan
    Qu = orthonormal(U)
    if Qu.shape[1] == 0:
        return 0.0
    s = np.linalg.svd(Qu.T @ Qd, compute_uv=False)
    return float(np.sum(np.clip(s, 0, 1) ** 2) / Qd.shape[1])


def largest_angle(U: np.ndarray, D: np.ndarray) -> float:
    """The largest principal angle (degrees) between span(D) and span(U) (90 if U misses a
    dimension of D)."""
    Qd, Qu = orthonormal(D), orthonormal(U)
    if Qu.shape[1] < Qd.shape[1]:
        return 90.0
    s = np.linalg.svd(Qu.T @ Qd, compute_uv=False)
    return float(np.degrees(np.arccos(np.clip(s.min(), -1, 1))))


def faithfulness(predicted: np.ndarray, exact: np.ndarray, base: np.ndarray) -> float:
    """1 - sum |predicted - exact| / sum |exact - base|, clipped to [0, 1]: how much of the
    exact counterfactual's effect a method's intervention (or prediction of it) reproduces.
    NaN when the exact effect is zero."""
    effect = float(np.abs(np.asarray(exact) - np.asarray(base)).sum())
    if effect == 0:
        return math.nan
    miss = float(np.abs(np.asarray(predicted) - np.asarray(exact)).sum())
    return float(np.clip(1 - miss / effect, 0.0, 1.0))
