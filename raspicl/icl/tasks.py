"""The in-context tasks a model is trained and measured on, as raspicl `Prompts` so that trained
and compiled models read exactly the same token arrays (Prompts.tokens()).

    linear     Akyürek et al. (2023) §4: x ~ N(0, I_d), w ~ N(0, tau^2 I_d),
               y = w^T x + N(0, sigma^2)                                       (the default)
    sparse     Garg et al. (2022): as linear, but only `sparsity` coordinates of w, chosen
               uniformly at random per prompt, are non-zero (each N(0, tau^2))
    logistic   x ~ N(0, I_d), w ~ N(0, tau^2 I_d), y ~ Bernoulli(sigmoid(w^T x)) in {0, 1}
               (the labels carry their own noise: sigma must be 0)

Every task has n examples and a query. `targets` is what a prediction is measured against: the
noiseless w^T x for the regression tasks, the true probability sigmoid(w^T x) for logistic —
the quantity the squared loss on the labels is minimised by in expectation (docs/training.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from raspicl.prompts import Prompts
from raspicl.solvers import sigmoid

# The task kinds, in the order the command line lists them; the first is the default.
KINDS = ("linear", "sparse", "logistic")
DEFAULT_KIND = "linear"
# Non-zero coordinates of a sparse w by default: Garg et al. (2022) §4 (k = 3 at d = 20).
DEFAULT_SPARSITY = 3


@dataclass(frozen=True)
class RegressionTask:
    """d input dimensions, n examples per prompt, w_scale = tau, noise = sigma, kind one of
    KINDS, sparsity = the non-zero coordinates of w (kind 'sparse' only; None elsewhere)."""

    d: int
    n: int
    noise: float = 0.0
    w_scale: float = 1.0
    kind: str = DEFAULT_KIND
    sparsity: int | None = None

    def __post_init__(self) -> None:
        if int(self.d) != self.d or self.d < 1:
            raise ValueError(f"RegressionTask.d must be an integer >= 1, got {self.d!r}")
        if int(self.n) != self.n or self.n < 1:
            raise ValueError(f"RegressionTask.n must be an integer >= 1, got {self.n!r}")
        for name in ("noise", "w_scale"):
            v = getattr(self, name)
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"RegressionTask.{name} must be a finite number >= 0, got {v!r}")
        if self.kind not in KINDS:
            raise ValueError(f"RegressionTask.kind must be one of {', '.join(KINDS)}, got "
                             f"{self.kind!r}")
        if self.kind == "sparse":
            k = self.sparsity
            if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.d:
                raise ValueError(f"RegressionTask.sparsity must be an integer in [1, d = "
                                 f"{self.d}] for a sparse task, got {k!r}")
        elif self.sparsity is not None:
            raise ValueError(f"RegressionTask.sparsity is for kind 'sparse' only (kind "
                             f"{self.kind!r}, sparsity {self.sparsity!r})")
        if self.kind == "logistic" and self.noise != 0:
            raise ValueError(f"RegressionTask.noise must be 0 for kind 'logistic' (its labels "
                             f"are Bernoulli draws, noisy already), got {self.noise!r}")

    @property
    def ridge_lambda(self) -> float:
        """sigma^2 / tau^2: the lambda for which ridge is the Bayes-optimal predictor (of the
        linear task; for sparse it is the lambda of the Gaussian prior's ridge all the same)."""
        return self.noise**2 / self.w_scale**2 if self.w_scale > 0 else float("inf")

    @property
    def logistic_lambda(self) -> float:
        """1 / tau^2: the L2 penalty on the summed log-likelihood whose minimiser is the MAP
        estimate of w under the prior w ~ N(0, tau^2 I) (logistic tasks' reference learner)."""
        return 1.0 / self.w_scale**2 if self.w_scale > 0 else float("inf")

    def resized(self, d: int) -> RegressionTask:
        """The same task in d dimensions (a curriculum's effective d); a sparse task keeps at
        most d non-zero coordinates."""
        k = None if self.sparsity is None else min(self.sparsity, d)
        return RegressionTask(d, self.n, self.noise, self.w_scale, self.kind, k)

    def sample_w(self, batch: int, rng: np.random.Generator) -> np.ndarray:
        """[batch, d]: w ~ N(0, tau^2 I); for 'sparse', all but `sparsity` coordinates (a
        uniformly random subset per prompt) set to 0."""
        w = self.w_scale * rng.standard_normal((batch, self.d))
        if self.kind == "sparse":
            order = np.argsort(rng.random((batch, self.d)), axis=1)
            mask = np.zeros((batch, self.d), dtype=bool)
            np.put_along_axis(mask, order[:, :self.sparsity], True, axis=1)
            w = np.where(mask, w, 0.0)
        return w

    def labels(self, X: np.ndarray, w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """[batch, m] labels of X [batch, m, d] under w [batch, d] (or one w [d])."""
        z = X @ w if w.ndim == 1 else np.einsum("bnd,bd->bn", X, w)
        if self.kind == "logistic":
            return (rng.random(z.shape) < sigmoid(z)).astype(np.float64)
        return z + self.noise * rng.standard_normal(z.shape)

    def sample(self, batch: int, rng: np.random.Generator | int) -> Prompts:
        """`batch` prompts (with their w) from a generator or a seed. The linear task's draws
        (w, X, x_q, noise, in that order) are those of every earlier version."""
        rng = np.random.default_rng(rng)
        w = self.sample_w(batch, rng)
        X = rng.standard_normal((batch, self.n, self.d))
        xq = rng.standard_normal((batch, self.d))
        return Prompts(X, self.labels(X, w, rng), xq, w)

    def targets(self, prompts: Prompts) -> np.ndarray:
        """[B, n + 1]: the noiseless target at every x token and the query — w^T x, or
        sigmoid(w^T x) (the probability that y = 1) for 'logistic'."""
        z = np.einsum("bkd,bd->bk", prompts.prefix_queries(), prompts.w)
        return sigmoid(z) if self.kind == "logistic" else z

    def to_dict(self) -> dict:
        """The JSON of a checkpoint's 'task'. A linear task's omits kind and sparsity, so that
        it is the dict earlier versions wrote (and their checkpoints still resume)."""
        out = {k: (float(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}
        if self.kind == DEFAULT_KIND:
            del out["kind"]
        if self.sparsity is None:
            del out["sparsity"]
        return out
