"""docs/architecture.md is a complete spec: a numpy forward pass written from that page alone.

`numpy_forward` below reads DIR/model.safetensors (safetensors.numpy) and DIR/layout.json (json)
and runs the `paper` architecture exactly as docs/architecture.md states it; `encode` builds the
token vectors as the page's "Prompt encoding" section says. Neither uses torch or raspicl.model.
The tests hold its predictions and every register version it reads out of its own residual
stream against the torch model (CompiledModel.predict / .residuals), to 1e-10 relative
(|a - b| <= 1e-10 * max(1, |b|); batch_gd 1e-8, AGREEMENT), for gd_step and sherman_morrison
at d = 1, 2, 4; and a model
whose block_order repeats blocks (a looped model sharing weights), built from random weights.
The same pass runs the `gpt2` architecture as §9 states it (ln1 before attention, ln_final
before the readout, GeLU gelu or gelu_new), checked on every bundled program.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

TOL = 1e-10

# ------------------------------------------------------------------ the spec, in numpy
# Everything from here to the tests follows docs/architecture.md and nothing else.

_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact GeLU: x * (1 + erf(x / sqrt 2)) / 2 (not the tanh approximation)."""
    return x * (1.0 + _erf(x / math.sqrt(2.0)).astype(x.dtype)) / 2.0


def gelu_new(x: np.ndarray) -> np.ndarray:
    """GPT-2's tanh GeLU: 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """Mean and biased variance over the last axis (d_model); eps used exactly as given."""
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return (x - mu) / np.sqrt(var + x.dtype.type(eps)) * w + b


def softmax_causal(scores: np.ndarray) -> np.ndarray:
    """Softmax over keys (last axis) with key s visible to query t only if s <= t."""
    T = scores.shape[-1]
    future = np.triu(np.ones((T, T), dtype=bool), k=1)
    scores = np.where(future, -np.inf, scores)
    scores = scores - scores.max(axis=-1, keepdims=True)
    e = np.exp(scores)
    return e / e.sum(axis=-1, keepdims=True)


def encode(X: np.ndarray, y: np.ndarray, xq: np.ndarray) -> np.ndarray:
    """Token vectors [B, 2n+1, d+1]: x_i -> [0, x_i], y_i -> [y_i, 0_d], query -> [0, x_q]."""
    B, n, d = X.shape
    tokens = np.zeros((B, 2 * n + 1, d + 1))
    for i in range(n):
        tokens[:, 2 * i, 1:] = X[:, i]
        tokens[:, 2 * i + 1, 0] = y[:, i]
    tokens[:, 2 * n, 1:] = xq
    return tokens


def read_model(directory: Path) -> tuple[dict, dict[str, np.ndarray]]:
    layout = json.loads((directory / "layout.json").read_text())
    tensors = load_file(str(directory / layout["weights"]["file"]))
    return layout, tensors


def numpy_forward(layout: dict, W: dict[str, np.ndarray],
                  tokens: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The residual stream list [embedding, after block_order[0]'s attention, after its MLP,
    ...] and the readout at every token [B, T, d_out], in the weights' dtype."""
    arch = layout["architecture"]
    dtype = W["embed.W_E"].dtype
    d_head = arch["d_head"]
    eps = arch["layernorm"]["eps"]
    gpt2 = arch["name"] == "gpt2"
    act = gelu_new if arch.get("act_fn") == "gelu_new" else gelu
    tokens = np.asarray(tokens, dtype=dtype)
    T = tokens.shape[1]
    assert T <= arch["n_ctx"]
    resid = tokens @ W["embed.W_E"] + W["pos_embed.W_pos"][:T]
    residuals = [resid]
    for layer in arch["block_order"]:
        p = f"blocks.{layer}."
        attn_out = np.zeros_like(resid)
        h_in = layer_norm(resid, W[p + "ln1.w"], W[p + "ln1.b"], arch["ln_eps"]) if gpt2 \
            else resid
        for h in range(arch["n_heads"]):
            q = h_in @ W[p + "attn.W_Q"][h] + W[p + "attn.b_Q"][h]
            k = h_in @ W[p + "attn.W_K"][h] + W[p + "attn.b_K"][h]
            v = h_in @ W[p + "attn.W_V"][h] + W[p + "attn.b_V"][h]
            scores = q @ np.swapaxes(k, -1, -2) / math.sqrt(d_head)
            z = softmax_causal(scores) @ v
            attn_out = attn_out + z @ W[p + "attn.W_O"][h]
        resid = resid + attn_out + W[p + "attn.b_O"]
        residuals.append(resid)
        ln = layer_norm(resid, W[p + "ln2.w"], W[p + "ln2.b"], eps[layer])
        hidden = act(ln @ W[p + "mlp.W_in"] + W[p + "mlp.b_in"])
        resid = resid + hidden @ W[p + "mlp.W_out"] + W[p + "mlp.b_out"]
        residuals.append(resid)
    final = layer_norm(resid, W["ln_final.w"], W["ln_final.b"], arch["ln_eps"]) if gpt2 \
        else resid
    out = final @ W["unembed.W_U"] + W["unembed.b_U"]
    return residuals, out


def read_register(layout: dict, residuals: list[np.ndarray], name: str,
                  k: int) -> np.ndarray:
    """Version k (list index) of a register: [B, T, *shape], row-major over its rows."""
    reg = layout["registers"][name]
    v = reg["versions"][k]
    vals = residuals[v["written_after"]][:, :, v["rows"]]
    return vals.reshape(vals.shape[:2] + tuple(reg["shape"]))


# ------------------------------------------------------------------ helpers for the tests


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max(1, |b|): the test's error measure (0 for empty arrays)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(b))))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Compile and save each (program, d) once per module: {(program, d): directory}."""
    from raspicl.compiler import compile_program
    from raspicl.export import save
    from raspicl.registry import find_program

    root = tmp_path_factory.mktemp("numpy_forward")
    cache: dict[tuple[str, int], Path] = {}

    def get(program: str, d: int, arch: str = "paper") -> Path:
        if (program, d, arch) not in cache:
            compiled = compile_program(find_program(program).build(d=d), arch=arch)
            cache[(program, d, arch)] = save(compiled, root / f"{program}_d{d}_{arch}")
        return cache[(program, d, arch)]

    return get


# ------------------------------------------------------------------ the tests


# batch_gd sums many products of operands far from their bounds' scale, each amplified by the
# product gadget's 1/z (§6): two correct implementations then differ by up to 1.5e-9 in paper
# (measured, numpy against torch, d = 1) and 7e-10 in gpt2, so its agreement is held to 1e-8
AGREEMENT = {"batch_gd": 1e-8}
GPT2_CASES = [(p, 1, "gpt2") for p in ("gd_step", "batch_gd", "sgd", "newton", "ridge",
                                         "sherman_morrison")] + [("gd_step", 2, "gpt2")]


@pytest.mark.parametrize(("program", "d", "arch"),
                         [(p, d, "paper") for p in ("gd_step", "sherman_morrison")
                          for d in (1, 2, 4)] + GPT2_CASES)
def test_numpy_forward_matches_torch(saved, program, d, arch):
    from raspicl.export import load
    from raspicl.prompts import random_prompts

    tol = AGREEMENT.get(program, TOL)
    directory = saved(program, d, arch)
    assert json.loads((directory / "layout.json").read_text())["architecture"]["name"] == arch
    layout, W = read_model(directory)
    assert W["embed.W_E"].dtype == np.float64
    assert layout["weights"]["dtype"] == "float64"
    prompts = random_prompts(32, d, layout["prompt"]["n_examples"],
                             seed=100 + 10 * d + len(program))

    tokens = encode(prompts.X, prompts.y, prompts.xq)
    p = layout["prompt"]
    assert tokens.shape[1:] == (p["n_tokens"], p["d_token"]) == (2 * p["n_examples"] + 1, d + 1)
    assert p["roles"] == ["x", "y"] * p["n_examples"] + ["query"]
    np.testing.assert_array_equal(tokens, prompts.tokens())

    residuals, out = numpy_forward(layout, W, tokens)
    assert len(residuals) == 1 + 2 * len(layout["architecture"]["block_order"])
    pred = out[:, layout["output"]["positions"]]

    compiled = load(directory)
    torch_pred = compiled.predict(prompts)
    torch_res = compiled.residuals(prompts)
    assert pred.shape == torch_pred.shape
    err = rel_err(pred, torch_pred)
    assert err <= TOL, f"{program} d={d}: prediction differs by {err:.3e}"

    # the prediction is also the output register read from the last residual
    out_rows = layout["output"]["rows"]
    err = rel_err(residuals[-1][:, layout["output"]["positions"]][..., out_rows], torch_pred)
    assert err <= tol

    worst = 0.0
    n_versions = 0
    for name, reg in layout["registers"].items():
        for k, v in enumerate(reg["versions"]):
            ours = read_register(layout, residuals, name, k)
            theirs = torch_res[v["written_after"]][:, :, v["rows"]]
            e = rel_err(ours.reshape(theirs.shape), theirs)
            assert e <= tol, f"{program} d={d}: register {name} version {v['version']}: {e:.3e}"
            worst = max(worst, e)
            n_versions += 1
    assert n_versions >= len(layout["registers"])
    # every residual, not only the register rows (under gpt2, less the division anchor rows:
    # the clear after a division leaves N_div |s| |ratio - 1| there, a rounding-sized residue
    # of a 1e10-sized entry that no head or unit reads; docs/architecture.md §9)
    rows = [r for r in range(layout["architecture"]["d_model"])
            if arch == "paper" or r not in (layout["fixed_rows"].get("anchor_pos"),
                                            layout["fixed_rows"].get("anchor_neg"))]
    for i, (a, b) in enumerate(zip(residuals, torch_res, strict=True)):
        e = rel_err(a[..., rows], b[..., rows])
        assert e <= tol, f"{program} d={d}: residual {i} differs by {e:.3e}"


def test_listing_in_the_page_matches_torch(saved):
    """The reference listing in docs/architecture.md §6, run as written."""
    from raspicl.export import load
    from raspicl.prompts import random_prompts

    page = (Path(__file__).resolve().parent.parent / "docs" / "architecture.md").read_text()
    listing = re.search(r"```python\n(.*?)```", page, re.S)
    assert listing is not None, "docs/architecture.md has no python listing"
    namespace: dict = {}
    exec(listing.group(1), namespace)
    for program, d in [("gd_step", 2), ("sherman_morrison", 4)]:
        directory = saved(program, d)
        prompts = random_prompts(16, d, 1, seed=11)
        pred, residuals = namespace["forward"](
            str(directory), namespace["encode"](prompts.X, prompts.y, prompts.xq))
        compiled = load(directory)
        assert rel_err(pred, compiled.predict(prompts)) <= TOL
        for a, b in zip(residuals, compiled.residuals(prompts), strict=True):
            assert rel_err(a, b) <= TOL


def test_looped_block_order_matches_torch(tmp_path):
    """A model whose block_order repeats blocks (shared weights), from random weights."""
    import torch
    from safetensors.torch import save_file

    from raspicl.model import ModelConfig, Transformer

    d, n = 3, 2
    cfg = ModelConfig(d_model=12, n_layers=2, n_heads=3, d_head=4, d_mlp=16, n_ctx=2 * n + 1,
                      d_token=d + 1, d_out=2, ln_eps=(1e-5, 2.0**80),
                      block_order=(0, 0, 1, 0, 1))
    model = Transformer(cfg)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, param in model.named_parameters():
            param.copy_(0.5 * torch.randn(param.shape, generator=gen, dtype=torch.float64))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(tmp_path / "model.safetensors"))
    layout = {
        "architecture": {
            "name": "paper", "d_model": cfg.d_model, "n_layers": cfg.n_layers,
            "n_heads": cfg.n_heads, "d_head": cfg.d_head, "d_mlp": cfg.d_mlp,
            "n_ctx": cfg.n_ctx, "d_token": cfg.d_token, "d_out": cfg.d_out,
            "layernorm": {"eps": list(cfg.ln_eps)}, "block_order": list(cfg.block_order),
        },
        "weights": {"file": "model.safetensors"},
    }
    (tmp_path / "layout.json").write_text(json.dumps(layout))

    rng = np.random.default_rng(3)
    X, y, xq = rng.standard_normal((8, n, d)), rng.standard_normal((8, n)), \
        rng.standard_normal((8, d))
    tokens = encode(X, y, xq)
    layout, W = read_model(tmp_path)
    residuals, out = numpy_forward(layout, W, tokens)

    with torch.no_grad():
        t_tokens = torch.from_numpy(tokens)
        t_res = [r.numpy() for r in model.residuals(t_tokens)]
        t_out = model(t_tokens).numpy()
    assert len(residuals) == len(t_res) == 1 + 2 * 5
    for i, (a, b) in enumerate(zip(residuals, t_res, strict=True)):
        assert rel_err(a, b) <= TOL, f"residual {i}: {rel_err(a, b):.3e}"
    assert rel_err(out, t_out) <= TOL
    # the repeat really runs the shared block again: running block 0 once differs
    once = dict(layout["architecture"], block_order=[0])
    _, out_once = numpy_forward(dict(layout, architecture=once), W, tokens)
    assert rel_err(out_once, t_out) > 1e-3


def test_huge_eps_is_used_as_given():
    """With eps = 2^80 the LayerNorm divides by exactly 2^40 (var + eps == eps)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 20)) * 100.0
    w, b = np.ones(20), np.zeros(20)
    got = layer_norm(x, w, b, 2.0**80)
    np.testing.assert_array_equal(got, (x - x.mean(-1, keepdims=True)) / 2.0**40)


def test_gelu_is_the_erf_form():
    x = np.linspace(-6, 6, 241)
    np.testing.assert_allclose(gelu(x) - gelu(-x), x, rtol=0, atol=1e-15)
    tanh_form = 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    assert np.max(np.abs(gelu(x) - tanh_form)) > 1e-5
