"""HuggingFace export: a gpt2-form model as a directory `transformers.GPT2Model` loads unmodified.

`export_hf(form, DIR)` writes DIR/hf/:

    config.json              a GPT2Config: sizes, `activation_function` ("gelu" erf or
                             "gelu_new" tanh), one `layer_norm_epsilon`, dropout 0, scores
                             scaled by 1/sqrt(d_head) only (scale_attn_weights, no per-layer or
                             upcast reordering), `dtype` the tensors' dtype
    model.safetensors        GPT2Model's tensors (wte, wpe, h.{l}.*, ln_f), Conv1D layout
    raspicl_io.safetensors   embed.W_E [d_token, d_model], unembed.W_U [d_model, d_out],
                             unembed.b_U [d_out]

so that the prediction is

    GPT2Model(inputs_embeds=tokens @ W_E).last_hidden_state @ W_U + b_U

at the output positions (GPT2Model applies ln_f itself). The token table `wte` is W_E too
(vocab_size = d_token): a one-hot token k embeds as row k of W_E, and a model class that ties
its head to `wte` (GPT2LMHeadModel, which TransformerLens wraps) finds every tensor it needs in
the file. Its logits are not the prediction; W_U and b_U are.

Conv1D weights are [in, out], as the gpt2 form stores them: c_attn.weight [d, 3d] is the
columns of Q, K and V side by side, each head-major (head h: columns h d_head .. (h+1) d_head
of its third), as GPT2Attention splits them; c_proj.weight [d, d] is W_O's heads stacked.

Writing needs only safetensors and json; `load_hf` (transformers) and `read_hf` (safetensors +
json, for checks) read the directory back. Nothing is ever pickled, nothing is downloaded.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from raspicl.errors import LoadError, RaspiclError
from raspicl.interop.gpt2form import GPT2Form, GPT2FormConfig
from raspicl.tensorfile import read_tensors, require

HF_DIR = "hf"
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
IO = "raspicl_io.safetensors"
IO_FORMAT = "raspicl.interop.io/1"
HF_FILES = (CONFIG, WEIGHTS, IO)  # everything DIR/hf holds
IO_TENSORS = ("embed.W_E", "unembed.W_U", "unembed.b_U")
# What a missing file of DIR/hf is reported as.
NOT_AN_EXPORT = "not a raspicl HuggingFace export"
DTYPE_NAMES = {torch.float64: "float64", torch.float32: "float32"}


def hf_config(form: GPT2Form) -> dict:
    """GPT2Config's fields for a gpt2-form model (config.json)."""
    c = form.config
    if form.dtype not in DTYPE_NAMES:
        raise RaspiclError(f"export_hf: dtype {form.dtype} is not float64 or float32")
    return {
        "architectures": ["GPT2Model"],
        "model_type": "gpt2",
        "vocab_size": c.d_token,
        "n_positions": c.n_ctx,
        "n_embd": c.d_model,
        "n_layer": c.n_layers,
        "n_head": c.n_heads,
        "n_inner": c.d_mlp,
        "activation_function": c.act_fn,
        "layer_norm_epsilon": c.ln_eps,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        # scores = q.k / sqrt(d_head), nothing else: no 1/(layer+1), no upcast reordering
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "add_cross_attention": False,
        "tie_word_embeddings": True,
        "use_cache": False,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": None,
        "dtype": DTYPE_NAMES[form.dtype],
        "raspicl": {"format": IO_FORMAT, "gpt2_form": c.to_dict()},
    }


def hf_state(form: GPT2Form) -> dict[str, torch.Tensor]:
    """GPT2Model's state dict (Conv1D [in, out] weights) for a gpt2-form model."""
    c, s = form.config, form.state
    d = c.d_model

    def heads_in(w: torch.Tensor) -> torch.Tensor:  # [nh, d, dh] -> [d, nh * dh]
        return w.permute(1, 0, 2).reshape(d, d)

    out = {"wte.weight": s["embed.W_E"], "wpe.weight": s["pos_embed.W_pos"]}
    for layer in range(c.n_layers):
        p, h = f"blocks.{layer}.", f"h.{layer}."
        out[h + "ln_1.weight"] = s[p + "ln1.w"]
        out[h + "ln_1.bias"] = s[p + "ln1.b"]
        out[h + "attn.c_attn.weight"] = torch.cat(
            [heads_in(s[p + f"attn.W_{m}"]) for m in "QKV"], dim=1
        )
        out[h + "attn.c_attn.bias"] = torch.cat([s[p + f"attn.b_{m}"].reshape(d) for m in "QKV"])
        out[h + "attn.c_proj.weight"] = s[p + "attn.W_O"].reshape(d, d)
        out[h + "attn.c_proj.bias"] = s[p + "attn.b_O"]
        out[h + "ln_2.weight"] = s[p + "ln2.w"]
        out[h + "ln_2.bias"] = s[p + "ln2.b"]
        out[h + "mlp.c_fc.weight"] = s[p + "mlp.W_in"]
        out[h + "mlp.c_fc.bias"] = s[p + "mlp.b_in"]
        out[h + "mlp.c_proj.weight"] = s[p + "mlp.W_out"]
        out[h + "mlp.c_proj.bias"] = s[p + "mlp.b_out"]
    out["ln_f.weight"] = s["ln_final.w"]
    out["ln_f.bias"] = s["ln_final.b"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def hf_files(form: GPT2Form) -> dict[str, bytes]:
    """The three files of DIR/hf as bytes, by name (raspicl.export.save writes them into a
    gpt2 model's directory with its own two)."""
    from safetensors.torch import save

    io = {k: form.state[k].contiguous().clone() for k in IO_TENSORS}
    # "format": "pt" is what transformers expects of a torch safetensors file
    return {
        WEIGHTS: save(hf_state(form), metadata={"format": "pt"}),
        IO: save(io, metadata={"format": "pt", "raspicl": IO_FORMAT}),
        CONFIG: (json.dumps(hf_config(form), indent=1) + "\n").encode("ascii"),
    }


def export_hf(form: GPT2Form, directory: str | Path) -> Path:
    """Write DIR/hf/ (config.json, model.safetensors, raspicl_io.safetensors); returns it.
    Each file is written beside its place and renamed over it (config.json last)."""
    out = Path(directory) / HF_DIR
    if out.exists() and not out.is_dir():
        raise RaspiclError(f"{out}: exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    for name, data in hf_files(form).items():  # config.json last
        (out / (name + ".tmp")).write_bytes(data)
        os.replace(out / (name + ".tmp"), out / name)
    return out


@dataclass
class Readout:
    """raspicl_io.safetensors: what turns tokens into GPT2Model's inputs_embeds, and its
    last_hidden_state into the prediction."""

    W_E: torch.Tensor  # [d_token, d_model]
    W_U: torch.Tensor  # [d_model, d_out]
    b_U: torch.Tensor  # [d_out]

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """inputs_embeds [B, T, d_model] for tokens [B, T, d_token]."""
        return tokens.to(self.W_E.dtype) @ self.W_E

    def unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        """The prediction [B, T, d_out] from last_hidden_state (after ln_f)."""
        return hidden @ self.W_U + self.b_U


def hf_dir(directory: str | Path) -> Path:
    """DIR/hf if DIR holds one, else DIR itself."""
    p = Path(directory)
    return p / HF_DIR if (p / HF_DIR / CONFIG).is_file() else p


def require_hf_export(directory: str | Path) -> Path:
    """The hf directory of DIR (hf_dir), or RaspiclError saying why there is none: a `paper`
    model (compiled without --arch gpt2) has no HuggingFace form, and any other directory
    without config.json is not an export. Checked before transformers is asked, whose own
    error ("Unrecognized model ...") names neither."""
    hf = hf_dir(directory)
    if (hf / CONFIG).is_file():
        return hf
    layout = Path(directory) / "layout.json"
    if layout.is_file():
        try:
            arch = json.loads(layout.read_text()).get("architecture", {}).get("name")
        except (OSError, ValueError, AttributeError):
            arch = None
        if arch != "gpt2":
            raise RaspiclError(
                f"{directory}: a model of the {arch or 'paper'} architecture has no "
                f"HuggingFace export (no {HF_DIR}/{CONFIG}); only a gpt2 model does: compile "
                f"with --arch gpt2 (compile_program(..., arch='gpt2'))")
    raise RaspiclError(f"{directory}: {NOT_AN_EXPORT} (no {HF_DIR}/{CONFIG} or {CONFIG}; "
                       f"`raspicl compile PROGRAM --arch gpt2 --out DIR` writes one)")


def load_readout(directory: str | Path, dtype: torch.dtype | None = None) -> Readout:
    """raspicl_io.safetensors of DIR/hf (or of the hf directory itself)."""
    path = hf_dir(directory) / IO
    t, _ = read_tensors(path, NOT_AN_EXPORT)
    require(path, t, IO_TENSORS)
    cast = (lambda v: v.to(dtype)) if dtype is not None else (lambda v: v)
    return Readout(cast(t["embed.W_E"]), cast(t["unembed.W_U"]), cast(t["unembed.b_U"]))


def load_hf(directory: str | Path, dtype: torch.dtype = torch.float64):
    """transformers.GPT2Model from DIR/hf, eager attention (the exact softmax, no fused
    kernel), safetensors only, local files only, in eval mode."""
    from transformers import GPT2Model

    return GPT2Model.from_pretrained(
        str(require_hf_export(directory)),
        attn_implementation="eager",
        dtype=dtype,
        use_safetensors=True,
        local_files_only=True,
    ).eval()


@torch.no_grad()
def hf_predict(model, readout: Readout, tokens: torch.Tensor) -> torch.Tensor:
    """The prediction [B, T, d_out] at every token: GPT2Model(inputs_embeds=tokens @ W_E)
    .last_hidden_state @ W_U + b_U."""
    hidden = model(inputs_embeds=readout.embed(tokens)).last_hidden_state
    return readout.unembed(hidden)


def read_hf(directory: str | Path) -> GPT2Form:
    """The gpt2-form model back from DIR/hf, with safetensors and json only (no transformers):
    the inverse of export_hf, so that a round trip can be checked tensor by tensor."""
    d = hf_dir(directory)
    try:
        config = json.loads((d / CONFIG).read_text())
        form_cfg = GPT2FormConfig.from_dict(config["raspicl"]["gpt2_form"])
    except (OSError, KeyError, TypeError, json.JSONDecodeError, RaspiclError) as exc:
        raise LoadError(f"{d / CONFIG}: not a raspicl HuggingFace export: {exc}") from exc
    w, _ = read_tensors(d / WEIGHTS, NOT_AN_EXPORT)
    io, _ = read_tensors(d / IO, NOT_AN_EXPORT)
    require(d / IO, io, IO_TENSORS)
    c = form_cfg
    dm, nh, dh = c.d_model, c.n_heads, c.d_head

    def heads_out(m: torch.Tensor) -> torch.Tensor:  # [d, nh * dh] -> [nh, d, dh]
        return m.reshape(dm, nh, dh).permute(1, 0, 2)

    s = {
        "embed.W_E": io["embed.W_E"],
        "pos_embed.W_pos": w["wpe.weight"],
        "unembed.W_U": io["unembed.W_U"],
        "unembed.b_U": io["unembed.b_U"],
        "ln_final.w": w["ln_f.weight"],
        "ln_final.b": w["ln_f.bias"],
    }
    for layer in range(c.n_layers):
        p, h = f"blocks.{layer}.", f"h.{layer}."
        qkv_w = w[h + "attn.c_attn.weight"].split(dm, dim=1)
        qkv_b = w[h + "attn.c_attn.bias"].split(dm)
        for m, mw, mb in zip("QKV", qkv_w, qkv_b, strict=True):
            s[p + f"attn.W_{m}"] = heads_out(mw)
            s[p + f"attn.b_{m}"] = mb.reshape(nh, dh)
        s.update(
            {
                p + "ln1.w": w[h + "ln_1.weight"],
                p + "ln1.b": w[h + "ln_1.bias"],
                p + "attn.W_O": w[h + "attn.c_proj.weight"].reshape(nh, dh, dm),
                p + "attn.b_O": w[h + "attn.c_proj.bias"],
                p + "ln2.w": w[h + "ln_2.weight"],
                p + "ln2.b": w[h + "ln_2.bias"],
                p + "mlp.W_in": w[h + "mlp.c_fc.weight"],
                p + "mlp.b_in": w[h + "mlp.c_fc.bias"],
                p + "mlp.W_out": w[h + "mlp.c_proj.weight"],
                p + "mlp.b_out": w[h + "mlp.c_proj.bias"],
            }
        )
    return GPT2Form(form_cfg, {k: v.contiguous() for k, v in s.items()})
