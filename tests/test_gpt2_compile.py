"""The gpt2 target: every bundled program compiles to it and is right within its tolerance and
its monitor's bound; the model is the forward pass the interop contract names (TransformerLens
names, ln1 / ln2 / ln_final, one eps, n_heads * d_head == d_model); the layout records it and
loads back; what gpt2 cannot express is refused with a clear error; and a model whose
LayerNorm reads are too coarse is refused or right, never silently wrong.

Predictions are held against the float64 interpreter (raspicl.interpret) and the program
file's numpy solver (reference()), never against the compiled model itself.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from test_contract import held

from raspicl.compiler import CompilerConfig, compile_program
from raspicl.errors import CompileError, ContractWarning, LoadError
from raspicl.export import layout_digest, load, save
from raspicl.interpret import interpret
from raspicl.prompts import random_prompts
from raspicl.registry import bundled_programs, find_program
from raspicl.verify import compile_checked, contract_tolerance_for

PROGRAMS = [pf.name for pf in bundled_programs()]


def _smallest(name: str):
    pf = find_program(name)
    params = pf.grid[0]
    return pf, params, pf.build(**params)


@pytest.fixture(scope="module")
def compiled():
    """(program name, dtype) -> its gpt2 model at the GRID's first parameters, compiled as
    raspicl verify compiles it (the file's tolerance and DOMAIN)."""
    cache = {}

    def get(name: str, dtype: str = "float64"):
        if (name, dtype) not in cache:
            pf, params, program = _smallest(name)
            cache[(name, dtype)] = compile_checked(pf, program, dtype, arch="gpt2")
        return cache[(name, dtype)]

    return get


@pytest.mark.parametrize("name", PROGRAMS)
def test_every_program_is_right_on_gpt2(compiled, name):
    """float64: within the file's tolerance of the numpy solver, and within the monitor's bound
    and the tolerance of the interpreter on every accepted prompt."""
    pf, params, program = _smallest(name)
    cm = compiled(name)
    prompts = random_prompts(200, program.d, program.n, seed=11)
    accepted = held(cm, program, prompts)
    assert accepted.mean() >= 0.99
    ref = np.asarray(pf.reference(prompts, **params))
    pred = cm.predict(prompts, check="ignore").reshape(ref.shape)[accepted]
    ref = ref[accepted]
    tol = contract_tolerance_for(pf, "float64")
    assert np.all(np.abs(pred - ref) <= tol * np.maximum(np.abs(ref), 1))


@pytest.mark.parametrize("name", ["gd_step", "sherman_morrison"])
def test_float32_is_within_its_bound(compiled, name):
    """float32 gpt2 models: every accepted prediction lies within its own error bound of the
    interpreter (the bound may exceed the 1e-3 tolerance: docs/size.md measures it)."""
    _, _, program = _smallest(name)
    cm = compiled(name, "float32")
    assert cm.model.dtype == torch.float32
    prompts = random_prompts(200, program.d, program.n, seed=12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = cm.run(prompts, check="ignore")
        res = cm.residuals(prompts, check="ignore")
    report = cm.contract(res)
    want = interpret(program, prompts).output()
    err = np.abs(out.values - want)
    ok = report.accepted[:, None, None] | np.isfinite(report.bound)
    assert (err[ok] <= report.bound[ok]).all()


def test_state_dict_and_layout_follow_the_interop_contract(compiled):
    cm = compiled("gd_step")
    cfg = cm.model.cfg
    sd = cm.model.state_dict()
    assert cfg.n_heads * cfg.d_head == cfg.d_model
    for layer in range(cfg.n_layers):
        for name in ("ln1.w", "ln1.b", "ln2.w", "ln2.b"):
            assert sd[f"blocks.{layer}.{name}"].shape == (cfg.d_model,)
        assert sd[f"blocks.{layer}.attn.W_Q"].shape == (cfg.n_heads, cfg.d_model, cfg.d_head)
        assert sd[f"blocks.{layer}.attn.b_O"].shape == (cfg.d_model,)
    assert sd["ln_final.w"].shape == sd["ln_final.b"].shape == (cfg.d_model,)
    a = cm.layout["architecture"]
    assert a["name"] == "gpt2" and a["ln_eps"] == 1e-5 and a["act_fn"] == "gelu_new"
    for key in ("d_model", "n_layers", "n_heads", "d_head", "d_mlp", "n_ctx", "d_token",
                "d_out"):
        assert a[key] == getattr(cfg, key)
    assert a["layernorm"] == {"before_attention": True, "before_mlp": True, "final": True,
                              "eps": [1e-5] * cfg.n_layers}
    assert a["block_order"] == list(range(cfg.n_layers))
    # the constant anchors sit in two fixed rows, at +-N at every token
    fixed = cm.layout["fixed_rows"]
    W_pos = sd["pos_embed.W_pos"].numpy()
    N = a["ln_anchor"]
    assert (W_pos[:, fixed["ln_pos"]] == N).all() and (W_pos[:, fixed["ln_neg"]] == -N).all()


def test_save_and_load_round_trip(compiled, tmp_path):
    cm = compiled("sherman_morrison")
    out = save(cm, tmp_path / "sm")
    back = load(out)
    assert back.model.cfg.arch == cm.model.cfg.arch
    prompts = random_prompts(20, cm.layout["prompt"]["d"], 1, seed=3)
    np.testing.assert_array_equal(back.predict(prompts), cm.predict(prompts))


def _edit_layout(directory, edit) -> None:
    """Edit layout.json and sign it again, so that only the schema can refuse it."""
    path = directory / "layout.json"
    layout = json.loads(path.read_text())
    edit(layout)
    layout["integrity"]["digest"] = layout_digest(layout, (directory / "model.safetensors")
                                                  .read_bytes())
    path.write_text(json.dumps(layout))


@pytest.mark.parametrize(("edit", "message"), [
    (lambda L: L["architecture"]["layernorm"]["eps"].__setitem__(0, 1e-3),
     r"architecture\.layernorm\.eps\[0\] must equal architecture\.ln_eps"),
    (lambda L: L["architecture"]["layernorm"].__setitem__("before_attention", False),
     r"architecture\.layernorm\.before_attention must be true"),
    (lambda L: L["architecture"].__setitem__("act_fn", "gelu_erf"),
     r"architecture\.act_fn must be one of gelu, gelu_new"),
    (lambda L: L["architecture"].pop("ln_anchor"), r"architecture\.ln_anchor is missing"),
])
def test_schema_refuses_an_inconsistent_gpt2_record(compiled, tmp_path, edit, message):
    out = save(compiled("gd_step"), tmp_path / "gd")
    _edit_layout(out, edit)
    with pytest.raises(LoadError, match=message):
        load(out)


def test_what_gpt2_cannot_express_is_refused():
    program = find_program("sgd").build(d=1, n=2)
    with pytest.raises(CompileError, match="gpt2 target has no shared"):
        compile_program(program, arch="gpt2", loops="share")
    with pytest.raises(ValueError, match="unknown architecture"):
        compile_program(program, arch="gpt3")


@pytest.mark.parametrize("act_fn", ["gelu", "gelu_new"])
def test_both_gelu_forms_and_a_set_eps(act_fn):
    from raspicl.arch import get_arch

    pf = find_program("gd_step")
    program = pf.build(d=2)
    cm = compile_program(program, arch=get_arch("gpt2", ln_eps=1e-6, act_fn=act_fn))
    assert cm.model.blocks[0].mlp.approximate == ("tanh" if act_fn == "gelu_new" else "none")
    assert cm.model.blocks[0].ln1.eps == cm.model.ln_final.eps == 1e-6
    held(cm, program, random_prompts(100, 2, 1, seed=4))


@pytest.mark.parametrize("anchor", [3.0, 300.0, 1e4])
def test_coarse_layernorm_reads_are_refused_or_right(anchor):
    """With the constant anchors far too small (each LayerNorm read off by about Q / (4 N^2):
    tens of percent at N = 3, 1e-6 at N = 1e4), the monitor must refuse what it cannot vouch
    for; whatever it accepts is right within its bound and the tolerance, and its bound holds
    on every prompt, refused or not."""
    program = find_program("gd_step").build(d=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ContractWarning)
        cm = compile_program(program, CompilerConfig(ln_anchor=anchor), arch="gpt2")
    prompts = random_prompts(100, 2, 1, seed=5)
    accepted = held(cm, program, prompts)
    assert not accepted.all()
    out = cm.run(prompts, check="ignore")
    report = cm.contract(cm.residuals(prompts, check="ignore"))
    assert (np.abs(out.values - interpret(program, prompts).output()) <= report.bound).all()


def test_cli_compile_and_verify_arch_gpt2(tmp_path, capsys):
    from raspicl.cli import main

    assert main(["compile", "gd_step", "--set", "d=2", "--arch", "gpt2", "--act-fn", "gelu",
                 "--out", str(tmp_path / "m")]) == 0
    layout = json.loads((tmp_path / "m" / "layout.json").read_text())
    assert (layout["architecture"]["name"], layout["architecture"]["act_fn"]) == ("gpt2", "gelu")
    assert main(["verify", "gd_step", "--set", "d=1", "--dtype", "float64", "--arch", "gpt2",
                 "--problems", "50", "--no-symbolic"]) == 0
    assert "PASS" in capsys.readouterr().out
    assert main(["compile", "gd_step", "--ln-eps", "1e-6", "--out", str(tmp_path / "p")]) == 2


def test_inspect_reads_a_gpt2_model(compiled):
    """raspicl inspect's checks of the weights against the layout hold for gpt2's reads
    through ln1 (W_V less its column sums at the zero row): no warning."""
    from raspicl.inspect.report import block_report

    text = block_report(compiled("sherman_morrison"))
    assert "gpt2: every LayerNorm" in text and "divide by |denom|" in text
    assert "WARNING" not in text


def test_constant_anchor_levels_are_exact_in_float32(compiled):
    """float32 sherman_morrison: ln_pos / ln_neg hold exactly +-2^20 in every residual but the
    dividing block's: 0 after its attention, +-2^30 after its MLP, 2^20 again after the next
    attention (docs/architecture.md §9.3), at every token of every prompt."""
    from raspicl.arch import anchor_levels

    cm = compiled("sherman_morrison", "float32")
    fixed = cm.layout["fixed_rows"]
    divides = [a is not None for a in cm.layout["monitor"]["anchors"]]
    (run,) = [r for r, d in enumerate(divides) if d]
    N, Nr = 2.0**20, 2.0**30
    want = [N] * (2 * run + 1) + [0.0, Nr] + [N] * (2 * (len(divides) - run) - 2)
    assert anchor_levels(divides, N, Nr) == want
    prompts = random_prompts(16, cm.layout["prompt"]["d"], 1, seed=6)
    residuals = cm.residuals(prompts, check="ignore")
    assert len(residuals) == len(want)
    for i, (r, level) in enumerate(zip(residuals, want, strict=True)):
        assert (r[:, :, fixed["ln_pos"]] == level).all(), i
        assert (r[:, :, fixed["ln_neg"]] == -level).all(), i
