"""Reference learners and the metrics of raspicl.icl.metrics against hand computations.

Every expected value here is computed independently of the code under test: explicit loops,
np.linalg.inv / lstsq on one prompt at a time, or numbers worked out by hand for a 2 x 2 case.
"""

from __future__ import annotations

import numpy as np
import pytest

from raspicl.icl import learners as L
from raspicl.icl import metrics as M
from raspicl.icl.tasks import RegressionTask
from raspicl.prompts import Prompts


@pytest.fixture(scope="module")
def noisy():
    return RegressionTask(d=3, n=7, noise=0.5).sample(64, 5)


class Fixed:
    """A 'learner' that returns given predictions."""

    def __init__(self, name, values):
        self.name, self.values = name, np.asarray(values, dtype=float)

    def predict(self, prompts):
        return self.values


# ------------------------------------------------------------------ reference learners


def test_least_squares_and_ridge_against_direct_solves(noisy):
    W_ls, W_r = L.LeastSquares().weights(noisy), L.Ridge(0.3).weights(noisy)
    for b in range(5):
        for k in range(noisy.n + 1):
            X, y = noisy.X[b, :k], noisy.y[b, :k]
            want_ls = np.linalg.lstsq(X, y, rcond=None)[0] if k else np.zeros(3)
            want_r = np.linalg.inv(X.T @ X + 0.3 * np.eye(3)) @ X.T @ y if k else np.zeros(3)
            np.testing.assert_allclose(W_ls[b, k], want_ls, atol=1e-10)
            np.testing.assert_allclose(W_r[b, k], want_r, atol=1e-10)
    # the prediction in column k is for x_{k+1} (x_q in column n)
    pred = L.Ridge(0.3).predict(noisy)
    np.testing.assert_allclose(pred[:, 2], np.sum(W_r[:, 2] * noisy.X[:, 2], axis=1))
    np.testing.assert_allclose(pred[:, -1], np.sum(W_r[:, -1] * noisy.xq, axis=1))


def test_gd_sgd_averaging_by_loops(noisy):
    lr = 0.07
    W_gd = L.GradientDescent(T=2, lr=lr).weights(noisy)
    W_sgd = L.SGD(lr=lr).weights(noisy)
    W_avg = L.Averaging().weights(noisy)
    for b in range(4):
        w_s = np.zeros(3)
        for k in range(noisy.n + 1):
            X, y = noisy.X[b, :k], noisy.y[b, :k]
            w = np.zeros(3)
            for _ in range(2):
                grad = sum(2 * x * (x @ w - t) for x, t in zip(X, y, strict=True)) / max(k, 1)
                w = w - lr * grad
            np.testing.assert_allclose(W_gd[b, k], w, atol=1e-12)
            np.testing.assert_allclose(W_sgd[b, k], w_s, atol=1e-12)
            avg = sum(t * x for x, t in zip(X, y, strict=True)) / k if k else np.zeros(3)
            np.testing.assert_allclose(W_avg[b, k], avg, atol=1e-12)
            if k < noisy.n:
                x, t = noisy.X[b, k], noisy.y[b, k]
                w_s = w_s - 2 * lr * x * (x @ w_s - t)
    # averaging is one GD step of size 1/2 from 0: w = 2 (1/2) X^T y / k
    np.testing.assert_allclose(L.GradientDescent(T=1, lr=0.5).weights(noisy), W_avg,
                               atol=1e-12)


def test_three_nearest_neighbours_by_hand():
    X = np.array([[[0.0], [1.0], [5.0], [2.0], [9.0]]])
    y = np.array([[10.0, 20.0, 30.0, 40.0, 50.0]])
    p = Prompts(X, y, np.array([[1.4]]), np.array([[1.0]]))
    # x_{k+1} is the query of column k: k=1 sees {0}: 10; k=2 sees {0,1} at x=5: 15;
    # k=3 sees {0,1,5} at x=2: mean of all 3 = 20; k=4 sees {0,1,5,2} at x=9: 5,2,1 -> 30;
    # k=5 sees all at x_q=1.4: 1, 2, 0 -> (20 + 40 + 10) / 3
    np.testing.assert_allclose(L.NearestNeighbours(3).predict(p)[0],
                               [0, 10, 15, 20, 30, 70 / 3])


def test_tuned_gd_step_minimises_the_held_out_error():
    task = RegressionTask(d=2, n=4)
    gd = L.GradientDescent(T=1, task=task, tune_prompts=2000)
    held = task.sample(2000, L.TUNE_SEED)
    for k in (1, 2, 4):
        def loss(lr, k=k):
            w = L.GradientDescent(T=1, lr=lr).weights(held)[:, k]
            x = held.prefix_queries()[:, k]
            return np.mean((np.sum(w * x, 1) - np.sum(held.w * x, 1)) ** 2)
        lr = gd.lrs[k]
        assert loss(lr) <= min(loss(lr * 0.98), loss(lr * 1.02))
    # T = 2 goes through the grid and golden-section search
    gd2 = L.GradientDescent(T=2, task=task, tune_prompts=500)
    assert all(0 < lr < 10 for lr in gd2.lrs)
    assert gd.name == "gd(T=1)" and gd2.name == "gd(T=2)"


def test_names_are_stable():
    task = RegressionTask(d=2, n=3, noise=0.5)
    names = [r.name for r in L.reference_learners(task)]
    assert names == ["least_squares", "ridge(0.0625)", "ridge(0.111111)", "ridge(0.25)",
                     "ridge(0.444444)", "gd(T=1)", "gd(T=1, lr=0.1)", "sgd", "3nn",
                     "averaging", "zero"]  # sigma^2/tau^2 = 0.25 is already in the grid
    assert L.SGD(lr=0.2, w0=[0.5, -0.5]).name == "sgd(lr=0.2, w0=[0.5, -0.5])"
    assert L.GradientDescent(T=3, lr=0.1, w0=[0.0, 0.0]).name == "gd(T=3, lr=0.1)"
    with pytest.raises(ValueError, match="lam"):
        L.Ridge(0.0)


# ------------------------------------------------------------------ metrics by hand


def _two_by_two():
    # B = 2 prompts, d = 2, n = 1: columns k = 0 (x_1) and k = 1 (x_q)
    X = np.array([[[1.0, 0.0]], [[0.0, 2.0]]])
    xq = np.array([[1.0, 1.0], [2.0, 0.0]])
    w = np.array([[1.0, 2.0], [3.0, -1.0]])
    y = np.einsum("bnd,bd->bn", X, w)
    return Prompts(X, y, xq, w)


def test_error_and_spd_by_hand():
    p = _two_by_two()
    # targets w^T x: prompt 0: [1, 3]; prompt 1: [-2, 6]
    a = Fixed("a", [[0.0, 2.0], [-2.0, 8.0]])
    b = Fixed("b", [[1.0, 2.0], [0.0, 8.0]])
    # error = mean over prompts of (pred - target)^2 / d: k=0: (1 + 0)/2/2; k=1: (1 + 4)/2/2
    np.testing.assert_allclose(M.error(a, p), [0.25, 1.25])
    # SPD(a, b): k=0: (1 + 4)/2/2; k=1: 0
    np.testing.assert_allclose(M.spd(a, b, p), [1.25, 0.0])
    np.testing.assert_allclose(M.mspd(np.array([9.0, 1.25, 3.0]), d=2), 1.25)
    assert np.isnan(M.mspd(np.array([1.0, 2.0]), d=1))


def test_best_match_uses_only_the_columns_the_model_predicts():
    model = np.array([[np.nan, 1.0, 2.0], [np.nan, 1.0, 2.0]])
    refs = {"near": np.array([[100.0, 1.1, 2.1]] * 2),   # far at k=0, where model is NaN
            "far": np.array([[np.nan, 3.0, 3.0]] * 2)}
    name, means = M.best_match(model, refs, d=1)
    assert name == "near"
    np.testing.assert_allclose(means["near"], 0.01)
    np.testing.assert_allclose(means["far"], (4 + 1) / 2)


def test_compare_names_the_learner_itself(noisy):
    task = RegressionTask(d=3, n=7, noise=0.5)
    refs = [L.LeastSquares(), L.Ridge(0.25), L.Ridge(1.0), L.Averaging(), L.Zero()]
    me = L.Ridge(0.25, name="model")
    c = M.compare(me, refs, task.sample(128, 3), ilwd_prompts=16)
    assert c.best_match == "ridge(0.25)"
    assert max(c.spd["ridge(0.25)"]) == 0.0 and max(c.ilwd["ridge(0.25)"]) < 1e-20
    assert min(c.mean_spd[k] for k in c.mean_spd if k != "ridge(0.25)") > 1e-4
    with pytest.raises(Exception, match="distinct"):
        M.compare(L.Zero(), refs, noisy)


# ------------------------------------------------------------------ ILWD


@pytest.mark.parametrize("learner", [L.LeastSquares(), L.Ridge(0.5), L.Averaging(),
                                     L.GradientDescent(T=3, lr=0.05), L.SGD(lr=0.1),
                                     L.Zero()], ids=lambda x: x.name)
def test_implicit_weights_are_exact_for_linear_learners(learner, noisy):
    q = M.probe_queries(noisy, seed=1)
    for intercept in (True, False):
        w, c = M.implicit_weights(learner, noisy, q, intercept=intercept)
        np.testing.assert_allclose(w, learner.weights(noisy), atol=1e-9)
        np.testing.assert_allclose(c, 0.0, atol=1e-9)


def test_ilwd_by_hand_and_the_intercept_absorbs_an_offset(noisy):
    a, b = L.LeastSquares(), L.Ridge(0.5)
    got = M.ilwd(a, b, noisy, M.probe_queries(noisy, seed=2))
    wa, wb = a.weights(noisy), b.weights(noisy)
    want = [np.mean([np.sum((wa[i, k] - wb[i, k]) ** 2) / 3 for i in range(noisy.batch)])
            for k in range(noisy.n + 1)]
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-14)

    class Offset:  # ridge plus a constant 0.7: its implicit w is ridge's, the 0.7 the intercept
        name = "offset"

        def predict(self, prompts):
            return b.predict(prompts) + 0.7

    w, c = M.implicit_weights(Offset(), noisy, M.probe_queries(noisy, seed=3))
    np.testing.assert_allclose(w, wb, atol=1e-9)
    np.testing.assert_allclose(c, 0.7, atol=1e-9)


def test_probe_queries_go_into_the_query_slot_of_each_prefix(noisy):
    seen = []

    class Spy:
        name = "spy"

        def predict(self, prompts):
            seen.append(prompts)
            return np.zeros((prompts.batch, prompts.n + 1))

    q = M.probe_queries(noisy, m=6, seed=0)
    M.probe_predictions(Spy(), noisy, q)
    assert len(seen) == noisy.n + 1
    for k, p in enumerate(seen):
        slot = p.X[:, k] if k < noisy.n else p.xq
        np.testing.assert_array_equal(slot.reshape(noisy.batch, 6, 3), q)
        # the context before the slot is the prompt's own, copied per probe
        np.testing.assert_array_equal(p.X[::6, :k], noisy.X[:, :k])
    with pytest.raises(ValueError, match="2d"):
        M.probe_queries(noisy, m=5)
