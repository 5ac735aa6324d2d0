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
  write (and b_out's nonzero entries).

Each sublayer then computes its output on those rows, units and columns and adds it to a copy of
the full residual stream at the written rows, so every consumer still sees the whole residual;
the LayerNorm still normalises over every row (its mean and variance need them all). A term it
drops is an exact zero of the dense pass, so for finite prompts the two passes differ only in
the order of their floating-point sums (tests/test_compact.py states the tolerance). Dense
products with zero weights turn an infinity or a NaN into NaN on every row; the compact pass
does not, so CompiledModel runs prompts with a non-finite token densely. The weights themselves
(and their export) are untouched.

`attn` and `mlp` are the streamed pass: the one the runtime monitor and compile-time
feasibility read, so its arithmetic fixes the compiled weights; `streamed_last` adds them in
place. A caller who reads the final residual only (predict and run with check="ignore") calls
raspicl.transposed.last_residual, which on large batches runs the faster transposed pass on the
same kept heads and units (that module builds on this one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from raspicl.model import Transformer, gelu, gelu_

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
# A matrix too long in its columns to gather but whose rows hold at most SPARSE_TERMS
# nonzeros, m at most, is applied row by row as scattered sums (Scattered) where
# m * SCATTER_COST <= its columns: each term is one index_add_ of a token column, which costs
# about as much as SCATTER_COST dense multiply-adds per row (one thread, float64, 180 tokens:
# a product gadget's W_out of 4482 units by 1057 rows, m = 2, took 6.1 ms scattered against
# 46 ms dense; one of 8256 units by 32 rows, m = 1, 4.9 ms against 5.7 ms: break-even near
# 28; 64 keeps a clear gain).
SCATTER_COST = 64
# The streamed MLP writes its intermediates into scratch buffers kept on the plan (Scratch)
# where its pre-activations have at least SCRATCH_MIN_ENTRIES entries (tokens x units): large
# new tensors come as fresh pages from the system each time (sherman_morrison d = 32: ~60 000
# page faults, 0.13 s of system time, per feasibility pass), while small ones come from the
# allocator's heap, where a buffer's bookkeeping costs more than it saves (ridge d = 2 n = 32,
# chunks of 20 prompts: ~14% slower through buffers). 2^17 entries = 1 MiB in float64.
SCRATCH_MIN_ENTRIES = 2**17
# ... and keeps no buffer of more than SCRATCH_MAX_ENTRIES entries (32 MiB in float64; a
# feasibility chunk of sherman_morrison d = 32 needs 1.5 M): the streamed pass is not
# chunked, and one call on many prompts would otherwise leave its intermediates' size behind.
# Condition: SCRATCH_MIN_ENTRIES <= SCRATCH_MAX_ENTRIES.
SCRATCH_MAX_ENTRIES = 2**22
# For the transposed pass (raspicl.transposed) a smaller matrix is gathered too where its
# columns' most nonzeros m satisfy m * GATHER_COST <= rows: there a gathered term (a row of x_t
# gathered and multiply-added) costs about as much as GATHER_COST dense multiply-adds per
# column. Over every matrix of gd_step d = 4, sherman_morrison d = 4 and ridge d = 2 n = 4 at
# batch 1024 (one thread), the sum of their products' times was lowest at 8 in float64 (and
# within 1% of it in float32) of the values 2-12 tried.
GATHER_COST = 8


class Scratch:
    """Named buffers a pass writes its intermediates into, kept from call to call (regrown
    when a call needs more): a new large tensor per operation costs the allocator fresh pages
    each time, which measured about a quarter of the transposed pass's time (sherman_morrison
    d = 4, batch 1024, float64) and a quarter of the streamed pass's (d = 32, feasibility's
    chunks). They hold a few times the residual's size after a call. One pass at a time: two
    threads running the same plan at once would write into each other's buffers.
    max_entries: a buffer larger than this is made for the call and not kept (None: no
    limit), so that one large call leaves no large buffer behind."""

    def __init__(self, max_entries: int | None = None):
        self._bufs: dict[str, torch.Tensor] = {}
        self.max_entries = max_entries

    def __call__(self, name: str, rows: int, like: torch.Tensor) -> torch.Tensor:
        """A [rows, N] buffer (N = like's last dim) of like's dtype and device."""
        return self.shaped(name, (rows, like.shape[-1]), like)

    def shaped(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A buffer of `shape` (contiguous) of like's dtype and device."""
        n = math.prod(shape)
        if self.max_entries is not None and n > self.max_entries:
            return torch.empty(shape, dtype=like.dtype, device=like.device)
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < n or buf.dtype != like.dtype \
                or buf.device != like.device:
            buf = torch.empty(n, dtype=like.dtype, device=like.device)
            self._bufs[name] = buf
        return buf[:n].view(shape)


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
    sparse_v: Gathered | Scattered | None = None  # W_v, W_o gathered (large move heads)
    sparse_o: Gathered | Scattered | None = None


@dataclass
class Gathered:
    """A matrix W [r, c] mostly zero, kept by columns: column j is sum_i coef[i, j] *
    x[:, idx[i, j]] (m = the most nonzeros of any column; shorter columns are padded with
    coefficient 0 on row 0, which adds an exact zero)."""

    idx: torch.Tensor  # [m, c] long
    coef: torch.Tensor  # [m, c]
    # every coef[0] is 1 (a move's selection): apply_t skips that multiply (None: find out)
    first_ones: bool | None = None
    has_bias: bool = True  # apply_t adds its bias (False: the bias is all zero)

    def __post_init__(self) -> None:
        if self.first_ones is None:
            self.first_ones = bool((self.coef[0] == 1).all())

    @staticmethod
    def of(W: torch.Tensor, small: bool = False) -> Gathered | None:
        """W's gathered form (its nonzero entries, column by column in row order), or None
        where a dense product is the cheaper one (W small, some column with more than
        SPARSE_TERMS nonzeros, or W denser than SPARSE_DENSITY). small: also gather a small W
        whose columns have at most rows / GATHER_COST nonzeros (for `apply_t`)."""
        r, c = W.shape
        if not c or (r * c < SPARSE_MIN_ENTRIES and not small):
            return None
        cols, rows = torch.nonzero(W.t(), as_tuple=True)
        return Gathered.of_entries(rows, cols, W[rows, cols], (r, c), small)

    @staticmethod
    def of_entries(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor,
                   shape: tuple[int, int], small: bool = False) -> Gathered | None:
        """`of` of the [r, c] matrix whose nonzero entries are vals at (rows, cols), in any
        order, without the matrix (raspicl.sparse_weights builds plans from entries)."""
        r, c = shape
        if not c or (r * c < SPARSE_MIN_ENTRIES and not small):
            return None
        per_col = torch.bincount(cols, minlength=c)
        m = int(per_col.max())
        large = r * c >= SPARSE_MIN_ENTRIES and m * c <= SPARSE_DENSITY * r * c
        if m > SPARSE_TERMS or not (large or (small and m * GATHER_COST <= r)):
            return None
        idx, coef = _by_first(cols, rows, vals, per_col, max(m, 1), c, r)
        return Gathered(idx, coef)

    def apply(self, x: torch.Tensor, b: torch.Tensor, scratch: Scratch | None = None,
              name: str = "") -> torch.Tensor:
        """x [N, r] @ W + b, summing each column's terms in row order after the bias.
        Computed transposed, [c, N], on whole rows of x transposed (a gather of rows is a
        few times cheaper than one of columns), with the same operations on every entry as
        in x's layout; returned as a contiguous [N, c] (in scratch's buffer `name`, its
        intermediates in others, where scratch is given)."""
        N, r = x.shape
        c = self.idx.shape[1]
        if scratch is None:
            x_t, out_t, term = x.t().contiguous(), x.new_empty(c, N), None
            out = x.new_empty(N, c)
        else:
            x_t = scratch.shaped("gathered x", (r, N), x).copy_(x.t())
            out_t = scratch.shaped("gathered out", (c, N), x)
            term = scratch.shaped("gathered term", (c, N), x)
            out = scratch.shaped(name, (N, c), x)
        out_t.copy_(b[:, None].expand(-1, N))
        for i in range(self.idx.shape[0]):
            t = torch.index_select(x_t, 0, self.idx[i], out=term) if term is not None \
                else x_t.index_select(0, self.idx[i])
            out_t.addcmul_(t, self.coef[i][:, None])
        return out.copy_(out_t.t())

    def apply_t(self, x_t: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None,
                tmp: torch.Tensor | None = None) -> torch.Tensor:
        """(x @ W + b) transposed, [c, N], from x_t = x transposed [r, N]: the same terms in
        the same order as `apply` (the first term and the bias added first, with the same
        roundings), gathered as whole rows of x_t. out, tmp: [c, N] buffers to write the
        result and each further term into (None: new tensors)."""
        out = torch.index_select(x_t, 0, self.idx[0], out=out) if out is not None \
            else x_t.index_select(0, self.idx[0])
        if not self.first_ones:
            out.mul_(self.coef[0][:, None])
        if self.has_bias:
            out.add_(b[:, None])
        for i in range(1, self.idx.shape[0]):
            term = torch.index_select(x_t, 0, self.idx[i], out=tmp) if tmp is not None \
                else x_t.index_select(0, self.idx[i])
            out.addcmul_(term, self.coef[i][:, None])
        return out


@dataclass
class Scattered:
    """A matrix W [r, c] mostly zero, kept by rows: row i adds coef[k, i] * x[:, i] to column
    idx[k, i] of the product, for k < m (m = the most nonzeros of any row; shorter rows are
    padded with coefficient 0 on column 0, which adds an exact zero). The form of a matrix
    whose columns are too long to gather but whose rows are short: a product gadget's W_out,
    where each unit writes one or two rows and a dot product's row sums a hundred units."""

    idx: torch.Tensor  # [m, r] long: the columns row i writes
    coef: torch.Tensor  # [m, r]
    n_cols: int  # c
    has_bias: bool = True  # apply_t adds its bias (False: the bias is all zero)

    @staticmethod
    def of(W: torch.Tensor) -> Scattered | None:
        """W's scattered form (its nonzero entries, row by row in column order), or None where
        another form is the cheaper one (W small, some row with more than SPARSE_TERMS
        nonzeros or more than columns / SCATTER_COST, or W denser than SPARSE_DENSITY)."""
        r, c = W.shape
        if not r or r * c < SPARSE_MIN_ENTRIES:
            return None
        nz = W != 0
        if not _scatters(int(nz.sum(dim=1).max()), c):  # (before listing a dense W's entries)
            return None
        rows, cols = torch.nonzero(nz, as_tuple=True)
        return Scattered.of_entries(rows, cols, W[rows, cols], (r, c))

    @staticmethod
    def of_entries(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor,
                   shape: tuple[int, int]) -> Scattered | None:
        """`of` of the [r, c] matrix whose nonzero entries are vals at (rows, cols), in any
        order, without the matrix."""
        r, c = shape
        if not r or r * c < SPARSE_MIN_ENTRIES:
            return None
        per_row = torch.bincount(rows, minlength=r)
        m = int(per_row.max())
        if not _scatters(m, c):
            return None
        idx, coef = _by_first(rows, cols, vals, per_row, max(m, 1), r, c)
        return Scattered(idx, coef, c)

    def apply(self, x: torch.Tensor, b: torch.Tensor, scratch: Scratch | None = None,
              name: str = "") -> torch.Tensor:
        """x [N, r] @ W + b: the bias, then each row's k-th term for k = 0, 1, ... added into
        its column (index_add_, in row order); in scratch's buffer `name` (its scaled terms
        in another) where scratch is given."""
        N, r = x.shape
        if scratch is None:
            out, tmp = x.new_empty(N, self.n_cols), None
        else:
            out = scratch.shaped(name, (N, self.n_cols), x)
            tmp = scratch.shaped("scattered term", (N, r), x)
        out.copy_(b.expand(N, -1))
        for k in range(self.idx.shape[0]):
            term = torch.mul(x, self.coef[k], out=tmp) if tmp is not None else x * self.coef[k]
            out.index_add_(1, self.idx[k], term)
        return out

    def apply_t(self, x_t: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None,
                tmp: torch.Tensor | None = None) -> torch.Tensor:
        """(x @ W + b) transposed, [c, N], from x_t = x transposed [r, N]: the terms of
        `apply`, each row of x_t scaled and added into its column's row of the output. out:
        a [c, N] buffer for the result, tmp: an [r, N] one for the scaled rows (None: new
        tensors)."""
        N = x_t.shape[1]
        if out is None:
            out = x_t.new_empty(self.n_cols, N)
        if self.has_bias:
            out.copy_(b[:, None].expand(-1, N))
        else:
            out.zero_()
        for k in range(self.idx.shape[0]):
            term = torch.mul(x_t, self.coef[k][:, None], out=tmp) if tmp is not None \
                else x_t * self.coef[k][:, None]
            out.index_add_(0, self.idx[k], term)
        return out


def _scatters(m: int, c: int) -> bool:
    """Whether a large matrix of c columns whose rows hold at most m nonzeros is scattered
    (Scattered.of's rule: m <= SPARSE_TERMS, m * SCATTER_COST <= c, and so m <= SPARSE_DENSITY
    c)."""
    return m <= SPARSE_TERMS and m * SCATTER_COST <= c and m <= SPARSE_DENSITY * c


def _by_first(major: torch.Tensor, minor: torch.Tensor, vals: torch.Tensor,
              per_major: torch.Tensor, m: int, n_major: int,
              n_minor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Entries (major, minor, vals) laid out as idx, coef [m, n_major]: major index j's
    entries in minor order at idx[:, j], coef[:, j], padded with (0, 0.0)."""
    order = torch.argsort(major * n_minor + minor)  # by major, then minor
    major, minor, vals = major[order], minor[order], vals[order]
    starts = torch.cumsum(per_major, 0) - per_major
    pos = torch.arange(len(major), device=vals.device) - starts[major]
    idx = torch.zeros(m, n_major, dtype=torch.long, device=vals.device)
    coef = vals.new_zeros(m, n_major)
    idx[pos, major] = minor
    coef[pos, major] = vals
    return idx, coef


def sparse_form(W: torch.Tensor) -> Gathered | Scattered | None:
    """The form a plan applies W in: gathered by columns where its columns are short,
    else scattered by rows where its rows are, else None (a dense product)."""
    g = Gathered.of(W)
    return g if g is not None else Scattered.of(W)


def sparse_form_of_entries(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor,
                           shape: tuple[int, int]) -> Gathered | Scattered | None:
    """`sparse_form` of the matrix whose nonzero entries are vals at (rows, cols)."""
    g = Gathered.of_entries(rows, cols, vals, shape)
    return g if g is not None else Scattered.of_entries(rows, cols, vals, shape)


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
    sparse_in: Gathered | Scattered | None = None  # W_in by units (large, mostly-zero MLPs)
    sparse_out: Gathered | Scattered | None = None  # W_out by written rows (or by units)


def _attn_plan(attn, d_head: int | None = None) -> AttnPlan:
    """The attention's plan. W_Q and W_K, W_V may be given on rows of their own and, like
    W_O, on fewer head columns than d_head (the head width the scores are divided by;
    default: W_Q's), where the rest are zero (raspicl.sparse_weights restricts them so)."""
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
    c = max((len(sc) for _, sc, _ in kept), default=0)
    cv = max((len(vc) for _, _, vc in kept), default=0)
    H = len(kept)

    def side_by_side(W, b, cols_of, width):
        """W [H_all, D, dh] and b [H_all, dh] on each kept head's columns, zero-padded."""
        Wc = W.new_zeros(W.shape[1], H * width)
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
    g_v, g_o = _gathered(W_v, W_o)
    W_v, W_o = _unless(W_v, g_v), _unless(W_o, g_o)
    return AttnPlan(H, q_rows, W_q, b_q, k_rows, W_k, b_k, v_rows, W_v, b_v, W_o, out_rows,
                    attn.b_O[out_rows].clone(), math.sqrt(d_head or W_Q.shape[-1]), g_v, g_o)


def _mlp_plan(block) -> MLPPlan:
    mlp, ln = block.mlp, block.ln2
    nz_in, nz_out = mlp.W_in != 0, mlp.W_out != 0  # each computed once: a large model's
    units = _idx(nz_out.any(dim=1) & (nz_in.any(dim=0) | (mlp.b_in != 0)))  # MLP is big
    in_rows = _idx(nz_in.index_select(1, units).any(dim=1))
    out_rows = _idx(nz_out.index_select(0, units).any(dim=0) | (mlp.b_out != 0))
    W_in = mlp.W_in.index_select(0, in_rows).index_select(1, units)
    W_out = mlp.W_out.index_select(0, units).index_select(1, out_rows)
    g_in, g_out = _gathered(W_in, W_out)
    return MLPPlan(ln.w, ln.b, ln.eps, in_rows, _unless(W_in, g_in), mlp.b_in[units].clone(),
                   _unless(W_out, g_out), out_rows, mlp.b_out[out_rows].clone(), g_in, g_out)


def _gathered(*Ws: torch.Tensor) -> list[Gathered | Scattered | None]:
    return [sparse_form(W) for W in Ws]


def _unless(W: torch.Tensor, g: Gathered | Scattered | None) -> torch.Tensor:
    """W itself, or, where its gathered form replaces it, an empty [0, columns] stand-in (the
    dense copy of a large sparse matrix would be most of the plan's memory)."""
    return W if g is None else W.new_zeros(0, W.shape[1])


def _entries(W: torch.Tensor, g: Gathered | Scattered | None) -> int:
    """The weight entries one token multiplies by W (its gathered terms where it has them)."""
    return W.numel() if g is None else g.idx.numel()


def _product(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor,
             sparse: Gathered | Scattered | None, scratch: Scratch | None = None,
             name: str = "") -> torch.Tensor:
    """x @ W + b over the last dim of x [B, T, r], through W's sparse form if it has one;
    into scratch's buffer `name` where scratch is given (else a new tensor)."""
    B, T, r = x.shape
    if sparse is None:
        if scratch is None:
            return _affine(x, W, b)
        out = scratch.shaped(name, (B * T, W.shape[1]), x)
        return torch.addmm(b, x.reshape(B * T, r), W, out=out).view(B, T, -1)
    return sparse.apply(x.reshape(B * T, r), b, scratch, name).view(B, T, -1)


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
    if not q.shape[-1]:  # no query column meets a key column: every score is 0
        s = q.new_zeros(B, H, T, T)
    elif q.shape[-1] <= SMALL_SCORE_WIDTH:  # a handful of products beats a batched matmul
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


def _add_rows(resid: torch.Tensor, rows: torch.Tensor, out: torch.Tensor,
              inplace: bool) -> torch.Tensor:
    """resid with `out` added at `rows` of its last dim, in place or into a copy."""
    return resid.index_add_(2, rows, out) if inplace else resid.index_add(2, rows, out)


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
        self._set(model.cfg.order(), [_attn_plan(b.attn) for b in model.blocks],
                  [_mlp_plan(b) for b in model.blocks], model, self.key(model))

    @classmethod
    def from_sublayers(cls, order: tuple[int, ...], attns: list[AttnPlan], mlps: list[MLPPlan],
                       embedding) -> CompactPlan:
        """A plan from sublayer plans made elsewhere (raspicl.sparse_weights: from a compiled
        model's sparse parts, without its dense weights); `embedding` has .embed.W_E and
        .pos_embed.W_pos. It matches no model until `bind`."""
        plan = cls.__new__(cls)
        plan._set(tuple(order), attns, mlps, embedding, None)
        return plan

    def _set(self, order, attns, mlps, embedding, key) -> None:
        self.order = order
        self.attns = attns
        self.mlps = mlps
        self.fixed = _fixed_patterns(embedding, self.attns, self.mlps)
        self._W_pos = embedding.pos_embed.W_pos
        self._patterns: dict[tuple, torch.Tensor] = {}
        # this plan's raspicl.transposed.TransposedPass, made there on first use
        self.transposed: Any = None
        self._scratch = Scratch(SCRATCH_MAX_ENTRIES)  # the streamed MLPs' intermediates
        self._key = key

    def bind(self, model: Transformer) -> None:
        """Declare this plan the plan of `model`'s current weights (the caller vouches that
        they are the weights it was made from); it matches the model until they change."""
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
        B, T, _ = resid.shape
        H = p.n_heads
        if H:
            v = _product(resid.index_select(2, p.v_rows), p.W_v, p.b_v, p.sparse_v)
            if self.fixed[layer]:
                # one [T, T] pattern per head for every prompt: z_h = pattern_h @ v_h as one
                # 2-D product per head over all prompts' value columns side by side
                cv = v.shape[-1] // H
                pat = self._pattern(layer, T, resid.dtype, resid.device)  # [H, T, T]
                vh = v.view(B, T, H, cv).permute(2, 1, 0, 3).reshape(H, T, B * cv)
                z = torch.bmm(pat, vh).view(H, T, B, cv).permute(2, 1, 0, 3).reshape(B, T, -1)
            else:
                z = (_softmax_scores(p, resid) @ v.view(B, T, H, -1).transpose(1, 2)) \
                    .transpose(1, 2).reshape(B, T, -1)  # [B, T, H * cv]
            out = _product(z, p.W_o, p.b_o, p.sparse_o)
        else:
            out = p.b_o.expand(B, T, -1)
        return _add_rows(resid, p.out_rows, out, inplace)

    def _pattern(self, layer: int, T: int, dtype: torch.dtype,
                 device: torch.device) -> torch.Tensor:
        """Block `layer`'s attention pattern [H, T, T] on the positional rows alone (the same
        for every prompt: see `fixed`), computed once per length, dtype and device."""
        key = (layer, T, dtype, device)
        if key not in self._patterns:
            base = self._W_pos[:T].to(dtype=dtype, device=device)[None]
            self._patterns[key] = _softmax_scores(self.attns[layer], base)[0].contiguous()
        return self._patterns[key]

    def mlp(self, run: int, resid: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """resid + the MLP of block run `run` on its LayerNorm, as the dense pass computes it
        (added into `resid` itself if inplace, else into a copy)."""
        p = self.mlps[self.order[run]]
        if not len(p.out_rows):
            return resid
        B, T, _ = resid.shape
        x = F.layer_norm(resid, resid.shape[-1:], p.ln_w, p.ln_b, p.eps)
        if B * T * len(p.b_in) < SCRATCH_MIN_ENTRIES:  # small: new tensors cost less
            h = gelu(_product(x.index_select(2, p.in_rows), p.W_in, p.b_in, p.sparse_in))
            out = _product(h, p.W_out, p.b_out, p.sparse_out)
        else:  # the intermediates (pre-activations, GeLUs, output rows) into scratch buffers
            buf = self._scratch
            x = torch.index_select(x, 2, p.in_rows,
                                   out=buf.shaped("mlp in", (B, T, len(p.in_rows)), x))
            h = gelu_(_product(x, p.W_in, p.b_in, p.sparse_in, buf, "mlp units"))
            out = _product(h, p.W_out, p.b_out, p.sparse_out, buf, "mlp out")
        return _add_rows(resid, p.out_rows, out, inplace)

    def streamed_last(self, resid: torch.Tensor) -> torch.Tensor:
        """The residual after the last sublayer, from the embedded one [B, T, D], written over
        `resid` (returned): the streamed pass's sublayers added in place (what
        raspicl.transposed.last_residual runs below TRANSPOSED_MIN_TOKENS tokens)."""
        for run in range(len(self.order)):
            resid = self.mlp(run, self.attn(run, resid, inplace=True), inplace=True)
        return resid

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
