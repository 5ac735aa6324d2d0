"""TransformerLens (raspicl.interop.tlens): a HuggingFace export booted as a TransformerBridge
from its local directory; `run_with_cache` gives the same residual stream as the model it came
from, a hook that patches the residual moves the prediction as the model's own forward pass
with the same patch says.

The vehicle is a trained raspicl.icl.trained.ICLTransformer with every tensor perturbed
(tests/test_interop_hf.py); its own modules give the residuals independently: after the
embedding and after every block from its forward pass, after every attention as
x + attn(ln1(x)).
"""

from __future__ import annotations

import os

import pytest
import torch

from raspicl.errors import RaspiclError
from raspicl.interop import tlens
from raspicl.interop.gpt2form import from_trained
from raspicl.interop.hf import export_hf

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the network
pytest.importorskip("transformers")
pytest.importorskip("transformer_lens")

from test_interop_hf import REL, perturbed_trained, rel_err  # noqa: E402


@pytest.fixture(scope="module")
def trained():
    return perturbed_trained(4, layers=3)


@pytest.fixture(scope="module")
def booted(trained, tmp_path_factory):
    out = export_hf(from_trained(trained), tmp_path_factory.mktemp("tl"))
    return tlens.load(out.parent)


@pytest.fixture(scope="module")
def tokens():
    return torch.randn(8, 11, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))


def _trained_residuals(model, tokens) -> list[torch.Tensor]:
    """The residual list in raspicl's order, from the trained model's own modules."""
    hidden: list[torch.Tensor] = []
    model(tokens, hidden)
    out = [hidden[0]]
    for layer, block in enumerate(model.blocks):
        x = hidden[layer]
        out += [x + block.attn(block.ln1(x)), hidden[layer + 1]]
    return out


def test_hook_names():
    assert [tlens.residual_hook(i) for i in range(5)] == [
        "blocks.0.hook_resid_pre",
        "blocks.0.hook_resid_mid",
        "blocks.0.hook_resid_post",
        "blocks.1.hook_resid_mid",
        "blocks.1.hook_resid_post",
    ]
    assert tlens.residual_index("blocks.1.hook_resid_pre") == 2
    assert all(tlens.residual_index(tlens.residual_hook(i)) == i for i in range(1, 9))
    with pytest.raises(RaspiclError, match="hook_resid"):
        tlens.residual_index("blocks.0.attn.hook_z")


def test_cache_equals_trained_residuals(trained, booted, tokens):
    bridge, readout = booted
    assert type(bridge).__name__ == "TransformerBridge"
    pred, resid, cache = tlens.run_with_cache(bridge, readout, tokens)
    with torch.no_grad():
        want = _trained_residuals(trained, tokens)
        want_pred = trained(tokens)
    assert len(resid) == len(want) == 7
    for i, (a, b) in enumerate(zip(resid, want, strict=True)):
        assert a.dtype == torch.float64
        assert rel_err(a, b) < REL, f"residual {i} ({tlens.residual_hook(i)})"
    assert rel_err(pred[..., 0], want_pred) < REL
    # the weights were not processed: attention and MLP hooks are present, and the cached
    # attention output is what the trained model's own attention gives (no value-bias folding)
    with torch.no_grad():
        attn0 = trained.blocks[0].attn(trained.blocks[0].ln1(want[0]))
    assert rel_err(cache["blocks.0.hook_attn_out"], attn0) < REL
    assert cache["blocks.0.attn.hook_pattern"].shape == (8, 4, 11, 11)


def test_patching_moves_the_prediction_as_the_model_says(trained, booted, tokens):
    """Replace block 1's resid_mid at the last token with another prompt's: the bridge's
    prediction equals the trained model run by hand with the same replacement."""
    bridge, readout = booted
    _, resid_b, _ = tlens.run_with_cache(bridge, readout, tokens[1:2])
    patch = resid_b[3][:, -1]

    def hook(value, hook):
        value[:, -1] = patch
        return value

    with torch.no_grad():
        bridge.run_with_hooks(
            readout.embed(tokens[:1]),
            fwd_hooks=[(tlens.residual_hook(3), hook), (tlens.FINAL, _keep)],
        )
        got = readout.unembed(_kept.pop())
        # by hand: block 0, block 1's attention, the patch, the rest
        m = trained
        x = m.embed(tokens[:1]) + m.pos[:11]
        x = m.blocks[0](x)
        x = x + m.blocks[1].attn(m.blocks[1].ln1(x))
        x[:, -1] = patch
        x = x + m.blocks[1].mlp(m.blocks[1].ln2(x))
        x = m.blocks[2](x)
        want = m.readout(m.ln_f(x))
        unpatched = m(tokens[:1])
    assert rel_err(got[..., 0], want[..., 0]) < REL
    assert (want[0, -1, 0] - unpatched[0, -1]).abs() > 1e-3  # the patch mattered
    assert rel_err(got[0, :-1, 0], unpatched[0, :-1]) < REL  # earlier tokens untouched


_kept: list[torch.Tensor] = []


def _keep(value, hook):
    _kept.append(value.detach().clone())
    return value
