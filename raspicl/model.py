"""The transformer that compiled programs run on: the `paper` architecture
(the block of Akyürek et al., ICLR 2023; docs/architecture.md).

    resid = tokens @ W_E + W_pos[:T]
    for each block l (in `block_order`):
        A     = resid + sum_h softmax(causal(Q_h K_h^T / sqrt(d_head))) V_h W_O[h] + b_O
        resid = A + GeLU(LayerNorm_l(A) @ W_in + b_in) @ W_out + b_out
    out = resid @ W_U + b_U

Q_h = resid W_Q[h] + b_Q[h], likewise K and V; GeLU is the exact (erf) form; each block's
LayerNorm has its own eps. Weight names and shapes follow TransformerLens. `block_order` lists
the blocks the forward pass runs, in order: range(n_layers) for an ordinary model, a block index
repeated for a looped one whose weights are shared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

# The dtypes the gadgets are built and measured for. float16 and bfloat16 cannot hold the
# anchors, LayerNorm eps and product scales (bfloat16 errs by 3e-3 on a plain matrix product).
GADGET_DTYPES = (torch.float64, torch.float32)


def check_dtype(dtype: torch.dtype) -> torch.dtype:
    """`dtype` itself if the compiled gadgets can run in it, else ValueError saying why."""
    if dtype not in GADGET_DTYPES:
        raise ValueError(f"a compiled model runs in float64 or float32, not "
                         f"{str(dtype).removeprefix('torch.')}: its gadgets (LayerNorm eps up "
                         f"to 2^80, division anchors, product scales) overflow or lose every "
                         f"digit in half precision")
    return dtype


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of a compiled model. ln_eps[l] is block l's LayerNorm eps."""

    d_model: int
    n_layers: int
    n_heads: int
    d_head: int
    d_mlp: int
    n_ctx: int
    d_token: int
    d_out: int
    ln_eps: tuple[float, ...]
    block_order: tuple[int, ...] = field(default=())
    act_fn: str = "gelu"

    def order(self) -> tuple[int, ...]:
        return self.block_order or tuple(range(self.n_layers))


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        H, D, dh = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_Q = nn.Parameter(torch.zeros(H, D, dh, dtype=torch.float64))
        self.W_K = nn.Parameter(torch.zeros(H, D, dh, dtype=torch.float64))
        self.W_V = nn.Parameter(torch.zeros(H, D, dh, dtype=torch.float64))
        self.W_O = nn.Parameter(torch.zeros(H, dh, D, dtype=torch.float64))
        self.b_Q = nn.Parameter(torch.zeros(H, dh, dtype=torch.float64))
        self.b_K = nn.Parameter(torch.zeros(H, dh, dtype=torch.float64))
        self.b_V = nn.Parameter(torch.zeros(H, dh, dtype=torch.float64))
        self.b_O = nn.Parameter(torch.zeros(D, dtype=torch.float64))

    def pattern(self, resid: torch.Tensor) -> torch.Tensor:
        """Attention weights [B, H, T_query, T_key]."""
        q = torch.einsum("btd,hde->bhte", resid, self.W_Q) + self.b_Q[None, :, None, :]
        k = torch.einsum("btd,hde->bhte", resid, self.W_K) + self.b_K[None, :, None, :]
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.W_Q.shape[-1])
        T = resid.shape[1]
        future = torch.ones(T, T, dtype=torch.bool, device=resid.device).triu(1)
        return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)

    def forward(self, resid: torch.Tensor) -> torch.Tensor:
        v = torch.einsum("btd,hde->bhte", resid, self.W_V) + self.b_V[None, :, None, :]
        z = self.pattern(resid) @ v
        return torch.einsum("bhte,hed->btd", z, self.W_O) + self.b_O


class LayerNorm(nn.Module):
    def __init__(self, d_model: int, eps: float):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model, dtype=torch.float64))
        self.b = nn.Parameter(torch.zeros(d_model, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self.w, self.b, self.eps)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_in = nn.Parameter(torch.zeros(cfg.d_model, cfg.d_mlp, dtype=torch.float64))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp, dtype=torch.float64))
        self.W_out = nn.Parameter(torch.zeros(cfg.d_mlp, cfg.d_model, dtype=torch.float64))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x @ self.W_in + self.b_in) @ self.W_out + self.b_out


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attn = Attention(cfg)
        self.ln2 = LayerNorm(cfg.d_model, cfg.ln_eps[layer])
        self.mlp = MLP(cfg)

    def forward(self, resid: torch.Tensor, cache: list | None = None) -> torch.Tensor:
        resid = resid + self.attn(resid)
        if cache is not None:
            cache.append(resid)
        resid = resid + self.mlp(self.ln2(resid))
        if cache is not None:
            cache.append(resid)
        return resid


class Embed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_E = nn.Parameter(torch.zeros(cfg.d_token, cfg.d_model, dtype=torch.float64))


class PosEmbed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_pos = nn.Parameter(torch.zeros(cfg.n_ctx, cfg.d_model, dtype=torch.float64))


class Unembed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.W_U = nn.Parameter(torch.zeros(cfg.d_model, cfg.d_out, dtype=torch.float64))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_out, dtype=torch.float64))


class Transformer(nn.Module):
    """A decoder-only transformer on continuous tokens [B, T, d_token]; float64 by default."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = Embed(cfg)
        self.pos_embed = PosEmbed(cfg)
        self.blocks = nn.ModuleList(Block(cfg, layer) for layer in range(cfg.n_layers))
        self.unembed = Unembed(cfg)
        self.requires_grad_(False)

    def residuals(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """The residual stream after the embedding and after every sublayer run:
        [embed, attn of the 1st block run, mlp of the 1st block run, ...], each [B, T, d_model].
        """
        T = tokens.shape[1]
        if T > self.cfg.n_ctx:
            raise ValueError(f"the prompt has {T} tokens but the model's n_ctx is "
                             f"{self.cfg.n_ctx}")
        resid = tokens @ self.embed.W_E + self.pos_embed.W_pos[:T]
        cache = [resid]
        for layer in self.cfg.order():
            resid = self.blocks[layer](resid, cache)
        return cache

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """The readout at every token: [B, T, d_out]."""
        return self.readout(self.residuals(tokens)[-1])

    def readout(self, resid: torch.Tensor) -> torch.Tensor:
        """W_U applied to a final residual stream: [B, T, d_out]."""
        return resid @ self.unembed.W_U + self.unembed.b_U

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.W_E.dtype

    def n_params(self) -> int:
        """Stored parameters (LayerNorm w and b included); shared blocks counted once."""
        return sum(p.numel() for p in self.parameters())
