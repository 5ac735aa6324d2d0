"""gd_step as one expression: w' = w0 - 2 lr (x (x^T w0 - y) + lam w0), read at the query.

The textbook form of programs/gd_step.py. It compiles to 3 blocks where programs/gd_step.py
needs 4 (the linear step is applied inside the attention read that brings w' to the query),
but to a wider residual stream (d_model 15 against 14 at d = 2, 39 against 32 at d = 8) and so
more parameters: kept here until the compiler's fusion pass lands. tests/test_lang_programs.py
checks that it predicts what programs/gd_step.py predicts.
"""

from __future__ import annotations

import numpy as np

from raspicl import Offset, Program, Read


def program(d: int = 2, lr: float = 0.1, lam: float = 0.0, w0=None) -> Program:
    w0 = 0.5 * (-1.0) ** np.arange(d) if w0 is None else np.asarray(w0, dtype=np.float64)
    p = Program("gd_step_natural", d=d, n=1, params={"d": d, "lr": lr, "lam": lam})
    x = p.mov("x_prev", Read(p.x, Offset(1)), note="x_1, at the y token")
    w1 = w0 - 2 * lr * (x * (x @ w0 - p.y) + lam * w0)
    p.output(p.let("pred", w1.at(Offset(1)) @ p.x, note="w'^T x_q"), roles=("query",))
    return p
