"""The transformer that compiled programs run on: the `paper` architecture (the block of
Akyürek et al., ICLR 2023) or `gpt2` (HuggingFace's GPT2Model), as `ModelConfig.arch` says
(raspicl.arch; docs/architecture.md).

    resid = tokens @ W_E + W_pos[:T]
    for each block l (in `block_order`):
        A     = resid + sum_h softmax(causal(Q_h K_h^T / sqrt(d_head))) V_h W_O[h] + b_O
        resid = A + GeLU(LayerNorm_l(A) @ W_in + b_in) @ W_out + b_out
    out = resid @ W_U + b_U

Q_h = resid W_Q[h] + b_Q[h], likewise K and V; GeLU is the exact (erf) form; each block's
LayerNorm has its own eps. gpt2 instead reads attention through ln1 and the readout through
ln_final, with one eps for every LayerNorm and GeLU "gelu" or "gelu_new":

    for each block l:  A = resid + attn(ln1_l(resid));  resid = A + mlp(ln2_l(A))
    out = ln_final(resid) @ W_U + b_U
 Weight names and shapes follow TransformerLens. `block_order` lists
the blocks the forward pass runs, in order: range(n_layers) for an ordinary model, a block index
repeated for a looped one whose weights are shared.

`Transformer.stream` yields the residual stream one sublayer at a time, so that a caller who
reads each residual as it comes (the runtime monitor, verify) never holds them all. A compact
execution plan (raspicl.compact) may run the same forward pass on the weights' nonzero parts
only. On the CPU every forward pass runs under a chosen torch thread count (`threads_for`):
compiled models are small, and on a small machine a second thread made a batch-1 forward 900x
slower, so the default is DEFAULT_THREADS; the user's own torch setting is restored after the
call.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from raspicl.arch import PAPER, Architecture

# The dtypes the gadgets are built and measured for. float16 and bfloat16 cannot hold the
# anchors, LayerNorm eps and product scales (bfloat16 errs by 3e-3 on a plain matrix product).
GADGET_DTYPES = (torch.float64, torch.float32)

# The paper MLP's activation as layouts name it: F.gelu, the exact (erf) form (raspicl.arch).
ACT_FN = PAPER.act_fn
SQRT_HALF = math.sqrt(0.5)


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GeLU in the form `approximate` names (F.gelu's), what every pass of a compiled model's
    MLP applies. The exact (erf) form in float32 is computed as x erfc(-x / sqrt 2) / 2 (the
    same function): torch's fused float32 GeLU kernel on the CPU errs by up to 5.4 u of its
    output (u = 2^-23) at |x| < 1, where the product gadget's units work and its two GeLUs of
    size |x| / 2 cancel to 0.8 x^2, so that kernel error was the largest single part of paper
    float32 models' error (ridge d = 8 n = 8: 3.5e-3, and 5.8e-4 with this form, whose error is
    below 1.5 u; bench/float32_error.py), and it exceeds the kappa u = 2 u per GeLU output the
    runtime monitor charges. float64 (F.gelu within 1.6 u there) and the tanh form (within
    1 u at |x| < 1 in float32) are F.gelu's."""
    if approximate == "none" and x.dtype == torch.float32:
        return torch.erfc(x * -SQRT_HALF).mul_(x).mul_(0.5)
    return F.gelu(x, approximate=approximate)


def gelu_(x: torch.Tensor) -> torch.Tensor:
    """`gelu` (the exact form) in place: x itself, overwritten."""
    if x.dtype == torch.float32:
        return x.mul_(torch.erfc(x * -SQRT_HALF)).mul_(0.5)
    return torch.ops.aten.gelu_(x)

# The torch thread count of a CPU forward pass unless the caller or RASPICL_THREADS says
# otherwise. Compiled models do many small matrix products (a few hundred rows): extra threads
# only add synchronisation, and on a machine whose cores are busy they wait on each other
# (2 threads on 2 shared cores: a batch-1 forward 900x slower than 1 thread).
DEFAULT_THREADS = 1
THREADS_ENV = "RASPICL_THREADS"


def threads_for(threads: int | None = None) -> int:
    """The thread count a CPU forward pass runs under: `threads` if given, else the
    RASPICL_THREADS environment variable if set, else DEFAULT_THREADS."""
    if threads is None:
        env = os.environ.get(THREADS_ENV, "").strip()
        if not env:
            return DEFAULT_THREADS
        try:
            threads = int(env)
        except ValueError:
            raise ValueError(f"{THREADS_ENV}={env!r}: must be a positive integer") from None
        source = f"{THREADS_ENV}={env}"
    else:
        source = f"threads={threads!r}"
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"{source}: the thread count must be a positive integer")
    return threads


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch.set_num_threads(threads) inside the block, the caller's count restored after."""
    old = torch.get_num_threads()
    if threads != old:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


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
    """Sizes of a compiled model. ln_eps[l] is block l's LayerNorm eps (under gpt2 every
    LayerNorm's, ln1, ln2 and ln_final, is the architecture's one eps); arch: the target."""

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
    arch: Architecture = PAPER

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
        self.approximate = cfg.arch.approximate
        self.W_in = nn.Parameter(torch.zeros(cfg.d_model, cfg.d_mlp, dtype=torch.float64))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp, dtype=torch.float64))
        self.W_out = nn.Parameter(torch.zeros(cfg.d_mlp, cfg.d_model, dtype=torch.float64))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu(x @ self.W_in + self.b_in, approximate=self.approximate) @ self.W_out \
            + self.b_out


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        if cfg.arch.ln_before_attention:
            self.ln1 = LayerNorm(cfg.d_model, cfg.ln_eps[layer])
        self.attn = Attention(cfg)
        self.ln2 = LayerNorm(cfg.d_model, cfg.ln_eps[layer])
        self.mlp = MLP(cfg)

    def attn_in(self, resid: torch.Tensor) -> torch.Tensor:
        """What the attention reads: ln1(resid) under gpt2, resid itself under paper."""
        return self.ln1(resid) if hasattr(self, "ln1") else resid

    def forward(self, resid: torch.Tensor) -> torch.Tensor:
        resid = resid + self.attn(self.attn_in(resid))
        return resid + self.mlp(self.ln2(resid))


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
        if cfg.arch.ln_final:
            self.ln_final = LayerNorm(cfg.d_model, cfg.ln_eps[0] if cfg.ln_eps
                                      else cfg.arch.shared_eps)
        self.unembed = Unembed(cfg)
        self.requires_grad_(False)

    def stream(self, tokens: torch.Tensor, plan=None,
               threads: int | None = None) -> Iterator[torch.Tensor]:
        """The residual stream after the embedding and after every sublayer run, one at a
        time: embed, attn of the 1st block run, mlp of the 1st block run, ..., each
        [B, T, d_model] and a new tensor (none is modified after it is yielded).

        plan: a raspicl.compact.CompactPlan of this model's weights, which runs the same
        sublayers on their nonzero rows, units and heads only (paper models); None runs the
        dense weights.
        On the CPU each sublayer runs under threads_for(threads) torch threads."""
        T = tokens.shape[1]
        if T > self.cfg.n_ctx:
            raise ValueError(f"the prompt has {T} tokens but the model's n_ctx is "
                             f"{self.cfg.n_ctx}")
        n = threads_for(threads) if tokens.device.type == "cpu" else None

        def step(fn, *args):
            if n is None:
                return fn(*args)
            with torch_threads(n):
                return fn(*args)

        resid = step(lambda t: t @ self.embed.W_E + self.pos_embed.W_pos[:T], tokens)
        yield resid
        for run, layer in enumerate(self.cfg.order()):
            block = self.blocks[layer]
            if plan is None:
                resid = step(lambda r, b=block: r + b.attn(b.attn_in(r)), resid)
                yield resid
                resid = step(lambda r, b=block: r + b.mlp(b.ln2(r)), resid)
            else:
                resid = step(plan.attn, run, resid)
                yield resid
                resid = step(plan.mlp, run, resid)
            yield resid

    def residuals(self, tokens: torch.Tensor, plan=None,
                  threads: int | None = None) -> list[torch.Tensor]:
        """Every residual `stream` yields, as a list."""
        return list(self.stream(tokens, plan, threads))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """The readout at every token: [B, T, d_out]."""
        final = None
        for final in self.stream(tokens):  # noqa: B007 (only the last one is kept)
            pass
        return self.readout(final)

    def readout(self, resid: torch.Tensor) -> torch.Tensor:
        """W_U applied to a final residual stream (through ln_final under gpt2):
        [B, T, d_out]."""
        if self.cfg.arch.ln_final:
            resid = self.ln_final(resid)
        return resid @ self.unembed.W_U + self.unembed.b_U

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.W_E.dtype

    def n_params(self) -> int:
        """Stored parameters (LayerNorm w and b included); shared blocks counted once."""
        return sum(p.numel() for p in self.parameters())
