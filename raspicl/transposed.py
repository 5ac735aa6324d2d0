"""The compact plan's transposed pass: the forward pass `last_residual` runs on large batches
when no monitor reads the residuals (predict and run with check="ignore").

It computes what the streamed pass (`CompactPlan.attn` and `.mlp`, which the runtime monitor and
compile-time feasibility read, and whose arithmetic this module leaves as it is) computes, on
the same kept rows, heads and units, but faster:

- the residual is transposed once to [D, T, B], so that a sublayer's reads and writes are
  whole rows (contiguous gathers, in-place adds), and every output is computed transposed,
  [written rows, T B]: a product is one W^T x^T, whose long side (every token of every prompt)
  is the one BLAS runs fastest along, or, for a matrix with few nonzeros per column, a sum of
  gathered rows (`Gathered.apply_t`, for small matrices too: compact.GATHER_COST), or, for
  one the plan scatters (few nonzeros per row), of scaled rows added into their columns'
  rows (`Scattered.apply_t`);
- two MLP units whose inputs are exact negatives of each other are one unit (`_mirrored`):
  with equal output rows (the product gadget) it outputs GeLU(y) + GeLU(-y) = y erf(y / sqrt 2)
  (`mirrored_gelu_`: its series where every |y| <= SERIES_MAX), with negated output rows
  (affine units) GeLU(y) - GeLU(-y) = y, with no GeLU at all;
- a fixed (position-only) attention pattern's weights below PATTERN_FLOOR, the leak, are set to
  zero, after which a move's pattern is a gather of one token per row;
- each MLP's LayerNorm is computed on the rows its units read (`_layer_norm_t`);
- the intermediates go into scratch buffers kept between calls (`Scratch`), and a large batch
  runs CHUNK_TOKENS tokens' worth of prompts at a time, so that they stay in cache.

A unit pair is an identity of the exact function, a dropped pattern weight is a leak inside the
monitor's charge, and the rest changes the order of floating-point sums: the two passes differ
by rounding (tests/test_compact.py holds both within 1e-9 of the dense pass and within the
bounds; tests/test_compact_gelu.py holds the pairs' GeLUs against mpmath).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from raspicl.compact import (
    AttnPlan,
    CompactPlan,
    Gathered,
    MLPPlan,
    Scattered,
    Scratch,
    _softmax_scores,
)
from raspicl.model import gelu

SQRT_HALF = math.sqrt(0.5)
# y erf(y / sqrt 2) = sqrt(2 / pi) y^2 (1 - y^2 / 6 + y^4 / 40 - y^6 / 336 + ...), an
# alternating series: summed to the y^4 / 40 term its error is below sqrt(2 / pi) y^8 / 336,
# which for |y| <= SERIES_MAX = 2^-7 is below 6e-18 |y|, under u / 32 |y| in float64 (the
# monitor charges a mirrored pair kappa u |y|); tests/test_compact_gelu.py checks both branches
# against mpmath.
SERIES_MAX = 2.0**-7
SERIES = (math.sqrt(2 / math.pi), -math.sqrt(2 / math.pi) / 6, math.sqrt(2 / math.pi) / 40)
# A fixed (position-only) attention pattern's weights below PATTERN_FLOOR are set to zero. The
# compiler gives every token a head reads a weight >= 1 / n_ctx (a mean over at most n_ctx
# tokens) and every other token exp(-M) or less (M = attention_margin: the score gap), which
# the monitor charges as the leak, (T - 1) exp(-M) 2 max|residual| per read. A weight below
# the floor is such a leak: dropping it moves a read by less than that charge (the dense pass
# keeps it, and so lies further from the exact value). Condition: PATTERN_FLOOR < 1 / n_ctx.
# With it every row of a move's pattern is a single weight 1, and the attention a gather.
PATTERN_FLOOR = 2.0**-60
# MLPs with at most this many entries in W_in and W_out together are searched for mirrored
# unit pairs (`_mirrored`, which compares whole columns: a large MLP keeps its units).
PAIR_MAX_ENTRIES = 2**20
# The pass runs CHUNK_TOKENS tokens' worth of prompts at a time, so that its [rows, tokens]
# intermediates stay in cache: at batch 8192 (one thread, float64) chunks of 2^12-2^13 tokens
# ran sherman_morrison d = 4 in 0.86 and ridge d = 2 n = 4 in 0.77 of the unchunked time
# (2^10: 0.97 and 1.29; 2^16: 1.0 and 0.96).
CHUNK_TOKENS = 2**13
# `last_residual` runs the transposed pass from this many tokens (prompts x T) on, the streamed
# pass's sublayers in place below it: the transposed pass does more operations per sublayer,
# which cost more than they save on few tokens (one thread: the two broke even at 200-770 tokens
# for the three bench programs; at batch 1 the streamed pass took 0.35-0.4 of the time).
TRANSPOSED_MIN_TOKENS = 512


@dataclass
class TransposedMLP:
    """A block's kept MLP units for the transposed pass: units 0 .. n_pairs - 1 each stand for
    a mirrored pair (they output y erf(y / sqrt 2) = GeLU(y) + GeLU(-y)), the next n_linear
    each for a linear pair (they output y = GeLU(y) - GeLU(-y)), the rest output GeLU(y)."""

    in_rows: torch.Tensor
    W_in: torch.Tensor  # [len(in_rows), units]; [0, units] where sparse_in replaces it
    b_in: torch.Tensor
    W_out: torch.Tensor  # [units, len(out_rows)]; [0, ...] where sparse_out replaces it
    out_rows: torch.Tensor
    b_out: torch.Tensor
    sparse_in: Gathered | Scattered | None
    sparse_out: Gathered | Scattered | None
    n_pairs: int
    n_linear: int
    eps: float
    w_ln: torch.Tensor | None  # the LayerNorm's w at in_rows [len(in_rows), 1]; None: all 1
    b_ln: torch.Tensor | None  # its b there; None: all 0


@dataclass
class TransposedAttn:
    """A block's kept heads for the transposed pass (the plan's AttnPlan, its value and output
    matrices gathered where that is cheaper)."""

    plan: AttnPlan
    sparse_v: Gathered | Scattered | None
    sparse_o: Gathered | Scattered | None


def _transposed_attn(a: AttnPlan) -> TransposedAttn:
    return TransposedAttn(a, _gathered(a.W_v, a.b_v, a.sparse_v),
                          _gathered(a.W_o, a.b_o, a.sparse_o))


def _transposed_mlp(m: MLPPlan) -> TransposedMLP:
    W_in, b_in, W_out = m.W_in, m.b_in, m.W_out
    n_pairs = n_linear = 0
    if m.sparse_in is None and m.sparse_out is None \
            and W_in.numel() + W_out.numel() <= PAIR_MAX_ENTRIES:
        keep, n_pairs, n_linear = _mirrored(W_in, b_in, W_out)
        W_in, b_in, W_out = W_in[:, keep], b_in[keep], W_out[keep]
    g_in = _gathered(W_in, b_in, m.sparse_in)
    g_out = _gathered(W_out, m.b_out, m.sparse_out)
    w, b = m.ln_w[m.in_rows][:, None], m.ln_b[m.in_rows][:, None]
    return TransposedMLP(m.in_rows, W_in, b_in, W_out, m.out_rows, m.b_out, g_in, g_out,
                         n_pairs, n_linear, m.eps, None if bool((w == 1).all()) else w,
                         b if bool(b.any()) else None)


def _gathered(W: torch.Tensor, b: torch.Tensor,
              have: Gathered | Scattered | None) -> Gathered | Scattered | None:
    """W's sparse form for `apply_t` (the plan's own where it has one, else a gathered one for
    a small W where it is cheaper: Gathered.of(small=True)), told whether its bias b is
    zero."""
    g = have if have is not None else Gathered.of(W, small=True)
    if g is None:
        return None
    return replace(g, has_bias=bool(b.any()))


def mirrored_gelu_(y: torch.Tensor, buf: torch.Tensor | None = None) -> torch.Tensor:
    """GeLU(y) + GeLU(-y) = y erf(y / sqrt 2), what a mirrored pair of units outputs (exact
    identity: y Phi(y) - y Phi(-y) = y (2 Phi(y) - 1)), written into y (returned); buf: a
    buffer of y's shape (None: a new tensor). Where every |y| <= SERIES_MAX (the product
    gadget's pre-activations, e t with e ~ 1e-3, mostly are), as the series
    sqrt(2 / pi) y^2 (1 - y^2 / 6 + y^4 / 40) in five in-place passes; else with torch.erf,
    which costs ~3 ns an entry in float64."""
    lo, hi = torch.aminmax(y) if y.numel() else (y.new_zeros(()), y.new_zeros(()))
    if max(-float(lo), float(hi)) <= SERIES_MAX:  # (False for a NaN)
        z = torch.mul(y, y, out=buf) if buf is not None else y * y
        return torch.mul(z, SERIES[2], out=y).add_(SERIES[1]).mul_(z).add_(SERIES[0]).mul_(z)
    erf = torch.mul(y, SQRT_HALF, out=buf) if buf is not None else y * SQRT_HALF
    return y.mul_(erf.erf_())


def _mirrored(W_in: torch.Tensor, b_in: torch.Tensor,
              W_out: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """The units to keep: mirrored pairs first, then linear pairs, then the rest; and how
    many of each pair. Units i and j mirror each other when j's input weights and bias are
    exactly -i's, so that j's pre-activation is -y, y = i's:

    - with the same output row (the product gadget's GeLU(e t), GeLU(-e t)) they add
      W_out[i] (GeLU(y) + GeLU(-y)) = W_out[i] y erf(y / sqrt 2), which unit i alone computes
      (`mirrored_gelu_`: one erf in place of two GeLUs and their cancelling sum; the monitor
      charges each GeLU output kappa u |y| / 2, the pair's own rounding is about
      2 u y erf(y / sqrt 2), far below it: tests/test_compact_gelu.py);
    - with the negated output row (an MLP's affine units) they add
      W_out[i] (GeLU(y) - GeLU(-y)) = W_out[i] y exactly, which unit i alone passes on with no
      GeLU at all (no rounding where the dense pass rounds two GeLUs and their difference)."""
    rows = torch.cat([W_in.t(), b_in[:, None]], dim=1)  # [units, r + 1], no row all zero
    first = (rows != 0).to(torch.int8).argmax(dim=1)
    sign = torch.sign(rows.gather(1, first[:, None]))
    signs = sign.flatten().tolist()
    inputs = rows * sign + 0.0  # + 0.0: no -0.0 in a key
    paired: set[int] = set()
    found = []
    for out in (W_out, W_out * sign + 0.0):  # mirrored, then linear pairs
        _, group = torch.unique(torch.cat([inputs, out], dim=1), dim=0, return_inverse=True)
        up: dict[int, list[int]] = {}
        down: dict[int, list[int]] = {}
        for unit, g in enumerate(group.tolist()):
            if unit not in paired:
                (up if signs[unit] > 0 else down).setdefault(g, []).append(unit)
        pairs = [(i, j) for g, ups in up.items()
                 for i, j in zip(ups, down.get(g, []), strict=False)]  # the shorter list
        paired |= {u for pair in pairs for u in pair}
        found.append([i for i, _ in pairs])
    singles = [u for u in range(rows.shape[0]) if u not in paired]
    keep = found[0] + found[1] + singles
    return (torch.tensor(keep, dtype=torch.long, device=W_in.device), len(found[0]),
            len(found[1]))



def _product_t(x_t: torch.Tensor, W: torch.Tensor, b: torch.Tensor,
               sparse: Gathered | Scattered | None, out: torch.Tensor,
               scratch: Scratch) -> torch.Tensor:
    """(x @ W + b) transposed, [c, N], into `out`, from x_t = x transposed [r, N] (any
    strides): one W^T x_t product, whose long side N is the one BLAS runs fastest along, or
    W's sparse form on whole rows of x_t (its terms in the scratch buffer "term": [c, N]
    for a gathered form, [r, N] for a scattered one)."""
    if isinstance(sparse, Gathered):
        return sparse.apply_t(x_t, b, out, scratch("term", out.shape[0], x_t))
    if isinstance(sparse, Scattered):
        return sparse.apply_t(x_t, b, out, scratch("term", x_t.shape[0], x_t))
    return torch.addmm(b[:, None], W.t(), x_t, out=out)


def _layer_norm_t(r2: torch.Tensor, p: TransposedMLP, dev: torch.Tensor,
                  out: torch.Tensor) -> torch.Tensor:
    """The MLP's LayerNorm at the rows its units read, transposed, [len(in_rows), N], into
    `out`, from the residual transposed r2 [D, N] (dev: a [D, N] buffer): (x - mean) /
    sqrt(var + eps) * w + b with the mean and the (biased) variance over all D rows, two-pass,
    as F.layer_norm defines them. Its sums run over the rows in another order than
    F.layer_norm's and it divides by the deviation where F.layer_norm multiplies by its
    reciprocal, so it differs from the streamed pass in the last bits, as a summation order
    does."""
    mean = r2.mean(dim=0)
    torch.sub(r2, mean, out=dev)
    x_t = torch.index_select(dev, 0, p.in_rows, out=out)
    x_t.div_(dev.square_().mean(dim=0).add_(p.eps).sqrt_())
    if p.w_ln is not None:
        x_t.mul_(p.w_ln)
    return x_t if p.b_ln is None else x_t.add_(p.b_ln)


def last_residual(plan: CompactPlan, resid: torch.Tensor) -> torch.Tensor:
    """The residual after the last sublayer, from the embedded one [B, T, D], written over
    `resid` (returned), for a caller who reads the final residual only: the plan's transposed
    pass (made once per plan, kept as plan.transposed) from TRANSPOSED_MIN_TOKENS tokens on,
    below that the streamed pass's sublayers added in place (CompactPlan.streamed_last)."""
    if resid.shape[0] * resid.shape[1] < TRANSPOSED_MIN_TOKENS:
        return plan.streamed_last(resid)
    if plan.transposed is None:
        plan.transposed = TransposedPass(plan)
    return plan.transposed.last(resid)


class TransposedPass:
    """The transposed pass of one CompactPlan (see the module doc), built from the plan's kept
    heads and units on first use."""

    def __init__(self, plan: CompactPlan):
        self.plan = plan
        self.attns = [_transposed_attn(a) for a in plan.attns]
        self.mlps = [_transposed_mlp(m) for m in plan.mlps]
        self._patterns: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._scratch = Scratch()

    def last(self, resid: torch.Tensor) -> torch.Tensor:
        """The residual after the last sublayer, from the embedded one [B, T, D], written over
        `resid` (returned), CHUNK_TOKENS tokens' worth of prompts at a time (`_chunk`)."""
        step = max(1, CHUNK_TOKENS // resid.shape[1])
        for start in range(0, resid.shape[0], step):
            self._chunk(resid[start:start + step])
        return resid

    def _chunk(self, resid: torch.Tensor) -> None:
        """`last` on the prompts of resid [B, T, D] (a view, written over). The pass runs on a
        scratch copy transposed to [D, T, B'], so that no new tensor of the residual's size is
        made per call (each costs the allocator fresh pages: about 1 ms per 1.4 MB here).
        B' = B plus 1 or 2 zero prompts is odd: with a power-of-two B, rows a power of two
        apart in memory made the copy back to [B, T, D] 4x slower (cache-set conflicts). The
        padding prompts never mix with the others."""
        B, T, D = resid.shape
        Bp = B + 1 if B % 2 == 0 else B + 2
        r2 = self._scratch("resid", D, resid.new_empty(0, T * Bp))
        r3 = r2.view(D, T, Bp)
        r3[:, :, B:].zero_()
        r3[:, :, :B].copy_(resid.permute(2, 1, 0))
        buf = self._scratch
        for layer in self.plan.order:
            a, m = self.attns[layer], self.mlps[layer]
            if len(a.plan.out_rows):
                r2.index_add_(0, a.plan.out_rows, self._attn_out(layer, r3, r2))
            if len(m.out_rows):
                x_t = _layer_norm_t(r2, m, buf("dev", D, r2), buf("ln", len(m.in_rows), r2))
                r2.index_add_(0, m.out_rows, self._mlp_out(m, x_t))
        resid.copy_(r3[:, :, :B].permute(2, 1, 0))

    def _attn_out(self, layer: int, r3: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
        """Block `layer`'s attention output at its written rows, [len(out_rows), T B], from
        the residual as r3 [D, T, B] (r2: the same as [D, T B])."""
        t = self.attns[layer]
        p = t.plan
        D, T, B = r3.shape
        H = p.n_heads
        if not H:
            return p.b_o[:, None].expand(-1, T * B)
        buf = self._scratch
        x_t = torch.index_select(r2, 0, p.v_rows, out=buf("x", len(p.v_rows), r2))
        width = p.b_v.shape[0]
        v_t = _product_t(x_t, p.W_v, p.b_v, t.sparse_v, buf("v", width, r2),
                         buf).view(H, -1, T, B)  # [H, cv, T, B]
        if self.plan.fixed[layer]:
            pat, src = self._fixed(layer, T, r3.dtype, r3.device)  # [H, T, T], [H, T]
            z_t = buf("z", width, r2).view(H, -1, T, B)
            if src is None:  # z_h = pattern_h @ v_h, a [T, T] by [T, B] product per column
                torch.matmul(pat[:, None], v_t, out=z_t)
            else:  # every token reads one token with weight 1: z_h = v_h at src_h
                for h in range(H):
                    torch.index_select(v_t[h], 1, src[h], out=z_t[h])
        else:
            scores = _softmax_scores(p, r3.permute(2, 1, 0))  # [B, H, T, T]
            z_t = (scores @ v_t.permute(3, 0, 2, 1)).permute(1, 3, 2, 0)  # [H, cv, T, B]
        c = len(p.out_rows)
        return _product_t(z_t.reshape(-1, T * B), p.W_o, p.b_o, t.sparse_o, buf("o", c, r2),
                          buf)

    def _mlp_out(self, p: TransposedMLP, x_t: torch.Tensor) -> torch.Tensor:
        """The MLP's output at its written rows, [len(out_rows), N], from its LayerNorm's
        output at the rows its units read, x_t [len(in_rows), N]."""
        buf = self._scratch
        units = p.b_in.shape[0]
        h_t = _product_t(x_t, p.W_in, p.b_in, p.sparse_in, buf("h", units, x_t), buf)
        paired = p.n_pairs + p.n_linear
        if p.n_pairs:  # y erf(y / sqrt 2), y = the pair's pre-activation
            mirrored_gelu_(h_t[:p.n_pairs], buf("erf", p.n_pairs, x_t))
        if paired < units:  # (a linear pair's unit passes y on as it is)
            h_t[paired:] = gelu(h_t[paired:])
        c = len(p.out_rows)
        return _product_t(h_t, p.W_out, p.b_out, p.sparse_out, buf("out", c, x_t), buf)

    def _fixed(self, layer: int, T: int, dtype: torch.dtype,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Block `layer`'s fixed pattern [H, T, T] (the plan's `_pattern`) with its weights
        below PATTERN_FLOOR set to zero, and, if every row then holds a single weight 1, the
        token each row reads [H, T] (else None); once per length, dtype and device."""
        key = (layer, T, dtype, device)
        if key not in self._patterns:
            pat = self.plan._pattern(layer, T, dtype, device).clone()
            pat.masked_fill_(pat < PATTERN_FLOOR, 0.0)
            one_hot = ((pat == 0) | (pat == 1)).all() & ((pat == 1).sum(dim=-1) == 1).all()
            self._patterns[key] = (pat, pat.argmax(dim=-1) if bool(one_hot) else None)
        return self._patterns[key]
