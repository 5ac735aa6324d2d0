"""The in-context regression task of Akyürek et al. (2023) §4: x ~ N(0, I_d), w ~ N(0, tau^2 I_d),
y = w^T x + N(0, sigma^2), n examples and a query, as raspicl `Prompts` so that trained and
compiled models read exactly the same token arrays (Prompts.tokens())."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from raspicl.prompts import Prompts


@dataclass(frozen=True)
class RegressionTask:
    """d input dimensions, n examples per prompt, w_scale = tau, noise = sigma."""

    d: int
    n: int
    noise: float = 0.0
    w_scale: float = 1.0

    def __post_init__(self) -> None:
        if int(self.d) != self.d or self.d < 1:
            raise ValueError(f"RegressionTask.d must be an integer >= 1, got {self.d!r}")
        if int(self.n) != self.n or self.n < 1:
            raise ValueError(f"RegressionTask.n must be an integer >= 1, got {self.n!r}")
        for name in ("noise", "w_scale"):
            v = getattr(self, name)
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"RegressionTask.{name} must be a finite number >= 0, got {v!r}")

    @property
    def ridge_lambda(self) -> float:
        """sigma^2 / tau^2: the lambda for which ridge is the Bayes-optimal predictor."""
        return self.noise**2 / self.w_scale**2 if self.w_scale > 0 else float("inf")

    def sample(self, batch: int, rng: np.random.Generator | int) -> Prompts:
        """`batch` prompts (with their w) from a generator or a seed."""
        rng = np.random.default_rng(rng)
        w = self.w_scale * rng.standard_normal((batch, self.d))
        X = rng.standard_normal((batch, self.n, self.d))
        xq = rng.standard_normal((batch, self.d))
        y = np.einsum("bnd,bd->bn", X, w) + self.noise * rng.standard_normal((batch, self.n))
        return Prompts(X, y, xq, w)

    def to_dict(self) -> dict:
        return {k: (float(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}
