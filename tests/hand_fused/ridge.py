"""Exact ridge regression by n Sherman–Morrison updates, predicting at every x token.

The update of sherman_morrison (Akyürek et al., Theorem 2) applied once per example, from
A_0^-1 = I / lam and b_0 = 0 (recursive least squares):

    A_i^-1 = A_{i-1}^-1 - u_i u_i^T / (1 + x_i^T u_i),   u_i = A_{i-1}^-1 x_i,
    b_i    = b_{i-1} + x_i y_i,                          w_i = A_i^-1 b_i,

so that A_i = lam I + sum_{j <= i} x_j x_j^T and w_i is ridge on the first i examples (sum
loss). The prediction at x token i is w_{i-1}^T x_i (ridge on the examples before it; 0 at
x_1) and w_n^T x_q at the query. The divisor 1 + x_i^T A_{i-1}^-1 x_i is >= 1 for lam > 0.

As in programs/sgd.py, the program is a chain over the y tokens written as a loop of n
identical iterations (`p.loop`); after iteration k the state is exact at y tokens 1..k. The
state at y token i is carried as the values the step starts from and its correction,

    Ap = A_{i-1}^-1,   corr = u_i u_i^T / (1 + x_i^T u_i),   bp = b_{i-1},
    with  A_i^-1 = Ap - corr  and  b_i = bp + x_i y_i,

so that the next iteration forms A_{i-1}^-1, b_{i-1} of the y token before in the attention
read that fetches them (Offset(2)). One iteration, four blocks:

    Ab = Ap - corr,  bb = bp + xy,  read at Offset(2)           attention
    Ap = select(tokens 0, 1 -> I / lam, else Ab)                MLP (gate)
    bp = select(tokens 0, 1 -> 0, else bb)                      MLP (gate)
    u  = Ap x_prev                                               MLP (product)
    uu = u u^T,   den = 1 + x_prev^T u                           MLP (products)
    corr = uu / |den|                                            LayerNorm + MLP (div)

(x_prev = x_i at y token i, from Offset(1), and xy = x_prev y are computed once, before the
loop.) The prediction reads A_{i-1}^-1 and b_{i-1} from the y token before (Offset(1); I / lam
and 0 at token 0), then w = A^-1 b and pred = w^T x.

The hand-written form the bundled program had before the scan construct
(tests/test_lang_programs.py checks that both predict the same); its GRID, reference
and tolerances are the bundled file's.
"""

from __future__ import annotations

import numpy as np

from raspicl import Offset, Program, Read


def program(d: int = 2, n: int = 2, lam: float = 1.0) -> Program:
    if not lam > 0:
        raise ValueError(f"ridge needs lam > 0 (A_0 = lam I), got {lam}")
    p = Program("ridge", d=d, n=n, params={"d": d, "n": n, "lam": lam})
    dd = d * d
    # A^-1 = Ap - corr and b = bp + xy: one linear map of each concatenation
    W_A = np.hstack([np.eye(dd), -np.eye(dd)])
    W_b = np.hstack([np.eye(d), np.eye(d)])
    a0_inv = p.const("A0_inv", np.eye(d) / lam)
    b0 = p.const("b0", np.zeros(d))
    x_prev = p.mov("x_prev", Read(p.x, Offset(1)), note="x_i, at y token i")
    xy = p.mul("xy", x_prev, p.y, shape=(d,), note="x_i y_i")
    ap = p.var("Ap", (d, d), init=np.eye(d) / lam)
    corr = p.var("corr", (d, d), init=np.zeros((d, d)))
    bp = p.var("bp", d, init=np.zeros(d))
    ab = p.var("Ab", (d, d))
    bb = p.var("bb", d)
    u = p.var("u", d)
    uu = p.var("uu", (d, d))
    den = p.var("den", ())
    for _ in p.loop(n):
        p.raw(ab, [Read(ap, Offset(2)), Read(corr, Offset(2))], W=W_A, shape=(d, d),
              note="A_{i-1}^-1, formed at the y token before")
        p.raw(bb, [Read(bp, Offset(2)), Read(xy, Offset(2))], W=W_b, shape=(d,),
              note="b_{i-1}, formed at the y token before")
        p.select(ap, [0, 1], a0_inv, ab, note="A_0^-1 = I / lam before the prompt")
        p.select(bp, [0, 1], b0, bb, note="b_0 = 0 before the prompt")
        p.mul(u, ap, x_prev, shape=(d,), note="u = A_{i-1}^-1 x_i")
        p.mul(uu, u, u, a_shape=(d, 1), b_shape=(1, d), shape=(d, d), note="u u^T")
        p.raw(den, u, here=x_prev, op="*", W=np.ones((1, d)), bias=1.0,
              note="1 + x_i^T A_{i-1}^-1 x_i")
        p.div(corr, uu, den, note="u u^T / (1 + x_i^T u)")
    a_read = p.raw("A_read", [Read(ap, Offset(1)), Read(corr, Offset(1))], W=W_A, shape=(d, d),
                   note="A_{i-1}^-1 at x token i (A_n^-1 at the query)")
    b_read = p.raw("b_read", [Read(bp, Offset(1)), Read(xy, Offset(1))], W=W_b, shape=(d,),
                   note="b_{i-1} at x token i (b_n at the query)")
    a_before = p.select("A_before", [0], a0_inv, a_read, note="I / lam at x token 1")
    b_before = p.select("b_before", [0], b0, b_read, note="0 at x token 1")
    w = p.mul("w", a_before, b_before, shape=(d,), note="w_{i-1} = A_{i-1}^-1 b_{i-1}")
    pred = p.dot("pred", w, p.x, note="w_{i-1}^T x_i, w_n^T x_q")
    p.output(pred, roles=("x", "query"))
    return p
