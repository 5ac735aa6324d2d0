"""One-pass SGD over the prompt, with a prediction at every x token and at the query.

The per-example step of gd_step (Akyürek et al., Theorem 1) applied to x_1, y_1, ..., x_n, y_n
in order, from initial weights w_0 baked into the program:

    w_i = w_{i-1} - 2 lr (x_i (x_i^T w_{i-1} - y_i) + lam w_{i-1}),     i = 1..n,

prediction w_{i-1}^T x_i at x token i (from the examples before it; w_0^T x_1 at the first)
and w_n^T x_q at the query.

The program is that formula, written with the scan construct (docs/language.md, "scan"): the
state after example i as a function of the state after example i - 1 and (x_i, y_i). The scan
generates the chain over the y tokens (y token i holds w_i, a loop of n identical iterations
that each read the y token before at Offset(2); the compiler may share their blocks) and carries
the state unfinished: the product x_i (x_i^T w_{i-1} - y_i) has a register, and the linear
combination w_{i-1} - 2 lr (...) is formed inside the attention read of the next example. With
lam = 0 (the default) w_0 is a fixed point of the step with no example, so the state is read
clamped (y token 1 reads token 0, which holds w_0) and the iteration has no select; x_i is
gated to the y tokens once, before the loop. One iteration (generated):

    w   = (w - 2 lr g) read at Offset(2, clamp=True)                          attention
    e   = x_i^T w - y_i                                                       MLP (product)
    g   = x_i e                                                               MLP (product)

2 blocks per example, 2n + 2 in all. With lam > 0, (1 - 2 lr lam) w_0 != w_0: the scan keeps
its select form, w = select(tokens 0, 1 -> w_0, else (c w - 2 lr g) read at Offset(2)) with
c = 1 - 2 lr lam, a gate and 3 blocks per example. The hand-fused form this replaces
(tests/hand_fused/sgd.py) carried (w_{i-1}, x_i x_i^T w_{i-1}) by hand; this one compiles to
fewer blocks and parameters.
"""

from __future__ import annotations

import numpy as np

from raspicl import Program, solvers
from raspicl.prompts import PromptDistribution, Prompts

# `raspicl verify`'s default checks (1000 problems, float64 and float32 each), chosen so
# that the whole default run stays under 2 minutes on 2 cores; the tests cover
# d in {1, 2, 4, 8}, n in {1, d, 2d} (tests/test_learning_programs.py).
GRID = [{"d": d, "n": n} for d, n in ((1, 1), (1, 2), (2, 2), (2, 4), (4, 4), (4, 8))]
# Largest relative error `raspicl verify` accepts for the compiled model (issue targets).
TOLERANCE = {"float64": 1e-8, "float32": 1e-2}
# The prompts it serves: SGD with a fixed step diverges once lr |x_i|^2 > 2, and x ~ N(0, 1.5^2)
# (the compiler's default domain) at d = 8 reaches that often enough that calibration would scale
# the gadgets for exploding values. x ~ N(0, I), noise up to 1.
DOMAIN = PromptDistribution(x_scale=1.0, w_scale=1.0, noise=1.0)


def default_w0(d: int) -> np.ndarray:
    """The documented default initial weights: w0_i = 0.5 * (-1)^i, so w0 != 0 (as gd_step)."""
    return 0.5 * (-1.0) ** np.arange(d)


def _w0(d: int, w0) -> np.ndarray:
    return default_w0(d) if w0 is None else np.asarray(w0, dtype=np.float64).reshape(d)


def program(d: int = 2, n: int = 2, lr: float = 0.1, lam: float = 0.0, w0=None) -> Program:
    w0 = _w0(d, w0)
    p = Program("sgd", d=d, n=n,
                params={"d": d, "n": n, "lr": lr, "lam": lam, "w0": w0.tolist()})

    def step(s, x, y):
        return {"w": s.w - 2 * lr * (x * (x @ s.w - y) + lam * s.w)}

    scan = p.scan(init={"w": w0}, step=step, predict=lambda s, x: s.w @ x, name="sgd")
    p.output(scan.prediction, roles=("x", "query"))
    return p


def reference(prompts: Prompts, d: int = 2, n: int = 2, lr: float = 0.1, lam: float = 0.0,
              w0=None) -> np.ndarray:
    """raspicl.solvers.sgd's iterates w_0..w_n, each dotted with the next x (x_q last):
    [B, n + 1]."""
    w = solvers.sgd(prompts.X, prompts.y, _w0(d, w0), lr, lam)  # [B, n+1, d]
    queries = prompts.prefix_queries()  # x_1..x_n, x_q
    return np.stack([solvers.predict(w[:, i], queries[:, i]) for i in range(n + 1)], axis=1)
