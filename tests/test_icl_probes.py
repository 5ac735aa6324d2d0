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


# ------------------------------------------------------------------ task-aware targets

def test_probe_targets_per_task():
    # the linear task's targets are what they always were
    assert P.default_targets(RegressionTask(D, N)) == ["w_ols", "xty"]
    assert P.default_targets(RegressionTask(D, N, noise=0.5)) == ["w_ols", "xty"]
    assert P.TARGETS["w_ols"] is P.w_ols and P.TARGETS["xty"] is P.xty
    assert P.default_targets(RegressionTask(3, N, noise=0.5, kind="sparse", sparsity=1)) == \
        ["w_ols", "w_ridge", "w_lasso", "xty"]
    # noiseless: ridge at lam = sigma^2/tau^2 = 0 is w_ols itself, so it is left out
    assert P.default_targets(RegressionTask(3, N, kind="sparse", sparsity=1)) == \
        ["w_ols", "w_lasso", "xty"]
    assert P.default_targets(RegressionTask(D, N, kind="logistic")) == \
        ["w_logreg", "logistic_gd1", "xty"]
    assert set(P.task_targets(RegressionTask(D, N, kind="logistic"))) <= set(P.TARGET_NAMES)


def test_logistic_targets_against_independent_computations():
    task = RegressionTask(3, 6, kind="logistic", w_scale=2.0)
    p = task.sample(8, 3)
    targets = P.task_targets(task)
    lam = task.logistic_lambda
    assert targets["w_logreg"][1] == {"lam": lam}
    W = targets["w_logreg"][0](p)
    G = targets["logistic_gd1"][0](p)
    assert W.shape == G.shape == (8, 7, 3)
    assert np.all(W[:, 0] == 0) and np.all(G[:, 0] == 0)
    for k in range(1, 7):
        X, y = p.X[:, :k], p.y[:, :k]
        # w_logreg: the gradient of sum log-loss + (lam/2)||w||^2 vanishes there
        z = np.einsum("bkd,bd->bk", X, W[:, k])
        grad = np.einsum("bkd,bk->bd", X, 1 / (1 + np.exp(-z)) - y) + lam * W[:, k]
        assert np.abs(grad).max() < 1e-8
        # one GD step from 0 at lr 1: (1/k) X^T (y - 1/2), by hand
        hand = np.einsum("bkd,bk->bd", X, y - 0.5) / k
        np.testing.assert_allclose(G[:, k], hand, rtol=0, atol=1e-14)
        # X^T y differs from it by (1/2) sum x_i
        np.testing.assert_allclose(targets["xty"][0](p)[:, k] - k * G[:, k],
                                   X.sum(axis=1) / 2, atol=1e-12)


def test_sparse_targets_against_independent_computations():
    task = RegressionTask(3, 6, noise=0.5, kind="sparse", sparsity=1)
    p = task.sample(8, 5)
    targets = P.task_targets(task)
    alpha, lam = P.LASSO_ALPHA, task.ridge_lambda
    assert targets["w_lasso"][1] == {"alpha": alpha} and targets["w_ridge"][1] == {"lam": lam}
    Wl, Wr = targets["w_lasso"][0](p), targets["w_ridge"][0](p)
    for k in range(1, 7):
        X, y = p.X[:, :k], p.y[:, :k]
        # ridge: the normal equations (X^T X + lam I) w = X^T y
        lhs = np.einsum("bki,bkj,bj->bi", X, X, Wr[:, k]) + lam * Wr[:, k]
        np.testing.assert_allclose(lhs, np.einsum("bkd,bk->bd", X, y), atol=1e-10)
        # lasso (mean loss): the subgradient conditions, g = X^T (X w - y) / k,
        # g_j = -alpha sign(w_j) where w_j != 0, |g_j| <= alpha where w_j = 0
        w = Wl[:, k]
        g = np.einsum("bkd,bk->bd", X, np.einsum("bkd,bd->bk", X, w) - y) / k
        on = w != 0
        assert np.abs(np.where(on, g + alpha * np.sign(w), 0.0)).max() < 1e-8
        assert np.all(np.abs(np.where(on, 0.0, g)) <= alpha * (1 + 1e-8))


def test_raspicl_probe_on_a_tiny_logistic_model(tmp_path, capsys):
    model = tmp_path / "m"
    assert main(["train", "--task", "logistic", "--d", "2", "--n", "4", "--layers", "1",
                 "--d-model", "8", "--heads", "2", "--steps", "30", "--warmup", "5",
                 "--batch", "8", "--quiet", "--out", str(model)]) == 0
    out = tmp_path / "probe"
    assert main(["probe", str(model), "--prompts", "200", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    data = json.loads((out / "probe.json").read_text())
    assert [r["target"] for r in data["results"]["model"]] == \
        ["w_logreg", "logistic_gd1", "xty"]
    assert data["task"] == "logistic" and data["target_params"]["w_logreg"] == {"lam": 1.0}
    for r in data["results"]["model"]:
        assert len(r["at_query"]) == 2  # the embedding and one layer
        assert all(v is not None and np.isfinite(v) for row in r["r2"] for v in row)
        assert r["target"] in printed
    # a target of another task is refused, naming the task's
    assert main(["probe", str(model), "--target", "w_lasso", "--prompts", "200",
                 "--out", str(out)]) == 2
    assert "logistic task" in capsys.readouterr().err


def test_raspicl_probe_on_a_linear_model_is_unchanged(tmp_path, capsys):
    model = tmp_path / "m"
    assert main(["train", "--d", "2", "--n", "4", "--layers", "1", "--d-model", "8",
                 "--heads", "2", "--steps", "5", "--warmup", "1", "--batch", "8", "--quiet",
                 "--out", str(model)]) == 0
    out = tmp_path / "probe"
    assert main(["probe", str(model), "--prompts", "100", "--out", str(out)]) == 0
    data = json.loads((out / "probe.json").read_text())
    # the keys and targets a linear model's probe.json always had (no task, no parameters)
    assert set(data) == {"model", "model_dir", "control", "control_dir", "d", "n", "noise",
                         "w_scale", "seed", "prompts", "train_fraction", "positions",
                         "results"}
    assert [r["target"] for r in data["results"]["model"]] == ["w_ols", "xty"]
    # the task's other targets may be named; a logistic one may not
    assert main(["probe", str(model), "--target", "w_logreg", "--prompts", "100",
                 "--out", str(out)]) == 2
    assert "linear task" in capsys.readouterr().err
