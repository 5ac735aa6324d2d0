"""Reference learners: the algorithms a trained (or compiled) in-context learner is compared
with, each read at every prefix of the same prompts, as a `Predictor`.

Column k of `predict` (k = 0..n-1) is the prediction for x_{k+1} from the k examples before it;
column n is the prediction for the query from all n. Every learner predicts 0 at k = 0 (no
example seen; w = 0 is the prior mean of w), except fixed-step GD and SGD started from a
non-zero w0 (the compiled programs' default), which predict w0^T x there as those programs do.

Linear learners also expose `weights(prompts) -> [B, n + 1, d]`, the weight vector each prefix
gives; the metrics never use it (they measure implicit weights through `predict`), the tests
and the probes' targets do.

Conventions (those of raspicl.solvers and of programs/*.py, so that a compiled program and its
reference learner share hyper-parameters exactly):

    ridge(lam)        w = (X^T X + lam I)^-1 X^T y                      (sum loss)
    gd(T, lr)         T steps of w <- w - 2 lr (S w - b), S = X^T X / k, b = X^T y / k  (mean loss)
    sgd(lr)           w_i = w_{i-1} - 2 lr x_i (x_i^T w_{i-1} - y_i), one pass in order
    averaging         w = (1/k) sum_i y_i x_i  (= b; equal to gd(T=1, lr=0.5) from w = 0)
    3nn               mean of the y of the 3 nearest examples (all of them when k < 3)
    lasso(alpha)      argmin (1/2k) ||y - X w||^2 + alpha ||w||_1       (mean loss, sklearn's)

Logistic tasks (labels in {0, 1}; every learner predicts a probability, 0.5 at k = 0, where
w = 0; raspicl.icl.tasks):

    logreg(lam)       the MAP w of the summed log-likelihood with the Gaussian prior's penalty
                      (lam/2) ||w||^2, by Newton's method (IRLS), predicting sigmoid(w^T x);
                      lam = 1/tau^2 matches the task's prior w ~ N(0, tau^2 I)
    logistic_gd(T, lr) T steps of w <- w - lr (1/k) sum_i (sigmoid(x_i^T w) - y_i) x_i from
                      w0 (raspicl.solvers.logistic_gd, the bundled program logistic_gd's)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from raspicl import solvers
from raspicl.errors import RaspiclError
from raspicl.icl.tasks import RegressionTask
from raspicl.prompts import Prompts
from raspicl.solvers import sigmoid

# The lambdas of the paper's MSPD table (Akyürek et al. 2023, Table 1: sigma^2/tau^2 in
# {1/16, 1/9, 1/4, 4/9}); the task's own sigma^2/tau^2 is added when it is not 0.
RIDGE_GRID = (1 / 16, 1 / 9, 1 / 4, 4 / 9)
# The fixed step of the bundled programs batch_gd and sgd (their default lr).
PROGRAM_LR = 0.1
# Held-out prompts on which gd(T) tunes its step per prefix, and the seed they are drawn from
# (any seed other than the evaluation prompts'; the default evaluation seed is 0).
TUNE_PROMPTS = 4096
TUNE_SEED = 1_000_003
# The step range gd(T) searches when it tunes its step (log-spaced grid, then golden section).
GD_LR_RANGE = (1e-4, 10.0)
# logistic_gd's: wider, since the logistic loss's curvature is at most 1/4 of the squared
# loss's (sigmoid' <= 1/4), so its best steps are about 4x larger.
LOGISTIC_LR_RANGE = (1e-3, 100.0)
# The bundled program logistic_gd's defaults (T steps at lr from w = 0), its reference learner.
LOGISTIC_PROGRAM_T = 2
# Lasso penalties of the sparse task's reference set (the mean-loss convention, sklearn's
# alpha; Garg et al. 2022 compare with Lasso over a range of alpha).
LASSO_GRID = (1e-3, 1e-2, 1e-1)
# Convergence of the iterative solvers (lasso's coordinate descent, logreg's Newton steps):
# stop when the largest change in a weight (lasso) or gradient entry (logreg) is below TOL,
# or after MAX_ITER sweeps / steps.
TOL = 1e-10
LASSO_MAX_ITER = 5000
# Coordinate-descent sweeps between lasso's attempts at an exact solve on the current support.
LASSO_POLISH = 10
# Sweeps after which lasso solves the prompts still open by trying every support and sign
# pattern, when there are at most LASSO_ENUMERATE_MAX such candidates (d = 3: 26; d = 5: 242).
LASSO_ENUMERATE_AFTER = 50
LASSO_ENUMERATE_MAX = 512
NEWTON_MAX_ITER = 100


def fmt(value: float) -> str:
    """A number as it appears in a learner's name: 6 significant digits (0.25, 0.111111)."""
    return f"{float(value):g}"


def _queries(prompts: Prompts) -> np.ndarray:
    return prompts.prefix_queries()  # [B, n + 1, d]: x_1..x_n, x_q


def _predict_linear(W: np.ndarray, prompts: Prompts) -> np.ndarray:
    return np.einsum("bkd,bkd->bk", W, _queries(prompts))


class LinearLearner:
    """A learner whose prediction at every prefix is w_k^T x: predict from weights()."""

    name: str

    def weights(self, prompts: Prompts) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, prompts: Prompts) -> np.ndarray:
        return _predict_linear(self.weights(prompts), prompts)


@dataclass
class LeastSquares(LinearLearner):
    """Minimum-norm least squares on the examples so far (pinv; 0 at k = 0)."""

    name: str = "least_squares"

    def weights(self, prompts: Prompts) -> np.ndarray:
        return np.stack([solvers.least_squares(prompts.X[:, :k], prompts.y[:, :k])
                         for k in range(prompts.n + 1)], axis=1)


@dataclass
class Ridge(LinearLearner):
    """Ridge regression (sum loss) with regulariser lam > 0 on the examples so far."""

    lam: float
    name: str = ""

    def __post_init__(self) -> None:
        if not np.isfinite(self.lam) or self.lam <= 0:
            raise ValueError(f"Ridge.lam must be a finite number > 0 (lam = 0 is "
                             f"LeastSquares), got {self.lam!r}")
        self.name = self.name or f"ridge({fmt(self.lam)})"

    def weights(self, prompts: Prompts) -> np.ndarray:
        return np.stack([solvers.ridge(prompts.X[:, :k], prompts.y[:, :k], self.lam)
                         for k in range(prompts.n + 1)], axis=1)


@dataclass
class Averaging(LinearLearner):
    """w = (1/k) sum_i y_i x_i over the examples so far (Garg et al.'s averaging baseline)."""

    name: str = "averaging"

    def weights(self, prompts: Prompts) -> np.ndarray:
        B, n, d = prompts.X.shape
        cum = np.cumsum(prompts.X * prompts.y[..., None], axis=1)  # [B, n, d]
        W = np.zeros((B, n + 1, d))
        W[:, 1:] = cum / np.arange(1, n + 1)[None, :, None]
        return W


@dataclass
class Zero(LinearLearner):
    """Always 0 (the prior mean): the error scale of the normalised error (about 1)."""

    name: str = "zero"

    def weights(self, prompts: Prompts) -> np.ndarray:
        return np.zeros((prompts.batch, prompts.n + 1, prompts.d))


@dataclass
class Constant:
    """Always `value`: for logistic tasks 0.5, the prior probability that y = 1 (the role
    `zero` plays for regression)."""

    value: float = 0.5
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or f"constant({fmt(self.value)})"

    def predict(self, prompts: Prompts) -> np.ndarray:
        return np.full((prompts.batch, prompts.n + 1), float(self.value))


@dataclass
class NearestNeighbours:
    """The mean y of the `k` nearest examples so far (all of them when fewer; `empty` at
    k = 0: 0 for regression, 0.5 for logistic labels, where the mean y is a probability)."""

    k: int = 3
    empty: float = 0.0
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or f"{self.k}nn"

    def predict(self, prompts: Prompts) -> np.ndarray:
        q = _queries(prompts)
        out = np.full((prompts.batch, prompts.n + 1), float(self.empty))
        for j in range(1, prompts.n + 1):
            out[:, j] = solvers.knn(prompts.X[:, :j], prompts.y[:, :j], q[:, j], k=self.k)
        return out


def _w0(w0, d: int) -> np.ndarray:
    return np.zeros(d) if w0 is None else np.asarray(w0, dtype=np.float64).reshape(d)


def _w0_suffix(w0) -> str:
    if w0 is None or not np.any(np.asarray(w0)):
        return ""
    return ", w0=[" + ", ".join(fmt(v) for v in np.asarray(w0).ravel()) + "]"


@dataclass
class SGD(LinearLearner):
    """One-pass SGD over the examples in order (raspicl.solvers.sgd), from w0 (default 0):
    column k reads w_k, the weights after the first k examples."""

    lr: float = PROGRAM_LR
    lam: float = 0.0
    w0: list[float] | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if not self.name:
            parts = [] if self.lr == PROGRAM_LR else [f"lr={fmt(self.lr)}"]
            if self.lam:
                parts.append(f"lam={fmt(self.lam)}")
            if _w0_suffix(self.w0):
                parts.append(_w0_suffix(self.w0).removeprefix(", "))
            self.name = f"sgd({', '.join(parts)})" if parts else "sgd"

    def weights(self, prompts: Prompts) -> np.ndarray:
        return solvers.sgd(prompts.X, prompts.y, _w0(self.w0, prompts.d), self.lr, self.lam)


@dataclass
class GradientDescent(LinearLearner):
    """T steps of full-batch GD on the mean squared loss of the examples so far
    (raspicl.solvers.batch_gd): w_t = w_{t-1} - 2 lr (S w_{t-1} - b + lam w_{t-1}).

    With `lr` given, one fixed step for every prefix (as the compiled batch_gd program). With
    lr=None the step is tuned per prefix k on held-out prompts of `task` (the paper's "one step
    of gradient descent" has its learning rate tuned): the lr minimising the mean squared error
    against the noiseless target w^T x_{k+1} on TUNE_PROMPTS prompts drawn with TUNE_SEED —
    for T = 1 from w0 = 0 in closed form (the prediction is 2 lr b^T x, linear in lr), for T > 1
    by a log-spaced grid refined by golden-section search. The tuned steps are in `lrs`.
    """

    T: int = 1
    lr: float | None = None
    task: RegressionTask | None = None
    lam: float = 0.0
    w0: list[float] | None = None
    tune_prompts: int = TUNE_PROMPTS
    tune_seed: int = TUNE_SEED
    name: str = ""
    lrs: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if int(self.T) != self.T or self.T < 1:
            raise ValueError(f"GradientDescent.T must be an integer >= 1, got {self.T!r}")
        if self.lr is None:
            if self.task is None:
                raise ValueError("GradientDescent with a tuned step (lr=None) needs the task "
                                 "whose held-out prompts tune it")
            self.lrs = self._tune(self.task)
        if not self.name:
            parts = [f"T={self.T}"]
            if self.lr is not None:
                parts.append(f"lr={fmt(self.lr)}")
            if self.lam:
                parts.append(f"lam={fmt(self.lam)}")
            self.name = f"gd({', '.join(parts)}{_w0_suffix(self.w0)})"

    def _steps(self, n: int) -> list[float]:
        if self.lr is not None:
            return [float(self.lr)] * (n + 1)
        if len(self.lrs) != n + 1:
            raise RaspiclError(f"{self.name}: its step was tuned for n = {len(self.lrs) - 1} "
                               f"examples, the prompts have n = {n}")
        return self.lrs

    def _weights_k(self, X: np.ndarray, y: np.ndarray, k: int, lr: float) -> np.ndarray:
        B, _, d = X.shape
        w0 = _w0(self.w0, d)
        if k == 0:  # no data: S = 0, b = 0, the step only shrinks w by (1 - 2 lr lam)
            return np.broadcast_to(w0 * (1.0 - 2.0 * lr * self.lam) ** self.T, (B, d)).copy()
        return solvers.batch_gd(X[:, :k], y[:, :k], w0, lr, self.lam, self.T)[:, -1]

    def weights(self, prompts: Prompts) -> np.ndarray:
        steps = self._steps(prompts.n)
        return np.stack([self._weights_k(prompts.X, prompts.y, k, steps[k])
                         for k in range(prompts.n + 1)], axis=1)

    def _tune(self, task: RegressionTask) -> list[float]:
        held = task.sample(self.tune_prompts, self.tune_seed)
        q = _queries(held)
        target = task.targets(held)  # noiseless w^T x at every column
        lrs = [PROGRAM_LR]  # k = 0: no data; the step does not matter when lam = 0
        for k in range(1, task.n + 1):
            lrs.append(self._tune_k(held, q[:, k], target[:, k], k))
        return lrs

    def _tune_k(self, held: Prompts, xk: np.ndarray, t: np.ndarray, k: int) -> float:
        if self.T == 1 and not np.any(_w0(self.w0, held.d)) and self.lam == 0:
            b = np.einsum("bkd,bk->bd", held.X[:, :k], held.y[:, :k]) / k
            p = np.einsum("bd,bd->b", b, xk)  # prediction = 2 lr p
            return float(np.sum(p * t) / (2.0 * np.sum(p * p)))

        def loss(log_lr: float) -> float:
            w = self._weights_k(held.X, held.y, k, float(np.exp(log_lr)))
            with np.errstate(all="ignore"):
                e = np.mean((np.einsum("bd,bd->b", w, xk) - t) ** 2)
            return float(e) if np.isfinite(e) else np.inf

        return tune_step(loss, GD_LR_RANGE)


def tune_step(loss, bounds: tuple[float, float]) -> float:
    """The step minimising loss(log step) over [bounds]: a 57-point log-spaced grid, then 40
    golden-section steps between the best point's neighbours."""
    grid = np.linspace(np.log(bounds[0]), np.log(bounds[1]), 57)
    losses = [loss(g) for g in grid]
    i = int(np.argmin(losses))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    g = (np.sqrt(5) - 1) / 2
    a, b_ = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = loss(a), loss(b_)
    for _ in range(40):
        if fa < fb:
            hi, b_, fb = b_, a, fa
            a = hi - g * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b_, fb
            b_ = lo + g * (hi - lo)
            fb = loss(b_)
    return float(np.exp((lo + hi) / 2))


def _lasso_polish(X: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The exact lasso solution on the support and signs of w, where they are the optimum's:
    w_A = (X_A^T X_A / k)^+ (X_A^T y / k - alpha sign(w_A)), 0 off A. Returns (w', exact [B]):
    exact where w' keeps the signs of w on A and every coordinate off A meets the optimality
    condition |x_j^T (X w' - y) / k| <= alpha (then w' is the minimiser: the lasso's KKT
    conditions hold)."""
    B, k, d = X.shape
    sign = np.sign(w)
    A = sign != 0  # [B, d]
    D = A[:, :, None] & A[:, None, :]
    S = np.einsum("bki,bkj->bij", X, X) / k
    rhs = np.where(A, np.einsum("bkd,bk->bd", X, y) / k - alpha * sign, 0.0)
    M = np.where(D, S, 0.0) + np.where(~A, 1.0, 0.0)[:, :, None] * np.eye(d)
    new = np.einsum("bij,bj->bi", np.linalg.pinv(M), rhs)
    new = np.where(A, new, 0.0)
    g = np.einsum("bkd,bk->bd", X, np.einsum("bkd,bd->bk", X, new) - y) / k
    ok = (np.all(np.where(A, np.sign(new) == sign, np.abs(g) <= alpha * (1 + 1e-9)), axis=1)
          & np.all(np.abs(np.where(A, g + alpha * sign, 0.0)) < 1e-9 * (1 + alpha), axis=1))
    return new, ok


def _lasso_enumerate(X: np.ndarray, y: np.ndarray, alpha: float, todo: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The exact lasso solution, by trying every support of at most min(k, d) coordinates and
    every sign pattern on it (_lasso_polish checks each), for the prompts in `todo` — when
    there are at most LASSO_ENUMERATE_MAX candidates (small d); else nothing is found.
    Returns (w [B, d], found [B])."""
    from itertools import combinations, product

    B, k, d = X.shape
    out, found = np.zeros((B, d)), np.zeros(B, dtype=bool)
    sizes = range(1, min(k, d) + 1)
    count = sum(len(list(combinations(range(d), m))) * 2**m for m in sizes)
    if count > LASSO_ENUMERATE_MAX:
        return out, found
    cand = np.zeros((B, d))
    for m in sizes:
        for support in combinations(range(d), m):
            for signs in product((-1.0, 1.0), repeat=m):
                cand[:] = 0.0
                cand[:, list(support)] = signs
                exact, ok = _lasso_polish(X, y, cand, alpha)
                ok &= todo & ~found
                out = np.where(ok[:, None], exact, out)
                found |= ok
                if found[todo].all():
                    return out, found
    return out, found


def lasso(X: np.ndarray, y: np.ndarray, alpha: float, tol: float = TOL,
          max_iter: int = LASSO_MAX_ITER) -> np.ndarray:
    """argmin_w (1/2k) ||y - X w||^2 + alpha ||w||_1 per prompt, X [B, k, d], y [B, k] ->
    [B, d]; 0 when k = 0. Cyclic coordinate descent (each coordinate's exact minimiser, a soft
    threshold), batched over the prompts not yet done. Every LASSO_POLISH sweeps, a prompt
    whose current support and signs are the optimum's is solved exactly there (_lasso_polish,
    which checks the optimality conditions); from LASSO_ENUMERATE_AFTER sweeps on, the
    prompts still open are solved exactly by trying every support (_lasso_enumerate, small
    d only): coordinate descent alone needs thousands of sweeps when k < d and alpha is
    small. A prompt is also done when a sweep changes no weight by tol or more."""
    B, k, d = X.shape
    w = np.zeros((B, d))
    if k == 0:
        return w
    y = np.asarray(y, dtype=np.float64)
    norms = np.einsum("bkd,bkd->bd", X, X) / k  # [B, d]
    safe = np.where(norms > 0, norms, 1.0)
    r = y.copy()  # residual y - X w
    live = np.arange(B)
    for sweep in range(1, max_iter + 1):
        Xl, rl, wl = X[live], r[live], w[live]
        change = np.zeros(live.size)
        for j in range(d):
            xj, nj = Xl[:, :, j], norms[live, j]
            rho = np.einsum("bk,bk->b", xj, rl) / k + nj * wl[:, j]
            new = np.where(nj > 0, np.sign(rho) * np.maximum(np.abs(rho) - alpha, 0.0)
                           / safe[live, j], 0.0)
            delta = new - wl[:, j]
            rl -= xj * delta[:, None]
            wl[:, j] = new
            change = np.maximum(change, np.abs(delta))
        done = change < tol
        if sweep % LASSO_POLISH == 0:
            exact, ok = _lasso_polish(Xl, y[live], wl, alpha)
            wl = np.where(ok[:, None], exact, wl)
            done |= ok
            if sweep >= LASSO_ENUMERATE_AFTER and not done.all():
                exact, ok = _lasso_enumerate(Xl, y[live], alpha, ~done)
                wl = np.where(ok[:, None], exact, wl)
                done |= ok
        r[live], w[live] = rl, wl
        live = live[~done]
        if live.size == 0:
            break
    return w


@dataclass
class Lasso(LinearLearner):
    """Lasso (mean loss, penalty alpha ||w||_1) on the examples so far, by coordinate descent:
    the sparse task's natural estimator beside least squares and ridge."""

    alpha: float
    name: str = ""

    def __post_init__(self) -> None:
        if not np.isfinite(self.alpha) or self.alpha <= 0:
            raise ValueError(f"Lasso.alpha must be a finite number > 0, got {self.alpha!r}")
        self.name = self.name or f"lasso({fmt(self.alpha)})"

    def weights(self, prompts: Prompts) -> np.ndarray:
        return np.stack([lasso(prompts.X[:, :k], prompts.y[:, :k], self.alpha)
                         for k in range(prompts.n + 1)], axis=1)


def _logistic_objective(X: np.ndarray, y: np.ndarray, w: np.ndarray, lam: float) -> np.ndarray:
    """[B]: sum_i [log(1 + e^{z_i}) - y_i z_i] + (lam/2) ||w||^2, z = X w."""
    z = np.einsum("bkd,bd->bk", X, w)
    return np.sum(np.logaddexp(0.0, z) - y * z, axis=1) + 0.5 * lam * np.sum(w * w, axis=1)


def logistic_map(X: np.ndarray, y: np.ndarray, lam: float, tol: float = TOL,
                 max_iter: int = NEWTON_MAX_ITER) -> np.ndarray:
    """The minimiser of _logistic_objective per prompt, X [B, k, d], y [B, k] -> [B, d]
    (0 when k = 0), by Newton's method (IRLS) from w = 0, batched over the prompts whose
    gradient is not yet below tol (largest entry), with the step halved wherever a full step
    would raise the objective. lam > 0 makes it strictly convex (Hessian >= lam I), so the
    minimiser is unique and finite even on separable examples."""
    B, k, d = X.shape
    w = np.zeros((B, d))
    if k == 0:
        return w
    y = np.asarray(y, dtype=np.float64)
    eye = np.eye(d)
    live = np.arange(B)
    for _ in range(max_iter):
        Xl, yl, wl = X[live], y[live], w[live]
        s = sigmoid(np.einsum("bkd,bd->bk", Xl, wl))
        g = np.einsum("bkd,bk->bd", Xl, s - yl) + lam * wl
        todo = np.max(np.abs(g), axis=1) >= tol
        live, Xl, yl, wl, s, g = (a[todo] for a in (live, Xl, yl, wl, s, g))
        if live.size == 0:
            break
        H = np.einsum("bkd,bk,bke->bde", Xl, s * (1 - s), Xl) + lam * eye
        step = np.linalg.solve(H, g[..., None])[..., 0]
        f = _logistic_objective(Xl, yl, wl, lam)
        t = np.ones(live.size)
        for _ in range(30):  # halve the step where the objective would rise
            trial = wl - t[:, None] * step
            worse = _logistic_objective(Xl, yl, trial, lam) > f + 1e-12 * (1 + np.abs(f))
            if not worse.any():
                break
            t = np.where(worse, t / 2, t)
        w[live] = trial
    return w


@dataclass
class LogisticRegression:
    """L2-regularised logistic regression fitted to convergence (logistic_map) on the examples
    so far, predicting sigmoid(w^T x); 0.5 at k = 0. lam = 1/tau^2 is the MAP estimate under
    the logistic task's prior w ~ N(0, tau^2 I) (RegressionTask.logistic_lambda)."""

    lam: float
    name: str = ""

    def __post_init__(self) -> None:
        if not np.isfinite(self.lam) or self.lam <= 0:
            raise ValueError(f"LogisticRegression.lam must be a finite number > 0, got "
                             f"{self.lam!r}")
        self.name = self.name or f"logreg({fmt(self.lam)})"

    def weights(self, prompts: Prompts) -> np.ndarray:
        return np.stack([logistic_map(prompts.X[:, :k], prompts.y[:, :k], self.lam)
                         for k in range(prompts.n + 1)], axis=1)

    def predict(self, prompts: Prompts) -> np.ndarray:
        return sigmoid(_predict_linear(self.weights(prompts), prompts))


@dataclass
class LogisticGD:
    """T steps of full-batch GD on the mean logistic loss of the examples so far, from w0
    (raspicl.solvers.logistic_gd, the compiled logistic_gd program's algorithm), predicting
    sigmoid(w_T^T x); sigmoid(w0^T x) at k = 0.

    With `lr` given, one fixed step for every prefix (as the compiled program). With lr=None
    the step is tuned per prefix k on TUNE_PROMPTS held-out prompts of the logistic `task`
    (drawn with TUNE_SEED): the step minimising the mean squared error of the predicted
    probability against the true sigmoid(w^T x_{k+1}), searched over LOGISTIC_LR_RANGE by
    tune_step (log grid, then golden section). The tuned steps are in `lrs`."""

    T: int = 1
    lr: float | None = None
    task: RegressionTask | None = None
    w0: list[float] | None = None
    tune_prompts: int = TUNE_PROMPTS
    tune_seed: int = TUNE_SEED
    name: str = ""
    lrs: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if int(self.T) != self.T or self.T < 1:
            raise ValueError(f"LogisticGD.T must be an integer >= 1, got {self.T!r}")
        if self.lr is None:
            if self.task is None:
                raise ValueError("LogisticGD with a tuned step (lr=None) needs the task whose "
                                 "held-out prompts tune it")
            self.lrs = self._tune(self.task)
        if not self.name:
            parts = [f"T={self.T}"] + ([] if self.lr is None else [f"lr={fmt(self.lr)}"])
            self.name = f"logistic_gd({', '.join(parts)}{_w0_suffix(self.w0)})"

    def _weights_k(self, X: np.ndarray, y: np.ndarray, k: int, lr: float) -> np.ndarray:
        B, _, d = X.shape
        w0 = _w0(self.w0, d)
        if k == 0:
            return np.broadcast_to(w0, (B, d)).copy()
        return solvers.logistic_gd(X[:, :k], y[:, :k], w0, lr, self.T)[:, -1]

    def _steps(self, n: int) -> list[float]:
        if self.lr is not None:
            return [float(self.lr)] * (n + 1)
        if len(self.lrs) != n + 1:
            raise RaspiclError(f"{self.name}: its step was tuned for n = {len(self.lrs) - 1} "
                               f"examples, the prompts have n = {n}")
        return self.lrs

    def weights(self, prompts: Prompts) -> np.ndarray:
        steps = self._steps(prompts.n)
        return np.stack([self._weights_k(prompts.X, prompts.y, k, steps[k])
                         for k in range(prompts.n + 1)], axis=1)

    def predict(self, prompts: Prompts) -> np.ndarray:
        return sigmoid(_predict_linear(self.weights(prompts), prompts))

    def _tune(self, task: RegressionTask) -> list[float]:
        held = task.sample(self.tune_prompts, self.tune_seed)
        q = _queries(held)
        target = task.targets(held)
        lrs = [LOGISTIC_LR_RANGE[0]]  # k = 0: no data, the step does not matter

        for k in range(1, task.n + 1):
            def loss(log_lr: float, k: int = k) -> float:
                w = self._weights_k(held.X, held.y, k, float(np.exp(log_lr)))
                p = sigmoid(np.einsum("bd,bd->b", w, q[:, k]))
                return float(np.mean((p - target[:, k]) ** 2))

            lrs.append(tune_step(loss, LOGISTIC_LR_RANGE))
        return lrs


def reference_learners(task: RegressionTask, lams: tuple[float, ...] = (),
                       gd_steps: tuple[int, ...] = (1,)) -> list:
    """The reference set every model of `task` is compared with.

    linear: least squares, ridge for RIDGE_GRID, the task's sigma^2/tau^2 and any extra `lams`,
    gd(T) tuned per prefix for each T in gd_steps, gd(T=1, lr=0.1) and sgd (the bundled
    programs' fixed step, from w = 0), 3-nearest neighbours, averaging and zero.
    sparse: the same, with lasso(alpha) for LASSO_GRID after ridge.
    logistic: logreg(1/tau^2) (the MAP under the task's prior), logistic_gd(T) tuned per prefix
    for each T in gd_steps, logistic_gd(T=2, lr=0.1) (the bundled program's defaults), 3-nearest
    neighbours (0.5 with no example) and constant(0.5)."""
    if task.kind == "logistic":
        learners: list = [LogisticRegression(task.logistic_lambda)]
        learners += [LogisticGD(T=T, task=task) for T in gd_steps]
        learners += [LogisticGD(T=LOGISTIC_PROGRAM_T, lr=PROGRAM_LR),
                     NearestNeighbours(3, empty=0.5), Constant(0.5)]
        return learners
    grid = sorted({round(float(v), 12) for v in (*RIDGE_GRID, task.ridge_lambda, *lams)
                   if np.isfinite(v) and v > 0})
    learners = [LeastSquares()]
    learners += [Ridge(lam) for lam in grid]
    if task.kind == "sparse":
        learners += [Lasso(alpha) for alpha in LASSO_GRID]
    learners += [GradientDescent(T=T, task=task) for T in gd_steps]
    learners += [GradientDescent(T=1, lr=PROGRAM_LR), SGD(lr=PROGRAM_LR)]
    learners += [NearestNeighbours(3), Averaging(), Zero()]
    return learners
