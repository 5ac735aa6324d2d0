"""The compact execution plan (raspicl.compact) against the dense forward pass.

The plan drops only exact zeros of the dense pass, so the two differ only in the order of their
floating-point sums. Stated tolerance, float64: every residual entry within 1e-9 of the dense
one relative to max(|dense|, 1) (a summation-order change is ~1e-16; the product gadget, which
divides GeLU outputs by e^2 with e down to ~1e-3, and the division anchors amplify it by up to
~1e6), and every prediction within the sum of the two passes' error bounds of the dense one
(each pass lies within its own bound of the exact value). float32: the predictions within
that sum of bounds. The same for the transposed pass (`transposed.last_residual`), which predict
and run make when no monitor reads the residuals. A larger program (LARGE) runs the sparse forms of
its product gadgets' matrices (compact.Gathered, compact.Scattered) in both passes.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from raspicl import compact, random_prompts, transposed
from raspicl.compact import CompactPlan
from raspicl.errors import DomainWarning
from raspicl.interpret import interpret
from raspicl.registry import find_program
from raspicl.transposed import TransposedPass, last_residual
from raspicl.verify import compile_checked

RESIDUAL_TOLERANCE = 1e-9
CASES = [("gd_step", {"d": 3}, "unroll"), ("sherman_morrison", {"d": 3}, "unroll"),
         ("ridge", {"d": 2, "n": 3}, "unroll"), ("ridge", {"d": 2, "n": 3}, "share")]
# a program large enough that its first MLP's W_out is applied scattered (compact.Scattered)
# and a later one's W_in gathered (compact.Gathered)
LARGE = ("sherman_morrison", {"d": 12}, "unroll")


def compiled(name, params, loops, dtype="float64"):
    """The program and its model, compiled as verify compiles it for `dtype`."""
    pf = find_program(name)
    program = pf.build(**params)
    return program, compile_checked(pf, program, dtype, loops=loops)


def dense_of(cm):
    d = cm.to()
    d.compact = False
    return d


def bounded(cm, prompts):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DomainWarning)
        return cm.run(prompts, check="warn")


@pytest.fixture
def transposed_always(monkeypatch):
    """transposed.last_residual on the transposed pass whatever the batch (the tests' batches
    are below TRANSPOSED_MIN_TOKENS)."""
    monkeypatch.setattr(transposed, "TRANSPOSED_MIN_TOKENS", 0)


@pytest.mark.parametrize("name,params,loops", [*CASES, LARGE])
def test_compact_matches_dense_float64(name, params, loops, transposed_always):
    program, cm = compiled(name, params, loops)
    if (name, params, loops) == LARGE:
        forms = {type(f) for m in cm.plan().mlps for f in (m.sparse_in, m.sparse_out)}
        assert {compact.Scattered, compact.Gathered} <= forms
    dense = dense_of(cm)
    prompts = random_prompts(64, program.d, program.n, seed=11)
    a = cm.residuals(prompts, check="ignore")
    b = dense.residuals(prompts, check="ignore")
    assert len(a) == len(b) == 1 + 2 * len(cm.layout["architecture"]["block_order"])
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        err = np.abs(x - y) / np.maximum(np.abs(y), 1.0)
        assert float(err.max()) <= RESIDUAL_TOLERANCE, f"residual {i}: {err.max():.3g}"
    got, want = bounded(cm, prompts), bounded(dense, prompts)
    assert np.all(np.abs(got.values - want.values) <= got.bound + want.bound)
    # the transposed pass (last_residual: predict and run without the monitor) too
    last = last_residual(cm.plan(), torch.from_numpy(a[0].copy())).numpy()
    err = np.abs(last - b[-1]) / np.maximum(np.abs(b[-1]), 1.0)
    assert float(err.max()) <= RESIDUAL_TOLERANCE, f"last residual: {err.max():.3g}"
    fast = cm.predict(prompts, check="ignore")
    assert np.all(np.abs(fast - want.values) <= got.bound + want.bound)
    # and within the monitor's bound of the exact (interpreter) value where it accepts
    exact = interpret(program, prompts).output()
    ok = got.accepted
    assert ok.mean() > 0.5
    assert np.all(np.abs(fast - exact)[ok] <= got.bound[ok])
    # the plan did skip work: the bundled programs' weights are mostly zero
    work = cm.plan().work(cm.model)
    assert work["compact"] < 0.25 * work["dense"]


@pytest.mark.parametrize("name,params,loops", CASES[:3])
def test_compact_matches_dense_float32(name, params, loops, transposed_always):
    program, cm = compiled(name, params, loops, "float32")
    prompts = random_prompts(64, program.d, program.n, seed=12)
    got, want = bounded(cm, prompts), bounded(dense_of(cm), prompts)
    ok = np.isfinite(got.bound) & np.isfinite(want.bound)
    assert ok.mean() > 0.5
    assert np.all(np.abs(got.values - want.values)[ok] <= (got.bound + want.bound)[ok])
    fast = cm.predict(prompts, check="ignore")  # the transposed pass (last_residual)
    assert np.all(np.abs(fast - want.values)[ok] <= (got.bound + want.bound)[ok])


def test_plan_skips_zero_heads_units_and_rows():
    """What the plan keeps, recomputed from the weights of every block of gd_step."""
    _, cm = compiled("gd_step", {"d": 2}, "unroll")
    plan = CompactPlan(cm.model)
    fast = TransposedPass(plan)
    for layer, block in enumerate(cm.model.blocks):
        a, m = plan.attns[layer], plan.mlps[layer]
        useful = [h for h in range(block.attn.W_O.shape[0])
                  if (block.attn.W_O[h] != 0).any() and ((block.attn.W_V[h] != 0).any()
                                                         or (block.attn.b_V[h] != 0).any())]
        assert a.n_heads == len(useful)
        written = ((block.attn.W_O != 0).any(dim=(0, 1)) | (block.attn.b_O != 0))
        assert a.out_rows.tolist() == torch.nonzero(written).flatten().tolist()
        units = ((block.mlp.W_out != 0).any(dim=1)
                 & ((block.mlp.W_in != 0).any(dim=0) | (block.mlp.b_in != 0)))
        assert m.W_in.shape[1] == int(units.sum())
        # the transposed pass keeps a mirrored or linear pair (GeLU(y), GeLU(-y)) as one unit
        t = fast.mlps[layer]
        assert t.W_in.shape[1] + t.n_pairs + t.n_linear == int(units.sum())
        assert t.n_pairs > 0
        assert set(m.in_rows.tolist()) == set(
            torch.nonzero((block.mlp.W_in[:, units] != 0).any(dim=1)).flatten().tolist())


def test_plan_follows_the_weights_and_nonfinite_prompts_run_dense():
    program, cm = compiled("gd_step", {"d": 2}, "unroll")
    prompts = random_prompts(8, program.d, program.n, seed=1)
    before = cm.predict(prompts, check="ignore")
    plan = cm.plan()
    with torch.no_grad():
        cm.model.unembed.W_U.mul_(2.0)  # the readout is not in the plan; a block's weight is
        cm.model.blocks[0].attn.W_O.mul_(0.0)
    assert not plan.matches(cm.model)
    after = cm.predict(prompts, check="ignore")
    assert cm.plan() is not plan
    dense = dense_of(cm).predict(prompts, check="ignore")
    np.testing.assert_allclose(after, dense, rtol=1e-9, atol=1e-9)
    assert not np.allclose(after, before)
    tok = prompts.tokens()
    tok[0, 0, 1] = np.nan
    _, cm = compiled("gd_step", {"d": 2}, "unroll")
    got = cm.predict(tok, check="ignore")
    want = dense_of(cm).predict(tok, check="ignore")
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    assert np.isnan(got[0]).all()


@pytest.mark.parametrize("batch", [7, 8])
def test_transposed_pass_in_chunks_matches_one_chunk(batch, monkeypatch, transposed_always):
    """The transposed pass in chunks of 2 prompts (an odd and an even batch: the padding
    prompts) against one chunk, and against the dense pass; it writes over its input."""
    program, cm = compiled("gd_step", {"d": 2}, "unroll")
    dense = dense_of(cm).residuals(random_prompts(batch, program.d, program.n, seed=4),
                                   check="ignore")
    embedded = torch.from_numpy(dense[0])
    whole = last_residual(cm.plan(), embedded.clone())
    T = embedded.shape[1]
    monkeypatch.setattr(transposed, "CHUNK_TOKENS", 2 * T)
    given = embedded.clone()
    chunked = last_residual(cm.plan(), given)
    assert chunked is given
    np.testing.assert_allclose(chunked.numpy(), whole.numpy(), rtol=1e-12, atol=1e-12)
    err = np.abs(chunked.numpy() - dense[-1]) / np.maximum(np.abs(dense[-1]), 1.0)
    assert float(err.max()) <= RESIDUAL_TOLERANCE


def test_last_below_the_threshold_is_the_streamed_pass():
    """Below TRANSPOSED_MIN_TOKENS, last_residual adds the streamed pass's sublayers in
    place: the monitored pass's numbers exactly."""
    program, cm = compiled("sherman_morrison", {"d": 3}, "unroll")
    prompts = random_prompts(4, program.d, program.n, seed=6)
    res = cm.residuals(prompts, check="ignore")
    assert res[0].shape[0] * res[0].shape[1] < transposed.TRANSPOSED_MIN_TOKENS
    given = torch.from_numpy(res[0].copy())
    assert last_residual(cm.plan(), given) is given
    np.testing.assert_array_equal(given.numpy(), res[-1])


def test_transposed_pass_with_scores_and_a_mean_pattern(transposed_always):
    """The transposed pass where a head's scores depend on the prompt (its query made to read a
    row an MLP writes: no fixed pattern) and where a fixed pattern is not one weight 1 per row
    (the first block's queries zeroed: every head attends to the earlier tokens alike, the
    [T, T] by [T, B] product), against the dense pass on the same weights."""
    program, cm = compiled("gd_step", {"d": 2}, "unroll")
    model = cm.model
    plan = CompactPlan(model)
    kept = [i for i, a in enumerate(plan.attns) if a.n_heads]
    first, layer = kept[0], next(i for i in kept if i > 0)
    written = int(plan.mlps[0].out_rows[0])
    with torch.no_grad():
        model.blocks[layer].attn.W_Q[:, written, :] = 0.25
        model.blocks[first].attn.W_Q.zero_()
        model.blocks[first].attn.b_Q.zero_()
    plan = cm.plan()
    prompts = random_prompts(32, program.d, program.n, seed=9)
    dense = dense_of(cm).residuals(prompts, check="ignore")
    T = dense[0].shape[1]
    assert not plan.fixed[layer] and plan.fixed[first]
    assert TransposedPass(plan)._fixed(first, T, torch.float64, torch.device("cpu"))[1] is None
    last = last_residual(plan, torch.from_numpy(dense[0].copy())).numpy()
    streamed = cm.residuals(prompts, check="ignore")[-1]  # (no score column: scores all 0)
    for got in (last, streamed):
        err = np.abs(got - dense[-1]) / np.maximum(np.abs(dense[-1]), 1.0)
        assert float(err.max()) <= RESIDUAL_TOLERANCE
