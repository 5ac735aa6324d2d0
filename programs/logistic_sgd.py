"""One-pass SGD on the logistic loss, with a predicted probability at every x token and the query.

The per-example gradient step of the logistic loss applied to x_1, y_1, ..., x_n, y_n in order,
from initial weights w_0 baked into the program:

    w_i = w_{i-1} - lr (sigmoid(x_i^T w_{i-1}) - y_i) x_i,     i = 1..n,

prediction sigmoid(w_{i-1}^T x_i) at x token i (from the examples before it; sigmoid(w_0^T x_1)
at the first) and sigmoid(w_n^T x_q) at the query. It is sgd's online learner (programs/sgd.py)
on logistic_gd's loss (programs/logistic_gd.py): the labels are the prompt's y, taken as they
stand (soft labels; see logistic_gd).

The program is that formula, written with the scan construct (docs/language.md, "scan"), with
a `p.apply` of the sigmoid inside the step. The scan generates the chain over the y tokens (a
loop of n identical iterations, each reading the y token before at Offset(2)). x_i is 0 at
token 0, so the step leaves any w there unchanged (x_i sigmoid(0) = 0, exactly): the start
value is a fixed point and the scan takes its clamped form, no select per example. The
product x_i y_i reads the example alone and is computed once, before the loop; x_i s reads
the sigmoid, which the scan writes, and stays in it. One iteration (generated):

    w   = (w - lr (p - q)) read at Offset(2, clamp=True)       attention
    z   = x_i^T w                                              MLP (product)
    s   = sigmoid(z)                                           MLP (apply: the certified gadget)
    p   = x_i s                                                MLP (product)

(q = x_i y_i, before the loop), then the prediction z_pred = w_{i-1}^T x (the state read at
Offset(1, clamp=True): w_0 at x_1, w_n at the query) and prob = sigmoid(z_pred), at the x tokens
and the query: 3 blocks per example, 3n + 4 in all (raspicl verify). The sigmoid's declared
range is [-zmax, zmax]: the monitor refuses a prompt whose x_i^T w_{i-1} (or the prediction's
argument) leaves it (a finding naming the op).
"""

from __future__ import annotations

import numpy as np

from raspicl import Program, solvers
from raspicl.prompts import PromptDistribution, Prompts

# `raspicl verify`'s default checks; each sigmoid gadget is certified once per process and
# shared by every apply of the same range.
GRID = [{"d": 1, "n": 2}, {"d": 2, "n": 4}, {"d": 3, "n": 6}]
# Largest relative error `raspicl verify` accepts for the compiled model (issue targets, as
# logistic_gd's).
TOLERANCE = {"float64": 1e-8, "float32": 1e-3}
# x ~ N(0, I) and y = w^T x + noise with w ~ N(0, I), as logistic_gd: a real y beyond [0, 1]
# pushes w further at every example. At lr = 0.1 the largest |x_i^T w_{i-1}| and |w_n^T x_q|
# stay below 12 on 99.98% of these prompts up to d = 3, n = 6 (numpy, solvers.logistic_sgd;
# 20000 prompts: max 14.3, 3 beyond 11.9), and the monitor refuses the rest by name. d = 4,
# n = 8 leaves it on 0.17%; larger lr or n need a larger zmax.
DOMAIN = PromptDistribution(x_scale=1.0, w_scale=1.0, noise=1.0)


def _w0(d: int, w0) -> np.ndarray:
    return np.zeros(d) if w0 is None else np.asarray(w0, dtype=np.float64).reshape(d)


def program(d: int = 2, n: int = 4, lr: float = 0.1, zmax: float = 12.0, w0=None) -> Program:
    w0 = _w0(d, w0)
    p = Program("logistic_sgd", d=d, n=n,
                params={"d": d, "n": n, "lr": lr, "zmax": zmax, "w0": w0.tolist()})

    def step(s, x, y):
        z = p.let("z", x @ s.w, note="x_i^T w_{i-1}")
        sig = p.apply("s", "sigmoid", z, range=(-zmax, zmax), note="sigmoid(x_i^T w_{i-1})")
        return {"w": s.w - lr * (x * sig - x * y)}

    scan = p.scan(init={"w": w0}, step=step, predict=lambda s, x: s.w @ x,
                  name="logistic_sgd", prediction="z_pred")
    prob = p.apply("prob", "sigmoid", scan.prediction, range=(-zmax, zmax),
                   note="sigmoid(w_{i-1}^T x) at x token i, sigmoid(w_n^T x_q) at the query")
    p.output(prob, roles=("x", "query"))
    return p


def reference(prompts: Prompts, d: int = 2, n: int = 4, lr: float = 0.1, zmax: float = 12.0,
              w0=None) -> np.ndarray:
    """raspicl.solvers.logistic_sgd's iterates w_0..w_n, each dotted with the next x (x_q
    last), through the sigmoid: [B, n + 1]."""
    w = solvers.logistic_sgd(prompts.X, prompts.y, _w0(d, w0), lr)  # [B, n+1, d]
    z = np.einsum("bid,bid->bi", w, prompts.prefix_queries())  # x_1..x_n, x_q
    return solvers.sigmoid(z)
