"""The model a method studies, behind one small interface, so that the same method runs on
raspicl's own forward pass or on the HuggingFace export under TransformerLens.

    subject.run(tokens, patches) -> (prediction [B, P, d_out], residuals)

`tokens` are raspicl tokens [B, T, d_token]; the residuals are raspicl's residual list
(docs/architecture.md §5: 0 after the embedding, 2l + 1 after block l's attention, 2l + 2 after
its MLP; TransformerLens: blocks.l.hook_resid_pre / _mid / _post); `patches[i]` is a function
applied to residual i as soon as it is computed (it returns the residual the rest of the pass
reads), so an activation patch, an ablation or a zero tensor that collects a gradient are all
patches. Autograd runs through both (no torch.no_grad inside).

`RaspiclSubject(compiled)` also runs the pass component by component (`run_components`): each
head's output (z_h W_O[h], without the block's b_O), each MLP's, the embedding's, with any of
them replaced, and each component's own input (a head's copy of the residual it reads), for
edge attribution patching.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path

import torch

from raspicl.groundtruth import EMBED, READOUT, head_id, mlp_id

Patch = Callable[[torch.Tensor], torch.Tensor]


class RaspiclSubject:
    """A compiled model's dense torch forward pass (raspicl.model.Transformer), in float64."""

    def __init__(self, compiled):
        self.compiled = compiled
        model = compiled.model
        self.model = model if model.dtype == torch.float64 else copy.deepcopy(model).double()
        cfg = self.model.cfg
        self.order = list(cfg.order())
        self.n_layers, self.n_heads = cfg.n_layers, cfg.n_heads
        self.n_residuals = 1 + 2 * len(self.order)
        self.positions = list(compiled.layout["output"]["positions"])
        self.d_model = cfg.d_model

    def _tok(self, tokens) -> torch.Tensor:
        return torch.as_tensor(tokens, dtype=torch.float64)

    def _readout(self, final: torch.Tensor) -> torch.Tensor:
        return self.model.readout(final[:, self.positions])

    def run(self, tokens, patches: dict[int, Patch] | None = None,
            start: tuple[int, torch.Tensor] | None = None
            ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """See the module doc. start=(i, resid): begin at residual i with `resid` (the
        residuals before it are not computed; the list holds None there)."""
        patches = patches or {}
        m = self.model

        def at(i: int, r: torch.Tensor) -> torch.Tensor:
            return patches[i](r) if i in patches else r

        if start is None:
            tok = self._tok(tokens)
            first, r0 = 0, tok @ m.embed.W_E + m.pos_embed.W_pos[:tok.shape[1]]
        else:
            first, r0 = start
        res: list[torch.Tensor | None] = [None] * first + [at(first, r0)]
        for run, layer in enumerate(self.order):
            b = m.blocks[layer]
            if 2 * run + 1 > first:
                res.append(at(2 * run + 1, res[-1] + b.attn(b.attn_in(res[-1]))))
            if 2 * run + 2 > first:
                res.append(at(2 * run + 2, res[-1] + b.mlp(b.ln2(res[-1]))))
        return self._readout(res[-1]), res

    def components(self) -> list[str]:
        """Component ids in forward order (raspicl.groundtruth's names)."""
        out = [EMBED]
        for layer in self.order:
            out += [head_id(layer, h) for h in range(self.n_heads)] + [mlp_id(layer)]
        return out + [READOUT]

    def run_components(self, tokens, replace: dict[str, torch.Tensor] | None = None,
                       inputs: bool = False):
        """(prediction, outputs, nodes): every component's output [B, T, d_model] (heads
        without b_O), with replace[c] used instead of component c's own (a tensor, or a pair
        (mask [B] bool, tensor) that replaces it for the masked prompts only). If `inputs`, nodes
        holds zero tensors that autograd differentiates against: nodes[c] added to component
        c's input (a head's own copy of the residual it reads, before ln1; so its gradient is
        that component's alone) and nodes["out:" + c] added to its output."""
        replace = replace or {}
        m = self.model
        tok = self._tok(tokens)
        T = tok.shape[1]
        outs: dict[str, torch.Tensor] = {}
        ins: dict[str, torch.Tensor] = {}

        def node(c: str, r: torch.Tensor) -> torch.Tensor:
            if not inputs:
                return r
            z = torch.zeros_like(r, requires_grad=True)
            ins[c] = z
            return r + z

        def out(c: str, r: torch.Tensor) -> torch.Tensor:
            outs[c] = r
            return node("out:" + c, r)

        def chosen(c: str, own: Callable[[], torch.Tensor]) -> torch.Tensor:
            """replace[c] (a tensor, or (mask [B], tensor) to replace those prompts only)."""
            if c not in replace:
                return own()
            r = replace[c]
            if isinstance(r, tuple):
                mask, new = r
                return torch.where(mask[:, None, None], new, own())
            return r

        resid = out(EMBED, chosen(EMBED, lambda: tok @ m.embed.W_E + m.pos_embed.W_pos[:T]))
        future = torch.ones(T, T, dtype=torch.bool).triu(1)
        for layer in self.order:
            b = m.blocks[layer]
            a = b.attn
            total = a.b_O.expand_as(resid)
            for h in range(self.n_heads):
                c = head_id(layer, h)

                def head(c=c, h=h, a=a, b=b, resid=resid) -> torch.Tensor:
                    x = b.attn_in(node(c, resid))
                    q = x @ a.W_Q[h] + a.b_Q[h]
                    k = x @ a.W_K[h] + a.b_K[h]
                    v = x @ a.W_V[h] + a.b_V[h]
                    s = (q @ k.transpose(-1, -2) / math.sqrt(a.W_Q.shape[-1])).masked_fill(
                        future, float("-inf"))
                    return torch.softmax(s, dim=-1) @ v @ a.W_O[h]

                total = total + out(c, chosen(c, head))
            resid = resid + total
            c = mlp_id(layer)
            resid = resid + out(c, chosen(c, lambda c=c, b=b, r=resid: b.mlp(b.ln2(node(c, r)))))
        final = node(READOUT, resid)
        return self._readout(final), outs, ins


def residual_hooks(n_layers: int, patches: dict[int, Patch] | None = None,
                   record: dict[int, torch.Tensor] | None = None) -> list[tuple[str, Callable]]:
    """TransformerLens forward hooks that apply patches[i] to raspicl's residual i and record
    every residual into `record` (index -> tensor). Residual 0 is blocks.0.hook_resid_pre and
    2l + 2 blocks.l.hook_resid_post, patched where they are; residual 2l + 1 (after block l's
    attention) is patched through blocks.l.hook_attn_out: in the TransformerBridge over GPT-2,
    what blocks.l.hook_resid_mid returns feeds ln_2 (the MLP's input) only, not the skip
    connection, so patching it there does not patch the residual stream (setting it to zero
    at block 0 moved ridge's prediction by 1.9; through hook_attn_out, by 3e9, as zeroing
    blocks.0.hook_resid_post does)."""
    patches = patches or {}
    record = {} if record is None else record
    pre: dict[int, torch.Tensor] = {}

    def apply(i: int, value: torch.Tensor) -> torch.Tensor:
        out = patches[i](value) if i in patches else value
        record[i] = out
        return out

    hooks = []
    for layer in range(n_layers):
        def h_pre(value, hook, layer=layer):
            if layer == 0:
                value = apply(0, value)
            pre[layer] = value
            return value

        def h_attn(value, hook, layer=layer):
            i = 2 * layer + 1
            mid = pre[layer] + value
            if i not in patches:
                record[i] = mid
                return value
            return apply(i, mid) - pre[layer]

        def h_post(value, hook, layer=layer):
            return apply(2 * layer + 2, value)

        hooks += [(f"blocks.{layer}.hook_resid_pre", h_pre),
                  (f"blocks.{layer}.hook_attn_out", h_attn),
                  (f"blocks.{layer}.hook_resid_post", h_post)]
    return hooks


class TLensSubject:
    """The HuggingFace export DIR/hf under TransformerLens (raspicl.interop.tlens), residual
    patches by `residual_hooks`; the prediction is ln_final.hook_out @ W_U + b_U at the output
    positions (from DIR/hf/groundtruth.json)."""

    def __init__(self, directory: str | Path, positions: list[int] | None = None):
        from raspicl.groundtruth import load_groundtruth
        from raspicl.interop import tlens
        from raspicl.interop.hf import hf_dir

        self.bridge, self.readout = tlens.load(directory)
        self.n_layers = int(self.bridge.cfg.n_layers)
        self.n_residuals = 1 + 2 * self.n_layers
        if positions is None:
            positions = list(load_groundtruth(hf_dir(directory)).output["positions"])
        self.positions = positions
        self.d_model = int(self.bridge.cfg.d_model)
        self._final = tlens.FINAL

    def run(self, tokens, patches: dict[int, Patch] | None = None
            ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        res: dict[int, torch.Tensor] = {}
        final: list[torch.Tensor] = []
        hooks = residual_hooks(self.n_layers, patches, res)
        hooks.append((self._final, lambda value, hook: final.append(value)))
        tok = torch.as_tensor(tokens, dtype=torch.float64)
        self.bridge.run_with_hooks(self.readout.embed(tok), fwd_hooks=hooks)
        pred = self.readout.unembed(final[0])[:, self.positions]
        return pred, [res[i] for i in range(self.n_residuals)]


def metric(pred: torch.Tensor) -> torch.Tensor:
    """The scalar a causal method measures per prompt: the sum of the predictions at the
    output positions [B]."""
    return pred.reshape(pred.shape[0], -1).sum(-1)
