"""Regression prompts: the examples and query of one in-context task, and their token vectors.

The paper's format (design.md §1): x~_i = [0, x_i], y~_i = [y_i, 0_d], ..., x~_q = [0, x_q].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raspicl.lang.program import PromptFormat


@dataclass(frozen=True)
class Prompts:
    """A batch of regression prompts: X [B, n, d], y [B, n], xq [B, d] (w [B, d] if known)."""

    X: np.ndarray
    y: np.ndarray
    xq: np.ndarray
    w: np.ndarray | None = None

    @property
    def batch(self) -> int:
        return self.X.shape[0]

    @property
    def n(self) -> int:
        return self.X.shape[1]

    @property
    def d(self) -> int:
        return self.X.shape[2]

    def tokens(self) -> np.ndarray:
        """Token vectors [B, 2n+1, d+1] in the paper's alternating format."""
        B, n, d = self.X.shape
        tok = np.zeros((B, 2 * n + 1, d + 1), dtype=self.X.dtype)
        tok[:, 0:2 * n:2, 1:] = self.X
        tok[:, 1:2 * n:2, 0] = self.y
        tok[:, 2 * n, 1:] = self.xq
        return tok

    def prefix_queries(self) -> np.ndarray:
        """The x read at each x token and at the query: [B, n+1, d] (x_1..x_n, x_q)."""
        return np.concatenate([self.X, self.xq[:, None, :]], axis=1)


def random_prompts(batch: int, d: int, n: int, seed: int, noise: float = 0.0) -> Prompts:
    """x_i, x_q, w ~ N(0, I) and y_i = w^T x_i (+ noise * N(0, 1)), from a seeded generator."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((batch, d))
    X = rng.standard_normal((batch, n, d))
    xq = rng.standard_normal((batch, d))
    y = np.einsum("bnd,bd->bn", X, w) + noise * rng.standard_normal((batch, n))
    return Prompts(X, y, xq, w)


def check_tokens(tokens: np.ndarray, fmt: PromptFormat) -> None:
    """Raise ValueError unless tokens has shape [B, 2n+1, d+1] for this format."""
    if tokens.ndim != 3 or tokens.shape[1:] != (fmt.n_tokens, fmt.d_token):
        raise ValueError(
            f"tokens must have shape [batch, {fmt.n_tokens}, {fmt.d_token}] for d={fmt.d}, "
            f"n={fmt.n}; got {tuple(tokens.shape)}"
        )
