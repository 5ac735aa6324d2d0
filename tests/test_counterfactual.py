"""Exact counterfactuals (raspicl.counterfactual): for every variable of three bundled programs,
prompt A run with the variable set to its value under prompt B, by the interpreter (exact) and
by the compiled model patched where groundtruth.json puts the variable (its rows, its rotated
directions in a disguised model, or the carriers of a fused value): the two agree within the
runtime monitor's bound of the patched run, on both targets, plain and disguised. The
interpreter override itself is checked against running the program on edited tokens."""

from __future__ import annotations

import numpy as np
import pytest
from bench_models import compiled

from raspicl import interpret, random_prompts
from raspicl.counterfactual import interchange, override_trace, value_of
from raspicl.errors import RaspiclError
from raspicl.groundtruth import derive

CASES = [("gd_step", {"d": 2}), ("sherman_morrison", {"d": 2}), ("ridge", {"d": 2, "n": 2})]


def _check(program, cm, fusion: bool) -> tuple[int, int]:
    gt = derive(cm.layout)
    A = random_prompts(12, program.d, program.n, seed=21)
    B = random_prompts(12, program.d, program.n, seed=22)
    done = refused = 0
    moved = 0
    for v in gt.variables:
        try:
            r = interchange(cm, program, A, B, v.name, gt=gt)
        except RaspiclError as exc:
            assert fusion and not v.stored and "fused" in str(exc), (v.name, exc)
            refused += 1
            continue
        ok = r.accepted
        # an intervention may leave the calibrated domain (B's A^-1 x beside A's x makes
        # another divisor): the monitor refuses those prompts; it vouches for the rest
        assert ok.mean() >= 0.25, (v.name, ok.mean())
        err = r.error()[ok]
        assert (err <= r.bound[ok]).all(), (v.name, err.max(), r.bound[ok].max())
        moved += bool(np.nanmax(np.abs(r.effect())) > 1e-3)
        if v.stored and v.op is not None:  # a plain activation patch from B's own run
            m = interchange(cm, program, A, B, v.name, source="model", gt=gt)
            scale = np.maximum(np.abs(r.exact), 1.0)
            assert (np.abs(m.patched - r.exact)[ok] <= 1e-6 * scale[ok]).all(), v.name
        done += 1
    assert moved >= 3, "interventions that move the prediction"
    return done, refused


@pytest.mark.parametrize("seed", [None, 4], ids=["plain", "disguised"])
@pytest.mark.parametrize("arch", ["paper", "gpt2"])
@pytest.mark.parametrize(("name", "params"), CASES, ids=[c[0] for c in CASES])
def test_every_variable_unfused(name, params, arch, seed):
    program, cm = compiled(name, arch, params, seed=seed, pad=2 if seed else 0, fusion=False)
    done, refused = _check(program, cm, fusion=False)
    assert refused == 0 and done == len(derive(cm.layout).variables)


@pytest.mark.parametrize("arch", ["paper", "gpt2"])
@pytest.mark.parametrize(("name", "params"), CASES, ids=[c[0] for c in CASES])
def test_every_variable_fused_default(name, params, arch):
    """The default compile fuses linear values into their readers: such a value is patched on
    its carriers (and those of its fused dependents), or refused with the reason."""
    program, cm = compiled(name, arch, params)
    done, _ = _check(program, cm, fusion=True)
    assert done >= 3


def test_override_equals_edited_tokens():
    """Overriding the input x equals running the program on tokens with B's x; overriding a
    computed value and reading it back gives B's value; every later op sees it."""
    program, cm = compiled("gd_step", "paper", {"d": 2})
    A = random_prompts(5, 2, 1, seed=1)
    B = random_prompts(5, 2, 1, seed=2)
    tb = B.tokens()
    ta = A.tokens()
    edited = ta.copy()
    edited[:, :, 1:] = tb[:, :, 1:]
    over = override_trace(program, ta, {"x": tb[:, :, 1:]}, cm.layout)
    assert np.array_equal(over.output(), interpret(program, edited).output())
    trace_b = interpret(program, tb)
    over = override_trace(program, ta, {"g": value_of(cm.layout, trace_b, "g")}, cm.layout)
    assert np.array_equal(value_of(cm.layout, over, "g")[:, 1:], trace_b.after[3][:, 1:])
    # pred = (w0 - 2 lr g)(at the y token) . x_q: with B's g, A's query
    w0 = np.array([0.5, -0.5])
    want = ((w0 - 0.2 * trace_b.after[3][:, 1]) * A.xq).sum(-1)
    assert np.allclose(over.output()[:, 0, 0], want, atol=1e-12)
