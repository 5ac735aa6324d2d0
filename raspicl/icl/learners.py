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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from raspicl import solvers
from raspicl.errors import RaspiclError
from raspicl.icl.tasks import RegressionTask
from raspicl.prompts import Prompts

# The lambdas of the paper's MSPD table (Akyürek et al. 2023, Table 1: sigma^2/tau^2 in
# {1/16, 1/9, 1/4, 4/9}); the task's own sigma^2/tau^2 is added when it is not 0.
RIDGE_GRID = (1 / 16, 1 / 9, 1 / 4, 4 / 9)
# The fixed step of the bundled programs batch_gd and sgd (their default lr).
PROGRAM_LR = 0.1
# Held-out prompts on which gd(T) tunes its step per prefix, and the seed they are drawn from
# (any seed other than the evaluation prompts'; the default evaluation seed is 0).
TUNE_PROMPTS = 4096
TUNE_SEED = 1_000_003


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
class NearestNeighbours:
    """The mean y of the `k` nearest examples so far (all of them when fewer; 0 at k = 0)."""

    k: int = 3
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or f"{self.k}nn"

    def predict(self, prompts: Prompts) -> np.ndarray:
        q = _queries(prompts)
        out = np.zeros((prompts.batch, prompts.n + 1))
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
        target = np.einsum("bkd,bd->bk", q, held.w)  # noiseless w^T x at every column
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

        grid = np.linspace(np.log(1e-4), np.log(10.0), 57)
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


def reference_learners(task: RegressionTask, lams: tuple[float, ...] = (),
                       gd_steps: tuple[int, ...] = (1,)) -> list:
    """The reference set every model is compared with: least squares, ridge for RIDGE_GRID,
    the task's sigma^2/tau^2 and any extra `lams`, gd(T) tuned per prefix for each T in
    gd_steps, gd(T=1, lr=0.1) and sgd (the bundled programs' fixed step, from w = 0),
    3-nearest neighbours, averaging and zero."""
    grid = sorted({round(float(v), 12) for v in (*RIDGE_GRID, task.ridge_lambda, *lams)
                   if np.isfinite(v) and v > 0})
    learners: list = [LeastSquares()]
    learners += [Ridge(lam) for lam in grid]
    learners += [GradientDescent(T=T, task=task) for T in gd_steps]
    learners += [GradientDescent(T=1, lr=PROGRAM_LR), SGD(lr=PROGRAM_LR)]
    learners += [NearestNeighbours(3), Averaging(), Zero()]
    return learners
