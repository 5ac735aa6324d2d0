"""One-pass SGD over the prompt, with a prediction at every x token and at the query.

The per-example step of gd_step (Akyürek et al., Theorem 1) applied to x_1, y_1, ..., x_n, y_n
in order, from initial weights w_0 baked into the program:

    w_i = w_{i-1} - 2 lr (x_i (x_i^T w_{i-1} - y_i) + lam w_{i-1}),     i = 1..n,

prediction w_{i-1}^T x_i at x token i (from the examples before it; w_0^T x_1 at the first)
and w_n^T x_q at the query.

The program is a chain over the y tokens: y token i (token 2i - 1) holds the step that makes
w_i. A transformer computes every token at once, so the chain is written as a loop of n
identical iterations (`p.loop`), each of which advances every y token by one step from the
state of the y token before it (Offset(2)); after iteration k the state is exact at y tokens
1..k, so n iterations suffice. The compiler may run the n iterations on one shared group of
blocks (a looped transformer).

To keep one iteration to three blocks, the state at y token i is carried as the weights the
step starts from and the step's product term,

    wp  = w_{i-1},     gs = x_i (x_i^T w_{i-1}),     with  w_i = c wp - 2 lr gs + 2 lr x_i y_i,

c = 1 - 2 lr lam; the next iteration forms w_{i-1} of the y token before as that combination
in the same attention read that fetches it (a linear map of what a head reads). One iteration:

    wb  = c wp - 2 lr gs + 2 lr xy,   all read at Offset(2)    attention
    wp  = select(tokens 0, 1 -> w_0, else wb)                   MLP (gate)
    s   = wp^T x_prev                                            MLP (product)
    gs  = x_prev s                                               MLP (product)

(x_prev = x_i at y token i, from Offset(1), and xy = x_prev y are computed once, before the
loop.) At tokens 0 and 1 the read at Offset(2) lies before the prompt; the select puts w_0
there, which is exactly the weights y token 1 starts from. The prediction at x token i reads
w_{i-1} = c wp - 2 lr gs + 2 lr xy from the y token before it (Offset(1)), w_0 at token 0.

The hand-written form the bundled program had before the language's expressions
(tests/test_lang_programs.py checks that both predict the same); its GRID, reference
and tolerances are the bundled file's.
"""

from __future__ import annotations

import numpy as np

from raspicl import Offset, Program, Read


def _w0(d: int, w0) -> np.ndarray:
    """The bundled program's default initial weights, w0_i = 0.5 * (-1)^i."""
    return 0.5 * (-1.0) ** np.arange(d) if w0 is None else np.asarray(w0, dtype=np.float64)


def program(d: int = 2, n: int = 2, lr: float = 0.1, lam: float = 0.0, w0=None) -> Program:
    w0 = _w0(d, w0)
    p = Program("sgd", d=d, n=n,
                params={"d": d, "n": n, "lr": lr, "lam": lam, "w0": w0.tolist()})
    c = 1.0 - 2.0 * lr * lam
    eye = np.eye(d)
    # w_i at a y token = c wp - 2 lr gs + 2 lr xy: one linear map of the concatenation
    W_next = np.hstack([c * eye, -2.0 * lr * eye, 2.0 * lr * eye])
    w_init = p.const("w_init", w0)
    x_prev = p.mov("x_prev", Read(p.x, Offset(1)), note="x_i, at y token i")
    xy = p.mul("xy", x_prev, p.y, shape=(d,), note="x_i y_i")
    wp = p.var("wp", d, init=w0)
    gs = p.var("gs", d, init=np.zeros(d))
    wb = p.var("wb", d)
    s = p.var("s", ())
    for _ in p.loop(n):
        p.raw(wb, [Read(wp, Offset(2)), Read(gs, Offset(2)), Read(xy, Offset(2))], W=W_next,
              shape=(d,), note="w_{i-1}, formed at the y token before")
        p.select(wp, [0, 1], w_init, wb, note="w_0 before the prompt")
        p.dot(s, wp, x_prev, note="x_i^T w_{i-1}")
        p.mul(gs, x_prev, s, shape=(d,), note="x_i (x_i^T w_{i-1})")
    w_read = p.raw("w_read", [Read(wp, Offset(1)), Read(gs, Offset(1)), Read(xy, Offset(1))],
                   W=W_next, shape=(d,), note="w_{i-1} at x token i (w_n at the query)")
    w_before = p.select("w_before", [0], w_init, w_read, note="w_0 at x token 1")
    pred = p.dot("pred", w_before, p.x, note="w_{i-1}^T x_i, w_n^T x_q")
    p.output(pred, roles=("x", "query"))
    return p
