"""NLMS (programs/nlms.py) written by hand in the hand-fused style of tests/hand_fused/sgd.py.

The state at y token i is carried as (wp, q) = (w_{i-1}, mu x_i e_i / (eps + |x_i|^2)), with
w_i = wp + q formed inside the attention read of the next example (Offset(2)):

    wb  = wp + q, read at Offset(2)                      attention
    wp  = select(tokens 0, 1 -> w_0, else wb)            MLP (gate)
    s   = wp^T x_prev;  xs = x_prev s                    MLP (products)
    num = mu (xy - xs);  q = num / |den|                 MLP, LayerNorm + MLP (div)

(x_prev, xy = x_prev y and den = eps + x_prev^T x_prev are computed once, before the loop.)
For the block counts of docs/language.md's comparison; tests/test_lang_programs.py checks that
it predicts what programs/nlms.py predicts.
"""

from __future__ import annotations

import numpy as np

from raspicl import Offset, Program, Read


def program(d: int = 2, n: int = 2, mu: float = 0.5, eps: float = 1.0, w0=None) -> Program:
    w0 = 0.5 * (-1.0) ** np.arange(d) if w0 is None else np.asarray(w0, dtype=np.float64)
    p = Program("nlms_hand", d=d, n=n, params={"d": d, "n": n, "mu": mu, "eps": eps})
    W = np.hstack([np.eye(d), np.eye(d)])
    w_init = p.const("w_init", w0)
    x_prev = p.mov("x_prev", Read(p.x, Offset(1)))
    xy = p.mul("xy", x_prev, p.y, shape=(d,))
    den = p.raw("den", x_prev, here=x_prev, op="*", W=np.ones((1, d)), bias=eps)
    wp = p.var("wp", d, init=w0)
    q = p.var("q", d, init=np.zeros(d))
    wb, s, xs, num = p.var("wb", d), p.var("s", ()), p.var("xs", d), p.var("num", d)
    for _ in p.loop(n):
        p.raw(wb, [Read(wp, Offset(2)), Read(q, Offset(2))], W=W, shape=(d,))
        p.select(wp, [0, 1], w_init, wb)
        p.dot(s, wp, x_prev)
        p.mul(xs, x_prev, s, shape=(d,))
        p.aff(num, xy, xs, W1=mu, W2=-mu)
        p.div(q, num, den)
    w_read = p.raw("w_read", [Read(wp, Offset(1)), Read(q, Offset(1))], W=W, shape=(d,))
    w_before = p.select("w_before", [0], w_init, w_read)
    p.output(p.dot("pred", w_before, p.x), roles=("x", "query"))
    return p
