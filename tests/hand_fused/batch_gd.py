"""T steps of full-batch gradient descent on the examples so far, predicting at every x token.

At x token i the learner sees the examples before it, x_1, y_1, ..., x_{i-1}, y_{i-1}
(at the query: all n), and runs T steps of gradient descent on their mean squared loss
(1/m) sum_j (x_j^T w - y_j)^2 + lam |w|^2 from initial weights w_0 baked into the program:

    S = (1/m) sum_j x_j x_j^T,   b = (1/m) sum_j x_j y_j,
    w_t = w_{t-1} - 2 lr (S w_{t-1} - b + lam w_{t-1}),   t = 1..T,   prediction w_T^T x.

S and b are means over the y tokens (uniform causal attention over one role): x_j is moved to
its y token (Offset(1)), where x_j x_j^T and x_j y_j are formed, and every token averages
them over the y tokens at or before it. At token 0 (x_1) there is no example and the mean is
undefined; a select sets S = 0 and b = 0 there, so the prediction at x_1 is gradient descent
with no data, w_T = (1 - 2 lr lam)^T w_0 (w_0 itself when lam = 0).

The T steps are a loop of T identical iterations (`p.loop`), one block each: the affine
part of the step in the attention (a head that reads the current token), then the product
S w for the next step in the MLP. The loop body starts with the attention op so that a looped
compile (shared weights, every iteration on a fresh block) also runs one block per step; the
product after the last step is not used.

    xx = x_prev x_prev^T,  xy = x_prev y      block 0: x_prev from Offset(1), MLP products
    S = select(token 0 -> 0, else mean of xx over y tokens)       block 1: attention + gate
    b = select(token 0 -> 0, else mean of xy over y tokens)
    Sw = S w_0                                                    block 2: MLP
    loop T:  w  = (1 - 2 lr lam) w - 2 lr Sw + 2 lr b             attention
             Sw = S w                                             MLP
    pred = w^T x                                                  MLP (of the last block)

The hand-written form the bundled program had before the language's expressions
(tests/test_lang_programs.py checks that both predict the same); its GRID, reference
and tolerances are the bundled file's.
"""

from __future__ import annotations

import numpy as np

from raspicl import Mean, Offset, Program, Read


def _w0(d: int, w0) -> np.ndarray:
    """The bundled program's default initial weights, w0_i = 0.5 * (-1)^i."""
    return 0.5 * (-1.0) ** np.arange(d) if w0 is None else np.asarray(w0, dtype=np.float64)


def program(d: int = 2, n: int = 2, T: int = 4, lr: float = 0.1, lam: float = 0.0,
            w0=None) -> Program:
    w0 = _w0(d, w0)
    p = Program("batch_gd", d=d, n=n,
                params={"d": d, "n": n, "T": T, "lr": lr, "lam": lam, "w0": w0.tolist()})
    eye = np.eye(d)
    W_step = np.hstack([(1.0 - 2.0 * lr * lam) * eye, -2.0 * lr * eye, 2.0 * lr * eye])
    zero_S = p.const("zero_S", np.zeros((d, d)))
    zero_b = p.const("zero_b", np.zeros(d))
    x_prev = p.mov("x_prev", Read(p.x, Offset(1)), note="x_j, at y token j")
    xx = p.mul("xx", x_prev, x_prev, a_shape=(d, 1), b_shape=(1, d), shape=(d, d),
                note="x_j x_j^T")
    xy = p.mul("xy", x_prev, p.y, shape=(d,), note="x_j y_j")
    S = p.select("S", [0], zero_S, Read(xx, Mean("y")), note="mean x x^T over the examples")
    b = p.select("b", [0], zero_b, Read(xy, Mean("y")), note="mean x y over the examples")
    w = p.var("w", d, init=w0)
    Sw = p.var("Sw", d)
    p.mul(Sw, S, w, shape=(d,), note="S w_0")
    for _ in p.loop(T):
        p.raw(w, [w, Sw, b], W=W_step, shape=(d,), note="w - 2 lr (S w - b + lam w)")
        p.mul(Sw, S, w, shape=(d,), note="S w, for the next step")
    pred = p.dot("pred", w, p.x, note="w_T^T x")
    p.output(pred, roles=("x", "query"))
    return p
