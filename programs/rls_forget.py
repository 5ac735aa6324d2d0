"""Recursive least squares with a forgetting factor, predicting at every x token.

The exponentially weighted RLS filter (Haykin, *Adaptive Filter Theory*, ch. 10), from
P_0 = delta I and w_0 = 0, with forgetting factor 0 < beta <= 1:

    u_i = P_{i-1} x_i,                g_i = u_i / (beta + x_i^T u_i),
    w_i = w_{i-1} + g_i (y_i - x_i^T w_{i-1}),
    P_i = (P_{i-1} - g_i u_i^T) / beta,

so that w_i minimises sum_{j <= i} beta^(i-j) (y_j - x_j^T w)^2 + beta^i |w|^2 / delta (old
examples count less; beta = 1 is ridge with lam = 1 / delta). Prediction w_{i-1}^T x_i at x
token i (0 at x_1) and w_n^T x_q at the query. The divisor beta + x_i^T P_{i-1} x_i is >= beta
> 0 because P stays positive definite.

Written with the scan construct, as the formulas. A hand-fused form (tests/hand_fused/
rls_forget.py) compiles to the same number of blocks.
"""

from __future__ import annotations

import numpy as np

from raspicl import Program
from raspicl.lang.expr import outer
from raspicl.prompts import Prompts

# `raspicl verify`'s default checks (1000 problems, float64 and float32 each): small sizes,
# so that `make verify` stays fast; tests/test_lang_programs.py covers more.
GRID = [{"d": 1, "n": 2}, {"d": 2, "n": 3}]
# Largest relative error `raspicl verify` accepts for the compiled model (a division per step).
TOLERANCE = {"float64": 1e-6, "float32": 1e-2}


def program(d: int = 2, n: int = 2, beta: float = 0.9, delta: float = 1.0) -> Program:
    if not 0 < beta <= 1:
        raise ValueError(f"rls_forget needs a forgetting factor 0 < beta <= 1, got {beta}")
    if not delta > 0:
        raise ValueError(f"rls_forget needs delta > 0 (P_0 = delta I), got {delta}")
    p = Program("rls_forget", d=d, n=n, params={"d": d, "n": n, "beta": beta, "delta": delta})

    def step(s, x, y):
        u = s.P @ x
        g = u / (beta + x @ u)
        return {"P": (s.P - outer(g, u)) / beta, "w": s.w + g * (y - x @ s.w)}

    scan = p.scan(
        init={"P": delta * np.eye(d), "w": np.zeros(d)},
        step=step,
        predict=lambda s, x: s.w @ x,
        name="rls",
    )
    p.output(scan.prediction, roles=("x", "query"))
    return p


def reference(
    prompts: Prompts, d: int = 2, n: int = 2, beta: float = 0.9, delta: float = 1.0
) -> np.ndarray:
    """The weighted ridge problem solved directly on each prefix: at x token i,
    w = (beta^m I / delta + sum_j beta^(m-j) x_j x_j^T)^-1 sum_j beta^(m-j) x_j y_j over the
    m = i - 1 examples before it, dotted with x_i: [B, n + 1]."""
    queries = prompts.prefix_queries()  # x_1..x_n, x_q
    preds = []
    for m in range(n + 1):
        X, y = prompts.X[:, :m], prompts.y[:, :m]
        weights = beta ** np.arange(m - 1, -1, -1.0)  # beta^(m - j), j = 1..m
        A = beta**m / delta * np.eye(d) + np.einsum("j,bji,bjk->bik", weights, X, X)
        b = np.einsum("j,bji,bj->bi", weights, X, y)
        w = np.linalg.solve(A, b[..., None])[..., 0]
        preds.append(np.sum(w * queries[:, m], axis=1))
    return np.stack(preds, axis=1)
