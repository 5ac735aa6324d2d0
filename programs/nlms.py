"""Normalised least mean squares (NLMS) over the prompt, predicting at every x token.

The adaptive filter's update (Nagumo and Noda 1967; Haykin, *Adaptive Filter Theory*, ch. 6),
one example at a time from initial weights w_0 baked into the program:

    w_i = w_{i-1} + mu x_i (y_i - x_i^T w_{i-1}) / (eps + x_i^T x_i),     i = 1..n,

prediction w_{i-1}^T x_i at x token i (w_0^T x_1 at the first) and w_n^T x_q at the query.
The step is normalised by the example's energy, so it is stable for 0 < mu < 2 whatever the
scale of x; eps > 0 keeps the divisor away from zero (the compiled div needs |divisor| > 0).

Written with the scan construct, as the formula with the example normalised first,
w + mu (x_i / (eps + x_i^T x_i)) (y_i - x_i^T w); docs/tutorial.md derives it step by step.
The normalised example reads only the example, so the scan computes it once, before its loop
(the divisor and the division), and each example costs what sgd's does: the dot product x_i^T w
(with the error) in one MLP, its product with the normalised x_i in the next. Written as
mu x_i (y_i - x_i^T w) / (eps + x_i^T x_i), the division comes last and costs a block of its
own per example (a division's numerator must be in the residual before its LayerNorm divides
it, so it cannot share the MLP that forms the product). w_0 is a fixed point of the step with
no example (w + mu 0 (0 - 0) = w), so the scan reads its state clamped, with no select per
example: 2 blocks per example, two fewer than the hand-fused form (tests/hand_fused/nlms.py),
which gates every example and divides in the loop.
"""

from __future__ import annotations

import numpy as np

from raspicl import Program
from raspicl.prompts import Prompts

# `raspicl verify`'s default checks (1000 problems, float64 and float32 each): small sizes,
# so that `make verify` stays fast; tests/test_lang_programs.py covers more.
GRID = [{"d": 1, "n": 2}, {"d": 2, "n": 3}]
# Largest relative error `raspicl verify` accepts for the compiled model (a division per step).
TOLERANCE = {"float64": 1e-6, "float32": 1e-2}


def default_w0(d: int) -> np.ndarray:
    """w0_i = 0.5 * (-1)^i, as gd_step and sgd."""
    return 0.5 * (-1.0) ** np.arange(d)


def _w0(d: int, w0) -> np.ndarray:
    return default_w0(d) if w0 is None else np.asarray(w0, dtype=np.float64).reshape(d)


def program(d: int = 2, n: int = 2, mu: float = 0.5, eps: float = 1.0, w0=None) -> Program:
    if not eps > 0:
        raise ValueError(f"nlms needs eps > 0 (the divisor eps + |x|^2), got {eps}")
    w0 = _w0(d, w0)
    p = Program("nlms", d=d, n=n, params={"d": d, "n": n, "mu": mu, "eps": eps, "w0": w0.tolist()})

    def step(s, x, y):
        # x_i / (eps + |x_i|^2) reads only the example: one div before the loop, so each
        # example costs the dot and the product by the error, as sgd does
        return {"w": s.w + mu * (x / (eps + x @ x)) * (y - x @ s.w)}

    scan = p.scan(init={"w": w0}, step=step, predict=lambda s, x: s.w @ x, name="nlms")
    p.output(scan.prediction, roles=("x", "query"))
    return p


def reference(
    prompts: Prompts, d: int = 2, n: int = 2, mu: float = 0.5, eps: float = 1.0, w0=None
) -> np.ndarray:
    """The NLMS recursion in numpy, each iterate dotted with the next x (x_q last): [B, n+1]."""
    w = np.broadcast_to(_w0(d, w0), (prompts.batch, d)).copy()
    queries = prompts.prefix_queries()  # x_1..x_n, x_q
    preds = []
    for i in range(n):
        x, y = prompts.X[:, i], prompts.y[:, i]
        preds.append(np.sum(w * queries[:, i], axis=1))
        err = y - np.sum(x * w, axis=1)
        w = w + mu * x * (err / (eps + np.sum(x * x, axis=1)))[:, None]
    preds.append(np.sum(w * queries[:, n], axis=1))
    return np.stack(preds, axis=1)
