"""The Nadaraya-Watson kernel smoother with a Gaussian (RBF) kernel, predicting at the query.

With every example in view (x_1, y_1, ..., x_n, y_n), the prediction at x_q is the average of
the y_j weighted by an RBF kernel of bandwidth h:

    k_j = exp(-|x_q - x_j|^2 / (2 h^2)),     prediction  sum_j k_j y_j / sum_j k_j.

(It is one softmax-attention head with score -|x_q - x_j|^2 / (2 h^2); raspicl's reads are
uniform means, fixed offsets and fixed positions, so the program forms the weights itself.)
The query reads each x_j and y_j at its token (At; one register per example, as logistic_gd),
and then

    a_j = -(x.x - 2 x.x_j + x_j.x_j) / (2 h^2)   n squared distances    MLP (products)
    k_j = exp(a_j)                            n elementwise exps        MLP (apply: the gadget)
    num = sum_j k_j y_j,  den = sum_j k_j                               MLP (products)
    pred = num / |den|                                                  div

den >= n e^-amax > 0, so the division is defined at the query. exp's declared range is
[-amax, 0.25]: a_j <= 0 always, and 0 at x_j's own token, where the computed a_j's error bound
(1e-11) must stay inside the range too. The monitor refuses a prompt whose
|x_q - x_j|^2 / (2 h^2) exceeds amax (a finding naming the op), the rare far example on which
the smoother's weight would be below e^-amax. amax = 6 is as wide as was tried: the exp gadget
certifies float64's 1e-9 on [-6, 0.25] in 258 GeLU units (e^-6 = 0.0025).
"""

from __future__ import annotations

import numpy as np

from raspicl import At, Program, Read, solvers
from raspicl.prompts import PromptDistribution, Prompts

# `raspicl verify`'s default checks; the exp gadget is certified once per process (about 30 s
# for the erf GeLU, 50 s for the tanh one in float64: 258 units). The bandwidth grows with d
# (below).
GRID = [{"d": 1, "n": 2}, {"d": 2, "n": 4}, {"d": 3, "n": 6, "h": 2.5}]
# Largest relative error `raspicl verify` accepts for the compiled model (issue targets).
TOLERANCE = {"float64": 1e-8, "float32": 1e-3}
# x ~ N(0, I) and y = w^T x + noise with w ~ N(0, I): x_q - x_j ~ N(0, 2 I), so
# |x_q - x_j|^2 / (2 h^2) is (1 / h^2) chi^2_d and exceeds amax = 6 when chi^2_d > 6 h^2. With
# h = 2 and d <= 2, n <= 4, 20000 such prompts (noise 1) had it at the query on none (largest
# 5.4) and at an x token on one; at d = 3, n = 6 it happened at the query on 0.1% of the 1000
# verify prompts (seed 0), hence h = 2.5 there (chi^2_3 > 37.5: p ~ 4e-8 per pair). A larger d
# or n needs a larger h (or a narrower prompt distribution); the monitor refuses the rest by
# name.
DOMAIN = PromptDistribution(x_scale=1.0, w_scale=1.0, noise=1.0)


def program(d: int = 2, n: int = 4, h: float = 2.0, amax: float = 6.0) -> Program:
    p = Program("kernel_smoother", d=d, n=n, params={"d": d, "n": n, "h": h, "amax": amax})
    xs = [p.mov(f"x{j + 1}", Read(p.x, At(2 * j)), note=f"x_{j + 1}, read at its token")
          for j in range(n)]
    ys = [p.mov(f"y{j + 1}", Read(p.y, At(2 * j + 1)), note=f"y_{j + 1}, read at its token")
          for j in range(n)]
    c = 1.0 / (2.0 * h * h)
    ks = []
    for j, x in enumerate(xs):
        a = p.let(f"a{j + 1}", -c * (p.x @ p.x - 2.0 * (p.x @ x) + x @ x),
                  note=f"-|x - x_{j + 1}|^2 / (2 h^2), one op of products")
        ks.append(p.apply(f"k{j + 1}", "exp", a, range=(-amax, 0.25),
                          note=f"the kernel weight of example {j + 1}"))
    num = p.let("num", sum((k * y for k, y in zip(ks, ys, strict=True)), 0.0 * ks[0]),
                note="sum_j k_j y_j")
    den = p.let("den", sum(ks[1:], 1.0 * ks[0]), note="sum_j k_j")
    pred = p.div("pred", num, den, note="sum_j k_j y_j / sum_j k_j (den > 0)")
    p.output(pred, roles=("query",))
    return p


def reference(prompts: Prompts, d: int = 2, n: int = 4, h: float = 2.0,
              amax: float = 6.0) -> np.ndarray:
    """raspicl.solvers.kernel_smoother at x_q on all n examples: [B, 1]."""
    return solvers.kernel_smoother(prompts.X, prompts.y, prompts.xq, h)[:, None]
