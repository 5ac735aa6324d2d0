"""The transformer's own pieces: the activation the layout names is the one the MLP applies,
and the streamed forward pass is the dense block formula of docs/architecture.md."""

from __future__ import annotations

import math

import numpy as np
import torch

from raspicl.compiler import compile_program
from raspicl.model import ACT_FN, ModelConfig, Transformer
from raspicl.registry import find_program


def test_act_fn_is_the_erf_gelu_the_mlp_applies():
    cm = compile_program(find_program("gd_step").build(d=2))
    assert cm.layout["architecture"]["act_fn"] == ACT_FN == "gelu_erf"
    cfg = ModelConfig(d_model=3, n_layers=1, n_heads=1, d_head=2, d_mlp=4, n_ctx=2, d_token=1,
                      d_out=1, ln_eps=(1e-5,))
    model = Transformer(cfg)
    mlp = model.blocks[0].mlp
    with torch.no_grad():
        mlp.W_in.copy_(torch.eye(3, 4, dtype=torch.float64))
        mlp.W_out.copy_(torch.eye(4, 3, dtype=torch.float64))
    x = torch.tensor([[[-2.5, 0.3, 4.0]]], dtype=torch.float64)
    want = [v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in (-2.5, 0.3, 4.0)]
    np.testing.assert_allclose(mlp(x)[0, 0].numpy(), want, rtol=1e-15)


def test_stream_is_the_block_formula():
    rng = np.random.default_rng(0)
    cfg = ModelConfig(d_model=5, n_layers=2, n_heads=2, d_head=3, d_mlp=6, n_ctx=4, d_token=2,
                      d_out=1, ln_eps=(1e-5, 1e-3), block_order=(0, 1, 1))
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.as_tensor(rng.standard_normal(p.shape)))
    tok = torch.as_tensor(rng.standard_normal((3, 4, 2)))
    res = model.residuals(tok)
    assert len(res) == 1 + 2 * 3
    r = tok @ model.embed.W_E + model.pos_embed.W_pos[:4]
    want = [r]
    for layer in (0, 1, 1):
        b = model.blocks[layer]
        r = r + b.attn(r)
        want.append(r)
        r = r + b.mlp(b.ln2(r))
        want.append(r)
    for a, w in zip(res, want, strict=True):
        torch.testing.assert_close(a, w, rtol=0, atol=0)
    torch.testing.assert_close(model(tok), model.readout(want[-1]), rtol=0, atol=0)
