"""TransformerLens: a HuggingFace export (raspicl.interop.hf) run under TransformerLens's hooks.

TransformerLens 4.x wraps HuggingFace models in a TransformerBridge
(`TransformerBridge.boot_transformers`), which takes a local directory: `boot(DIR)` loads
DIR/hf that way, offline, with the raw weights. The bridge does not fold LayerNorms, centre
writing weights or the unembedding, or fold value biases unless `enable_compatibility_mode()`
is called, and raspicl never calls it: those rewrites change the residual stream (centring
subtracts each write's mean), and the rows of a compiled model's residual stream are
registers. docs/interop.md says why the bridge rather than the legacy HookedTransformer.

The model takes continuous tokens, not token ids: pass `readout.embed(tokens)` (a float tensor,
which the bridge hands to GPT2Model as inputs_embeds). Its residual stream, in raspicl's order
(docs/architecture.md §5), is the cache's

    index 0          blocks.0.hook_resid_pre     (tokens @ W_E + W_pos)
    index 2r + 1     blocks.{r}.hook_resid_mid   (after block r's attention)
    index 2r + 2     blocks.{r}.hook_resid_post  (after block r's MLP)

and the prediction is ln_final.hook_out @ W_U + b_U (the bridge's logits are GPT2LMHeadModel's,
tied to wte = W_E: not the prediction). raspicl.interop.registers names the rows by register.
"""

from __future__ import annotations

from pathlib import Path

import torch

from raspicl.errors import RaspiclError
from raspicl.interop.hf import Readout, load_readout, require_hf_export

FINAL = "ln_final.hook_out"


def residual_hook(index: int) -> str:
    """The TransformerLens hook name of raspicl's residual `index`."""
    if index < 0:
        raise RaspiclError(f"residual index {index} must be >= 0")
    if index == 0:
        return "blocks.0.hook_resid_pre"
    block, stage = divmod(index - 1, 2)
    return f"blocks.{block}.hook_resid_{'mid' if stage == 0 else 'post'}"


def residual_index(hook: str) -> int:
    """raspicl's residual index of a hook_resid_pre / _mid / _post name (the inverse)."""
    parts = hook.split(".")
    if len(parts) != 3 or parts[0] != "blocks" or not parts[1].isdigit():
        raise RaspiclError(f"{hook!r} is not a blocks.L.hook_resid_* name")
    block, name = int(parts[1]), parts[2]
    if name == "hook_resid_pre":
        return 2 * block
    if name == "hook_resid_mid":
        return 2 * block + 1
    if name == "hook_resid_post":
        return 2 * block + 2
    raise RaspiclError(f"{hook!r} is not a blocks.L.hook_resid_* name")


def boot(directory: str | Path, dtype: torch.dtype = torch.float64, device: str = "cpu"):
    """A TransformerBridge over DIR/hf (or an hf directory), in `dtype`, raw weights (no
    LayerNorm folding or centring), eager attention. Needs transformer-lens >= 4."""
    hf = require_hf_export(directory)  # a paper model: "compile with --arch gpt2"
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RaspiclError(
            "raspicl.interop.tlens needs transformer-lens >= 4 "
            "(pip install 'raspicl[dev]' or transformer-lens)"
        ) from exc
    return TransformerBridge.boot_transformers(str(hf), device=device, dtype=dtype)


def residuals(cache, n_layers: int) -> list[torch.Tensor]:
    """The cache's residual stream as raspicl's residual list (1 + 2 n_layers entries)."""
    return [cache[residual_hook(i)] for i in range(1 + 2 * n_layers)]


def prediction(cache, readout: Readout) -> torch.Tensor:
    """The prediction [B, T, d_out] at every token from a cache: ln_final's output @ W_U +
    b_U."""
    return readout.unembed(cache[FINAL])


@torch.no_grad()
def run_with_cache(bridge, readout: Readout, tokens: torch.Tensor, **kwargs):
    """bridge.run_with_cache on raspicl tokens [B, T, d_token]: (prediction [B, T, d_out],
    residual list, cache). kwargs go to run_with_cache (names_filter, ...)."""
    _, cache = bridge.run_with_cache(readout.embed(tokens), **kwargs)
    n_layers = int(bridge.cfg.n_layers)
    return prediction(cache, readout), residuals(cache, n_layers), cache


def load(directory: str | Path, dtype: torch.dtype = torch.float64, device: str = "cpu"):
    """(bridge, readout) for DIR/hf."""
    return boot(directory, dtype, device), load_readout(directory, dtype)
