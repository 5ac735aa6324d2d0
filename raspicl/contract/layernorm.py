"""Reads through a LayerNorm kept at scale by constant anchors (the gpt2 target): what such a
read adds to a value's error (raspicl.arch)."""

from __future__ import annotations

import math

import numpy as np

from raspicl.arch import anchor_levels


class LayerNormReads:
    """gpt2's reads through a LayerNorm of weight c = N sqrt(2 / D) with the anchors +-N
    (raspicl.arch): row j reads as A_j * ratio, ratio = c / sqrt(var + eps) at each token of
    the LayerNorm's input residual, so a read of v is off by |v| |ratio - 1|, plus rounding:
    relative kappa u (2 + log2 D) (the LayerNorm's own sums and sigma) and absolute
    2 kappa u (|mean| + u sum_j |A_j|) (the mean the zero row cancels, itself rounded: each
    of the d_model - 1 additions of its sum rounds at most u times a partial sum, itself at
    most sum_j |A_j|, about 2 N beside the anchors)."""

    def __init__(self, layout: dict, source, u: float, kappa: float):
        a = layout["architecture"]
        self.source = source
        self.D = int(a["d_model"])
        self.N = float(a["ln_anchor"])
        self.eps = float(a["ln_eps"])
        anchors = layout["monitor"]["anchors"]
        divides = [anchors[b] is not None for b in a["block_order"]]
        # the constant anchors' size in every residual (raspicl.arch.anchor_levels): each
        # LayerNorm's weight is that size times sqrt(2 / D)
        self.levels = anchor_levels(divides, self.N,
                                    float(a.get("ln_restore_anchor", self.N)))
        self.rel = kappa * u * (2.0 + math.log2(self.D))
        self.ku, self.u = kappa * u, u
        self._dev: dict[int, np.ndarray] = {}

    def dev(self, residual: int) -> np.ndarray:
        """|ratio - 1| at every token of residuals[residual]: [B, T]."""
        if residual not in self._dev:
            _, var = self.source.moments(residual)
            c = self.levels[residual] * math.sqrt(2.0 / self.D)
            self._dev[residual] = np.abs(c / np.sqrt(var + self.eps) - 1.0)
        return self._dev[residual]

    def release(self, residual: int) -> None:
        """The walk no longer reads through residuals[residual]'s LayerNorm."""
        self._dev.pop(residual, None)

    def mean_bound(self, residual: int) -> np.ndarray:
        """|mean| as the LayerNorm may compute it, at every token of residuals[residual]:
        the sum of d_model terms, in any order, is off by at most d_model u sum_j |A_j|, so
        the mean by u sum_j |A_j| (class doc)."""
        mu, _ = self.source.moments(residual)
        return mu + self.u * self.source.abs_sum(residual)

    def term(self, residual: int, v: np.ndarray) -> np.ndarray:
        """The error a read of v ([B, T, w]) through the LayerNorm of residuals[residual]
        adds."""
        return (np.abs(v) * (self.dev(residual) + self.rel)[:, :, None]
                + 2 * self.ku * self.mean_bound(residual)[:, :, None])
