"""Averaged SGD (Polyak–Ruppert): one pass of SGD, predicting with the mean of its iterates.

The SGD step of programs/sgd.py, and the running mean of the iterates w_0..w_i
(Polyak and Juditsky 1992), one example at a time:

    w_i   = w_{i-1} - 2 lr x_i (x_i^T w_{i-1} - y_i),
    k_i   = k_{i-1} + 1,                           (k_0 = 1: k_i = i + 1 iterates so far)
    avg_i = avg_{i-1} + (w_i - avg_{i-1}) / k_i,   (avg_0 = w_0)

prediction avg_{i-1}^T x_i at x token i (w_0^T x_1 at the first) and avg_n^T x_q at the query.
The counter k is state like the rest: the scan carries it, and the mean divides by it (div,
k >= 2 where it is used).

Written with the scan construct, as the formulas (w_i gets a name with p.let inside the step,
since both the new w and the mean read it). A hand-fused form (tests/hand_fused/
sgd_averaged.py) compiles to the same number of blocks.
"""

from __future__ import annotations

import numpy as np

from raspicl import Program, solvers
from raspicl.prompts import PromptDistribution, Prompts

# `raspicl verify`'s default checks (1000 problems, float64 and float32 each): small sizes,
# so that `make verify` stays fast; tests/test_lang_programs.py covers more.
GRID = [{"d": 1, "n": 2}, {"d": 2, "n": 3}]
# Largest relative error `raspicl verify` accepts for the compiled model (a division per step).
TOLERANCE = {"float64": 1e-6, "float32": 1e-2}
# The prompts it serves: as programs/sgd.py (a fixed step diverges once lr |x|^2 > 2).
DOMAIN = PromptDistribution(x_scale=1.0, w_scale=1.0, noise=1.0)


def default_w0(d: int) -> np.ndarray:
    """w0_i = 0.5 * (-1)^i, as sgd."""
    return 0.5 * (-1.0) ** np.arange(d)


def _w0(d: int, w0) -> np.ndarray:
    return default_w0(d) if w0 is None else np.asarray(w0, dtype=np.float64).reshape(d)


def program(d: int = 2, n: int = 2, lr: float = 0.1, w0=None) -> Program:
    w0 = _w0(d, w0)
    p = Program("sgd_averaged", d=d, n=n, params={"d": d, "n": n, "lr": lr, "w0": w0.tolist()})

    def step(s, x, y):
        w = p.let("w_new", s.w - 2 * lr * x * (x @ s.w - y), note="the SGD step")
        k = s.k + 1
        return {"w": w, "k": k, "avg": s.avg + (w - s.avg) / k}

    scan = p.scan(
        init={"w": w0, "k": 1.0, "avg": w0}, step=step, predict=lambda s, x: s.avg @ x, name="asgd"
    )
    p.output(scan.prediction, roles=("x", "query"))
    return p


def reference(prompts: Prompts, d: int = 2, n: int = 2, lr: float = 0.1, w0=None) -> np.ndarray:
    """raspicl.solvers.sgd's iterates w_0..w_n, their running means, each dotted with the
    next x (x_q last): [B, n + 1]."""
    w = solvers.sgd(prompts.X, prompts.y, _w0(d, w0), lr, 0.0)  # [B, n+1, d]
    means = np.cumsum(w, axis=1) / np.arange(1, n + 2)[None, :, None]
    queries = prompts.prefix_queries()  # x_1..x_n, x_q
    return np.stack([solvers.predict(means[:, i], queries[:, i]) for i in range(n + 1)], axis=1)
