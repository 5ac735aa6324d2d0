"""Probes (raspicl.icl.probes) validated without training: on synthetic features whose answer is
known, and on compiled models, whose weight register is a known set of residual rows written
by a known block. A linear probe must recover it with R^2 >= 0.999 from the residual after
that block and do markedly worse before it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from raspicl.cli import main
from raspicl.icl import learners as L
from raspicl.icl import probes as P
from raspicl.icl.controls import compile_control
from raspicl.icl.tasks import RegressionTask

D, N = 2, 4


def test_r2_by_hand():
    t = np.array([[1.0], [2.0], [3.0]])
    assert P.r2(t, t) == 1.0
    assert P.r2(np.full_like(t, 2.0), t) == 0.0
    # residuals -1, 0, 1 against a total sum of squares of 2: 1 - 2/2 = 0
    assert P.r2(np.array([[0.0], [2.0], [4.0]]), t) == pytest.approx(0.0)
    # residuals 0.5, 0, 0: 1 - 0.25/2
    assert P.r2(np.array([[1.5], [2.0], [3.0]]), t) == pytest.approx(0.875)


def test_probes_on_synthetic_features():
    rng = np.random.default_rng(0)
    F = rng.standard_normal((600, 10))
    lin = F @ rng.standard_normal((10, 2))
    quad = np.stack([F[:, 0] * F[:, 1], F[:, 2] ** 2], axis=1)
    noise = rng.standard_normal((600, 2))
    tr, te = slice(0, 450), slice(450, None)
    assert P.linear_probe(F[tr], lin[tr], F[te], lin[te]) > 0.9999
    assert P.linear_probe(F[tr], noise[tr], F[te], noise[te]) < 0.05
    assert P.linear_probe(F[tr], quad[tr], F[te], quad[te]) < 0.1
    # the MLP probe finds the nonlinear target the linear one cannot
    assert P.mlp_probe(F[tr], quad[tr], F[te], quad[te], steps=200) > 0.5
    # constant features (unused residual rows) are dropped, not divided by zero
    Fc = np.concatenate([F, np.ones((600, 3))], axis=1)
    assert P.linear_probe(Fc[tr], lin[tr], Fc[te], lin[te]) > 0.9999


@pytest.mark.parametrize("program, params, register, learner", [
    ("ridge", dict(d=D, n=N, lam=0.5), "w", L.Ridge(0.5)),
    ("sgd", dict(d=D, n=N, w0=[0.0] * D), "w_before", L.SGD()),
])
def test_compiled_weight_register_is_decodable_from_its_block_on(program, params, register,
                                                                  learner):
    cp = compile_control(program, **params)
    prompts = RegressionTask(D, N, noise=0.5).sample(600, 4)
    res = P.probe(cp, prompts, P.learner_target(learner))
    r2 = np.array(res.r2)  # [hidden states, k]
    at = cp.block_writing(register)
    assert r2.shape == (cp.n_blocks + 1, N)
    assert r2[at].min() >= 0.999, r2[at]
    assert r2[at - 1].max() < 0.9, r2[at - 1]  # before the block: markedly worse
    assert r2[:at].max() < 0.9
    # w_OLS differs from the ridge / SGD weights at small k: not perfectly decodable linearly
    ols = np.array(P.probe(cp, prompts, "w_ols", ks=[1]).r2)
    assert ols[at].min() < 0.99


def test_raspicl_probe_with_a_control(tmp_path, capsys):
    model, control = tmp_path / "sgd", tmp_path / "gd"
    for prog, out, extra in (("sgd", model, []), ("batch_gd", control, ["--set", "T=1"])):
        assert main(["compile", prog, "--set", f"d={D}", "--set", f"n={N}", *extra,
                     "--out", str(out)]) == 0
    out = tmp_path / "probe"
    assert main(["probe", str(model), "--control", str(control), "--kind", "linear",
                 "--target", "program", "--target", "xty", "--prompts", "400",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "R2 at the query by layer" in printed
    data = json.loads((out / "probe.json").read_text())
    rows = {(r["target"], r["kind"]): r for r in data["results"]["model"]}
    prog = rows[("program:sgd(w0=[0.5, -0.5])", "linear")]
    assert prog["at_query"][-1] >= 0.999 and prog["at_query"][0] < 0.5
    assert [r["target"] for r in data["results"]["control"]] == ["xty"]
    assert (out / "probe.png").stat().st_size > 1000
    # a --control directory that does not exist is a status-2 error
    assert main(["probe", str(model), "--control", str(tmp_path / "nope"),
                 "--out", str(out)]) == 2
