"""Averaged SGD (programs/sgd_averaged.py) written by hand in the hand-fused style.

The state at y token i is carried as (wp, gs, ap, q, kp): w_i = c wp - 2 lr gs + 2 lr xy as in
tests/hand_fused/sgd.py, avg_i = ap + q with q = (w_i - ap) / k_i, and k_i = kp + 1, each formed
inside the attention read of the next example (Offset(2)). One iteration:

    wb, ab, kb  read at Offset(2)                               attention
    wp, ap, kp = select(tokens 0, 1 -> start, else wb, ab, kb)  MLP (gates)
    s = wp^T x_prev;  gs = x_prev s                             MLP (products)
    num = wp - 2 lr gs + 2 lr xy - ap;  k = kp + 1              MLP
    q = num / |k|                                               LayerNorm + MLP (div)

For the block counts of docs/language.md's comparison; tests/test_lang_programs.py checks that
it predicts what programs/sgd_averaged.py predicts.
"""

from __future__ import annotations

import numpy as np

from raspicl import Offset, Program, Read


def program(d: int = 2, n: int = 2, lr: float = 0.1, w0=None) -> Program:
    w0 = 0.5 * (-1.0) ** np.arange(d) if w0 is None else np.asarray(w0, dtype=np.float64)
    p = Program("sgd_averaged_hand", d=d, n=n, params={"d": d, "n": n, "lr": lr})
    eye = np.eye(d)
    W_w = np.hstack([eye, -2.0 * lr * eye, 2.0 * lr * eye])
    W_a = np.hstack([eye, eye])
    W_num = np.hstack([eye, -2.0 * lr * eye, 2.0 * lr * eye, -eye])
    w_init = p.const("w_init", w0)
    one = p.const("one", 1.0)
    x_prev = p.mov("x_prev", Read(p.x, Offset(1)))
    xy = p.mul("xy", x_prev, p.y, shape=(d,))
    wp = p.var("wp", d, init=w0)
    gs = p.var("gs", d, init=np.zeros(d))
    ap = p.var("ap", d, init=w0)
    q = p.var("q", d, init=np.zeros(d))
    kp = p.var("kp", (), init=1.0)
    wb, ab, kb = p.var("wb", d), p.var("ab", d), p.var("kb", ())
    s, num, k = p.var("s", ()), p.var("num", d), p.var("k", ())
    for _ in p.loop(n):
        p.raw(
            wb, [Read(wp, Offset(2)), Read(gs, Offset(2)), Read(xy, Offset(2))], W=W_w, shape=(d,)
        )
        p.raw(ab, [Read(ap, Offset(2)), Read(q, Offset(2))], W=W_a, shape=(d,))
        p.raw(kb, Read(kp, Offset(2)), bias=1.0)
        p.select(wp, [0, 1], w_init, wb)
        p.select(ap, [0, 1], w_init, ab)
        p.select(kp, [0, 1], one, kb)
        p.dot(s, wp, x_prev)
        p.mul(gs, x_prev, s, shape=(d,))
        p.raw(num, [wp, gs, xy, ap], W=W_num, shape=(d,))
        p.aff(k, kp, bias=1.0)
        p.div(q, num, k)
    a_read = p.raw("a_read", [Read(ap, Offset(1)), Read(q, Offset(1))], W=W_a, shape=(d,))
    a_before = p.select("a_before", [0], w_init, a_read)
    p.output(p.dot("pred", a_before, p.x), roles=("x", "query"))
    return p
