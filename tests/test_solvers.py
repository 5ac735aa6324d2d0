"""Tests for raspicl.solvers: each solver is checked against an independent computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raspicl import solvers


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _central_grad(f, w: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """Central finite-difference gradient of a scalar function of a 1-d vector."""
    g = np.zeros_like(w)
    for j in range(w.size):
        e = np.zeros_like(w)
        e[j] = h
        g[j] = (f(w + e) - f(w - e)) / (2 * h)
    return g


# ------------------------------------------------------------------ gradient descent


def test_gd_step_matches_finite_difference_gradient():
    rng = _rng(0)
    B, d, lr, lam = 5, 4, 0.07, 0.3
    w, x, y = rng.normal(size=(B, d)), rng.normal(size=(B, d)), rng.normal(size=B)
    got = solvers.gd_step(w, x, y, lr, lam)
    for b in range(B):

        def loss(v, b=b):
            return (x[b] @ v - y[b]) ** 2 + lam * (v @ v)

        expected = w[b] - lr * _central_grad(loss, w[b])
        np.testing.assert_allclose(got[b], expected, atol=1e-6)
    assert got.shape == (B, d) and got.dtype == np.float64


def test_sgd_matches_loop_of_gd_steps_and_broadcasts_w0():
    rng = _rng(1)
    B, n, d, lr, lam = 3, 6, 4, 0.05, 0.1
    X, y, w0 = rng.normal(size=(B, n, d)), rng.normal(size=(B, n)), rng.normal(size=d)
    got = solvers.sgd(X, y, w0, lr, lam)
    assert got.shape == (B, n + 1, d)
    w = np.tile(w0, (B, 1))
    np.testing.assert_array_equal(got[:, 0], w)
    for i in range(n):
        w = solvers.gd_step(w, X[:, i], y[:, i], lr, lam)
        np.testing.assert_allclose(got[:, i + 1], w, rtol=0, atol=1e-12)


def test_sgd_pure_python_scalar_loop():
    rng = _rng(2)
    B, n, d, lr, lam = 2, 5, 3, 0.1, 0.2
    X, y, w0 = rng.normal(size=(B, n, d)), rng.normal(size=(B, n)), rng.normal(size=(B, d))
    got = solvers.sgd(X, y, w0, lr, lam)
    for b in range(B):
        w = [float(v) for v in w0[b]]
        for i in range(n):
            xi = [float(v) for v in X[b, i]]
            r = sum(a * c for a, c in zip(xi, w, strict=True)) - float(y[b, i])
            w = [wj - 2 * lr * (xj * r + lam * wj) for wj, xj in zip(w, xi, strict=True)]
            np.testing.assert_allclose(got[b, i + 1], w, atol=1e-12)


def test_sgd_single_example_equals_gd_step():
    rng = _rng(3)
    B, d = 4, 3
    X, y, w0 = rng.normal(size=(B, 1, d)), rng.normal(size=(B, 1)), rng.normal(size=(B, d))
    got = solvers.sgd(X, y, w0, 0.2, 0.05)
    np.testing.assert_allclose(
        got[:, 1], solvers.gd_step(w0, X[:, 0], y[:, 0], 0.2, 0.05), atol=1e-14
    )


def test_logistic_sgd_steps_down_each_examples_loss_in_order():
    """Each iterate is the one before minus lr times the finite-difference gradient of that
    example's logistic loss log(1 + e^z) - y z, z = x^T w; one example is one logistic_gd
    step."""
    rng = _rng(23)
    B, n, d, lr = 3, 4, 3, 0.3
    X, y, w0 = rng.normal(size=(B, n, d)), rng.normal(size=(B, n)), rng.normal(size=d)
    got = solvers.logistic_sgd(X, y, w0, lr)
    assert got.shape == (B, n + 1, d)
    np.testing.assert_array_equal(got[:, 0], np.tile(w0, (B, 1)))
    for b in range(B):
        for i in range(n):

            def loss(v, b=b, i=i):
                z = X[b, i] @ v
                return math.log1p(math.exp(z)) - y[b, i] * z

            want = got[b, i] - lr * _central_grad(loss, got[b, i])
            np.testing.assert_allclose(got[b, i + 1], want, atol=1e-7)
    np.testing.assert_allclose(solvers.logistic_sgd(X[:, :1], y[:, :1], w0, lr)[:, 1],
                               solvers.logistic_gd(X[:, :1], y[:, :1], w0, lr, 1)[:, 1],
                               rtol=0, atol=1e-15)


def test_lasso_ista_converges_to_a_point_meeting_the_lasso_optimality_conditions():
    """After many ISTA steps at a stable step size, w satisfies the subgradient conditions
    of (1/(2n)) |X w - y|^2 + lam |w|_1: g_j = -lam sign(w_j) where w_j != 0, |g_j| <= lam
    where w_j = 0, g = S w - b; and lam = 0 is plain GD on that loss (batch_gd's, halved)."""
    rng = _rng(24)
    B, n, d, lam = 4, 8, 3, 0.4
    X, y = rng.normal(size=(B, n, d)), rng.normal(size=(B, n))
    w = solvers.lasso_ista(X, y, np.zeros(d), 0.1, lam, 3000)[:, -1]
    g = np.einsum("bni,bnj,bj->bi", X, X, w) / n - np.einsum("bni,bn->bi", X, y) / n
    nz = w != 0
    assert nz.any() and (~nz).any()
    np.testing.assert_allclose(g[nz], -lam * np.sign(w[nz]), atol=1e-9)
    assert np.all(np.abs(g[~nz]) <= lam + 1e-9)
    np.testing.assert_allclose(solvers.lasso_ista(X, y, np.ones(d), 0.1, 0.0, 5),
                               solvers.batch_gd(X, y, np.ones(d), 0.05, 0.0, 5),
                               rtol=0, atol=1e-12)
    np.testing.assert_array_equal(solvers.soft_threshold([-2.0, -0.5, 0.0, 0.5, 2.0], 1.0),
                                  [-1.0, 0.0, 0.0, 0.0, 1.0])


def test_poisson_gd_steps_down_the_mean_poisson_loss():
    """Each iterate is the one before minus lr times the finite-difference gradient of the
    mean loss (1/n) sum_i exp(x_i^T w) - y_i x_i^T w."""
    rng = _rng(25)
    B, n, d, lr = 3, 5, 2, 0.05
    X, y, w0 = 0.5 * rng.normal(size=(B, n, d)), rng.normal(size=(B, n)), rng.normal(size=d)
    got = solvers.poisson_gd(X, y, w0, lr, 3)
    assert got.shape == (B, 4, d)
    for b in range(B):
        for t in range(3):

            def loss(v, b=b):
                z = X[b] @ v
                return float(np.mean(np.exp(z) - y[b] * z))

            want = got[b, t] - lr * _central_grad(loss, got[b, t])
            np.testing.assert_allclose(got[b, t + 1], want, atol=1e-8)


def test_kernel_smoother_is_a_weighted_mean_by_a_python_loop():
    rng = _rng(26)
    B, n, d, h = 3, 4, 2, 0.8
    X, y, xq = rng.normal(size=(B, n, d)), rng.normal(size=(B, n)), rng.normal(size=(B, d))
    got = solvers.kernel_smoother(X, y, xq, h)
    for b in range(B):
        k = [math.exp(-sum((xq[b, i] - X[b, j, i]) ** 2 for i in range(d)) / (2 * h * h))
             for j in range(n)]
        num = sum(kj * yj for kj, yj in zip(k, y[b], strict=True))
        assert got[b] == pytest.approx(num / sum(k), rel=1e-13)
    with pytest.raises(ValueError, match="^h "):
        solvers.kernel_smoother(X, y, xq, 0.0)


def test_batch_gd_one_step_matches_finite_difference_of_mean_loss():
    rng = _rng(4)
    B, n, d, lr, lam = 3, 7, 4, 0.03, 0.25
    X, y, w0 = rng.normal(size=(B, n, d)), rng.normal(size=(B, n)), rng.normal(size=(B, d))
    got = solvers.batch_gd(X, y, w0, lr, lam, steps=1)
    assert got.shape == (B, 2, d)
    np.testing.assert_array_equal(got[:, 0], w0)
    for b in range(B):

        def loss(v, b=b):
            return np.mean((X[b] @ v - y[b]) ** 2) + lam * (v @ v)

        expected = w0[b] - lr * _central_grad(loss, w0[b])
        np.testing.assert_allclose(got[b, 1], expected, atol=1e-6)


def test_batch_gd_many_steps_reaches_mean_loss_ridge():
    rng = _rng(5)
    B, n, d, lam = 2, 20, 3, 0.1
    X, y = rng.normal(size=(B, n, d)), rng.normal(size=(B, n))
    got = solvers.batch_gd(X, y, np.zeros(d), lr=0.2, lam=lam, steps=400)
    assert got.shape == (B, 401, d)
    for b in range(B):
        expected = np.linalg.solve(X[b].T @ X[b] / n + lam * np.eye(d), X[b].T @ y[b] / n)
        np.testing.assert_allclose(got[b, -1], expected, atol=1e-8)


# ------------------------------------------------------------------ closed forms


def test_ridge_matches_augmented_lstsq():
    rng = _rng(6)
    B, n, d, lam = 4, 9, 5, 0.7
    X, y = rng.normal(size=(B, n, d)), rng.normal(size=(B, n))
    got = solvers.ridge(X, y, lam)
    assert got.shape == (B, d)
    for b in range(B):
        A = np.vstack([X[b], math.sqrt(lam) * np.eye(d)])
        rhs = np.concatenate([y[b], np.zeros(d)])
        expected = np.linalg.lstsq(A, rhs, rcond=None)[0]
        np.testing.assert_allclose(got[b], expected, atol=1e-10)


def test_ridge_with_no_examples_is_zero():
    got = solvers.ridge(np.zeros((2, 0, 3)), np.zeros((2, 0)), 0.5)
    np.testing.assert_array_equal(got, np.zeros((2, 3)))


def test_least_squares_full_rank_matches_tiny_ridge():
    rng = _rng(7)
    B, n, d = 3, 12, 4
    X, y = rng.normal(size=(B, n, d)), rng.normal(size=(B, n))
    np.testing.assert_allclose(solvers.least_squares(X, y), solvers.ridge(X, y, 1e-10), atol=1e-7)


def test_least_squares_underdetermined_is_minimum_norm():
    rng = _rng(8)
    B, n, d = 3, 3, 6
    X, y = rng.normal(size=(B, n, d)), rng.normal(size=(B, n))
    got = solvers.least_squares(X, y)
    for b in range(B):
        # interpolates the data
        np.testing.assert_allclose(X[b] @ got[b], y[b], atol=1e-10)
        # lies in the row space: orthogonal to the null space of X (from a full SVD)
        null_basis = np.linalg.svd(X[b], full_matrices=True)[2][n:]
        np.testing.assert_allclose(null_basis @ got[b], np.zeros(d - n), atol=1e-10)
        # and equals the closed form X^T (X X^T)^{-1} y
        expected = X[b].T @ np.linalg.solve(X[b] @ X[b].T, y[b])
        np.testing.assert_allclose(got[b], expected, atol=1e-10)


def test_sherman_morrison_matches_direct_inverse():
    rng = _rng(9)
    B, d = 4, 5
    A = rng.normal(size=(B, d, d)) + 3 * np.eye(d)
    u, v = rng.normal(size=(B, d)), rng.normal(size=(B, d))
    got = solvers.sherman_morrison(np.linalg.inv(A), u, v)
    expected = np.linalg.inv(A + u[:, :, None] * v[:, None, :])
    np.testing.assert_allclose(got, expected, atol=1e-10)


def test_ridge_by_sherman_morrison_matches_ridge_on_every_prefix():
    rng = _rng(10)
    B, n, d, lam = 3, 8, 4, 0.5
    X, y = rng.normal(size=(B, n, d)), rng.normal(size=(B, n))
    got = solvers.ridge_by_sherman_morrison(X, y, lam)
    assert got.shape == (B, n + 1, d)
    np.testing.assert_array_equal(got[:, 0], np.zeros((B, d)))
    np.testing.assert_allclose(got[:, -1], solvers.ridge(X, y, lam), atol=1e-10)
    for i in range(1, n + 1):
        for b in range(B):
            Xi, yi = X[b, :i], y[b, :i]
            expected = np.linalg.solve(Xi.T @ Xi + lam * np.eye(d), Xi.T @ yi)
            np.testing.assert_allclose(got[b, i], expected, atol=1e-10)


# ------------------------------------------------------------------ Newton-Schulz


def _spd_problem(seed: int, B: int = 3, n: int = 16, d: int = 4):
    rng = _rng(seed)
    X = rng.normal(size=(B, n, d))
    S = np.einsum("bni,bnj->bij", X, X) / n
    return X, S


def test_newton_schulz_converges_to_inverse_in_30_steps():
    _, S = _spd_problem(11)
    lam, d = 0.5, S.shape[-1]
    got = solvers.newton_schulz_inverse(S, lam, steps=30)
    assert got.shape == (S.shape[0], 31, d, d)
    A = S + lam * np.eye(d)
    np.testing.assert_allclose(got[:, 0], np.eye(d) / np.linalg.norm(A, axis=(1, 2))[:, None, None])
    np.testing.assert_allclose(got[:, -1], np.linalg.inv(A), atol=1e-10)


def test_newton_schulz_quadratic_convergence():
    _, S = _spd_problem(12)
    lam, d = 0.5, S.shape[-1]
    A = S + lam * np.eye(d)
    A_inv = np.linalg.inv(A)
    iters = solvers.newton_schulz_inverse(S, lam, steps=30)
    checked = 0
    for b in range(S.shape[0]):
        C = np.linalg.norm(A[b], 2)  # E_{k+1} = -E_k A E_k  =>  ||E_{k+1}|| <= ||A|| ||E_k||^2
        err = [np.linalg.norm(M - A_inv[b], 2) for M in iters[b]]
        for k in range(len(err) - 1):
            if err[k] < 1e-7:  # past this point rounding dominates
                break
            assert err[k + 1] <= C * err[k] ** 2 * (1 + 1e-8) + 1e-12
            checked += 1
        # in the quadratic regime the error at least squares (digits double)
        tail = [e for e in err if 1e-7 < e < 1e-1]
        for e0, e1 in zip(tail, tail[1:], strict=False):
            assert e1 <= C * e0**2 * (1 + 1e-8)
    assert checked >= 3 * S.shape[0]


def test_newton_schulz_accepts_custom_start():
    _, S = _spd_problem(13, B=2)
    lam, d = 0.3, S.shape[-1]
    A = S + lam * np.eye(d)
    c = 1.0 / np.max(np.linalg.eigvalsh(A))  # 0 < c < 2/lam_max
    got = solvers.newton_schulz_inverse(S, lam, steps=40, M0=c * np.eye(d))
    np.testing.assert_allclose(got[:, 0], np.broadcast_to(c * np.eye(d), (2, d, d)))
    np.testing.assert_allclose(got[:, -1], np.linalg.inv(A), atol=1e-10)


def test_newton_ridge_is_mean_loss_ridge():
    X, _ = _spd_problem(14)
    B, n, d = X.shape
    y = _rng(15).normal(size=(B, n))
    lam = 0.4
    got = solvers.newton_ridge(X, y, lam, steps=30)
    assert got.shape == (B, d)
    for b in range(B):
        expected = np.linalg.solve(X[b].T @ X[b] / n + lam * np.eye(d), X[b].T @ y[b] / n)
        np.testing.assert_allclose(got[b], expected, atol=1e-10)
    np.testing.assert_allclose(got, solvers.ridge(X, y, n * lam), atol=1e-10)


# ------------------------------------------------------------------ predict and knn


def test_predict_matches_python_dot():
    rng = _rng(16)
    w, xq = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    got = solvers.predict(w, xq)
    expected = [
        sum(float(a) * float(c) for a, c in zip(w[b], xq[b], strict=True)) for b in range(4)
    ]
    np.testing.assert_allclose(got, expected, atol=1e-12)


def _knn_brute(X, y, xq, k, weighted):
    out = []
    for b in range(len(X)):
        rows = []
        for i in range(len(X[b])):
            dist = math.sqrt(
                sum((float(a) - float(c)) ** 2 for a, c in zip(X[b][i], xq[b], strict=True))
            )
            rows.append((dist, i, float(y[b][i])))
        rows.sort()  # by distance, ties by index
        near = rows[:k]
        if not weighted:
            out.append(sum(r[2] for r in near) / len(near))
        elif any(r[0] == 0.0 for r in near):
            zeros = [r[2] for r in near if r[0] == 0.0]
            out.append(sum(zeros) / len(zeros))
        else:
            num = sum(r[2] / r[0] for r in near)
            den = sum(1.0 / r[0] for r in near)
            out.append(num / den)
    return out


@pytest.mark.parametrize("k", [1, 3, 5, 20])
@pytest.mark.parametrize("weighted", [False, True])
def test_knn_matches_brute_force(k, weighted):
    rng = _rng(17 + k)
    B, n, d = 4, 9, 3
    X, y, xq = rng.normal(size=(B, n, d)), rng.normal(size=(B, n)), rng.normal(size=(B, d))
    got = solvers.knn(X, y, xq, k=k, weighted=weighted)
    assert got.shape == (B,)
    np.testing.assert_allclose(got, _knn_brute(X, y, xq, k, weighted), atol=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
def test_knn_ties_and_exact_matches_on_integer_grid(weighted):
    rng = _rng(30)
    B, n, d = 6, 12, 2
    X = rng.integers(-2, 3, size=(B, n, d)).astype(float)
    y = rng.normal(size=(B, n))
    xq = X[:, 0].copy()  # the query coincides with an example (often with duplicates)
    xq[3] = [0.5, 0.5]  # one batch element with no exact match
    for k in (1, 2, 4):
        got = solvers.knn(X, y, xq, k=k, weighted=weighted)
        np.testing.assert_allclose(got, _knn_brute(X, y, xq, k, weighted), atol=1e-12)


def test_knn_weighted_exact_match_returns_that_y():
    X = np.array([[[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [5.0, 5.0]]])
    y = np.array([[10.0, 2.0, 4.0, -7.0]])
    np.testing.assert_allclose(solvers.knn(X, y, np.array([[1.0, 0.0]]), k=3, weighted=True), [3.0])
    np.testing.assert_allclose(
        solvers.knn(X, y, np.array([[0.0, 0.0]]), k=2, weighted=True), [10.0]
    )


def test_knn_no_examples_raises():
    with pytest.raises(ValueError, match="n = 0"):
        solvers.knn(np.zeros((1, 0, 2)), np.zeros((1, 0)), np.zeros((1, 2)))


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: solvers.gd_step(np.zeros(3), np.zeros((1, 3)), np.zeros(1), 0.1, 0.0), "w"),
        (lambda: solvers.gd_step(np.zeros((1, 3)), np.zeros((1, 2)), np.zeros(1), 0.1, 0.0), "x"),
        (lambda: solvers.gd_step(np.zeros((2, 3)), np.zeros((2, 3)), np.zeros(3), 0.1, 0.0), "y"),
        (lambda: solvers.sgd(np.zeros((3, 4)), np.zeros((3, 4)), np.zeros(4), 0.1, 0.0), "X"),
        (lambda: solvers.sgd(np.zeros((2, 3, 4)), np.zeros((2, 4)), np.zeros(4), 0.1, 0.0), "y"),
        (lambda: solvers.sgd(np.zeros((2, 3, 4)), np.zeros((2, 3)), np.zeros(3), 0.1, 0.0), "w0"),
        (
            lambda: solvers.sgd(np.zeros((2, 3, 4)), np.zeros((2, 3)), np.zeros((3, 4)), 0.1, 0.0),
            "w0",
        ),
        (
            lambda: solvers.batch_gd(
                np.zeros((2, 3, 4)), np.zeros((2, 3)), np.zeros(4), 0.1, 0.0, steps=-1
            ),
            "steps",
        ),
        (
            lambda: solvers.batch_gd(
                np.zeros((2, 0, 4)), np.zeros((2, 0)), np.zeros(4), 0.1, 0.0, steps=1
            ),
            "X",
        ),
        (lambda: solvers.ridge(np.zeros((2, 3, 4)), np.zeros((3, 3)), 0.1), "y"),
        (lambda: solvers.ridge(np.zeros((2, 3, 4)), np.zeros((2, 3)), -1.0), "lam"),
        (lambda: solvers.least_squares(np.zeros((3, 4)), np.zeros((3, 4))), "X"),
        (
            lambda: solvers.sherman_morrison(
                np.zeros((2, 3, 4)), np.zeros((2, 3)), np.zeros((2, 3))
            ),
            "A_inv",
        ),
        (
            lambda: solvers.sherman_morrison(
                np.zeros((2, 3, 3)), np.zeros((2, 4)), np.zeros((2, 3))
            ),
            "u",
        ),
        (
            lambda: solvers.sherman_morrison(
                np.zeros((2, 3, 3)), np.zeros((2, 3)), np.zeros((1, 3))
            ),
            "v",
        ),
        (
            lambda: solvers.ridge_by_sherman_morrison(np.zeros((1, 2, 3)), np.zeros((1, 2)), 0.0),
            "lam",
        ),
        (lambda: solvers.newton_schulz_inverse(np.zeros((3, 3)), 0.1, 5), "S"),
        (
            lambda: solvers.newton_schulz_inverse(np.zeros((1, 3, 3)), 0.1, 5, M0=np.zeros((2, 2))),
            "M0",
        ),
        (lambda: solvers.newton_ridge(np.zeros((1, 2, 3)), np.zeros((1, 2)), 0.1, 2.5), "steps"),
        (lambda: solvers.predict(np.zeros((2, 3)), np.zeros((2, 4))), "xq"),
        (lambda: solvers.knn(np.zeros((2, 3, 4)), np.zeros((2, 3)), np.zeros(4)), "xq"),
        (lambda: solvers.knn(np.zeros((2, 3, 4)), np.zeros((2, 3)), np.zeros((2, 4)), k=0), "k"),
    ],
)
def test_invalid_arguments_raise_value_error_naming_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name} "):
        call()


def test_shape_error_message_format():
    with pytest.raises(ValueError, match=r"X must have shape \[B, n, d\], got \(3, 4\)"):
        solvers.ridge(np.zeros((3, 4)), np.zeros((3, 4)), 1.0)
