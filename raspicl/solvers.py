"""Reference learning algorithms in plain numpy (float64).

Why this module exists
----------------------
A compiled transformer claims to *compute* an in-context learning algorithm
(one SGD step per token, ridge regression via Sherman-Morrison updates,
Newton-Schulz matrix inversion, k-nearest neighbours, ...).  To check that
claim we need an independent, obviously-correct implementation of each
algorithm to compare the transformer's outputs against.  That is what this
module is: every function here is a direct transcription of the formula in
its docstring, written in float64 numpy, and imports nothing from the rest of
``raspicl`` so that a bug in the compiler can never leak into the reference.

Conventions (all functions are batched over a leading batch dimension B)
-----------------------------------------------------------------------
* ``X``  : shape [B, n, d], the in-context examples x_1 .. x_n as rows.
* ``y``  : shape [B, n], the targets y_1 .. y_n.
* ``w``  : shape [B, d], a weight vector per batch element.
* ``xq`` : shape [B, d], a query point per batch element.
* ``lr``, ``lam`` : Python / numpy real scalars shared by the whole batch.

All inputs are converted to float64; all outputs are freshly allocated
float64 arrays.  Shape mistakes raise ``ValueError`` naming the argument.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "gd_step",
    "sgd",
    "batch_gd",
    "ridge",
    "least_squares",
    "sherman_morrison",
    "ridge_by_sherman_morrison",
    "newton_schulz_inverse",
    "newton_ridge",
    "predict",
    "knn",
]

Array = NDArray[np.float64]


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------


def _as_array(name: str, value: ArrayLike, ndim: int, layout: str) -> Array:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must have shape {layout}, got {arr.shape}")
    return arr


def _check_dim(
    name: str, layout: str, shape: tuple[int, ...], axis: int, expected: int, what: str
) -> None:
    if shape[axis] != expected:
        raise ValueError(f"{name} must have shape {layout} with {what} = {expected}, got {shape}")


def _scalar(name: str, value: float, *, nonneg: bool = False, positive: bool = False) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real scalar, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if positive and not v > 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    if nonneg and v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return v


def _count(name: str, value: int, *, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def _data(X: ArrayLike, y: ArrayLike) -> tuple[Array, Array]:
    """Validate X [B, n, d] and y [B, n] and return them as float64."""
    X = _as_array("X", X, 3, "[B, n, d]")
    y = _as_array("y", y, 2, "[B, n]")
    B, n, _ = X.shape
    _check_dim("y", "[B, n]", y.shape, 0, B, "B (from X)")
    _check_dim("y", "[B, n]", y.shape, 1, n, "n (from X)")
    return X, y


def _mean_statistics(X: ArrayLike, y: ArrayLike) -> tuple[Array, Array]:
    """S = (1/n) X^T X [B, d, d] and b = (1/n) X^T y [B, d] of validated data with n >= 1: the
    mean squared loss's statistics, which every full-batch method here iterates on."""
    X, y = _data(X, y)
    n = X.shape[1]
    if n == 0:
        raise ValueError("X must contain at least one example (n >= 1) for the mean loss")
    return np.einsum("bni,bnj->bij", X, X) / n, np.einsum("bni,bn->bi", X, y) / n


def _initial_w(w0: ArrayLike, B: int, d: int) -> Array:
    """Validate w0 of shape [d] or [B, d]; return a [B, d] float64 copy."""
    w0 = np.asarray(w0, dtype=np.float64)
    if w0.ndim == 1:
        _check_dim("w0", "[d] or [B, d]", w0.shape, 0, d, "d (from X)")
        return np.broadcast_to(w0, (B, d)).copy()
    if w0.ndim == 2:
        _check_dim("w0", "[d] or [B, d]", w0.shape, 0, B, "B (from X)")
        _check_dim("w0", "[d] or [B, d]", w0.shape, 1, d, "d (from X)")
        return w0.copy()
    raise ValueError(f"w0 must have shape [d] or [B, d], got {w0.shape}")


def _gd_update(w: Array, x: Array, y: Array, lr: float, lam: float) -> Array:
    residual = np.einsum("bd,bd->b", x, w) - y  # [B]
    return w - 2.0 * lr * (x * residual[:, None] + lam * w)


# --------------------------------------------------------------------------
# gradient descent
# --------------------------------------------------------------------------


def gd_step(w: ArrayLike, x: ArrayLike, y: ArrayLike, lr: float, lam: float) -> Array:
    """One gradient step on one example (per batch element).

    Formula:
        w' = w - 2*lr*( x*(x^T w - y) + lam*w )
    which is w - lr * grad_w L(w) for the per-example loss
        L(w) = (x^T w - y)^2 + lam*||w||^2 .

    Shapes: w [B, d], x [B, d], y [B]  ->  w' [B, d].
    lr is any finite real, lam >= 0.

    Why: this is the update a compiled "one SGD step per token" transformer
    layer must reproduce; it is the independent reference it is checked
    against.
    """
    w = _as_array("w", w, 2, "[B, d]")
    B, d = w.shape
    x = _as_array("x", x, 2, "[B, d]")
    _check_dim("x", "[B, d]", x.shape, 0, B, "B (from w)")
    _check_dim("x", "[B, d]", x.shape, 1, d, "d (from w)")
    y = _as_array("y", y, 1, "[B]")
    _check_dim("y", "[B]", y.shape, 0, B, "B (from w)")
    lr = _scalar("lr", lr)
    lam = _scalar("lam", lam, nonneg=True)
    return _gd_update(w, x, y, lr, lam)


def sgd(X: ArrayLike, y: ArrayLike, w0: ArrayLike, lr: float, lam: float) -> Array:
    """One-pass stochastic gradient descent over the n examples, in order.

    Formula, for i = 1 .. n:
        w_i = w_{i-1} - 2*lr*( x_i*(x_i^T w_{i-1} - y_i) + lam*w_{i-1} )
    i.e. gd_step applied to example i, starting from w_0 = w0.

    Shapes: X [B, n, d], y [B, n], w0 [d] (broadcast to every batch element)
    or [B, d]  ->  iterates [B, n+1, d], where [:, 0] is w0 and [:, i] is w_i.
    lr is any finite real, lam >= 0.

    Why: reference for a transformer that performs one SGD step per
    in-context example; comparing every iterate localises a mismatch to the
    layer/token where it first appears.
    """
    X, y = _data(X, y)
    B, n, d = X.shape
    lr = _scalar("lr", lr)
    lam = _scalar("lam", lam, nonneg=True)
    out = np.empty((B, n + 1, d), dtype=np.float64)
    out[:, 0] = _initial_w(w0, B, d)
    for i in range(n):
        out[:, i + 1] = _gd_update(out[:, i], X[:, i], y[:, i], lr, lam)
    return out


def batch_gd(X: ArrayLike, y: ArrayLike, w0: ArrayLike, lr: float, lam: float, steps: int) -> Array:
    """Full-batch gradient descent on the mean squared loss.

    Formula, with S = X^T X / n and b = X^T y / n, for t = 1 .. T (T = steps):
        w_t = w_{t-1} - 2*lr*( S w_{t-1} - b + lam*w_{t-1} )
    which is w - lr * grad_w L(w) for the mean loss
        L(w) = (1/n) * sum_i (x_i^T w - y_i)^2 + lam*||w||^2 .

    Shapes: X [B, n, d] with n >= 1, y [B, n], w0 [d] or [B, d]
    ->  iterates [B, steps+1, d], where [:, 0] is w0.
    lr is any finite real, lam >= 0, steps >= 0.

    Why: reference for a transformer whose layers each implement one
    full-batch GD step on the in-context data (the "transformers learn
    in-context by gradient descent" construction).
    """
    S, b = _mean_statistics(X, y)  # [B, d, d], [B, d]
    B, d = b.shape
    lr = _scalar("lr", lr)
    lam = _scalar("lam", lam, nonneg=True)
    steps = _count("steps", steps, minimum=0)
    out = np.empty((B, steps + 1, d), dtype=np.float64)
    out[:, 0] = _initial_w(w0, B, d)
    for t in range(steps):
        w = out[:, t]
        grad_half = np.einsum("bij,bj->bi", S, w) - b + lam * w
        out[:, t + 1] = w - 2.0 * lr * grad_half
    return out


# --------------------------------------------------------------------------
# closed-form regression
# --------------------------------------------------------------------------


def ridge(X: ArrayLike, y: ArrayLike, lam: float) -> Array:
    """Ridge regression (sum loss) by a direct linear solve.

    Formula:
        w = (X^T X + lam*I)^{-1} X^T y
    computed with np.linalg.solve (no explicit inverse).  This minimises
    sum_i (x_i^T w - y_i)^2 + lam*||w||^2.

    Shapes: X [B, n, d], y [B, n]  ->  w [B, d].  n may be 0, in which case
    X^T y = 0 and the result is all zeros.  lam >= 0 (lam = 0 requires
    X^T X to be invertible; otherwise numpy raises LinAlgError).

    Why: the closed-form target that in-context ridge / least-squares
    transformers are checked against.
    """
    X, y = _data(X, y)
    B, n, d = X.shape
    lam = _scalar("lam", lam, nonneg=True)
    if n == 0:
        return np.zeros((B, d), dtype=np.float64)
    A = np.einsum("bni,bnj->bij", X, X) + lam * np.eye(d)
    rhs = np.einsum("bni,bn->bi", X, y)
    return np.linalg.solve(A, rhs[..., None])[..., 0]


def least_squares(X: ArrayLike, y: ArrayLike) -> Array:
    """Minimum-norm least-squares solution.

    Formula:
        w = pinv(X) y
    i.e. among all minimisers of ||X w - y||^2 the one with smallest ||w||
    (it lies in the row space of X).  Equals (X^T X)^{-1} X^T y when X has
    full column rank, and satisfies X w = y exactly when X has full row rank.
    Computed with np.linalg.pinv (numpy's default rcond).

    Shapes: X [B, n, d], y [B, n]  ->  w [B, d].  n = 0 gives zeros.

    Why: the lam -> 0 limit of ridge and the Bayes-optimal target for
    noiseless in-context linear regression; reference for transformers
    that are claimed to converge to it.
    """
    X, y = _data(X, y)
    B, n, d = X.shape
    if n == 0 or d == 0:
        return np.zeros((B, d), dtype=np.float64)
    return np.einsum("bdn,bn->bd", np.linalg.pinv(X), y)


def sherman_morrison(A_inv: ArrayLike, u: ArrayLike, v: ArrayLike) -> Array:
    """One Sherman-Morrison rank-one update of an inverse.

    Formula:
        (A + u v^T)^{-1} = A^{-1} - (A^{-1} u)(v^T A^{-1}) / (1 + v^T A^{-1} u)

    Shapes: A_inv [B, d, d], u [B, d], v [B, d]  ->  [B, d, d].
    Raises np.linalg.LinAlgError if some denominator 1 + v^T A^{-1} u is
    exactly 0 (then A + u v^T is singular).

    Why: reference for a transformer that maintains an inverse (or inverse
    times vector) in its residual stream and updates it once per in-context
    example.
    """
    A_inv = _as_array("A_inv", A_inv, 3, "[B, d, d]")
    B, d, d2 = A_inv.shape
    if d != d2:
        raise ValueError(f"A_inv must have shape [B, d, d] (square), got {A_inv.shape}")
    u = _as_array("u", u, 2, "[B, d]")
    _check_dim("u", "[B, d]", u.shape, 0, B, "B (from A_inv)")
    _check_dim("u", "[B, d]", u.shape, 1, d, "d (from A_inv)")
    v = _as_array("v", v, 2, "[B, d]")
    _check_dim("v", "[B, d]", v.shape, 0, B, "B (from A_inv)")
    _check_dim("v", "[B, d]", v.shape, 1, d, "d (from A_inv)")
    return _sm_update(A_inv, u, v)


def _sm_update(A_inv: Array, u: Array, v: Array) -> Array:
    Au = np.einsum("bij,bj->bi", A_inv, u)  # A^{-1} u     [B, d]
    vA = np.einsum("bi,bij->bj", v, A_inv)  # v^T A^{-1}   [B, d]
    denom = 1.0 + np.einsum("bi,bi->b", v, Au)  # [B]
    if np.any(denom == 0.0):
        raise np.linalg.LinAlgError("A + u v^T is singular (1 + v^T A^{-1} u == 0)")
    return A_inv - Au[:, :, None] * vA[:, None, :] / denom[:, None, None]


def ridge_by_sherman_morrison(X: ArrayLike, y: ArrayLike, lam: float) -> Array:
    """Ridge regression built up one example at a time with Sherman-Morrison.

    Formula: start from A_0^{-1} = I/lam and b_0 = 0, then for i = 1 .. n
        A_i^{-1} = sherman_morrison(A_{i-1}^{-1}, x_i, x_i)   (A_i = A_{i-1} + x_i x_i^T)
        b_i      = b_{i-1} + x_i y_i
        w_i      = A_i^{-1} b_i
    so that A_i = lam*I + sum_{j<=i} x_j x_j^T and w_i equals
    ridge(X[:, :i], y[:, :i], lam), the ridge solution on the first i
    examples.  w_0 = 0.

    Shapes: X [B, n, d], y [B, n]  ->  iterates [B, n+1, d].  lam > 0.

    Why: reference for the online (recursive least squares) in-context
    ridge transformer, which updates its inverse once per token; every
    prefix solution is returned so each token's prediction can be checked.
    """
    X, y = _data(X, y)
    B, n, d = X.shape
    lam = _scalar("lam", lam, positive=True)
    A_inv = np.broadcast_to(np.eye(d) / lam, (B, d, d)).copy()
    b = np.zeros((B, d), dtype=np.float64)
    out = np.zeros((B, n + 1, d), dtype=np.float64)
    for i in range(n):
        xi = X[:, i]
        A_inv = _sm_update(A_inv, xi, xi)
        b = b + xi * y[:, i][:, None]
        out[:, i + 1] = np.einsum("bij,bj->bi", A_inv, b)
    return out


# --------------------------------------------------------------------------
# Newton-Schulz
# --------------------------------------------------------------------------


def newton_schulz_inverse(
    S: ArrayLike, lam: float, steps: int, M0: ArrayLike | None = None
) -> Array:
    """Newton-Schulz iteration for the inverse of A = S + lam*I.

    Formula, for k = 1 .. steps:
        M_k = 2*M_{k-1} - M_{k-1} A M_{k-1}
    with default start (M0 is None)
        M_0 = I / ||A||_F            (Frobenius norm, per batch element).

    Convergence: let R_k = I - M_k A.  Expanding the update gives
    R_k = R_{k-1}^2 exactly, so R_k = R_0^(2^k) and the error
    E_k = M_k - A^{-1} = -R_k A^{-1} obeys E_k = -E_{k-1} A E_{k-1}, i.e.
    ||E_k|| <= ||A|| * ||E_{k-1}||^2 (quadratic convergence).  It converges
    iff the spectral radius of R_0 is < 1.  For symmetric positive definite
    A with eigenvalues 0 < lam_i <= lam_max we have lam_max <= ||A||_F, so
    the eigenvalues of R_0 = I - A/||A||_F are 1 - lam_i/||A||_F in [0, 1),
    hence rho(R_0) < 1.  (Any M_0 = c*I with 0 < c < 2/lam_max works; the
    Frobenius norm is a cheap upper bound on lam_max.)  The number of steps
    needed grows like log2(||A||_F / lam_min): rho(R_0)^(2^k) must be small.
    A = S + lam*I must therefore be SPD for the default start, e.g.
    S = X^T X / n (PSD) with lam > 0.  A user-supplied M0 must itself
    satisfy rho(I - M0 A) < 1.

    Shapes: S [B, d, d], M0 None, [d, d] or [B, d, d]
    ->  iterates [B, steps+1, d, d], where [:, 0] is M_0.
    lam >= 0, steps >= 0.

    Why: reference for a transformer that inverts the in-context covariance
    with a fixed number of matrix-multiply layers (one Newton-Schulz step
    per layer pair); each iterate is returned so layers can be checked one
    by one.
    """
    S = _as_array("S", S, 3, "[B, d, d]")
    B, d, d2 = S.shape
    if d != d2:
        raise ValueError(f"S must have shape [B, d, d] (square), got {S.shape}")
    lam = _scalar("lam", lam, nonneg=True)
    steps = _count("steps", steps, minimum=0)
    A = S + lam * np.eye(d)
    if M0 is None:
        fro = np.linalg.norm(A, ord="fro", axis=(1, 2))  # [B]
        if np.any(fro == 0.0):
            raise ValueError("S + lam*I is zero for some batch element; cannot start iteration")
        M = np.eye(d)[None] / fro[:, None, None]
    else:
        M = np.asarray(M0, dtype=np.float64)
        if M.ndim == 2:
            if M.shape != (d, d):
                raise ValueError(
                    f"M0 must have shape [d, d] or [B, d, d] with d = {d}, got {M.shape}"
                )
            M = np.broadcast_to(M, (B, d, d))
        elif M.ndim == 3:
            if M.shape != (B, d, d):
                raise ValueError(
                    f"M0 must have shape [d, d] or [B, d, d] with B = {B}, d = {d}, got {M.shape}"
                )
        else:
            raise ValueError(f"M0 must have shape [d, d] or [B, d, d], got {M.shape}")
    out = np.empty((B, steps + 1, d, d), dtype=np.float64)
    out[:, 0] = M
    for k in range(steps):
        M = out[:, k]
        out[:, k + 1] = 2.0 * M - M @ A @ M
    return out


def newton_ridge(X: ArrayLike, y: ArrayLike, lam: float, steps: int) -> Array:
    """Ridge regression on the mean loss, with the inverse from Newton-Schulz.

    Formula, with S = X^T X / n and b = X^T y / n:
        M_T = newton_schulz_inverse(S, lam, steps)[:, -1]   (default start)
        w   = M_T b
    As steps -> infinity, w -> (X^T X / n + lam*I)^{-1} X^T y / n, which is
    ridge on the MEAN loss (1/n) sum_i (x_i^T w - y_i)^2 + lam*||w||^2,
    equal to ridge(X, y, n*lam) in the sum-loss convention of `ridge`.

    Shapes: X [B, n, d] with n >= 1, y [B, n]  ->  w [B, d].
    lam > 0 (so that S + lam*I is SPD), steps >= 0.

    Why: reference for a transformer that solves in-context ridge with a
    fixed number of Newton-Schulz layers; for finite steps it reproduces the
    truncated iteration, not the exact solve.
    """
    S, b = _mean_statistics(X, y)
    lam = _scalar("lam", lam, positive=True)
    M = newton_schulz_inverse(S, lam, steps)[:, -1]
    return np.einsum("bij,bj->bi", M, b)


# --------------------------------------------------------------------------
# prediction and nearest neighbours
# --------------------------------------------------------------------------


def predict(w: ArrayLike, xq: ArrayLike) -> Array:
    """Linear prediction at the query.

    Formula:
        yhat = <w, xq> = sum_j w_j * xq_j

    Shapes: w [B, d], xq [B, d]  ->  yhat [B].

    Why: the read-out every linear in-context learner ends with; the
    transformer's output token is compared with this value.
    """
    w = _as_array("w", w, 2, "[B, d]")
    B, d = w.shape
    xq = _as_array("xq", xq, 2, "[B, d]")
    _check_dim("xq", "[B, d]", xq.shape, 0, B, "B (from w)")
    _check_dim("xq", "[B, d]", xq.shape, 1, d, "d (from w)")
    return np.einsum("bd,bd->b", w, xq)


def knn(X: ArrayLike, y: ArrayLike, xq: ArrayLike, k: int = 3, weighted: bool = False) -> Array:
    """k-nearest-neighbour regression by Euclidean distance.

    Formula: dist_i = ||x_i - xq||_2.  Let N be the indices of the
    m = min(k, n) smallest distances (ties broken by lower example index,
    i.e. a stable sort).  Then
        uniform  (weighted=False):  yhat = (1/m) * sum_{i in N} y_i
        weighted (weighted=True):   yhat = sum_{i in N} y_i/dist_i
                                           / sum_{i in N} 1/dist_i
    except that if some i in N has dist_i == 0 exactly, the weighted
    prediction is the plain mean of y_i over those i in N with dist_i == 0
    (the limit of infinite weight).

    Shapes: X [B, n, d], y [B, n], xq [B, d]  ->  yhat [B].
    k >= 1; if n < k all n examples are used; n = 0 raises ValueError.

    Why: reference for a transformer that implements nearest-neighbour
    in-context learning with (hard) attention.
    """
    X, y = _data(X, y)
    B, n, d = X.shape
    xq = _as_array("xq", xq, 2, "[B, d]")
    _check_dim("xq", "[B, d]", xq.shape, 0, B, "B (from X)")
    _check_dim("xq", "[B, d]", xq.shape, 1, d, "d (from X)")
    k = _count("k", k, minimum=1)
    if n == 0:
        raise ValueError("knn needs at least one example: X has n = 0")
    m = min(k, n)
    dist = np.sqrt(np.sum((X - xq[:, None, :]) ** 2, axis=2))  # [B, n]
    idx = np.argsort(dist, axis=1, kind="stable")[:, :m]  # [B, m]
    nd = np.take_along_axis(dist, idx, axis=1)
    ny = np.take_along_axis(y, idx, axis=1)
    if not weighted:
        return ny.mean(axis=1)
    out = np.empty(B, dtype=np.float64)
    for bi in range(B):
        zero = nd[bi] == 0.0
        if np.any(zero):
            out[bi] = ny[bi][zero].mean()
        else:
            wts = 1.0 / nd[bi]
            out[bi] = np.sum(wts * ny[bi]) / np.sum(wts)
    return out


def sigmoid(z: ArrayLike) -> Array:
    """The logistic function 1 / (1 + e^-z), computed without overflow (e^z / (1 + e^z) for
    z < 0)."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def logistic_gd(X: ArrayLike, y: ArrayLike, w0: ArrayLike, lr: float, steps: int) -> Array:
    """Full-batch gradient descent on the mean logistic (cross-entropy) loss.

    Formula, for t = 1 .. T (T = steps):
        w_t = w_{t-1} - lr * (1/n) * sum_i (sigmoid(x_i^T w_{t-1}) - y_i) x_i
    which is w - lr * grad_w L(w) for L(w) = (1/n) sum_i [log(1 + e^{x_i^T w}) - y_i x_i^T w],
    the negative log-likelihood of labels y_i in {0, 1} (soft labels y_i in [0, 1] give the
    same formula; any real y_i is accepted and used as it stands).

    Shapes: X [B, n, d] with n >= 1, y [B, n], w0 [d] or [B, d] -> iterates [B, steps+1, d],
    where [:, 0] is w0.

    Why: reference for the compiled `logistic_gd` program (Bai et al.'s in-context GD on
    GLMs), written with numpy's own matrix products, not the language.
    """
    X, y = _data(X, y)
    B, n, d = X.shape
    if n == 0:
        raise ValueError("X must contain at least one example (n >= 1) for the mean loss")
    lr = _scalar("lr", lr)
    steps = _count("steps", steps, minimum=0)
    out = np.empty((B, steps + 1, d), dtype=np.float64)
    out[:, 0] = np.broadcast_to(np.asarray(w0, dtype=np.float64), (B, d))
    for t in range(1, steps + 1):
        w = out[:, t - 1]
        r = sigmoid(np.einsum("bnd,bd->bn", X, w)) - y  # [B, n]
        out[:, t] = w - lr * np.einsum("bnd,bn->bd", X, r) / n
    return out


def logistic_sgd(X: ArrayLike, y: ArrayLike, w0: ArrayLike, lr: float) -> Array:
    """One-pass stochastic gradient descent on the logistic (cross-entropy) loss, in order.

    Formula, for i = 1 .. n:
        w_i = w_{i-1} - lr * (sigmoid(x_i^T w_{i-1}) - y_i) x_i
    which is w - lr * grad_w l_i(w) for the loss of example i alone,
    l_i(w) = log(1 + e^{x_i^T w}) - y_i x_i^T w (labels y_i in {0, 1}; any real y_i is
    accepted and used as it stands, as in logistic_gd).

    Shapes: X [B, n, d], y [B, n], w0 [d] or [B, d] -> iterates [B, n+1, d], where [:, 0] is
    w0 and [:, i] is w_i.

    Why: reference for the compiled `logistic_sgd` program (a scan with a sigmoid in its
    step), written with numpy's own products, not the language.
    """
    X, y = _data(X, y)
    B, n, d = X.shape
    lr = _scalar("lr", lr)
    out = np.empty((B, n + 1, d), dtype=np.float64)
    out[:, 0] = _initial_w(w0, B, d)
    for i in range(n):
        w, x = out[:, i], X[:, i]
        r = sigmoid(np.einsum("bd,bd->b", x, w)) - y[:, i]  # [B]
        out[:, i + 1] = w - lr * r[:, None] * x
    return out


def soft_threshold(v: ArrayLike, t: float) -> Array:
    """The proximal map of t |.|_1, entry by entry: sign(v) max(|v| - t, 0) (t >= 0)."""
    v = np.asarray(v, dtype=np.float64)
    t = _scalar("t", t, nonneg=True)
    return np.sign(v) * np.maximum(np.abs(v) - t, 0.0)


def lasso_ista(X: ArrayLike, y: ArrayLike, w0: ArrayLike, lr: float, lam: float,
               steps: int) -> Array:
    """Proximal gradient descent (ISTA) on the lasso loss.

    Formula, with S = X^T X / n and b = X^T y / n, for t = 1 .. T (T = steps):
        w_t = soft_threshold(w_{t-1} - lr * (S w_{t-1} - b), lr * lam)
    the gradient step on the smooth part of
        L(w) = (1/(2n)) * sum_i (x_i^T w - y_i)^2 + lam * ||w||_1
    followed by the proximal map of lr * lam * ||.||_1 (soft_threshold).

    Shapes: X [B, n, d] with n >= 1, y [B, n], w0 [d] or [B, d] -> iterates [B, steps+1, d],
    where [:, 0] is w0. lr is any finite real, lam >= 0 (lr * lam >= 0), steps >= 0.

    Why: reference for the compiled `lasso_ista` program (a soft-threshold gadget per
    step), written with numpy's own matrix products, not the language.
    """
    S, b = _mean_statistics(X, y)  # [B, d, d], [B, d]
    B, d = b.shape
    lr = _scalar("lr", lr)
    lam = _scalar("lam", lam, nonneg=True)
    steps = _count("steps", steps, minimum=0)
    out = np.empty((B, steps + 1, d), dtype=np.float64)
    out[:, 0] = _initial_w(w0, B, d)
    for t in range(steps):
        w = out[:, t]
        v = w - lr * (np.einsum("bij,bj->bi", S, w) - b)
        out[:, t + 1] = soft_threshold(v, lr * lam)
    return out


def poisson_gd(X: ArrayLike, y: ArrayLike, w0: ArrayLike, lr: float, steps: int) -> Array:
    """Full-batch gradient descent on the mean Poisson negative log-likelihood, exp link.

    Formula, for t = 1 .. T (T = steps):
        w_t = w_{t-1} - lr * (1/n) * sum_i (exp(x_i^T w_{t-1}) - y_i) x_i
    which is w - lr * grad_w L(w) for L(w) = (1/n) sum_i [exp(x_i^T w) - y_i x_i^T w] (the
    negative log-likelihood of counts y_i with mean exp(x_i^T w), up to a constant; any real
    y_i is accepted and used as it stands).

    Shapes: X [B, n, d] with n >= 1, y [B, n], w0 [d] or [B, d] -> iterates [B, steps+1, d],
    where [:, 0] is w0.

    Why: reference for the compiled `poisson_gd` program (a GLM with an exp link, each exp a
    certified gadget), written with numpy's own matrix products, not the language.
    """
    X, y = _data(X, y)
    B, n, d = X.shape
    if n == 0:
        raise ValueError("X must contain at least one example (n >= 1) for the mean loss")
    lr = _scalar("lr", lr)
    steps = _count("steps", steps, minimum=0)
    out = np.empty((B, steps + 1, d), dtype=np.float64)
    out[:, 0] = _initial_w(w0, B, d)
    for t in range(1, steps + 1):
        w = out[:, t - 1]
        r = np.exp(np.einsum("bnd,bd->bn", X, w)) - y  # [B, n]
        out[:, t] = w - lr * np.einsum("bnd,bn->bd", X, r) / n
    return out


def kernel_smoother(X: ArrayLike, y: ArrayLike, xq: ArrayLike, h: float) -> Array:
    """The Nadaraya-Watson estimate at xq with a Gaussian (RBF) kernel of bandwidth h.

    Formula:
        k_i = exp(-|xq - x_i|^2 / (2 h^2)),   prediction  sum_i k_i y_i / sum_i k_i.

    Shapes: X [B, n, d] with n >= 1, y [B, n], xq [B, d] -> [B]. h > 0.

    Why: reference for the compiled `kernel_smoother` program (one exp gadget per example,
    then a division), written with numpy, not the language.
    """
    X, y = _data(X, y)
    B, n, d = X.shape
    xq = _as_array("xq", xq, 2, "[B, d]")
    _check_dim("xq", "[B, d]", xq.shape, 1, d, "d (from X)")
    if n == 0:
        raise ValueError("X must contain at least one example (n >= 1) to average")
    h = _scalar("h", h, positive=True)
    k = np.exp(-np.sum((X - xq[:, None, :]) ** 2, axis=2) / (2.0 * h * h))  # [B, n]
    return np.sum(k * y, axis=1) / np.sum(k, axis=1)
