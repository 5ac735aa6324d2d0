"""LayerNorm gadgets: the MLP reads exact values through a neutral LayerNorm, or quotients
through a dividing one.

The LayerNorm before each MLP outputs l_j = (A_j - mu) / sigma with sigma = sqrt(var + eps).
The `zero` row is never written, so l_zero = -mu / sigma and A_j / sigma = l_j - l_zero exactly:
no mean has to be kept at zero and none is estimated.

Neutral block: eps = config.neutral_ln_eps is so large that var + eps == eps in floating point,
so sigma = sqrt(eps) exactly and v_j = sqrt(eps) (l_j - l_zero) recovers every value with no
error beyond rounding.

Dividing block (dst = a / |s|): the attention before it writes the anchors +N s and -N s, so
var = (2 N^2 s^2 + Q) / d_model with Q the squared deviation of everything else, and
sigma = N |s| sqrt(2 / d_model) (1 + Q / (4 N^2 s^2) + ...). Then
N sqrt(2 / d_model) (l_a - l_zero) = a / |s| (1 - Q / (4 N^2 s^2) + ...): the relative error is
Q / (4 N^2 s^2), and 1 / |s| (for a bias) is read the same way from the `one` row.

Reads through a LayerNorm at every sublayer (gpt2, raspicl.arch): the rows `ln_pos` and
`ln_neg` hold +N and -N at every token (N = config.ln_anchor, through W_pos), so every
LayerNorm's sigma is c (1 + Q / (4 N^2) + ...) with c = N sqrt(2 / d_model) and Q the squared
deviation of the other rows. Every LayerNorm weight is c and its bias 0, so LN_j - LN_zero =
A_j * ratio with ratio = c / sigma = 1 - Q / (4 N^2) + ...: a read matrix W (rows indexed by
residual row, never the zero row) becomes `through_layernorm(W)`, which subtracts W's column
sums at the zero row. The runtime monitor charges |A_j| |ratio - 1|, measured per token.

Division under gpt2 (raspicl.arch.anchor_levels): the dividing block's attention reads s
through ln1 as usual, writes the division anchors +-N_div s and, through b_O, cancels the
constant anchors exactly (`ln_anchor_biases`); its ln2 (weight 1) then sees the division
anchors alone and divides as in the paper block; its MLP's b_out restores the constant anchors
at +-N_r (`restore_ln_anchors`, N_r = config.ln_restore_anchor, default N), and the next
attention takes them back to N. That attention clears the division anchors while the constant
ones dominate: its ln1 (weight N_r sqrt(2 / d_model)) reads every row times
ratio = 1 / sqrt(1 + (N_div s / N_r)^2 + ...), so N_r >> N_div |s| keeps that read, and the
clear's residue N_div |s| |ratio - 1|, small; the monitor measures the ratio.
"""

from __future__ import annotations

import math

import numpy as np

from raspicl.compiler.gadgets.mlp import UnitSpec


def neutral_read(units: list[UnitSpec], rows: dict[str, int], d_model: int,
                 eps: float, width: int | None = None, zeros=np.zeros
                 ) -> tuple[np.ndarray, np.ndarray]:
    """W_in [d_model, width] and b_in [width] for value-space units under a neutral
    LayerNorm; columns past len(units) (the MLP's padding to `width`, default none) are 0.
    zeros: what makes W_in's array of zeros (raspicl.sparse_weights.SparseArray: by entries)."""
    E = math.sqrt(eps)
    W, b = _allocate(units, d_model, width, zeros)
    zero = rows["zero"]

    def terms():  # W[j, u] += a E, W[zero, u] -= a E (x - y is x + (-y) exactly)
        for u, unit in enumerate(units):
            for j, a in unit.w_in.items():
                t = a * E
                yield (j, u), t
                yield (zero, u), -t

    if hasattr(W, "add_terms"):  # raspicl.sparse_weights.SparseArray: by entries
        W.add_terms(terms())
    else:
        for index, t in terms():
            W[index] += t
    for u, unit in enumerate(units):
        b[u] = unit.b_in
    return W, b


def division_read(units: list[UnitSpec], rows: dict[str, int], d_model: int,
                  anchor: float, width: int | None = None, zeros=np.zeros
                  ) -> tuple[np.ndarray, np.ndarray]:
    """W_in [d_model, width] for units whose pre-activation is (sum w_in v + b_in) / |s| in a
    dividing block, and b_in (zeros); columns past len(units) are 0, and `zeros` makes W_in,
    as in neutral_read."""
    c = anchor * math.sqrt(2.0 / d_model)
    W, b = _allocate(units, d_model, width, zeros)
    for u, unit in enumerate(units):
        for j, a in unit.w_in.items():
            W[j, u] += a * c
            W[rows["zero"], u] -= a * c
        W[rows["one"], u] += unit.b_in * c
        W[rows["zero"], u] -= unit.b_in * c
    return W, b


def ln_read_scale(anchor: float, d_model: int) -> float:
    """c = N sqrt(2 / d_model): the LayerNorm weight under which a LayerNorm with anchors +-N
    passes every row through at about its own size (module doc)."""
    return anchor * math.sqrt(2.0 / d_model)


def through_layernorm(W: np.ndarray, zero_row: int) -> np.ndarray:
    """W [..., d_model, k], a read of raw residual rows, as a read of the LayerNorm's output
    (weight c, bias 0, module doc): the same matrix less its column sums at the zero row, so
    that LN @ W' = ratio * (A @ W) whatever the mean. W must not read the zero row itself."""
    if np.any(W[..., zero_row, :] != 0.0):
        raise AssertionError("a read through LayerNorm must not read the zero row itself")
    out = W.copy()
    out[..., zero_row, :] = -W.sum(axis=-2)
    return out


def ln_anchor_embedding(W_pos: np.ndarray, rows: dict[str, int], anchor: float) -> None:
    """Write the constant anchors +N / -N into every token's ln_pos / ln_neg rows of W_pos."""
    W_pos[:, rows["ln_pos"]] = anchor
    W_pos[:, rows["ln_neg"]] = -anchor


def ln_anchor_biases(b_O: np.ndarray, rows: dict[str, int], before: float,
                     after: float) -> None:
    """Add to an attention bias b_O (in place) what takes the constant anchors from size
    `before` to `after` (exactly, for sizes whose difference is representable)."""
    if after != before:
        b_O[rows["ln_pos"]] += after - before
        b_O[rows["ln_neg"]] -= after - before


def restore_ln_anchors(D: int, rows: dict[str, int], level: float) -> np.ndarray:
    """A dividing gpt2 block's MLP bias b_out [D]: the constant anchors back at +-level."""
    b_out = np.zeros(D)
    b_out[rows["ln_pos"]], b_out[rows["ln_neg"]] = level, -level
    return b_out


def _allocate(units: list[UnitSpec], d_model: int, width: int | None,
              zeros=np.zeros) -> tuple[np.ndarray, np.ndarray]:
    """Zero W_in [d_model, width] (made by `zeros`) and b_in [width], width >= len(units)
    (default: equal)."""
    width = len(units) if width is None else width
    if width < len(units):
        raise ValueError(f"{len(units)} units do not fit in an MLP of width {width}")
    return zeros((d_model, width)), np.zeros(width)
