"""Ridge by Sherman–Morrison updates (recursive least squares), written with the scan construct.

The textbook form of programs/ridge.py:

    u_i = A_{i-1}^-1 x_i,   A_i^-1 = A_{i-1}^-1 - u_i u_i^T / (1 + x_i^T u_i),
    b_i = b_{i-1} + x_i y_i,

from A_0^-1 = I / lam, b_0 = 0, predicting (A^-1 b)^T x. Compiled unrolled it needs as many
blocks as programs/ridge.py (19 at d = 2, n = 4) but more parameters at d = 2 (146718 against
136870), and shared (loops="share") a wider stream at d = 4; with peel=True it needs fewer
blocks unrolled (18) but stores 10 blocks shared where programs/ridge.py stores 8. So
programs/ridge.py stays hand-fused; tests/test_lang_programs.py checks that both predict the same.
"""

from __future__ import annotations

import numpy as np

from raspicl import Program
from raspicl.lang.expr import outer


def program(d: int = 2, n: int = 2, lam: float = 1.0, peel: bool = False) -> Program:
    p = Program("ridge_natural", d=d, n=n, params={"d": d, "n": n, "lam": lam})

    def step(s, x, y):
        u = s.A @ x
        return {"A": s.A - outer(u, u) / (1 + x @ u), "b": s.b + x * y}

    scan = p.scan(
        init={"A": np.eye(d) / lam, "b": np.zeros(d)},
        step=step,
        predict=lambda s, x: (s.A @ s.b) @ x,
        name="rls",
        peel=peel,
    )
    p.output(scan.prediction, roles=("x", "query"))
    return p
