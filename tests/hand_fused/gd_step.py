"""One step of gradient descent on one example, then a prediction (Akyürek et al., Theorem 1).

Prompt [x~_1, y~_1, x~_q] (n = 1). With the initial weights w0 baked into the program:

    w' = w0 - 2 lr (x_1 (x_1^T w0 - y_1) + lam w0),     prediction  w'^T x_q

(the gradient of (x^T w - y)^2 + lam |w|^2; the paper's chain and formula disagree on lam's sign;
the formula is the one implemented).
The update is computed at every token; at the y token it reads x_1 from the token before, and
the query reads w' from the y token. lr, lam and w0 may be sympy expressions (raspicl.symbolic);
such a program runs in the interpreter but cannot be compiled.

The hand-written form the bundled program had before the language's expressions
(tests/test_lang_programs.py checks that both predict the same); its GRID, reference
and tolerances are the bundled file's.
"""

from __future__ import annotations

import numpy as np

from raspicl import Offset, Program, Read
from raspicl.lang.ops import coef_array


def program(d: int = 2, lr: float = 0.1, lam: float = 0.0, w0=None) -> Program:
    w0 = 0.5 * (-1.0) ** np.arange(d) if w0 is None else coef_array(w0).reshape(-1)
    p = Program("gd_step", d=d, n=1, params={"d": d, "lr": lr, "lam": lam, "w0": w0.tolist()})
    w = p.const("w0", w0)
    x_prev = p.mov("x_prev", Read(p.x, Offset(1)), note="x_1, at the y token")
    pred0 = p.dot("pred0", x_prev, w, note="x^T w0")
    err = p.aff("err", pred0, p.y, W1=1.0, W2=-1.0, note="x^T w0 - y")
    g = p.mul("g", x_prev, err, note="x (x^T w0 - y)")
    w_next = p.aff("w_next", w, g, W1=1 - 2 * lr * lam, W2=-2 * lr,
                   note="w0 - 2 lr (g + lam w0)")
    w_query = p.mov("w_query", Read(w_next, Offset(1)), note="w', at the query token")
    pred = p.dot("pred", w_query, p.x, note="w'^T x_q")
    p.output(pred, roles=("query",))
    return p
