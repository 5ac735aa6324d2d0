"""The gpt2-form model: the one description of a GPT-2-style model that the exports read.

A `GPT2Form` is a config and a state dict with TransformerLens names and shapes
(docs/architecture.md §2, plus the LayerNorms GPT-2 has and `paper` lacks):

    embed.W_E [d_token, d_model]        pos_embed.W_pos [n_ctx, d_model]
    blocks.{l}.ln1.w, .ln1.b [d_model]  blocks.{l}.attn.W_Q, W_K, W_V [n_heads, d_model, d_head]
    blocks.{l}.attn.b_Q, b_K, b_V [n_heads, d_head]
    blocks.{l}.attn.W_O [n_heads, d_head, d_model]                blocks.{l}.attn.b_O [d_model]
    blocks.{l}.ln2.w, .ln2.b [d_model]  blocks.{l}.mlp.W_in [d_model, d_mlp], b_in [d_mlp]
    blocks.{l}.mlp.W_out [d_mlp, d_model], b_out [d_model]
    ln_final.w, ln_final.b [d_model]    unembed.W_U [d_model, d_out], unembed.b_U [d_out]

Its forward pass is HuggingFace GPT2Model's, followed by the readout:

    resid = tokens @ W_E + W_pos[:T]
    per block:  resid += attn(ln1(resid))   (scores / sqrt(d_head), causal, b_O added once)
                resid += mlp(ln2(resid))    (W_in, act_fn, W_out)
    out = ln_final(resid) @ W_U + b_U

with one LayerNorm eps `ln_eps` for every LayerNorm and `act_fn` "gelu" (erf) or "gelu_new"
(GPT-2's tanh form). Compiled models of the `gpt2` target (`from_compiled`) and trained models
(raspicl.icl.trained.ICLTransformer, `from_trained`) both become one; raspicl.interop.hf and
raspicl.interop.tlens take it from there.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch

from raspicl.arch import GPT2_ACT_FNS as ACT_FNS  # HF's names: erf GeLU, tanh GeLU
from raspicl.errors import RaspiclError
from raspicl.schema import expected_shapes


@dataclass(frozen=True)
class GPT2FormConfig:
    """The sizes of a gpt2-form model (the field names of layout.json's architecture)."""

    d_model: int
    n_layers: int
    n_heads: int
    d_head: int
    d_mlp: int
    n_ctx: int
    d_token: int
    d_out: int
    ln_eps: float = 1e-5
    act_fn: str = "gelu_new"

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name in ("ln_eps", "act_fn"):
                continue
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise RaspiclError(f"GPT2FormConfig.{f.name} must be an integer >= 1, got {v!r}")
        if self.n_heads * self.d_head != self.d_model:
            raise RaspiclError(
                f"GPT2FormConfig: n_heads * d_head ({self.n_heads} * {self.d_head}) must equal "
                f"d_model ({self.d_model}), as GPT2Model splits d_model into its heads"
            )
        eps = self.ln_eps
        if (
            isinstance(eps, bool)
            or not isinstance(eps, int | float)
            or not math.isfinite(eps)
            or eps <= 0
        ):
            raise RaspiclError(f"GPT2FormConfig.ln_eps must be a finite number > 0, got {eps!r}")
        if self.act_fn not in ACT_FNS:
            raise RaspiclError(
                f"GPT2FormConfig.act_fn must be one of {ACT_FNS}, got {self.act_fn!r}"
            )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> GPT2FormConfig:
        """From a dict holding at least these fields (others, such as layout.json's
        architecture's block_order, are ignored)."""
        names = [f.name for f in fields(cls)]
        missing = [n for n in names[:8] if n not in data]
        if missing:
            raise RaspiclError(f"GPT2FormConfig: missing field(s) {missing}")
        return cls(**{n: data[n] for n in names if n in data})

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor of the state dict with its shape: the gpt2 target's tensors
        (raspicl.schema.tensors_of('gpt2'), the names and shapes a compiled model stores)."""
        return expected_shapes(self.to_dict(), "gpt2")


@dataclass
class GPT2Form:
    """A gpt2-form model: `config` and `state` (TransformerLens names, one float dtype)."""

    config: GPT2FormConfig
    state: dict[str, torch.Tensor]

    def __post_init__(self) -> None:
        want = self.config.shapes()
        missing = [k for k in want if k not in self.state]
        extra = sorted(set(self.state) - set(want))
        if missing or extra:
            raise RaspiclError(
                f"GPT2Form: tensors do not match the config: missing "
                f"{missing[:5]}, unexpected {extra[:5]}"
            )
        dtypes = {v.dtype for v in self.state.values()}
        if len(dtypes) != 1 or not next(iter(dtypes)).is_floating_point:
            raise RaspiclError(
                f"GPT2Form: tensors must share one float dtype, got {sorted(map(str, dtypes))}"
            )
        for k, shape in want.items():
            t = self.state[k]
            if tuple(t.shape) != shape:
                raise RaspiclError(
                    f"GPT2Form: tensor {k} has shape {tuple(t.shape)}, the config needs {shape}"
                )
            if not torch.isfinite(t).all():
                raise RaspiclError(f"GPT2Form: tensor {k} holds NaN or infinite entries")

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.state.values())).dtype

    def to(self, dtype: torch.dtype) -> GPT2Form:
        """A copy in another float dtype."""
        return GPT2Form(self.config, {k: v.to(dtype) for k, v in self.state.items()})


def from_trained(model, dtype: torch.dtype = torch.float64) -> GPT2Form:
    """A trained raspicl.icl.trained.ICLTransformer as a gpt2-form model, in `dtype`.

    ICLTransformer is GPT-2's block already (pre-LN, tanh GeLU, scores / sqrt(d_head), ln_f):
    only the storage differs. Its nn.Linear weights are [out, in] and become [in, out]; the
    per-head matrices are column blocks of the [H, H] attention weights (head h: columns
    h d_head .. (h + 1) d_head); the embedding's bias, added at every token, is folded into
    the position table (W_pos + b); the readout becomes W_U [H, 1], b_U [1]."""
    cfg = model.cfg
    H, nh = cfg.d_model, cfg.heads
    dh = H // nh
    sd = {k: v.detach().to("cpu", dtype) for k, v in model.state_dict().items()}
    config = GPT2FormConfig(
        d_model=H,
        n_layers=cfg.layers,
        n_heads=nh,
        d_head=dh,
        d_mlp=cfg.mlp_ratio * H,
        n_ctx=cfg.n_tokens,
        d_token=cfg.d + 1,
        d_out=1,
        ln_eps=float(cfg.ln_eps),
        act_fn="gelu_new",
    )
    state = {"embed.W_E": sd["embed.weight"].T, "pos_embed.W_pos": sd["pos"] + sd["embed.bias"]}
    for layer in range(cfg.layers):
        src, dst = f"blocks.{layer}.", f"blocks.{layer}."
        state[dst + "ln1.w"] = sd[src + "ln1.weight"]
        state[dst + "ln1.b"] = sd[src + "ln1.bias"]
        for m in "QKV":
            w = sd[src + f"attn.W_{m}.weight"].T  # [in, out]: out = head-major columns
            state[dst + f"attn.W_{m}"] = w.reshape(H, nh, dh).permute(1, 0, 2)
            state[dst + f"attn.b_{m}"] = sd[src + f"attn.W_{m}.bias"].reshape(nh, dh)
        state[dst + "attn.W_O"] = sd[src + "attn.W_O.weight"].T.reshape(nh, dh, H)
        state[dst + "attn.b_O"] = sd[src + "attn.W_O.bias"]
        state[dst + "ln2.w"] = sd[src + "ln2.weight"]
        state[dst + "ln2.b"] = sd[src + "ln2.bias"]
        state[dst + "mlp.W_in"] = sd[src + "mlp.W_in.weight"].T
        state[dst + "mlp.b_in"] = sd[src + "mlp.W_in.bias"]
        state[dst + "mlp.W_out"] = sd[src + "mlp.W_out.weight"].T
        state[dst + "mlp.b_out"] = sd[src + "mlp.W_out.bias"]
    state.update(
        {
            "ln_final.w": sd["ln_f.weight"],
            "ln_final.b": sd["ln_f.bias"],
            "unembed.W_U": sd["readout.weight"].T,
            "unembed.b_U": sd["readout.bias"],
        }
    )
    return GPT2Form(config, {k: v.contiguous() for k, v in state.items()})


def from_compiled(compiled, dtype: torch.dtype | None = None) -> GPT2Form:
    """A compiled model of the `gpt2` target (raspicl.compiled.CompiledModel, from
    compile_program(..., arch="gpt2") or raspicl.export.load) as a gpt2-form model: its
    tensors already have these names and shapes; the config comes from layout.json's
    architecture. `dtype`: the model's own unless given.

    A `paper` model has no ln1 / ln_final and per-block eps up to 2^80, which GPT2Model cannot
    express; a looped model (a block_order that repeats) cannot be a GPT2Model's list of
    blocks. Both are refused, naming the field."""
    a = compiled.layout["architecture"]
    if a.get("name") != "gpt2":
        raise RaspiclError(
            f"architecture.name is {a.get('name')!r}: only models compiled with "
            f"arch='gpt2' load in GPT2Model (compile with --arch gpt2)"
        )
    order = list(a["block_order"])
    if order != list(range(a["n_layers"])):
        raise RaspiclError(
            f"architecture.block_order {order}: GPT2Model runs each of its "
            f"n_layers blocks once, in order"
        )
    eps = {float(e) for e in a["layernorm"]["eps"]}
    if len(eps) != 1:
        raise RaspiclError(
            f"architecture.layernorm.eps {sorted(eps)}: GPT2Model has one layer_norm_epsilon"
        )
    config = GPT2FormConfig.from_dict({**a, "ln_eps": eps.pop()})
    state = {k: v.detach().to("cpu") for k, v in compiled.model.state_dict().items()}
    form = GPT2Form(config, {k: v.contiguous() for k, v in state.items()})
    return form if dtype is None else form.to(dtype)
