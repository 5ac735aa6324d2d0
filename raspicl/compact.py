"""A compact execution plan: the compiled transformer's forward pass on its nonzero weights only.

A compiled model's weights are mostly zero (0.09-3% nonzero for the bundled programs): a head
reads a few rows of the residual stream and writes a few others, an MLP unit reads a few rows
and writes a few. The dense forward pass multiplies every zero. The plan, computed once from
the weights, keeps per block

- per head: the residual rows its Q, K and V read, the d_head columns whose query and key are
  both not identically zero (the only ones that change a score), the value columns that reach a
  nonzero row of W_O; a head whose value never reaches the output is dropped;
- the attention's written rows: the union of the heads' nonzero W_O columns and b_O's nonzero
  entries;
- the MLP units whose output row of W_out is nonzero and whose input column of W_in (or bias
  b_in) is nonzero (a unit with neither has GeLU(0) = 0), the rows they read, the rows they
  write (and b_out's nonzero entries). Two units whose inputs are exact negatives of each
  other are kept as one (`_mirrored`): with equal output rows (the product gadget) it outputs
  GeLU(y) + GeLU(-y) = y erf(y / sqrt 2), with negated output rows (an affine unit pair)
  GeLU(y) - GeLU(-y) = y, with no GeLU at all.

Each sublayer computes its output transposed, [written rows, tokens]: every product is
W^T x^T, whose long side (every token of every prompt) is the one BLAS runs fastest along, or,
for a matrix with few nonzeros per column (`Gathered`), a sum of whole gathered rows. The output
is added to the residual at the written rows, so every consumer still sees the whole residual;
the LayerNorm still normalises over every row (its mean and variance need them all). A block
whose queries and keys read only positional rows has one attention pattern for every prompt,
computed once; its weights below PATTERN_FLOOR (the leak the monitor charges) are set to zero,
after which a move's pattern is a gather of one token per row.

`attn` and `mlp` take and return the residual [B, T, D] (the streamed pass the monitor reads);
`last` runs the whole pass on the residual transposed to [D, T, B] (predict and run without the
monitor), with each MLP's LayerNorm computed on the rows its units read (`_layer_norm_t`).

A term the plan drops is an exact zero of the dense pass, a mirrored or linear pair is an exact
identity, and a dropped pattern weight is a leak below the monitor's charge, so for finite
prompts the passes differ by their floating-point rounding (tests/test_compact.py states the
tolerance; tests/test_compact_gelu.py holds the pairs' GeLUs against mpmath). Dense products
with zero weights turn an infinity or a NaN into NaN on every row; the compact pass does not,
so CompiledModel runs prompts with a non-finite token densely. The weights themselves (and
their export) are untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from raspicl.model import Transformer

# Scores over at most this many query/key columns are summed as elementwise products, not a
# batched matrix product (which costs far more per head and token at this width).
SMALL_SCORE_WIDTH = 4
# A head's value or output matrix, or an MLP matrix, with at least SPARSE_MIN_ENTRIES entries,
# at most SPARSE_TERMS nonzeros in any column and at most SPARSE_DENSITY of its entries nonzero
# is applied column by column as gathered sums (Gathered), not as a dense product: the product
# gadgets of a large program (sherman_morrison d = 32: 8192 units, each reading 3 of ~2000 rows)
# are 0.1% nonzero even after the plan drops unused rows, and the dense product costs a
# thousand times the work.
SPARSE_MIN_ENTRIES = 2**16
SPARSE_TERMS = 8
SPARSE_DENSITY = 0.05
# A smaller matrix is gathered too where its columns' most nonzeros m satisfy
# m * GATHER_COST <= rows: on the transposed products (`_product_t`) a gathered term (a row of
# x_t gathered and multiply-added) costs about as much as GATHER_COST dense multiply-adds per
# column. Over every matrix of gd_step d = 4, sherman_morrison d = 4 and ridge d = 2 n = 4 at
# batch 1024 (one thread), the sum of their products' times was lowest at 8 in float64 (and
# within 1% of it in float32) of the values 2-12 tried.
GATHER_COST = 8
# MLPs with at most this many entries in W_in and W_out together are searched for mirrored
# unit pairs (`_mirrored`, which compares whole columns: a large MLP keeps its units).
PAIR_MAX_ENTRIES = 2**20
SQRT_HALF = math.sqrt(0.5)
# A fixed (position-only) attention pattern's weights below PATTERN_FLOOR are set to zero. The
# compiler gives every token a head reads a weight >= 1 / n_ctx (a mean over at most n_ctx
# tokens) and every other token exp(-M) or less (M = attention_margin: the score gap), which
# the monitor charges as the leak, (T - 1) exp(-M) 2 max|residual| per read. A weight below
# the floor is such a leak: dropping it moves a read by less than that charge (the dense pass
# keeps it, and so lies further from the exact value). Condition: PATTERN_FLOOR < 1 / n_ctx.
# With it every row of a move's pattern is a single weight 1, and the attention a gather.
PATTERN_FLOOR = 2.0**-60


def _nz(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Mask of the indices along the remaining dim where t is not all zero over `dims`."""
    return (t != 0).any(dim=dims) if dims else t != 0


def _idx(mask: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(mask, as_tuple=False).flatten()


@dataclass
class AttnPlan:
    """A block's attention on its nonzero parts, its kept heads side by side: head h's query,
    key and value columns are h*c .. h*c + c - 1 (h*cv .. for values) of W_q, W_k (W_v),
    zero-padded to the widest head; W_o maps the values to the written rows `out_rows`."""

    n_heads: int  # the heads kept
    q_rows: torch.Tensor
    W_q: torch.Tensor  # [len(q_rows), n_heads * c]
    b_q: torch.Tensor
    k_rows: torch.Tensor
    W_k: torch.Tensor
    b_k: torch.Tensor
    v_rows: torch.Tensor
    W_v: torch.Tensor  # [len(v_rows), n_heads * cv]; [0, ...] where sparse_v replaces it
    b_v: torch.Tensor
    W_o: torch.Tensor  # [n_heads * cv, len(out_rows)]
    out_rows: torch.Tensor
    b_o: torch.Tensor
    scale: float  # sqrt(d_head) of the full head, as the dense pass divides by
    sparse_v: Gathered | None = None  # W_v and W_o gathered (large move heads)
    sparse_o: Gathered | None = None


@dataclass
class Gathered:
    """A matrix W [r, c] mostly zero, kept by columns: column j is sum_i coef[i, j] *
    x[:, idx[i, j]] (m = the most nonzeros of any column; shorter columns are padded with
    coefficient 0 on row 0, which adds an exact zero)."""

    idx: torch.Tensor  # [m, c] long
    coef: torch.Tensor  # [m, c]
    first_ones: bool = False  # every coef[0] is 1 (a move's selection): no multiply there
    has_bias: bool = True  # apply_t adds its bias (False: the plan's bias is all zero)

    @staticmethod
    def of(W: torch.Tensor, small: bool = False) -> Gathered | None:
        """W's gathered form (its nonzero entries, column by column in row order), or None
        where a dense product is the cheaper one (W small, some column with more than
        SPARSE_TERMS nonzeros, or W denser than SPARSE_DENSITY). small: also gather a small W
        whose columns have at most rows / GATHER_COST nonzeros (for `apply_t`)."""
        r, c = W.shape
        if not c or (r * c < SPARSE_MIN_ENTRIES and not small):
            return None
        nz = W != 0
        per_col = nz.sum(dim=0)
        m = int(per_col.max())
        large = r * c >= SPARSE_MIN_ENTRIES and m * c <= SPARSE_DENSITY * r * c
        if m > SPARSE_TERMS or not (large or (small and m * GATHER_COST <= r)):
            return None
        m = max(m, 1)
        cols, rows = torch.nonzero(W.t(), as_tuple=True)  # by column, then row
        starts = torch.cumsum(per_col, 0) - per_col
        pos = torch.arange(len(cols), device=W.device) - starts[cols]
        idx = torch.zeros(m, c, dtype=torch.long, device=W.device)
        coef = W.new_zeros(m, c)
        idx[pos, cols] = rows
        coef[pos, cols] = W[rows, cols]
        return Gathered(idx, coef, bool((coef[0] == 1).all()))

    def apply(self, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """x [N, r] @ W + b, summing each column's terms in row order after the bias."""
        out = b.expand(x.shape[0], -1).clone()
        for i in range(self.idx.shape[0]):
            out.addcmul_(x.index_select(1, self.idx[i]), self.coef[i])
        return out

    def apply_t(self, x_t: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(x @ W + b) transposed, [c, N], from x_t = x transposed [r, N]: the same terms in
        the same order as `apply` (the first term and the bias added first, with the same
        roundings), gathered as whole rows of x_t."""
        out = x_t.index_select(0, self.idx[0])
        if not self.first_ones:
            out.mul_(self.coef[0][:, None])
        if self.has_bias:
            out.add_(b[:, None])
        for i in range(1, self.idx.shape[0]):
            out.addcmul_(x_t.index_select(0, self.idx[i]), self.coef[i][:, None])
        return out


@dataclass
class MLPPlan:
    ln_w: torch.Tensor
    ln_b: torch.Tensor
    eps: float
    in_rows: torch.Tensor
    W_in: torch.Tensor  # [len(in_rows), units]; [0, units] where sparse_in replaces it
    b_in: torch.Tensor
    W_out: torch.Tensor  # [units, len(out_rows)]
    out_rows: torch.Tensor
    b_out: torch.Tensor
    sparse_in: Gathered | None = None  # W_in gathered by units (large, mostly-zero MLPs)
    sparse_out: Gathered | None = None  # W_out gathered by written rows
    # units 0 .. n_pairs - 1 each stand for a mirrored pair of the dense MLP (`_mirrored`):
    # they output y erf(y / sqrt 2) = GeLU(y) + GeLU(-y); the next n_linear units each stand
    # for a linear pair and output y = GeLU(y) - GeLU(-y); the units after them GeLU(y)
    n_pairs: int = 0
    n_linear: int = 0
    # the LayerNorm's w and b at in_rows as columns [len(in_rows), 1] for `_layer_norm_t`;
    # None where w is all 1 (b all 0)
    w_in: torch.Tensor | None = None
    b_in_ln: torch.Tensor | None = None


def _attn_plan(attn) -> AttnPlan:
    W_Q, W_K, W_V, W_O = attn.W_Q, attn.W_K, attn.W_V, attn.W_O
    kept = []  # (head, score columns, value columns)
    written = _nz(attn.b_O, ())
    for h in range(W_Q.shape[0]):
        q_cols = _nz(W_Q[h], (0,)) | (attn.b_Q[h] != 0)
        k_cols = _nz(W_K[h], (0,)) | (attn.b_K[h] != 0)
        v_cols = _idx((_nz(W_V[h], (0,)) | (attn.b_V[h] != 0)) & _nz(W_O[h], (1,)))
        if not len(v_cols):
            continue  # the head's value reaches no row: it adds exact zeros
        written |= _nz(W_O[h][v_cols], (0,))
        kept.append((h, _idx(q_cols & k_cols), v_cols))
    out_rows = _idx(written)
    D = W_Q.shape[1]
    c = max((len(sc) for _, sc, _ in kept), default=0)
    cv = max((len(vc) for _, _, vc in kept), default=0)
    H = len(kept)

    def side_by_side(W, b, cols_of, width):
        """W [H_all, D, dh] and b [H_all, dh] on each kept head's columns, zero-padded."""
        Wc = W.new_zeros(D, H * width)
        bc = b.new_zeros(H * width)
        for i, (h, sc, vc) in enumerate(kept):
            cols = cols_of(sc, vc)
            Wc[:, i * width:i * width + len(cols)] = W[h][:, cols]
            bc[i * width:i * width + len(cols)] = b[h][cols]
        rows = _idx(_nz(Wc, (1,)))
        return rows, Wc[rows].clone(), bc

    q_rows, W_q, b_q = side_by_side(W_Q, attn.b_Q, lambda sc, vc: sc, c)
    k_rows, W_k, b_k = side_by_side(W_K, attn.b_K, lambda sc, vc: sc, c)
    v_rows, W_v, b_v = side_by_side(W_V, attn.b_V, lambda sc, vc: vc, cv)
    W_o = W_O.new_zeros(H * cv, len(out_rows))
    for i, (h, _, vc) in enumerate(kept):
        W_o[i * cv:i * cv + len(vc)] = W_O[h][vc][:, out_rows]
    b_o = attn.b_O[out_rows].clone()
    g_v, g_o = _gathered((W_v, b_v), (W_o, b_o))
    W_v, W_o = _unless(W_v, g_v), _unless(W_o, g_o)
    return AttnPlan(H, q_rows, W_q, b_q, k_rows, W_k, b_k, v_rows, W_v, b_v, W_o, out_rows,
                    b_o, math.sqrt(W_Q.shape[-1]), g_v, g_o)


def _mlp_plan(block) -> MLPPlan:
    mlp, ln = block.mlp, block.ln2
    nz_in, nz_out = mlp.W_in != 0, mlp.W_out != 0  # each computed once: a large model's
    units = _idx(nz_out.any(dim=1) & (nz_in.any(dim=0) | (mlp.b_in != 0)))  # MLP is big
    in_rows = _idx(nz_in.index_select(1, units).any(dim=1))
    out_rows = _idx(nz_out.index_select(0, units).any(dim=0) | (mlp.b_out != 0))
    W_in = mlp.W_in.index_select(0, in_rows).index_select(1, units)
    W_out = mlp.W_out.index_select(0, units).index_select(1, out_rows)
    b_in = mlp.b_in[units]
    n_pairs = n_linear = 0
    if W_in.numel() + W_out.numel() <= PAIR_MAX_ENTRIES:
        keep, n_pairs, n_linear = _mirrored(W_in, b_in, W_out)
        W_in, b_in, W_out = W_in[:, keep], b_in[keep], W_out[keep]
    b_in, b_out = b_in.clone(), mlp.b_out[out_rows].clone()
    g_in, g_out = _gathered((W_in, b_in), (W_out, b_out))
    w, b = ln.w[in_rows][:, None], ln.b[in_rows][:, None]
    return MLPPlan(ln.w, ln.b, ln.eps, in_rows, _unless(W_in, g_in), b_in,
                   _unless(W_out, g_out), out_rows, b_out, g_in, g_out, n_pairs, n_linear,
                   None if bool((w == 1).all()) else w, b if bool(b.any()) else None)


def mirrored_gelu_(y: torch.Tensor) -> torch.Tensor:
    """GeLU(y) + GeLU(-y) = y erf(y / sqrt 2), what a mirrored pair of units outputs (exact
    identity: y Phi(y) - y Phi(-y) = y (2 Phi(y) - 1)), written into y (returned)."""
    return y.mul_(torch.erf(y * SQRT_HALF))


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


def _gathered(*products: tuple[torch.Tensor, torch.Tensor]) -> list[Gathered | None]:
    """Each (W, b)'s gathered form (`Gathered.of`, small ones too), told whether b is zero."""
    out = []
    for W, b in products:
        g = Gathered.of(W, small=True)
        if g is not None:
            g.has_bias = bool(b.any())
        out.append(g)
    return out


def _unless(W: torch.Tensor, g: Gathered | None) -> torch.Tensor:
    """W itself, or, where its gathered form replaces it, an empty [0, columns] stand-in (the
    dense copy of a large sparse matrix would be most of the plan's memory)."""
    return W if g is None else W.new_zeros(0, W.shape[1])


def _entries(W: torch.Tensor, g: Gathered | None) -> int:
    """The weight entries one token multiplies by W (its gathered terms where it has them)."""
    return W.numel() if g is None else g.idx.numel()


def _product_t(x_t: torch.Tensor, W: torch.Tensor, b: torch.Tensor,
               sparse: Gathered | None) -> torch.Tensor:
    """(x @ W + b) transposed, [c, N], from x_t = x transposed [r, N] (any strides): one
    W^T x_t product, whose long side N (every token of every prompt) is the one BLAS runs
    fastest along, or W's gathered form on whole rows of x_t."""
    if sparse is not None:
        return sparse.apply_t(x_t, b)
    return torch.addmm(b[:, None], W.t(), x_t)


def _affine(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x @ W + b over the last dim of x [B, T, r], as one fused 2-D product."""
    B, T, r = x.shape
    return torch.addmm(b, x.reshape(B * T, r), W).view(B, T, -1)


def _softmax_scores(p: AttnPlan, resid: torch.Tensor) -> torch.Tensor:
    """The heads' causal attention weights [B, H, T, T] on `resid` [B, T, D]."""
    B, T, _ = resid.shape
    H = p.n_heads

    def heads(rows, W, b):  # [B, H, T, width]
        return _affine(resid.index_select(2, rows), W, b).view(B, T, H, -1).transpose(1, 2)

    q, k = heads(p.q_rows, p.W_q, p.b_q), heads(p.k_rows, p.W_k, p.b_k)
    if q.shape[-1] <= SMALL_SCORE_WIDTH:  # a handful of products beats a batched matmul
        s = q[..., :, None, 0] * k[..., None, :, 0]
        for c in range(1, q.shape[-1]):
            s.addcmul_(q[..., :, None, c], k[..., None, :, c])
    else:
        s = q @ k.transpose(-1, -2)
    future = torch.ones(T, T, dtype=torch.bool, device=resid.device).triu(1)
    s.div_(p.scale).masked_fill_(future, float("-inf"))
    # softmax written out, in place (torch's kernel is several times slower on a last dim
    # this short); a weight below the dtype's smallest normal number is set to zero, where the
    # dense pass has a subnormal: exp is slow there, and the difference is below finfo.tiny
    # per weight
    s.sub_(s.amax(dim=-1, keepdim=True))
    s.masked_fill_(s < math.log(torch.finfo(s.dtype).tiny), float("-inf")).exp_()
    return s.div_(s.sum(dim=-1, keepdim=True))


def _fixed_patterns(model: Transformer, attns: list[AttnPlan],
                    mlps: list[MLPPlan]) -> list[bool]:
    """Per block, whether its heads' queries and keys read only rows that hold the same
    numbers for every prompt: rows no token feeds (a zero column of W_E) and no sublayer
    writes, so that they hold W_pos exactly. Such a block's attention pattern depends on the
    position alone (the compiler's moves address tokens by position), and is computed once."""
    varying = (model.embed.W_E != 0).any(dim=0)
    for plan in [*attns, *mlps]:
        varying[plan.out_rows] = True
    fixed = []
    for a in attns:
        rows = torch.cat([a.q_rows, a.k_rows])
        fixed.append(bool(a.n_heads) and not bool(varying[rows].any()))
    return fixed


def _layer_norm_t(r2: torch.Tensor, p: MLPPlan) -> torch.Tensor:
    """The MLP's LayerNorm at the rows its units read, transposed, [len(in_rows), N], from the
    residual transposed r2 [D, N]: (x - mean) / sqrt(var + eps) * w + b with the mean and the
    (biased) variance over all D rows, two-pass, as F.layer_norm defines them. Its sums run
    over the rows in another order than F.layer_norm's and it divides by the deviation where
    F.layer_norm multiplies by its reciprocal, so it differs from the dense pass in the last
    bits, as a summation order does."""
    mean = r2.mean(dim=0)
    dev = r2 - mean
    x_t = dev.index_select(0, p.in_rows)
    x_t.div_(dev.square_().mean(dim=0).add_(p.eps).sqrt_())
    if p.w_in is not None:
        x_t.mul_(p.w_in)
    return x_t if p.b_in_ln is None else x_t.add_(p.b_in_ln)


class CompactPlan:
    """The compact forward pass of one Transformer's weights (see the module doc); valid while
    those weights are unchanged (`matches`)."""

    @staticmethod
    def supports(model: Transformer) -> bool:
        """Whether the plan can run this model: paper models only (a gpt2 block's LayerNorm
        before attention reads every row, which the plan's row gathers do not follow)."""
        return model.cfg.arch.name == "paper"

    def __init__(self, model: Transformer):
        if not self.supports(model):
            raise ValueError(f"the compact plan runs paper models only; this model's "
                             f"architecture is {model.cfg.arch.name} (run it dense)")
        self.order = model.cfg.order()
        self.attns = [_attn_plan(b.attn) for b in model.blocks]
        self.mlps = [_mlp_plan(b) for b in model.blocks]
        self.fixed = _fixed_patterns(model, self.attns, self.mlps)
        self._W_pos = model.pos_embed.W_pos
        self._patterns: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._key = self.key(model)

    @staticmethod
    def key(model: Transformer) -> tuple:
        """What the plan depends on: every parameter's identity, version, dtype and device."""
        return tuple((id(p), p._version, p.dtype, p.device) for p in model.parameters())

    def matches(self, model: Transformer) -> bool:
        return self._key == self.key(model)

    def attn(self, run: int, resid: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """resid + the attention of block run `run`, as the dense pass computes it (added
        into `resid` itself if inplace, else into a copy)."""
        layer = self.order[run]
        p = self.attns[layer]
        if not len(p.out_rows):
            return resid
        out_t = self._attn_out(layer, resid.permute(2, 1, 0))  # [c, T, B]
        target = resid if inplace else resid.clone()
        return target.index_add_(2, p.out_rows, out_t.permute(2, 1, 0))

    def mlp(self, run: int, resid: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """resid + the MLP of block run `run` on its LayerNorm, as the dense pass computes it
        (added into `resid` itself if inplace, else into a copy)."""
        layer = self.order[run]
        p = self.mlps[layer]
        if not len(p.out_rows):
            return resid
        D = resid.shape[-1]
        x = F.layer_norm(resid, (D,), p.ln_w, p.ln_b, p.eps).view(-1, D)
        target = resid if inplace else resid.clone()
        target.view(-1, D).index_add_(1, p.out_rows, self._mlp_out(layer, x).t())
        return target

    def last(self, resid: torch.Tensor) -> torch.Tensor:
        """The residual after the last sublayer, from the embedded one [B, T, D], for a caller
        who reads the final residual only. It runs on the residual transposed to [D, T, B]
        (one copy in, one out): a sublayer's reads and writes are then whole rows, gathered
        and added in place, a fixed pattern applies to [T, B] blocks, and each MLP's
        LayerNorm is `_layer_norm_t` on the rows its units read. The result is a [B, T, D] view
        of that transposed tensor (no copy out)."""
        B, T, D = resid.shape
        r3 = resid.permute(2, 1, 0).contiguous()  # [D, T, B], a new tensor
        r2 = r3.view(D, T * B)
        for layer in self.order:
            a, m = self.attns[layer], self.mlps[layer]
            if len(a.out_rows):
                r2.index_add_(0, a.out_rows, self._attn_out(layer, r3).view(-1, T * B))
            if len(m.out_rows):
                r2.index_add_(0, m.out_rows, self._mlp_out_t(layer, _layer_norm_t(r2, m)))
        return r3.permute(2, 1, 0)  # [B, T, D], a view (the readout reads a few tokens)

    def _attn_out(self, layer: int, r3: torch.Tensor) -> torch.Tensor:
        """Block `layer`'s attention output at its written rows, [len(out_rows), T, B], from
        the residual as r3 [D, T, B] (any strides: rows first, then tokens, then prompts)."""
        p = self.attns[layer]
        D, T, B = r3.shape
        H = p.n_heads
        if not H:
            return p.b_o[:, None, None].expand(-1, T, B)
        x_t = r3.index_select(0, p.v_rows).view(-1, T * B)
        v_t = _product_t(x_t, p.W_v, p.b_v, p.sparse_v).view(H, -1, T, B)  # [H, cv, T, B]
        if self.fixed[layer]:
            pat, src = self._fixed(layer, T, r3.dtype, r3.device)  # [H, T, T], [H, T]
            if src is None:  # z_h = pattern_h @ v_h, a [T, T] by [T, B] product per column
                z_t = torch.matmul(pat[:, None], v_t)  # [H, cv, T, B]
            else:  # every token reads one token with weight 1: z_h = v_h at src_h
                z_t = torch.empty_like(v_t)
                for h in range(H):
                    torch.index_select(v_t[h], 1, src[h], out=z_t[h])
        else:
            scores = _softmax_scores(p, r3.permute(2, 1, 0))  # [B, H, T, T]
            z_t = (scores @ v_t.permute(3, 0, 2, 1)).permute(1, 3, 2, 0)  # [H, cv, T, B]
        return _product_t(z_t.reshape(-1, T * B), p.W_o, p.b_o, p.sparse_o).view(-1, T, B)

    def _mlp_out(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        """Block `layer`'s MLP output at its written rows, transposed: [len(out_rows), N],
        from its LayerNorm's output x [N, D] (N tokens in any order: the output keeps it)."""
        return self._mlp_out_t(layer, x.t().index_select(0, self.mlps[layer].in_rows))

    def _mlp_out_t(self, layer: int, x_t: torch.Tensor) -> torch.Tensor:
        """`_mlp_out` from the LayerNorm's output at the rows the units read, transposed:
        x_t [len(in_rows), N]."""
        p = self.mlps[layer]
        h_t = _product_t(x_t, p.W_in, p.b_in, p.sparse_in)
        paired = p.n_pairs + p.n_linear
        if not paired:
            h_t = F.gelu(h_t)
        else:
            if p.n_pairs:
                mirrored_gelu_(h_t[:p.n_pairs])
            if paired < h_t.shape[0]:  # (a linear pair's unit passes y on as it is)
                h_t[paired:] = F.gelu(h_t[paired:])
        return _product_t(h_t, p.W_out, p.b_out, p.sparse_out)

    def _pattern(self, layer: int, T: int, dtype: torch.dtype,
                 device: torch.device) -> torch.Tensor:
        """Block `layer`'s attention pattern [H, T, T] on the positional rows alone (the same
        for every prompt: see `fixed`), its weights below PATTERN_FLOOR set to zero; computed
        once per length, dtype and device."""
        return self._fixed(layer, T, dtype, device)[0]

    def _fixed(self, layer: int, T: int, dtype: torch.dtype,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`_pattern`, and, if every row of it is a single weight 1, the token each row reads
        [H, T] (else None)."""
        key = (layer, T, dtype, device)
        if key not in self._patterns:
            base = self._W_pos[:T].to(dtype=dtype, device=device)[None]
            pat = _softmax_scores(self.attns[layer], base)[0].contiguous()
            pat.masked_fill_(pat < PATTERN_FLOOR, 0.0)
            one_hot = ((pat == 0) | (pat == 1)).all() & ((pat == 1).sum(dim=-1) == 1).all()
            self._patterns[key] = (pat, pat.argmax(dim=-1) if bool(one_hot) else None)
        return self._patterns[key]

    def work(self, model: Transformer) -> dict[str, float]:
        """Weight entries multiplied per token by the compact plan and by the dense pass (every
        sublayer run; scores and pattern products excluded), for bench/throughput.py."""
        cfg = model.cfg
        dense = compact = 0
        for layer in self.order:
            a, m = self.attns[layer], self.mlps[layer]
            dense += cfg.n_heads * cfg.d_head * cfg.d_model * 4 + 2 * cfg.d_model * cfg.d_mlp
            compact += a.W_q.numel() + a.W_k.numel() + _entries(a.W_v, a.sparse_v) \
                + _entries(a.W_o, a.sparse_o)
            compact += _entries(m.W_in, m.sparse_in) + _entries(m.W_out, m.sparse_out)
        return {"dense": float(dense), "compact": float(compact)}
