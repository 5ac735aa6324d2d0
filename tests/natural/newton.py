"""Newton–Schulz ridge in its textbook form: M_k = 2 M_{k-1} - M_{k-1} A M_{k-1}.

programs/newton.py runs the same iteration as M_k = M + R M, R_k = R^2 (R = I - M A, which
commutes with M), two products of the same depth per step; written as the textbook update the
product M A M is two products in a row, so each step costs a block more (10 blocks against 7
at d = 2, n = 4, T = 2; 14 against 9 at d = 4, T = 4). Kept here until the fusion pass lands;
tests/test_lang_programs.py checks that both predict the same.
"""

from __future__ import annotations

import numpy as np

from raspicl import Mean, Offset, Program, Read
from raspicl.lang.expr import eye, outer


def program(d: int = 2, n: int = 2, T: int = 8, lam: float = 0.5) -> Program:
    p = Program("newton_natural", d=d, n=n, params={"d": d, "n": n, "T": T, "lam": lam})
    x_prev = p.mov("x_prev", Read(p.x, Offset(1)), note="x_j, at y token j")
    xx = p.let("xx", outer(x_prev, x_prev), note="x_j x_j^T")
    xy = p.let("xy", x_prev * p.y, note="x_j y_j")
    S = p.select("S", [0], p.const("zero_S", np.zeros((d, d))), Read(xx, Mean("y")))
    b = p.select("b", [0], p.const("zero_b", np.zeros(d)), Read(xy, Mean("y")))
    A = S + lam * eye(d)
    s = p.let("s", sum(S[i, i] for i in range(d)) + lam, note="tr S + lam")
    M = p.var("M", (d, d))
    p.let(M, eye(d) / s, note="M_0 = I / (tr S + lam)")
    for _ in p.loop(T):
        p.let(M, 2 * M - M @ A @ M, note="M_k = 2 M - M A M")
    p.output(p.let("pred", (M @ b) @ p.x, note="(M_T b)^T x"), roles=("x", "query"))
    return p
