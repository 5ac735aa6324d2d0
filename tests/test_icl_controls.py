"""Compiled controls: compiled raspicl models, whose algorithm is known exactly, through the same
metrics a trained model goes through. A compiled batch_gd (T = 1) must come out as GD, a
compiled ridge as ridge at its lambda, a compiled sgd as SGD, with SPD <= 1e-18 on noiseless
and noisy prompts; `raspicl compare` must name them. No training.

The compiled programs start from w0 = 0 here so that they share the reference learners'
starting point (the programs' default w0 is 0.5 (-1)^i; `raspicl compare` then adds the
matching gd/sgd learner with that w0, tested below).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from raspicl.cli import main
from raspicl.icl import learners as L
from raspicl.icl import metrics as M
from raspicl.icl.controls import CompiledPredictor, compile_control, merge_learners
from raspicl.icl.predictor import load_predictor
from raspicl.icl.tasks import RegressionTask
from raspicl.registry import find_program

D, N = 2, 4
ZERO = [0.0] * D


@pytest.fixture(scope="module")
def controls():
    return {
        "batch_gd": compile_control("batch_gd", d=D, n=N, T=1, w0=ZERO),
        "ridge": compile_control("ridge", d=D, n=N, lam=0.5),
        "sgd": compile_control("sgd", d=D, n=N, w0=ZERO),
    }


EXPECTED = {"batch_gd": "gd(T=1, lr=0.1)", "ridge": "ridge(0.5)", "sgd": "sgd"}


def test_predict_maps_output_positions_to_columns(controls):
    prompts = RegressionTask(D, N, noise=0.5).sample(16, 0)
    for name, params in (("batch_gd", dict(d=D, n=N, T=1, w0=ZERO)),
                         ("sgd", dict(d=D, n=N, w0=ZERO)), ("ridge", dict(d=D, n=N, lam=0.5))):
        want = find_program(name).module.reference(prompts, **params)  # the program's solver
        got = controls[name].predict(prompts)
        assert got.shape == (16, N + 1)
        np.testing.assert_allclose(got, want, atol=1e-8)


@pytest.mark.parametrize("noise", [0.0, 0.5])
@pytest.mark.parametrize("program", ["batch_gd", "ridge", "sgd"])
def test_compiled_control_is_its_own_algorithm(controls, program, noise):
    task = RegressionTask(D, N, noise=noise)
    cp = controls[program]
    refs = merge_learners(L.reference_learners(task), cp.program_learners())
    c = M.compare(cp, refs, task.sample(256, 11), ilwd_prompts=32, seed=12)
    own = EXPECTED[program]
    assert c.best_match == own
    assert max(c.spd[own]) <= 1e-18, c.spd[own]
    assert max(c.ilwd[own]) <= 1e-18, c.ilwd[own]
    runner_up = min(v for k, v in c.mean_spd.items() if k != own)
    assert runner_up > 1e-4, c.mean_spd  # the match is not a near tie
    if program == "batch_gd":
        # the tuned-step GD of the paper is a different learner from the program's fixed step
        assert np.mean(c.spd["gd(T=1)"][1:]) > 1e-2


def test_the_probe_slot_is_causal_for_compiled_models(controls):
    """Changing the tokens after x token k + 1 leaves column k alone, which ILWD relies on."""
    p = RegressionTask(D, N, noise=0.5).sample(32, 3)
    cp = controls["ridge"]
    base = cp.predict(p)
    X2, y2 = p.X.copy(), p.y.copy()
    X2[:, 3:] += 1.0  # x_4 on (token 6 on)
    y2[:, 2:] += 1.0  # y_3 on (token 5 on): column 2 reads x_3 at token 4
    q = cp.predict(type(p)(X2, y2, p.xq + 1.0, p.w))
    np.testing.assert_allclose(q[:, :3], base[:, :3], atol=1e-12)
    assert np.all(np.abs(q[:, 3:] - base[:, 3:]) > 1e-6)


def test_block_writing_and_hidden_states(controls):
    cp = controls["ridge"]
    p = RegressionTask(D, N).sample(4, 0)
    hs = cp.hidden_states(p)
    assert len(hs) == cp.n_blocks + 1
    full = cp.model.residuals(p, check="ignore")
    np.testing.assert_array_equal(hs[-1], full[-1])
    np.testing.assert_array_equal(hs[1], full[2])  # after block 0's MLP
    assert 0 < cp.block_writing("w") <= cp.n_blocks


def test_wrong_prompt_size_is_a_clear_error(controls):
    with pytest.raises(Exception, match="d=2, n=4"):
        controls["sgd"].predict(RegressionTask(D, N + 1).sample(2, 0))


@pytest.mark.parametrize("program, sets, expected", [
    ("batch_gd", ["T=1"], "gd(T=1, lr=0.1, w0=[0.5, -0.5])"),
    ("ridge", ["lam=0.5"], "ridge(0.5)"),
])
def test_raspicl_compare_names_the_algorithm(tmp_path, capsys, program, sets, expected):
    model = tmp_path / program
    argv = ["compile", program, "--set", f"d={D}", "--set", f"n={N}", "--out", str(model)]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    out = tmp_path / "cmp"
    assert main(["compare", str(model), "--prompts", "128", "--ilwd-prompts", "16",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"best match: {expected}" in printed
    data = json.loads((out / "compare.json").read_text())  # strict JSON: NaN would fail
    assert data["best_match"] == expected
    for key in ("spd", "ilwd", "error"):
        assert set(data[key]) >= {"least_squares", "zero", expected}
        assert all(len(v) == N + 1 for v in data[key].values())
    assert data["spd"][expected] == pytest.approx([0.0] * (N + 1), abs=1e-18)
    assert (data["d"], data["n"], data["seed"], data["prompts"]) == (D, N, 0, 128)
    assert data["refused"]["checked"] > 0
    assert (out / "error.png").stat().st_size > 1000
    assert isinstance(load_predictor(model), CompiledPredictor)


def test_compare_json_writes_nan_as_null(tmp_path, capsys):
    from raspicl.icl.cli_analysis import json_safe

    assert json_safe({"a": [1.0, float("nan")], "b": np.float64("inf")}) == \
        {"a": [1.0, None], "b": None}
    assert main(["compare", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.startswith("raspicl: error: ")
