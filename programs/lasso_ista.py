"""T steps of proximal gradient descent (ISTA) on the lasso loss, then a prediction at the query.

With every example in view (x_1, y_1, ..., x_n, y_n) and initial weights w_0 baked into the
program, T steps of ISTA on L(w) = (1/(2n)) sum_j (x_j^T w - y_j)^2 + lam |w|_1: a gradient
step on the squared loss, then the proximal map of lr lam |.|_1, the soft-threshold:

    S = (1/n) sum_j x_j x_j^T,   b = (1/n) sum_j x_j y_j,
    w_t = soft_threshold(w_{t-1} - lr (S w_{t-1} - b), lr lam),   t = 1..T,
    prediction  w_T^T x_q.

As in batch_gd, the gradient is a function of running means: x_j is moved to its y token
(Offset(1)), x_j x_j^T and x_j y_j are formed there, and every token averages them over the y
tokens at or before it (at the query: all n examples); at token 0 (no example, the mean
undefined) a select sets S = 0 and b = 0. Each step is then

    v = w - lr (S w - b)                        MLP (products)
    w = soft_threshold(v, lr lam)               MLP (apply: the kinked gadget, 4 units)

a loop of T identical iterations (`p.loop`), then the prediction w_T^T x_q. The
soft-threshold's declared range is [-vmax, vmax]: the monitor refuses a prompt whose v leaves
it (a finding naming the op). The step is computed at every token (the prefix of examples
before it); only the query's is the output.
"""

from __future__ import annotations

import numpy as np

from raspicl import Mean, Offset, Program, Read, solvers
from raspicl.lang.expr import outer
from raspicl.prompts import PromptDistribution, Prompts

# `raspicl verify`'s default checks.
GRID = [{"d": 1, "n": 2, "T": 2}, {"d": 2, "n": 4, "T": 4}, {"d": 3, "n": 6, "T": 4}]
# Largest relative error `raspicl verify` accepts for the compiled model (issue targets; float32
# batch_gd's, whose statistics these are). The measured float32 error is about 1e-4 on both
# targets; under gpt2 the contract's float32 bound on the mean statistics is loose (ln1 scales
# each averaged token: docs/size.md), about 4e-3 at the query at d = 2, n = 4, T = 4, so the
# gpt2 float32 checks accept only part of the prompts (71% and 31% at the two larger sizes, as
# batch_gd's do: REFUSES), where paper accepts 99.8-100%.
TOLERANCE = {"float64": 1e-8, "float32": 1e-2}
# x ~ N(0, I) and y = w^T x + noise with w ~ N(0, I). ISTA with a fixed step grows once
# lr |x|^2 > 2 on a prefix of one example; at lr = 0.1 the largest |v| at any token stays
# below 5 on every one of 20000 such prompts up to d = 3, n = 6, T = 4 (numpy,
# solvers.lasso_ista on every prefix), well inside vmax = 10 (at d = 4, n = 8, T = 8: 2 of
# 20000 beyond it, refused by name). lr = 0.2 diverges on early prefixes (0.2% beyond 10 at
# d = 3): larger steps need a larger vmax or a smaller domain.
DOMAIN = PromptDistribution(x_scale=1.0, w_scale=1.0, noise=1.0)


def _w0(d: int, w0) -> np.ndarray:
    return np.zeros(d) if w0 is None else np.asarray(w0, dtype=np.float64).reshape(d)


def program(d: int = 2, n: int = 4, T: int = 4, lr: float = 0.1, lam: float = 0.5,
            vmax: float = 10.0, w0=None) -> Program:
    w0 = _w0(d, w0)
    p = Program("lasso_ista", d=d, n=n,
                params={"d": d, "n": n, "T": T, "lr": lr, "lam": lam, "vmax": vmax,
                        "w0": w0.tolist()})
    zero_S = p.const("zero_S", np.zeros((d, d)))
    zero_b = p.const("zero_b", np.zeros(d))
    x_prev = p.mov("x_prev", Read(p.x, Offset(1)), note="x_j, at y token j")
    xx = p.let("xx", outer(x_prev, x_prev), note="x_j x_j^T")
    xy = p.let("xy", x_prev * p.y, note="x_j y_j")
    S = p.select("S", [0], zero_S, Read(xx, Mean("y")), note="mean x x^T over the examples")
    b = p.select("b", [0], zero_b, Read(xy, Mean("y")), note="mean x y over the examples")
    w = p.var("w", d, init=w0)
    v = p.var("v", d)
    for _ in p.loop(T):
        p.let(v, w - lr * (S @ w - b), note="w - lr (S w - b): the gradient step")
        p.apply(w, "soft_threshold", v, range=(-vmax, vmax), lam=lr * lam,
                note="soft_threshold(v, lr lam): the proximal step")
    pred = p.let("pred", w @ p.x, note="w_T^T x_q")
    p.output(pred, roles=("query",))
    return p


def reference(prompts: Prompts, d: int = 2, n: int = 4, T: int = 4, lr: float = 0.1,
              lam: float = 0.5, vmax: float = 10.0, w0=None) -> np.ndarray:
    """raspicl.solvers.lasso_ista on all n examples, w_T dotted with x_q: [B, 1]."""
    w = solvers.lasso_ista(prompts.X, prompts.y, _w0(d, w0), lr, lam, T)[:, -1]
    return solvers.predict(w, prompts.xq)[:, None]
