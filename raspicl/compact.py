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
    W_v: torch.Tensor  # [len(v_rows), n_heads * cv]
    b_v: torch.Tensor
    W_o: torch.Tensor  # [n_heads * cv, len(out_rows)]
    out_rows: torch.Tensor
    b_o: torch.Tensor
    scale: float  # sqrt(d_head) of the full head, as the dense pass divides by


@dataclass
class MLPPlan:
    ln_w: torch.Tensor
    ln_b: torch.Tensor
    eps: float
    in_rows: torch.Tensor
    W_in: torch.Tensor  # [len(in_rows), units]
    b_in: torch.Tensor
    W_out: torch.Tensor  # [units, len(out_rows)]
    out_rows: torch.Tensor
    b_out: torch.Tensor


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
    return AttnPlan(H, q_rows, W_q, b_q, k_rows, W_k, b_k, v_rows, W_v, b_v, W_o, out_rows,
                    attn.b_O[out_rows].clone(), math.sqrt(W_Q.shape[-1]))


def _mlp_plan(block) -> MLPPlan:
    mlp, ln = block.mlp, block.ln2
    units = _idx(_nz(mlp.W_out, (1,)) & (_nz(mlp.W_in, (0,)) | (mlp.b_in != 0)))
    in_rows = _idx(_nz(mlp.W_in[:, units], (1,)))
    out_rows = _idx(_nz(mlp.W_out[units], (0,)) | (mlp.b_out != 0))
    return MLPPlan(ln.w, ln.b, ln.eps, in_rows, mlp.W_in[in_rows][:, units].clone(),
                   mlp.b_in[units].clone(), mlp.W_out[units][:, out_rows].clone(), out_rows,
                   mlp.b_out[out_rows].clone())


def _affine(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x @ W + b over the last dim of x [B, T, r], as one fused 2-D product."""
    B, T, r = x.shape
    return torch.addmm(b, x.reshape(B * T, r), W).view(B, T, -1)


class CompactPlan:
    """The compact forward pass of one Transformer's weights (see the module doc); valid while
    those weights are unchanged (`matches`)."""

    def __init__(self, model: Transformer):
        if model.cfg.arch.name != "paper":
            raise ValueError(f"the compact plan runs paper models only; this model's "
                             f"architecture is {model.cfg.arch.name} (run it dense)")
        self.order = model.cfg.order()
        self.attns = [_attn_plan(b.attn) for b in model.blocks]
        self.mlps = [_mlp_plan(b) for b in model.blocks]
        self._key = self.key(model)

    @staticmethod
    def key(model: Transformer) -> tuple:
        """What the plan depends on: every parameter's identity, version, dtype and device."""
        return tuple((id(p), p._version, p.dtype, p.device) for p in model.parameters())

    def matches(self, model: Transformer) -> bool:
        return self._key == self.key(model)

    def attn(self, run: int, resid: torch.Tensor) -> torch.Tensor:
        """resid + the attention of block run `run`, as the dense pass computes it."""
        p = self.attns[self.order[run]]
        if not len(p.out_rows):
            return resid
        B, T, _ = resid.shape
        H = p.n_heads
        if H:
            def heads(rows, W, b):  # [B, H, T, width]
                return _affine(resid.index_select(2, rows), W, b).view(B, T, H, -1) \
                    .transpose(1, 2)

            q, k = heads(p.q_rows, p.W_q, p.b_q), heads(p.k_rows, p.W_k, p.b_k)
            if q.shape[-1] <= SMALL_SCORE_WIDTH:  # a handful of products beats a batched matmul
                s = q[..., :, None, 0] * k[..., None, :, 0]
                for c in range(1, q.shape[-1]):
                    s.addcmul_(q[..., :, None, c], k[..., None, :, c])
            else:
                s = q @ k.transpose(-1, -2)
            future = torch.ones(T, T, dtype=torch.bool, device=resid.device).triu(1)
            s.div_(p.scale).masked_fill_(future, float("-inf"))
            # softmax written out, in place (torch's kernel is several times slower on a last
            # dim this short); a weight below the dtype's smallest normal number is set to
            # zero, where the dense pass has a subnormal: exp is slow there, and the
            # difference is below finfo.tiny per weight
            s.sub_(s.amax(dim=-1, keepdim=True))
            s.masked_fill_(s < math.log(torch.finfo(s.dtype).tiny), float("-inf")).exp_()
            s.div_(s.sum(dim=-1, keepdim=True))
            z = s @ heads(p.v_rows, p.W_v, p.b_v)  # [B, H, T, cv]
            out = _affine(z.transpose(1, 2).reshape(B, T, -1), p.W_o, p.b_o)
        else:
            out = p.b_o.expand(B, T, -1)
        return resid.index_add(2, p.out_rows, out)

    def mlp(self, run: int, resid: torch.Tensor) -> torch.Tensor:
        """resid + the MLP of block run `run` on its LayerNorm, as the dense pass computes it."""
        p = self.mlps[self.order[run]]
        if not len(p.out_rows):
            return resid
        x = F.layer_norm(resid, resid.shape[-1:], p.ln_w, p.ln_b, p.eps)
        h = F.gelu(_affine(x.index_select(2, p.in_rows), p.W_in, p.b_in))
        return resid.index_add(2, p.out_rows, _affine(h, p.W_out, p.b_out))

    def work(self, model: Transformer) -> dict[str, float]:
        """Weight entries multiplied per token by the compact plan and by the dense pass (every
        sublayer run; scores and pattern products excluded), for bench/throughput.py."""
        cfg = model.cfg
        dense = compact = 0
        for layer in self.order:
            a, m = self.attns[layer], self.mlps[layer]
            dense += cfg.n_heads * cfg.d_head * cfg.d_model * 4 + 2 * cfg.d_model * cfg.d_mlp
            compact += a.W_q.numel() + a.W_k.numel() + a.W_v.numel() + a.W_o.numel()
            compact += m.W_in.numel() + m.W_out.numel()
        return {"dense": float(dense), "compact": float(compact)}
