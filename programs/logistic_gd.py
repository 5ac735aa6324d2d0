"""T steps of full-batch gradient descent on the logistic loss, then a predicted probability.

With every example in view (x_1, y_1, ..., x_n, y_n) and initial weights w_0 baked into the
program, T steps of GD on the mean logistic loss, then the probability at the query:

    w_t = w_{t-1} - lr (1/n) sum_j (sigmoid(x_j^T w_{t-1}) - y_j) x_j,   t = 1..T,
    prediction  sigmoid(w_T^T x_q).

(Bai et al. 2023 construct in-context GD on GLMs this way, on paper.) The labels are the
prompt's y: in {0, 1} for logistic regression proper; raspicl's prompts carry real y, which the
formula takes as they stand (soft labels), so the reference and verify use them unchanged.

Unlike the squared loss (batch_gd), the gradient is not a function of running means: every
step needs sigmoid(x_j^T w) at the current w for every example. Causally only the query sees
every example, so the query reads each x_j and y_j at its token (At; one register per example,
so that every head writes a register of its own). Each step is then

    z_j = x_j^T w               n dot products           MLP (products)
    s_j = sigmoid(z_j)          n elementwise sigmoids    MLP (apply: the certified gadget)
    w = w - (lr / n) sum_j (s_j - y_j) x_j                MLP (products)

and the prediction sigmoid(w^T x_q) two MLPs more. The sigmoid's declared range is
[-zmax, zmax]: the monitor refuses a prompt whose x_j^T w leaves it (a finding naming the op).
"""

from __future__ import annotations

import numpy as np

from raspicl import At, Program, Read, solvers
from raspicl.prompts import PromptDistribution, Prompts

# `raspicl verify`'s default checks; each sigmoid gadget is certified once per process (a few
# seconds in float64) and shared by every apply of the same range.
GRID = [{"d": 1, "n": 2, "T": 1}, {"d": 2, "n": 4, "T": 2}, {"d": 3, "n": 6, "T": 4}]
# Largest relative error `raspicl verify` accepts for the compiled model (issue targets).
TOLERANCE = {"float64": 1e-8, "float32": 1e-3}
# x ~ N(0, I) and y = w^T x + noise with w ~ N(0, I). A real y beyond [0, 1] is a label the
# logistic loss cannot fit (its minimum lies at infinity), so w drifts at every step: at
# lr = 0.1 the largest |x_j^T w_t| stays below 12 on 99.9% of these prompts up to d = 3,
# T = 4 (numpy, raspicl.solvers.logistic_gd; 2000 prompts: max 11.5), and the monitor refuses
# the rest by name. Larger lr or T need a larger zmax.
DOMAIN = PromptDistribution(x_scale=1.0, w_scale=1.0, noise=1.0)


def _w0(d: int, w0) -> np.ndarray:
    return np.zeros(d) if w0 is None else np.asarray(w0, dtype=np.float64).reshape(d)


def program(d: int = 2, n: int = 4, T: int = 2, lr: float = 0.1, zmax: float = 12.0,
            w0=None) -> Program:
    w0 = _w0(d, w0)
    p = Program("logistic_gd", d=d, n=n,
                params={"d": d, "n": n, "T": T, "lr": lr, "zmax": zmax, "w0": w0.tolist()})
    xs = [p.mov(f"x{j + 1}", Read(p.x, At(2 * j)), note=f"x_{j + 1}, read at its token")
          for j in range(n)]
    ys = [p.mov(f"y{j + 1}", Read(p.y, At(2 * j + 1)), note=f"y_{j + 1}, read at its token")
          for j in range(n)]
    w = p.var("w", d, init=w0)
    zs = [p.var(f"z{j + 1}") for j in range(n)]
    ss = [p.var(f"s{j + 1}") for j in range(n)]
    for _ in p.loop(T):
        for x, z, s in zip(xs, zs, ss, strict=True):
            p.let(z, x @ w, note="x_j^T w")
            p.apply(s, "sigmoid", z, range=(-zmax, zmax), note="sigmoid(x_j^T w)")
        grad = sum((x * (s - y) for x, s, y in zip(xs, ss, ys, strict=True)), 0.0 * w)
        p.let(w, w - (lr / n) * grad, note="w - lr/n sum_j (s_j - y_j) x_j")
    zq = p.let("zq", w @ p.x, note="w_T^T x_q")
    prob = p.apply("prob", "sigmoid", zq, range=(-zmax, zmax), note="sigmoid(w_T^T x_q)")
    p.output(prob, roles=("query",))
    return p


def reference(prompts: Prompts, d: int = 2, n: int = 4, T: int = 2, lr: float = 0.1,
              zmax: float = 12.0, w0=None) -> np.ndarray:
    """raspicl.solvers.logistic_gd on all n examples, then sigmoid(w_T^T x_q): [B, 1]."""
    w = solvers.logistic_gd(prompts.X, prompts.y, _w0(d, w0), lr, T)[:, -1]
    return solvers.sigmoid(np.einsum("bd,bd->b", w, prompts.xq))[:, None]
