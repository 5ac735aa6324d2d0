"""RLS with forgetting (programs/rls_forget.py) written by hand in the hand-fused style.

The state at y token i is carried as (Pp, corr, wp, dw) with P_i = (Pp - corr) / beta,
corr = g u^T, and w_i = wp + dw, dw = g e, both formed inside the attention read of the next
example (Offset(2)). One iteration:

    Pb = (Pp - corr) / beta,  wb = wp + dw, read at Offset(2)    attention
    Pp, wp = select(tokens 0, 1 -> start, else Pb, wb)           MLP (gates)
    u = Pp x_prev;  s = wp^T x_prev                              MLP (products)
    den = beta + x_prev^T u;  e = y - s                          MLP
    g = u / |den|                                                LayerNorm + MLP (div)
    corr = g u^T;  dw = g e                                      MLP (products)

For the block counts of docs/language.md's comparison; tests/test_lang_programs.py checks that
it predicts what programs/rls_forget.py predicts.
"""

from __future__ import annotations

import numpy as np

from raspicl import Offset, Program, Read


def program(d: int = 2, n: int = 2, beta: float = 0.9, delta: float = 1.0) -> Program:
    p = Program("rls_forget_hand", d=d, n=n, params={"d": d, "n": n, "beta": beta})
    dd = d * d
    W_P = np.hstack([np.eye(dd), -np.eye(dd)]) / beta
    W_w = np.hstack([np.eye(d), np.eye(d)])
    P_init = p.const("P_init", delta * np.eye(d))
    w_init = p.const("w_init", np.zeros(d))
    x_prev = p.mov("x_prev", Read(p.x, Offset(1)))
    Pp = p.var("Pp", (d, d), init=delta * np.eye(d))
    corr = p.var("corr", (d, d), init=np.zeros((d, d)))
    wp = p.var("wp", d, init=np.zeros(d))
    dw = p.var("dw", d, init=np.zeros(d))
    Pb, wb = p.var("Pb", (d, d)), p.var("wb", d)
    u, g, s, e, den = p.var("u", d), p.var("g", d), p.var("s", ()), p.var("e", ()), p.var("den", ())
    for _ in p.loop(n):
        p.raw(Pb, [Read(Pp, Offset(2)), Read(corr, Offset(2))], W=W_P, shape=(d, d))
        p.raw(wb, [Read(wp, Offset(2)), Read(dw, Offset(2))], W=W_w, shape=(d,))
        p.select(Pp, [0, 1], P_init, Pb)
        p.select(wp, [0, 1], w_init, wb)
        p.mul(u, Pp, x_prev, shape=(d,))
        p.dot(s, wp, x_prev)
        p.raw(den, u, here=x_prev, op="*", W=np.ones((1, d)), bias=beta)
        p.aff(e, p.y, s, W1=1.0, W2=-1.0)
        p.div(g, u, den)
        p.mul(corr, g, u, a_shape=(d, 1), b_shape=(1, d), shape=(d, d))
        p.mul(dw, g, e, shape=(d,))
    w_read = p.raw("w_read", [Read(wp, Offset(1)), Read(dw, Offset(1))], W=W_w, shape=(d,))
    w_before = p.select("w_before", [0], w_init, w_read)
    p.output(p.dot("pred", w_before, p.x), roles=("x", "query"))
    return p
