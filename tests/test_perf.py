"""The speed-ups of feasibility and the compact plan, each against an independent computation.

- Gathered (compact.py) against a dense matrix product of the same random sparse matrix;
- fixed attention patterns: detected where queries and keys read positional rows only, and the
  pattern a block computes once equals the pattern the dense pass computes for every prompt;
  a head whose query reads a row a sublayer writes is not fixed, and still matches dense;
- feasibility's measure on the compact plan against the same walk over the dense pass's full
  residual list (check_contract): the same acceptance and findings, and needs within a
  summation-order difference;
- monitor.largest (and largest_in, over some rows) against np.nan_to_num(|a|, nan=inf).max,
  NaN and infinities included.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from raspicl import random_prompts
from raspicl.compact import SPARSE_MIN_ENTRIES, CompactPlan, Gathered
from raspicl.compiler import compile_program
from raspicl.compiler.feasibility import measure
from raspicl.contract import check_contract
from raspicl.contract.residuals import largest, largest_in, spans
from raspicl.errors import ContractWarning
from raspicl.prompts import Prompts
from raspicl.registry import find_program


def test_gathered_equals_the_dense_product():
    gen = torch.Generator().manual_seed(0)
    r, c = 300, 400
    assert r * c >= SPARSE_MIN_ENTRIES
    W = torch.zeros(r, c, dtype=torch.float64)
    for j in range(c):  # 1 to 3 nonzeros per column, at random rows
        rows = torch.randperm(r, generator=gen)[: 1 + j % 3]
        W[rows, j] = torch.randn(len(rows), generator=gen, dtype=torch.float64)
    W[:, 7] = 0.0  # an all-zero column
    g = Gathered.of(W)
    assert g is not None and g.idx.shape == (3, c)
    x = torch.randn(50, r, generator=gen, dtype=torch.float64)
    b = torch.randn(c, generator=gen, dtype=torch.float64)
    want = x.numpy() @ W.numpy() + b.numpy()
    np.testing.assert_allclose(g.apply(x, b).numpy(), want, rtol=1e-13, atol=1e-13)
    assert Gathered.of(torch.ones(r, c, dtype=torch.float64)) is None  # dense: a product
    assert Gathered.of(W[:10, :10]) is None  # small: a product


def _compiled(name, params, loops="unroll"):
    pf = find_program(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ContractWarning)
        return pf.build(**params), compile_program(pf.build(**params), loops=loops,
                                                   domain=pf.domain)


def _dense_pattern(attn, resid: torch.Tensor) -> torch.Tensor:
    """The dense pass's attention weights, written out from the weights: [B, H, T, T]."""
    q = torch.einsum("btd,hde->bhte", resid, attn.W_Q) + attn.b_Q[None, :, None, :]
    k = torch.einsum("btd,hde->bhte", resid, attn.W_K) + attn.b_K[None, :, None, :]
    s = q @ k.transpose(-1, -2) / math.sqrt(attn.W_Q.shape[-1])
    T = resid.shape[1]
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, dim=-1)


@pytest.mark.parametrize("name,params,loops", [("gd_step", {"d": 3}, "unroll"),
                                               ("ridge", {"d": 2, "n": 3}, "share")])
def test_fixed_patterns_equal_the_dense_patterns(name, params, loops):
    program, cm = _compiled(name, params, loops)
    plan = cm.plan()
    kept = [layer for layer, a in enumerate(plan.attns) if a.n_heads]
    assert kept and all(plan.fixed[layer] for layer in kept)  # the compiler's moves
    prompts = random_prompts(16, program.d, program.n, seed=5)
    tok = cm.tokens(prompts)
    T = tok.shape[1]
    resid = tok @ cm.model.embed.W_E + cm.model.pos_embed.W_pos[:T]
    for layer in cm.model.cfg.order():
        block = cm.model.blocks[layer]
        if layer in kept:
            a = plan.attns[layer]
            want = _dense_pattern(block.attn, resid)  # every prompt's own pattern
            at = block.attn  # the heads the plan keeps: a value column that reaches W_O
            heads = [h for h in range(at.W_O.shape[0])
                     if (((at.W_V[h] != 0).any(dim=0) | (at.b_V[h] != 0))
                         & (at.W_O[h] != 0).any(dim=1)).any()]
            assert len(heads) == a.n_heads
            got = plan._pattern(layer, T, resid.dtype, resid.device)
            for i, h in enumerate(heads):
                err = (got[i][None] - want[:, h]).abs().max()
                assert float(err) <= 1e-12, (layer, h, float(err))
        resid = block(resid)


def test_a_head_reading_a_written_row_is_not_fixed_and_matches_dense():
    program, cm = _compiled("gd_step", {"d": 2})
    model = cm.model
    plan = CompactPlan(model)
    layer = next(i for i, a in enumerate(plan.attns) if a.n_heads and i > 0)
    written = int(plan.mlps[0].out_rows[0])
    with torch.no_grad():  # the query now also reads a row block 0's MLP writes
        model.blocks[layer].attn.W_Q[:, written, :] = 0.25
    plan = cm.plan()
    assert not plan.fixed[layer]
    prompts = random_prompts(32, program.d, program.n, seed=9)
    dense = cm.to()
    dense.compact = False
    a = cm.residuals(prompts, check="ignore")
    b = dense.residuals(prompts, check="ignore")
    for x, y in zip(a, b, strict=True):
        assert float((np.abs(x - y) / np.maximum(np.abs(y), 1.0)).max()) <= 1e-9


@pytest.mark.parametrize("name,params,loops", [("sherman_morrison", {"d": 3}, "unroll"),
                                               ("ridge", {"d": 2, "n": 3}, "share")])
def test_measure_on_the_compact_plan_matches_the_dense_walk(name, params, loops):
    program, cm = _compiled(name, params, loops)
    p = random_prompts(48, program.d, program.n, seed=21)
    scale = np.where(np.arange(48) % 3 == 0, 60.0, 1.0)  # a third far outside the domain
    prompts = Prompts(p.X * scale[:, None, None], p.y * scale[:, None],
                      p.xq * scale[:, None], p.w)
    dense = cm.to()
    dense.compact = False
    want = check_contract(cm.layout, dense.residuals(prompts, check="ignore"), "float64")
    got = measure(cm.model, cm.layout, prompts, "float64", chunk=7, adjoint="needed")
    np.testing.assert_array_equal(got.accepted, want.accepted)
    assert not want.accepted.all() and want.accepted.any()
    assert sorted((f.prompt, str(f.op), f.quantity) for f in got.findings) == \
        sorted((f.prompt, str(f.op), f.quantity) for f in want.findings)
    assert set(got.needs) == set(want.needs)
    # a need far outside the domain (a division's Q / s^2 with a small s) amplifies the
    # passes' summation-order difference to a relative 2e-9 here; the constants re-tuned from
    # a need keep bound_margin^2 = 4 above it
    for key, need in want.needs.items():
        assert abs(got.needs[key] - need) <= 1e-6 * max(abs(need), 1e-300), key
    # the bounds hold terms measured at the rounding level (a division's |ratio - 1|), which a
    # summation-order change of the pass moves by a relative few 1e-6
    ok = np.isfinite(want.bound)
    np.testing.assert_array_equal(np.isfinite(got.bound), ok)
    np.testing.assert_allclose(got.bound[ok], want.bound[ok], rtol=1e-4)


def test_largest_equals_nan_to_num_max():
    rng = np.random.default_rng(0)
    for trial in range(60):
        a = rng.normal(size=(5, 3, 4)) * 10.0 ** rng.integers(-5, 300)
        if trial % 3 == 0:
            a[rng.integers(5), rng.integers(3), rng.integers(4)] = np.nan
        if trial % 4 == 0:
            a[rng.integers(5), rng.integers(3), rng.integers(4)] = -np.inf
        if trial % 5 == 0:
            a[rng.integers(5), rng.integers(3), rng.integers(4)] = np.inf
        want = np.nan_to_num(np.abs(a), nan=np.inf).max(axis=(1, 2))
        np.testing.assert_array_equal(largest(a), want)
        rows = sorted(rng.choice(4, size=int(rng.integers(1, 4)), replace=False).tolist())
        want = np.nan_to_num(np.abs(a[..., rows]), nan=np.inf).max(axis=(1, 2))
        np.testing.assert_array_equal(largest_in(a, spans(rows)), want)
