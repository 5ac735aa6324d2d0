"""One step of gradient descent on one example, then a prediction (Akyürek et al., Theorem 1).

Prompt [x~_1, y~_1, x~_q] (n = 1). With the initial weights w0 baked into the program:

    w' = w0 - 2 lr (x_1 (x_1^T w0 - y_1) + lam w0),     prediction  w'^T x_q

(the gradient of (x^T w - y)^2 + lam |w|^2; the paper's chain and formula disagree on lam's sign;
the formula is the one implemented).
The update is computed at every token; at the y token it reads x_1 from the token before, and
the query reads w' from the y token. lr, lam and w0 may be sympy expressions (raspicl.symbolic);
such a program runs in the interpreter but cannot be compiled.

Written with the language's operators (docs/language.md, "Expressions"), one named register per
line of the derivation; each `p.let` is one op, as the hand-written ops were
(tests/hand_fused/gd_step.py). The whole update as one expression,
`w0 - 2 lr (x (x^T w0 - y) + lam w0)` read at the query (tests/natural/gd_step.py), compiles to
3 blocks instead of 4 but to a wider stream, so it waits for the fusion pass.
"""

from __future__ import annotations

import numpy as np

from raspicl import Offset, Program, Read, solvers
from raspicl.lang.ops import coef_array, is_symbolic_value
from raspicl.prompts import Prompts

GRID = [{"d": d} for d in (1, 2, 4, 8)]
# Largest relative error `raspicl verify` accepts for the compiled model (issue targets).
TOLERANCE = {"float64": 1e-8, "float32": 1e-3}


def default_w0(d: int) -> np.ndarray:
    """The documented default initial weights: w0_i = 0.5 * (-1)^i, so w0 != 0."""
    return 0.5 * (-1.0) ** np.arange(d)


def program(d: int = 2, lr: float = 0.1, lam: float = 0.0, w0=None) -> Program:
    w0 = default_w0(d) if w0 is None else coef_array(w0).reshape(-1)
    p = Program("gd_step", d=d, n=1, params={"d": d, "lr": lr, "lam": lam, "w0": w0.tolist()})
    w = p.const("w0", w0)
    x_prev = p.mov("x_prev", Read(p.x, Offset(1)), note="x_1, at the y token")
    pred0 = p.let("pred0", x_prev @ w, note="x^T w0")
    err = p.let("err", pred0 - p.y, note="x^T w0 - y")
    g = p.let("g", x_prev * err, note="x (x^T w0 - y)")
    w_next = p.let("w_next", w - 2 * lr * (g + lam * w), note="w0 - 2 lr (g + lam w0)")
    w_query = p.let("w_query", Read(w_next, Offset(1)), note="w', at the query token")
    pred = p.let("pred", w_query @ p.x, note="w'^T x_q")
    p.output(pred, roles=("query",))
    return p


def reference(prompts: Prompts, d: int = 2, lr: float = 0.1, lam: float = 0.0,
              w0=None) -> np.ndarray:
    """The prediction from raspicl.solvers: [B, 1] (one output position, the query)."""
    w0 = default_w0(d) if w0 is None else np.asarray(w0, dtype=np.float64)
    w0b = np.broadcast_to(w0, (prompts.batch, d))
    w1 = solvers.gd_step(w0b, prompts.X[:, 0], prompts.y[:, 0], lr, lam)
    return solvers.predict(w1, prompts.xq)[:, None]


def closed_form(x, y, xq, d: int = 2, lr: float = 0.1, lam: float = 0.0, w0=None):
    """The same prediction as a formula over sympy values of one prompt.

    Numeric lr, lam, w0 are read as the simplest rationals they round to (0.1 as 1/10); sympy
    expressions are kept as they are.
    """
    import sympy

    w0 = default_w0(d) if w0 is None else coef_array(w0).reshape(-1)
    w0 = sympy.Matrix([_exact(v) for v in w0])
    x = sympy.Matrix(x)
    xq = sympy.Matrix(xq)
    lr, lam = _exact(lr), _exact(lam)
    w1 = w0 - 2 * lr * (x * ((x.T * w0)[0] - y) + lam * w0)
    return (w1.T * xq)[0]


def _exact(v):
    """A sympy value: numbers through nsimplify, sympy expressions unchanged."""
    import sympy

    return sympy.sympify(v) if is_symbolic_value(v) else sympy.nsimplify(v)
