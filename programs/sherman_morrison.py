"""One Sherman–Morrison update, then a prediction (Akyürek et al., Theorem 2).

Prompt [x~_1, y~_1, x~_q] (n = 1). Ridge regression on one example, exactly:

    A0^-1 = I / lam,
    A1^-1 = A0^-1 - (A0^-1 x)(A0^-1 x)^T / (1 + x^T A0^-1 x),   (A0^-1 is symmetric)
    w'    = A1^-1 x y = (lam I + x x^T)^-1 x y,                 prediction  w'^T x_q.

The division is by |1 + x^T A0^-1 x|, which equals 1 + x^T x / lam > 0 for lam > 0.
lam may be a sympy expression (raspicl.symbolic); such a program cannot be compiled.

Written as the formula with the language's operators (docs/language.md, "Expressions"): u and
the divisor have registers of their own (u is used three times); A1^-1 is never stored: its
correction u u^T / (1 + x^T u) is one div, and A1^-1 (x y) one product op whose terms read the
division and the products directly. This compiles to 5 blocks where the op-per-line form
(tests/hand_fused/sherman_morrison.py) needs 6.
"""

from __future__ import annotations

import numpy as np

from raspicl import Offset, Program, Read, solvers
from raspicl.lang.expr import outer
from raspicl.lang.ops import is_symbolic_value
from raspicl.prompts import Prompts

GRID = [{"d": d} for d in (1, 2, 4, 8)]
# Largest relative error `raspicl verify` accepts for the compiled model (issue targets).
TOLERANCE = {"float64": 1e-6, "float32": 1e-3}


def program(d: int = 2, lam: float = 1.0) -> Program:
    symbolic = is_symbolic_value(lam) and bool(lam.free_symbols)
    if (lam.is_positive is False) if symbolic else not lam > 0:
        raise ValueError(f"sherman_morrison needs lam > 0 (A0 = lam I), got {lam}")
    p = Program("sherman_morrison", d=d, n=1, params={"d": d, "lam": lam})
    a0_inv = np.eye(d, dtype=np.int64) / lam
    x = p.mov("x_prev", Read(p.x, Offset(1)), note="x_1, at the y token")
    u = p.let("u", a0_inv @ x, note="A0^-1 x")
    denom = p.let("denom", 1 + x @ u, note="1 + x^T A0^-1 x")
    a1_inv = a0_inv - outer(u, u) / denom
    w_next = p.let("w_next", a1_inv @ (x * p.y), note="w' = A1^-1 x y")
    pred = p.let("pred", Read(w_next, Offset(1)) @ p.x, note="w'^T x_q")
    p.output(pred, roles=("query",))
    return p


def reference(prompts: Prompts, d: int = 2, lam: float = 1.0) -> np.ndarray:
    """Ridge on the one example, from raspicl.solvers: [B, 1]."""
    w = solvers.ridge(prompts.X[:, :1], prompts.y[:, :1], lam)
    return solvers.predict(w, prompts.xq)[:, None]


def closed_form(x, y, xq, d: int = 2, lam: float = 1.0):
    """(lam I + x x^T)^-1 x y, dotted with x_q, as a sympy expression for one prompt."""
    import sympy

    lam = sympy.sympify(lam) if is_symbolic_value(lam) else sympy.nsimplify(lam)
    x = sympy.Matrix(x)
    w = (lam * sympy.eye(d) + x * x.T).inv() * x * y
    return (w.T * sympy.Matrix(xq))[0]
