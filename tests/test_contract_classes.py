"""Regression tests for the classes of silent wrong answers an outside search found (the
certificate issue), the ones fixed in the monitor's charges:

- a division whose divisor's own error bound is not small beside the divisor (cancellation):
  the first-order bound err_a/|s| + |a| err_s/s^2 no longer holds; the monitor now checks
  E_s < |s| / 2 and uses the exact enclosure;
- a Mean read whose averaged values cancel: the head sums the tokens, and its rounding scales
  with sum |v| / count, not with |mean|;
- a dividing LayerNorm whose mean is computed beside the +-N|s| anchors (paper target): the
  mean's rounding, u sum_j |A_j|, is charged to every read of that LayerNorm.

Each holds every accepted prediction to the float64 interpreter: within its bound and within
the model's tolerance (tests/test_contract.py's `held`). Each case's prompts are chosen to make
the values cancel.
"""

from __future__ import annotations

import numpy as np
import torch
from test_contract import held

from raspicl import Mean, Program, Read, random_prompts
from raspicl.compiler import CompilerConfig, compile_program
from raspicl.prompts import Prompts


def test_divisor_that_cancels_is_refused_or_right():
    """s = (1e8 y + 1) - 1e8 y is exactly 1, and the float64 interpreter is within 1e-8 of
    it; a float32 model (fusion off, so that s is computed as written) computes it with an
    error of about |y|: the quotient y / |s| is wrong by about 100% wherever |y| is not
    small."""
    p = Program("cancel", d=1, n=1)
    big = p.aff("big", p.y, W1=1e8, bias=1.0)
    s = p.aff("s", big, p.y, W1=1.0, W2=-1e8)
    p.output(p.div("q", p.y, s), roles=("y",))
    config = CompilerConfig.for_dtype("float32", min_acceptance=0.0, fusion=False)
    cm = compile_program(p, config).to(torch.float32)
    accepted = held(cm, p, random_prompts(100, 1, 1, seed=4))
    assert not accepted.all()


def test_mean_of_cancelling_values_in_float32():
    """A float32 mean over 64 y tokens, one pair of them +-2^17, the rest N(0, 0.01^2): the
    head's sum rounds at about 2^17 u, beside a mean of about 1e-3 (the monitor used to accept
    every such prompt, 26 of 300 beyond their bound)."""
    n = 64
    p = Program("mean", d=1, n=n)
    p.output(p.mov("m", Read(p.y, Mean("y"))), roles=("query",))
    cm = compile_program(p, CompilerConfig.for_dtype("float32", min_acceptance=0.0))
    cm = cm.to(torch.float32)
    base = random_prompts(300, 1, n, seed=6)
    rng = np.random.default_rng(6)
    y = rng.normal(0, 0.01, size=base.y.shape)
    for b in range(len(y)):
        i, j = rng.choice(n, 2, replace=False)
        y[b, i], y[b, j] = 2.0**17, -(2.0**17)
    held(cm, p, Prompts(base.X, y, base.xq, base.w))


def test_dividing_layernorm_mean_beside_its_anchors():
    """q = y / |s| with s = 1e10, then S q: the dividing LayerNorm's mean, computed beside
    anchors +-N |s| far above the numerator's row, rounds at about u N |s|, which the zero row
    cancels only to first order (the monitor used to accept 90 of 100 beyond their bound)."""
    S = 1e10
    for fusion in (True, False):
        p = Program("bigdiv", d=1, n=1)
        s = p.aff("s", p.y, W1=0.0, bias=S)
        q = p.div("q", p.y, s)
        p.output(p.aff("out", q, W1=S), roles=("y",))
        cm = compile_program(p, CompilerConfig(min_acceptance=0.0, fusion=fusion))
        held(cm, p, random_prompts(100, 1, 1, seed=8))
