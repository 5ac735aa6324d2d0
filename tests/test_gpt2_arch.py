"""The architecture objects (raspicl.arch): their facts, options and errors, and the constants
the gpt2 target's gadgets and monitor take from them, checked against independent computations
(mpmath series, torch's GeLU, hand algebra)."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raspicl.arch import (
    GPT2,
    PAPER,
    PRODUCT_TRUNCATION,
    arch_of_layout,
    get_arch,
)
from raspicl.compiler.gadgets.layernorm import ln_read_scale, through_layernorm
from raspicl.model import ModelConfig, Transformer


def test_paper_and_gpt2_facts():
    assert (PAPER.ln_before_attention, PAPER.ln_final, PAPER.act_fn) == (False, False, "gelu_erf")
    assert PAPER.shared_eps is None and PAPER.shared_blocks and not PAPER.heads_span_model
    assert (GPT2.ln_before_attention, GPT2.ln_final, GPT2.act_fn) == (True, True, "gelu_new")
    assert GPT2.shared_eps == 1e-5 and GPT2.heads_span_model and not GPT2.shared_blocks
    assert GPT2.approximate == "tanh" and get_arch("gpt2", act_fn="gelu").approximate == "none"
    assert get_arch(None) is PAPER and get_arch("paper") is PAPER


def test_options_and_errors():
    a = get_arch("gpt2", ln_eps=1e-6, act_fn="gelu")
    assert (a.shared_eps, a.act_fn) == (1e-6, "gelu")
    with pytest.raises(ValueError, match="unknown architecture 'gpt3'"):
        get_arch("gpt3")
    with pytest.raises(ValueError, match="ln_eps applies to gpt2"):
        get_arch("paper", ln_eps=1e-5)
    with pytest.raises(ValueError, match="act_fn must be one of gelu, gelu_new"):
        get_arch("gpt2", act_fn="relu")
    with pytest.raises(ValueError, match="positive finite"):
        get_arch("gpt2", ln_eps=-1.0)
    rec = {"name": "gpt2", "ln_eps": 1e-6, "act_fn": "gelu"}
    assert arch_of_layout(rec) == a
    assert arch_of_layout({"name": "paper"}) is PAPER


def _series_error(x: float, approximate: str, richardson: bool) -> float:
    """|sq(x) / x^2 - 1| of the product gadget's square, in 50-digit arithmetic: sq_e(t) / t^2
    with x = e t is g(x) = (GeLU(x) + GeLU(-x)) sqrt(pi / 2) / x^2 (or its Richardson
    combination (4 g(x) - g(2x)) / 3)."""
    mpmath.mp.dps = 50

    def gelu(z):
        if approximate == "none":
            return z * (1 + mpmath.erf(z / mpmath.sqrt(2))) / 2
        a = mpmath.sqrt(2 / mpmath.pi)
        return z * (1 + mpmath.tanh(a * (z + mpmath.mpf("0.044715") * z**3))) / 2

    def g(z):
        return (gelu(z) + gelu(-z)) * mpmath.sqrt(mpmath.pi / 2) / z**2

    x = mpmath.mpf(x)
    val = (4 * g(x) - g(2 * x)) / 3 if richardson else g(x)
    return float(abs(val - 1))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
@pytest.mark.parametrize("richardson", [True, False])
def test_product_truncation_bounds_the_series(approximate, richardson):
    """The coefficients the monitor charges bound the true truncation on the whole range the
    monitor admits (|x| <= SERIES_LIMIT: 0.5 with Richardson, 1 without), and are not loose by
    more than a few percent at small x (so a wrong series would be caught)."""
    from raspicl.contract.charges import SERIES_LIMIT

    coefs = PRODUCT_TRUNCATION[approximate]["richardson" if richardson else "plain"]
    powers = (4, 6, 8) if richardson else (2, 4)
    for x in np.geomspace(1e-3, SERIES_LIMIT[richardson], 40):
        bound = sum(c * x**p for c, p in zip(coefs, powers, strict=True))
        true = _series_error(x, approximate, richardson)
        assert true <= bound, (x, true, bound)
    x = 1e-2
    assert _series_error(x, approximate, richardson) > 0.9 * coefs[0] * x ** powers[0]


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_odd_part_is_exact_and_quadratic_coefficient_shared(approximate):
    """GeLU(z) - GeLU(-z) = z for both forms (the affine and gate gadgets), and
    GeLU(z) + GeLU(-z) = sqrt(2/pi) z^2 + O(z^4) for both (the product gadget's constant)."""
    z = torch.linspace(-30, 30, 2001, dtype=torch.float64)
    odd = F.gelu(z, approximate=approximate) - F.gelu(-z, approximate=approximate)
    assert torch.allclose(odd, z, rtol=0, atol=1e-13)
    t = torch.tensor([1e-4, 3e-4], dtype=torch.float64)
    even = (F.gelu(t, approximate=approximate) + F.gelu(-t, approximate=approximate)) / t**2
    assert torch.allclose(even, torch.full_like(t, math.sqrt(2 / math.pi)), rtol=1e-7)
    # a closed gate (both arguments <= -40) outputs nothing
    assert float(F.gelu(torch.tensor(-40.0, dtype=torch.float64), approximate=approximate)) \
        == pytest.approx(0.0, abs=1e-300)


def test_reads_through_a_layernorm_with_constant_anchors():
    """LN(x) @ through_layernorm(W) = ratio * (x @ W) with ratio = c / sigma, for a residual
    holding +-N in two rows and a zero row (layernorm.py), computed by hand."""
    rng = np.random.default_rng(0)
    D, N, zero = 12, 1e3, 0
    x = np.zeros((5, D))
    x[:, 2:10] = rng.normal(size=(5, 8)) * 3
    x[:, 10], x[:, 11] = N, -N
    W = np.zeros((D, 3))
    W[2:10] = rng.normal(size=(8, 3))
    c = ln_read_scale(N, D)
    assert c == pytest.approx(N * math.sqrt(2 / D))
    mu = x.mean(axis=1, keepdims=True)
    sigma = np.sqrt(x.var(axis=1, keepdims=True) + 1e-5)
    ln = (x - mu) / sigma * c
    got = ln @ through_layernorm(W, zero)
    ratio = c / sigma
    np.testing.assert_allclose(got, ratio * (x @ W), rtol=1e-12)
    # ratio = 1 - Q / (4 N^2) + ..., Q the squared deviation about the mean of every row but
    # the anchors, plus the anchors' own 2 mu^2 (D var = (N - mu)^2 + (N + mu)^2 + the rest)
    Q = ((x[:, :10] - mu) ** 2).sum(axis=1, keepdims=True) + 2 * mu**2
    np.testing.assert_allclose(1 - ratio, Q / (4 * N**2), rtol=1e-3)
    with pytest.raises(AssertionError, match="zero row"):
        W[zero, 0] = 1.0
        through_layernorm(W, zero)


def test_gpt2_model_forward_is_gpt2_order():
    """Transformer under GPT2: resid + attn(ln1(resid)), + mlp(ln2(.)), ln_final before W_U,
    against a hand-written forward with random weights."""
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=8, n_layers=2, n_heads=2, d_head=4, d_mlp=6, n_ctx=5, d_token=3,
                      d_out=2, ln_eps=(1e-5, 1e-5), arch=GPT2)
    m = Transformer(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    tok = torch.randn(3, 5, 3, dtype=torch.float64)

    def ln(x, mod):
        return F.layer_norm(x, (8,), mod.w, mod.b, 1e-5)

    r = tok @ m.embed.W_E + m.pos_embed.W_pos
    for blk in m.blocks:
        h = ln(r, blk.ln1)
        att = torch.zeros_like(r)
        for i in range(2):
            q = h @ blk.attn.W_Q[i] + blk.attn.b_Q[i]
            k = h @ blk.attn.W_K[i] + blk.attn.b_K[i]
            v = h @ blk.attn.W_V[i] + blk.attn.b_V[i]
            s = (q @ k.transpose(-1, -2) / 2.0).masked_fill(
                torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
            att = att + torch.softmax(s, -1) @ v @ blk.attn.W_O[i]
        r = r + att + blk.attn.b_O
        pre = ln(r, blk.ln2) @ blk.mlp.W_in + blk.mlp.b_in
        gelu = 0.5 * pre * (1 + torch.tanh(math.sqrt(2 / math.pi) * (pre + 0.044715 * pre**3)))
        r = r + gelu @ blk.mlp.W_out + blk.mlp.b_out
    want = ln(r, m.ln_final) @ m.unembed.W_U + m.unembed.b_U
    torch.testing.assert_close(m(tok), want, rtol=1e-12, atol=1e-12)
