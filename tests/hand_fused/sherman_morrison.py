"""One Sherman–Morrison update, then a prediction (Akyürek et al., Theorem 2).

Prompt [x~_1, y~_1, x~_q] (n = 1). Ridge regression on one example, exactly:

    A0^-1 = I / lam,
    A1^-1 = A0^-1 - (A0^-1 x)(A0^-1 x)^T / (1 + x^T A0^-1 x),   (A0^-1 is symmetric)
    w'    = A1^-1 x y = (lam I + x x^T)^-1 x y,                 prediction  w'^T x_q.

The division is by |1 + x^T A0^-1 x|, which equals 1 + x^T x / lam > 0 for lam > 0.
lam may be a sympy expression (raspicl.symbolic); such a program cannot be compiled.

The hand-written form the bundled program had before the language's expressions
(tests/test_lang_programs.py checks that both predict the same); its GRID, reference
and tolerances are the bundled file's.
"""

from __future__ import annotations

import numpy as np

from raspicl import Offset, Program, Read
from raspicl.lang.ops import is_symbolic_value


def program(d: int = 2, lam: float = 1.0) -> Program:
    symbolic = is_symbolic_value(lam) and bool(lam.free_symbols)
    if (lam.is_positive is False) if symbolic else not lam > 0:
        raise ValueError(f"sherman_morrison needs lam > 0 (A0 = lam I), got {lam}")
    p = Program("sherman_morrison", d=d, n=1, params={"d": d, "lam": lam})
    a0_inv = p.const("A0_inv", np.eye(d, dtype=np.int64) / lam)
    x_prev = p.mov("x_prev", Read(p.x, Offset(1)), note="x_1, at the y token")
    u = p.mul("u", a0_inv, x_prev, note="A0^-1 x")
    xu = p.dot("xu", x_prev, u, note="x^T A0^-1 x")
    denom = p.aff("denom", xu, bias=1.0, note="1 + x^T A0^-1 x")
    uu = p.mul("uu", u, u, a_shape=(d, 1), b_shape=(1, d), note="u u^T")
    correction = p.div("correction", uu, denom, note="u u^T / (1 + x^T A0^-1 x)")
    a1_inv = p.aff("A1_inv", a0_inv, correction, W1=1.0, W2=-1.0, note="A1^-1")
    xy = p.mul("xy", x_prev, p.y, note="x y")
    w_next = p.mul("w_next", a1_inv, xy, note="w' = A1^-1 x y")
    w_query = p.mov("w_query", Read(w_next, Offset(1)), note="w', at the query token")
    pred = p.dot("pred", w_query, p.x, note="w'^T x_q")
    p.output(pred, roles=("query",))
    return p
