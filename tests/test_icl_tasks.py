"""The sparse and logistic tasks (raspicl.icl.tasks) and their reference learners
(raspicl.icl.learners: lasso, logreg, logistic_gd), each checked against an independent
computation: the optimality (KKT) conditions the optimum must meet, and a brute-force search
near it. scipy and scikit-learn are not installed in the venv, so nothing is compared with
them. Ends with a 50-step `raspicl train --task logistic` -> `raspicl compare`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from raspicl.cli import main
from raspicl.icl import learners as L
from raspicl.icl.controls import program_learners
from raspicl.icl.tasks import RegressionTask
from raspicl.solvers import sigmoid

# --------------------------------------------------------------------------------- tasks


def test_linear_task_draws_are_unchanged():
    """The linear task's draws (and its checkpoint dict) are those of the earlier code."""
    task = RegressionTask(3, 5, noise=0.5)
    p = task.sample(4, 7)
    rng = np.random.default_rng(7)
    w = rng.standard_normal((4, 3))
    X = rng.standard_normal((4, 5, 3))
    xq = rng.standard_normal((4, 3))
    y = np.einsum("bnd,bd->bn", X, w) + 0.5 * rng.standard_normal((4, 5))
    for got, want in ((p.w, w), (p.X, X), (p.xq, xq), (p.y, y)):
        np.testing.assert_array_equal(got, want)
    assert task.to_dict() == {"d": 3, "n": 5, "noise": 0.5, "w_scale": 1.0}
    assert RegressionTask(**task.to_dict()) == task


def test_logistic_labels_follow_the_sigmoid():
    """Labels are 0 or 1, and for fixed (w, x) their mean over many draws is sigmoid(w^T x)
    within 4 standard errors (sqrt(p (1 - p) / draws) <= 0.5 / sqrt(draws))."""
    task = RegressionTask(2, 5, kind="logistic")
    w = np.array([1.5, -0.7])
    X = np.random.default_rng(0).standard_normal((1, 5, 2))
    draws = 40_000
    y = task.labels(np.broadcast_to(X, (draws, 5, 2)), np.broadcast_to(w, (draws, 2)),
                    np.random.default_rng(1))
    assert set(np.unique(y)) == {0.0, 1.0}
    p = sigmoid(X[0] @ w)
    assert np.all(np.abs(y.mean(axis=0) - p) < 4 * 0.5 / np.sqrt(draws))
    prompts = task.sample(3, 2)
    np.testing.assert_allclose(task.targets(prompts),
                               sigmoid(np.einsum("bkd,bd->bk", prompts.prefix_queries(),
                                                 prompts.w)))


def test_sparse_w_has_exactly_k_nonzeros():
    task = RegressionTask(6, 4, kind="sparse", sparsity=2)
    p = task.sample(500, 3)
    assert np.all(np.count_nonzero(p.w, axis=1) == 2)
    # every coordinate is used (the support is uniform: each about 2/6 of the prompts)
    share = np.count_nonzero(p.w, axis=0) / 500
    assert np.all(np.abs(share - 2 / 6) < 0.08)
    np.testing.assert_allclose(p.y, np.einsum("bnd,bd->bn", p.X, p.w))
    assert task.to_dict()["kind"] == "sparse" and task.to_dict()["sparsity"] == 2
    assert task.resized(1).sparsity == 1


@pytest.mark.parametrize("kw", [dict(kind="sparse"), dict(kind="sparse", sparsity=4),
                                dict(kind="logistic", noise=0.1), dict(sparsity=1),
                                dict(kind="cubic")])
def test_bad_tasks_are_refused(kw):
    with pytest.raises(ValueError):
        RegressionTask(3, 4, **kw)


# ------------------------------------------------------------------------------ learners


def _lasso_objective(X, y, w, alpha):
    k = X.shape[1]
    return np.sum((y - np.einsum("bkd,bd->bk", X, w)) ** 2, axis=1) / (2 * k) \
        + alpha * np.abs(w).sum(axis=1)


@pytest.mark.parametrize("k", [1, 2, 3, 6])
@pytest.mark.parametrize("alpha", [1e-3, 0.1])
def test_lasso_meets_its_optimality_conditions(k, alpha):
    """KKT: x_j^T (X w - y)/k = -alpha sign(w_j) where w_j != 0, |.| <= alpha where w_j = 0;
    and no random nearby point (brute force) has a lower objective."""
    task = RegressionTask(3, k, kind="sparse", sparsity=1)
    p = task.sample(64, k)
    w = L.lasso(p.X, p.y, alpha)
    g = np.einsum("bkd,bk->bd", p.X, np.einsum("bkd,bd->bk", p.X, w) - p.y) / k
    on = w != 0
    assert np.all(np.abs(np.where(on, g + alpha * np.sign(w), 0.0)) < 1e-8)
    assert np.all(np.where(on, True, np.abs(g) <= alpha * (1 + 1e-8)))
    f = _lasso_objective(p.X, p.y, w, alpha)
    rng = np.random.default_rng(0)
    for scale in (1e-1, 1e-3):
        for _ in range(50):
            trial = w + scale * rng.standard_normal(w.shape)
            assert np.all(_lasso_objective(p.X, p.y, trial, alpha) >= f - 1e-12)


def test_lasso_learner_is_sparse_and_tends_to_least_squares():
    task = RegressionTask(3, 8, kind="sparse", sparsity=1)
    p = task.sample(32, 0)
    W = L.Lasso(0.1).weights(p)
    assert np.all(W[:, 0] == 0)
    assert np.mean(W[:, -1] == 0) > 0.3  # the penalty zeroes coordinates
    small = L.Lasso(1e-9).weights(p)[:, -1]
    np.testing.assert_allclose(small, L.LeastSquares().weights(p)[:, -1], atol=1e-6)


def _logistic_objective(X, y, w, lam):
    z = np.einsum("bkd,bd->bk", X, w)
    return np.sum(np.logaddexp(0, z) - y * z, axis=1) + 0.5 * lam * np.sum(w * w, axis=1)


@pytest.mark.parametrize("k", [1, 2, 5, 12])
def test_logistic_map_has_zero_gradient_and_is_a_minimum(k):
    """The IRLS fit's gradient X^T (sigmoid(X w) - y) + lam w is ~0, and a brute-force random
    search around it finds nothing lower (the objective is convex: a local minimum is the
    global one)."""
    task = RegressionTask(3, k, kind="logistic", w_scale=2.0)
    p = task.sample(64, 10 + k)
    lam = task.logistic_lambda
    assert lam == 0.25
    w = L.logistic_map(p.X, p.y, lam)
    g = np.einsum("bkd,bk->bd", p.X, sigmoid(np.einsum("bkd,bd->bk", p.X, w)) - p.y) + lam * w
    assert np.max(np.abs(g)) < 1e-8
    f = _logistic_objective(p.X, p.y, w, lam)
    rng = np.random.default_rng(1)
    for scale in (1.0, 1e-2):
        for _ in range(50):
            trial = w + scale * rng.standard_normal(w.shape)
            assert np.all(_logistic_objective(p.X, p.y, trial, lam) >= f - 1e-12)


def test_logistic_map_is_finite_on_separable_data():
    X = np.array([[[1.0, 0.0], [-1.0, 0.0]]])
    y = np.array([[1.0, 0.0]])  # separable: without a prior, w_1 -> infinity
    w = L.logistic_map(X, y, 1.0)
    # the gradient condition in closed form: 2 (1 - sigmoid(w_1)) = w_1 on the first coordinate
    assert abs(2 * (1 - sigmoid(w[0, 0])) - w[0, 0]) < 1e-10 and w[0, 1] == 0


def test_logistic_learners_predict_probabilities():
    task = RegressionTask(2, 5, kind="logistic")
    p = task.sample(16, 4)
    fixed = L.LogisticGD(T=2, lr=0.1)
    by_hand = np.zeros((16, 2))
    for _ in range(2):  # w <- w - lr (1/k) sum_i (sigmoid(x_i^T w) - y_i) x_i on all 5 examples
        r = sigmoid(np.einsum("bkd,bd->bk", p.X, by_hand)) - p.y
        by_hand = by_hand - 0.1 * np.einsum("bkd,bk->bd", p.X, r) / 5
    np.testing.assert_allclose(fixed.predict(p)[:, -1],
                               sigmoid(np.einsum("bd,bd->b", by_hand, p.xq)))
    for learner in (L.LogisticRegression(1.0), fixed, L.NearestNeighbours(3, empty=0.5)):
        pred = learner.predict(p)
        assert np.all(pred[:, 0] == 0.5) and np.all((pred >= 0) & (pred <= 1))
    assert fixed.name == "logistic_gd(T=2, lr=0.1)"
    assert [r.name for r in program_learners("logistic_gd", {"T": 2, "lr": 0.1})] == \
        [fixed.name]


def test_tuned_logistic_gd_step_is_a_minimum():
    """The tuned step at k = 3 beats half and twice itself on the held-out prompts."""
    task = RegressionTask(2, 3, kind="logistic")
    gd = L.LogisticGD(T=1, task=task, tune_prompts=2048)
    held = task.sample(2048, L.TUNE_SEED)
    target = task.targets(held)[:, 3]

    def mse(lr):
        return np.mean((L.LogisticGD(T=1, lr=lr).predict(held)[:, 3] - target) ** 2)

    lr = gd.lrs[3]
    assert mse(lr) < mse(lr / 2) and mse(lr) < mse(2 * lr)


def test_reference_sets_by_task():
    lin = [r.name for r in L.reference_learners(RegressionTask(2, 3))]
    assert "zero" in lin and not any(n.startswith("lasso") for n in lin)
    sparse = [r.name for r in L.reference_learners(RegressionTask(2, 3, kind="sparse",
                                                                  sparsity=1))]
    assert [n for n in sparse if n.startswith("lasso")] == [
        f"lasso({L.fmt(a)})" for a in L.LASSO_GRID]
    assert "least_squares" in sparse and "ridge(0.25)" in sparse
    logi = [r.name for r in L.reference_learners(RegressionTask(2, 3, kind="logistic"))]
    assert logi == ["logreg(1)", "logistic_gd(T=1)", "logistic_gd(T=2, lr=0.1)", "3nn",
                    "constant(0.5)"]


# ----------------------------------------------------------------------------- end to end


def test_train_logistic_then_compare_names_a_learner(tmp_path, capsys):
    out, cmp = tmp_path / "m", tmp_path / "c"
    assert main(["train", "--task", "logistic", "--d", "2", "--n", "4", "--layers", "1",
                 "--d-model", "8", "--heads", "2", "--steps", "50", "--warmup", "5",
                 "--quiet", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["task"]["kind"] == "logistic"
    assert main(["compare", str(out), "--prompts", "32", "--ilwd-prompts", "4",
                 "--out", str(cmp)]) == 0
    data = json.loads((cmp / "compare.json").read_text())
    assert data["task"] == "logistic"
    assert data["best_match"] in data["references"]
    assert "logreg(1)" in data["references"]
    assert f"best match: {data['best_match']}" in capsys.readouterr().out


def test_train_flags_are_checked(tmp_path, capsys):
    base = ["train", "--d", "2", "--n", "4", "--layers", "1", "--d-model", "8", "--heads", "2",
            "--steps", "2", "--warmup", "0", "--quiet", "--out", str(tmp_path / "m")]
    for extra, message in ((["--sparsity", "1"], "--sparsity is for --task sparse"),
                           (["--task", "sparse"], "sparsity must be"),  # default 3 > d = 2
                           (["--task", "logistic", "--noise", "0.1"], "noise must be 0")):
        assert main(base + extra) == 2
        assert message in capsys.readouterr().err
    assert main(base + ["--task", "sparse", "--sparsity", "1"]) == 0
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["task"]["kind"] == "sparse" and config["task"]["sparsity"] == 1
    assert main(["train", "--resume", "--task", "sparse", "--out", str(tmp_path / "m")]) == 2
    assert "do not give --task" in capsys.readouterr().err


def test_compiled_logistic_gd_is_compared_on_logistic_prompts():
    """`raspicl compare` draws a compiled logistic_gd's prompts from the logistic task
    (controls.PROGRAM_TASKS), and a trained model's from its recorded task."""
    from types import SimpleNamespace

    from raspicl.icl.cli_analysis import task_for

    compiled = SimpleNamespace(name="c", d=2, n=3, task_kind="logistic")
    assert task_for(compiled, None) == RegressionTask(2, 3, kind="logistic")
    trained = SimpleNamespace(name="t", meta={"task": {"d": 3, "n": 5, "noise": 0.0,
                                                       "w_scale": 1.0, "kind": "sparse",
                                                       "sparsity": 2}})
    assert task_for(trained, None) == RegressionTask(3, 5, kind="sparse", sparsity=2)


@pytest.mark.slow
def test_compiled_logistic_gd_control_is_its_own_algorithm():
    """A compiled logistic_gd (about 20 s: its sigmoid gadget is certified) matches its own
    algorithm, logistic_gd(T=1, lr=0.1), to rounding, and that is the best match."""
    from raspicl.icl import metrics as M
    from raspicl.icl.controls import compile_control, merge_learners

    cp = compile_control("logistic_gd", d=2, n=3, T=1)
    assert cp.task_kind == "logistic"
    task = RegressionTask(2, 3, kind="logistic")
    refs = merge_learners(L.reference_learners(task), cp.program_learners())
    p = task.sample(64, 0)
    c = M.compare(cp, refs, p, ilwd_prompts=8, targets=task.targets(p))
    assert c.best_match == "logistic_gd(T=1, lr=0.1)"
    assert c.mean_spd["logistic_gd(T=1, lr=0.1)"] < 1e-18
