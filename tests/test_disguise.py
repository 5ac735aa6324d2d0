"""Disguised models (raspicl.disguise): the residual basis rotated by a random orthogonal map
that fixes the all-ones direction, folded into the weights. On every bundled program at its
smallest size, on both targets, in float64: the disguised model's predictions equal the plain
model's within the two runtime bounds, and the interpreter's within the disguised model's own
bound (its monitor reads the stream through the inverse map); every register read back through
the ground truth's rotated directions equals the interpreter's; with padding too. The HF export
of a disguised gpt2 model loads unmodified in GPT2Model and matches. Non-uniform LayerNorm gains
are folded first."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from bench_models import ARCHS, PROGRAMS, compiled

from raspicl import interpret, random_prompts
from raspicl.cli import main
from raspicl.compiled import CompiledModel
from raspicl.disguise import disguise, random_rotation
from raspicl.disguise_layout import disguise_record
from raspicl.errors import RaspiclError
from raspicl.export import load, save
from raspicl.groundtruth import derive, load_groundtruth
from raspicl.verify import tolerance_for

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def rel(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(b)
    return float((np.abs(a - b)[ok] / np.maximum(np.abs(b[ok]), 1.0)).max())


def test_random_rotation_fixes_ones_and_pinned_rows():
    Q = random_rotation(9, seed=4, pinned=(2, 7))
    assert np.allclose(Q @ Q.T, np.eye(9), atol=1e-13)
    assert np.allclose(np.ones(9) @ Q, np.ones(9), atol=1e-13)
    for r in (2, 7):
        assert Q[r, r] == 1.0 and np.count_nonzero(Q[r]) == 1 and np.count_nonzero(Q[:, r]) == 1
    free = [j for j in range(9) if j not in (2, 7)]
    assert np.abs(Q[np.ix_(free, free)]).max() < 0.99  # no free row stays on its axis
    assert not np.allclose(Q, random_rotation(9, seed=5, pinned=(2, 7)))
    assert np.array_equal(Q, random_rotation(9, seed=4, pinned=(2, 7)))


@pytest.mark.parametrize("pad", [0, 5])
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", PROGRAMS)
def test_disguised_matches_plain_within_bounds(name, arch, pad):
    program, plain = compiled(name, arch)
    _, dis = compiled(name, arch, seed=7, pad=pad)
    a = dis.layout["architecture"]
    assert a["d_model"] >= plain.layout["architecture"]["d_model"] + pad
    prompts = random_prompts(64, program.d, program.n, seed=3)
    run_p = plain.run(prompts, check="warn")
    run_d = dis.run(prompts, check="warn")
    ok = run_p.accepted & run_d.accepted
    assert ok.mean() > 0.9, (run_p.accepted.mean(), run_d.accepted.mean())
    diff = np.abs(run_d.values - run_p.values)[ok]
    assert (diff <= run_p.bound[ok] + run_d.bound[ok]).all(), diff.max()
    want = interpret(program, prompts).output()
    assert (np.abs(run_d.values - want)[ok] <= run_d.bound[ok]).all()
    # every variable read along its recorded (rotated) directions is the interpreter's
    gt = derive(dis.layout)
    trace = interpret(program, prompts)
    res = dis.residuals(prompts, check="ignore")
    tol = tolerance_for(__import__("raspicl.registry").registry.find_program(name), "float64")
    for v in gt.variables:
        if not v.stored or v.op is None:
            continue
        got = res[v.written] @ v.direction_matrix()
        assert rel(got[ok], trace.after[v.op][ok]) < tol, v.name
        assert np.allclose(got, dis.decode(res, v.register, v.version), atol=1e-9)
    # the disguise hides the axes: no stored variable's direction is a row of the stream
    for v in gt.variables:
        if v.stored and v.width:
            assert np.abs(np.asarray(v.directions)).max() < 0.999, v.name


def test_saved_disguised_model_loads_and_vouches(tmp_path):
    program, dis = compiled("sherman_morrison", "paper", seed=2, pad=3)
    out = save(dis, tmp_path / "sm")
    back = load(out)
    rec = disguise_record(back.layout)
    assert rec is not None and rec.seed == 2 and rec.pad == 3
    prompts = random_prompts(16, program.d, program.n, seed=1)
    v1, b1 = dis.predict(prompts, with_bound=True)
    v2, b2 = back.predict(prompts, with_bound=True)
    assert np.array_equal(v1, v2) and np.allclose(b1, b2)
    gt = load_groundtruth(out)
    assert gt.basis["disguised"] and gt.basis["pad"] == 3
    for v in gt.variables:
        if v.stored:
            assert np.array_equal(np.asarray(v.directions), rec.basis[list(v.rows)])


def test_disguised_gpt2_exports_to_hf_unmodified(tmp_path):
    pytest.importorskip("transformers")
    from raspicl.interop.hf import hf_predict, load_hf, load_readout

    program, dis = compiled("ridge", "gpt2", {"d": 2, "n": 2}, seed=1, pad=4)
    out = save(dis, tmp_path / "ridge")
    gpt2 = load_hf(out)
    assert type(gpt2).__name__ == "GPT2Model"
    assert gpt2.config.n_embd == dis.layout["architecture"]["d_model"]
    prompts = random_prompts(8, program.d, program.n, seed=5)
    tokens = torch.from_numpy(prompts.tokens())
    pos = dis.layout["output"]["positions"]
    pred = hf_predict(gpt2, load_readout(out), tokens)[:, pos].numpy()
    assert rel(pred, dis.predict(prompts)) < 1e-10
    _, plain = compiled("ridge", "gpt2", {"d": 2, "n": 2})
    assert rel(pred, plain.predict(prompts)) < 1e-8


def test_non_uniform_layernorm_gains_are_folded():
    program, plain = compiled("gd_step", "gpt2")
    state = {k: v.clone() for k, v in plain.model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    for k in state:
        if k.endswith(("ln1.w", "ln2.w", "ln_final.w")):
            state[k] = state[k] * (1 + 0.1 * torch.rand(state[k].shape, generator=g,
                                                         dtype=torch.float64))
        if k.endswith(("ln1.b", "ln2.b", "ln_final.b")):
            state[k] = 0.01 * torch.randn(state[k].shape, generator=g, dtype=torch.float64)
    import copy

    model = copy.deepcopy(plain.model)
    model.load_state_dict(state)
    bent = CompiledModel(model, plain.layout)
    prompts = random_prompts(8, program.d, program.n, seed=2)
    want = bent.predict(prompts, check="ignore")
    got = disguise(bent, seed=3).predict(prompts, check="ignore")
    assert rel(got, want) < 1e-9
    for name, t in disguise(bent, seed=3).model.state_dict().items():
        if ".ln" in name or name.startswith("ln_final"):
            assert bool((t == t[0]).all()), name


def test_refusals():
    _, dis = compiled("gd_step", "paper", seed=1)
    with pytest.raises(RaspiclError, match="disguised already"):
        disguise(dis, 2)
    _, plain = compiled("gd_step", "paper")
    with pytest.raises(RaspiclError, match="seed must be an integer"):
        disguise(plain, -1)
    bad = dict(dis.layout)
    bad["disguise"] = {**dis.layout["disguise"], "basis": (-np.eye(
        dis.layout["architecture"]["d_model"])).tolist()}
    with pytest.raises(RaspiclError, match="all-ones"):
        disguise_record(bad)


def test_cli_compile_disguise(tmp_path, capsys):
    out = tmp_path / "gd"
    assert main(["compile", "gd_step", "--set", "d=2", "--disguise", "5", "--pad", "2",
                 "--out", str(out)]) == 0
    gt = load_groundtruth(out)
    assert gt.basis == {"disguised": True, "seed": 5, "pad": 2, "d_plain": 14,
                        "pinned": []}
    assert main(["compile", "gd_step", "--pad", "2", "--out", str(tmp_path / "x")]) == 2
    assert "--pad needs --disguise" in capsys.readouterr().err
