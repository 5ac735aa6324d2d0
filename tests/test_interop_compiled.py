"""Compiled `gpt2` models in HuggingFace and TransformerLens, for every bundled program at its
smallest size and its smallest with d >= 2: the export loads in `transformers.GPT2Model`, whose
prediction equals raspicl's to 1e-10 relative (float64) and the program's numpy solver within
the program's tolerance; TransformerLens's cached residual stream equals raspicl's; and every
register version read from that cache with RegisterNames equals the interpreter's value. A
program the gpt2 target cannot compile (a CompileError that it cannot divide) is skipped with
the compiler's message. A float32 compile exports and runs in float32 within tolerance."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from raspicl import interpret
from raspicl.compiler import compile_program
from raspicl.errors import CompileError, RaspiclError
from raspicl.interop import tlens
from raspicl.interop.gpt2form import from_compiled
from raspicl.interop.hf import export_hf, hf_predict, load_hf, load_readout, read_hf
from raspicl.interop.registers import RegisterNames
from raspicl.prompts import PromptDistribution
from raspicl.registry import bundled_programs, find_program

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")
pytest.importorskip("transformer_lens")

REL = 1e-10
PROGRAMS = sorted(pf.name for pf in bundled_programs())


def _cases() -> list[tuple[str, dict]]:
    """Each bundled program at its grid's first size, and at its first size with d >= 2."""
    cases = []
    for name in PROGRAMS:
        grid = find_program(name).grid
        cases.append((name, grid[0]))
        wider = [g for g in grid if g.get("d", 1) >= 2]
        if wider and wider[0] != grid[0]:
            cases.append((name, wider[0]))
    return cases


def rel(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max(|b|, 1) over the entries where b is defined (not NaN)."""
    ok = ~np.isnan(b)
    return float((np.abs(a - b)[ok] / np.maximum(np.abs(b[ok]), 1.0)).max())


@pytest.mark.parametrize(("name", "params"), _cases(), ids=lambda c: str(c))
def test_compiled_gpt2_in_hf_and_tlens(name, params, tmp_path):
    pf = find_program(name)
    program = pf.build(**params)
    try:
        compiled = compile_program(program, domain=pf.domain, arch="gpt2")
    except CompileError as exc:
        if "cannot divide" in str(exc):
            pytest.skip(f"{name}: {exc}")
        raise
    d, n = compiled.layout["prompt"]["d"], compiled.layout["prompt"]["n_examples"]
    prompts = (pf.domain or PromptDistribution()).sample(16, d, n, seed=11)
    tokens = torch.from_numpy(prompts.tokens())
    positions = compiled.layout["output"]["positions"]

    out = export_hf(from_compiled(compiled), tmp_path)
    model, readout = load_hf(out), load_readout(out)
    got = hf_predict(model, readout, tokens)[:, positions].numpy()
    assert rel(got, compiled.predict(prompts)) < REL
    tol = pf.module.TOLERANCE["float64"]
    assert rel(got, np.asarray(pf.reference(prompts, **params)).reshape(got.shape)) < tol

    bridge = tlens.boot(out)
    pred, resid, _ = tlens.run_with_cache(bridge, readout, tokens)
    want = compiled.residuals(prompts)
    assert len(resid) == len(want)
    # A division's anchor rows hold +-N_div s (about 1e10) until the next attention clears
    # them; the clear leaves a rounding-sized residue there that depends on the order of the
    # sums (HF adds the heads in one product, raspicl head by head) and that nothing reads
    # (tests/test_numpy_forward.py leaves them out likewise). They are held to 1e-10 of the
    # largest value they hold in the run; every other row to 1e-10 of itself.
    fixed = compiled.layout["fixed_rows"]
    anchors = [fixed[k] for k in ("anchor_pos", "anchor_neg") if k in fixed]
    rows = [r for r in range(want[0].shape[-1]) if r not in anchors]
    for i, (a, b) in enumerate(zip(resid, want, strict=True)):
        a = a.numpy()
        where = f"{name}: residual {i} ({tlens.residual_hook(i)})"
        assert rel(a[..., rows], b[..., rows]) < REL, where
        for r in anchors:
            scale = max(1.0, max(float(np.abs(w[..., r]).max()) for w in want))
            assert np.abs(a[..., r] - b[..., r]).max() < REL * scale, f"{where}, anchor row {r}"
    assert rel(pred[:, positions].numpy(), got) < REL

    trace = interpret(program, prompts)
    names = RegisterNames(compiled.layout)
    checked = 0
    for reg in compiled.layout["registers"].values():
        for v in reg["versions"]:
            if v["op"] is None or np.isnan(trace.after[v["op"]]).all():
                continue  # an input, or a value defined at no token of these prompts
            if not v["rows"]:
                continue  # fused away (compiler/fusion.py): its readers compute it
            value = names.read(resid, v["label"]).numpy().reshape(trace.after[v["op"]].shape)
            assert rel(value, trace.after[v["op"]]) < tol, f"{name}: {v['label']}"
            checked += 1
    assert checked >= 2  # fused, gd_step keeps two op values in rows (the others fuse away)


def test_paper_models_are_refused():
    paper = compile_program(find_program("gd_step").build(d=1))
    with pytest.raises(RaspiclError, match="architecture.name is 'paper'.*--arch gpt2"):
        from_compiled(paper)


def test_save_writes_hf_for_gpt2(tmp_path):
    """raspicl.export.save (and so `raspicl compile --out DIR`) writes DIR/hf/ for a gpt2 model,
    replaces it on a second save, and loads back as before; a paper model gets none."""
    from raspicl.export import load, save

    pf = find_program("gd_step")
    compiled = compile_program(pf.build(d=2), arch="gpt2")
    out = save(compiled, tmp_path / "gd")
    assert sorted(p.name for p in (out / "hf").iterdir()) == [
        "config.json",
        "groundtruth.json",  # raspicl.groundtruth, for the HuggingFace export alone
        "model.safetensors",
        "raspicl_io.safetensors",
    ]
    save(compiled, out)  # a directory holding a previous model and its hf/ is replaced
    (out / "hf" / "notes.txt").write_text("mine")
    with pytest.raises(RaspiclError, match="holds other files \\(hf\\)"):
        save(compiled, out)  # but not one holding anything else
    (out / "hf" / "notes.txt").unlink()
    prompts = PromptDistribution().sample(8, 2, 1, seed=2)
    got = hf_predict(load_hf(out), load_readout(out), torch.from_numpy(prompts.tokens()))
    positions = compiled.layout["output"]["positions"]
    assert rel(got[:, positions].numpy(), load(out).predict(prompts)) < REL
    # hf/ holds exactly the model's tensors: read back without transformers, bit for bit
    back, form = read_hf(out), from_compiled(load(out))
    assert back.config == form.config
    assert all(torch.equal(back.state[k], v) for k, v in form.state.items())
    paper = save(compile_program(pf.build(d=2)), tmp_path / "paper")
    assert not (paper / "hf").exists()


@pytest.mark.parametrize("name", ["gd_step", "ridge"])
def test_float32_export(name, tmp_path):
    """A float32 compile exports float32 tensors; GPT2Model in float32 predicts within the
    program's float32 tolerance of its solver (measured: 1e-5 and 6e-5 at d = 1)."""
    from raspicl.compiler import CompilerConfig
    from raspicl.verify import contract_tolerance_for

    pf = find_program(name)
    params = pf.grid[0]
    config = CompilerConfig.for_dtype("float32", tolerance=contract_tolerance_for(pf, "float32"))
    compiled = compile_program(pf.build(**params), config, domain=pf.domain, arch="gpt2")
    compiled = compiled.to(torch.float32)
    out = export_hf(from_compiled(compiled), tmp_path)
    model = load_hf(out, torch.float32)
    assert model.dtype == torch.float32
    d, n = compiled.layout["prompt"]["d"], compiled.layout["prompt"]["n_examples"]
    prompts = (pf.domain or PromptDistribution()).sample(64, d, n, seed=5)
    tokens = torch.from_numpy(prompts.tokens()).float()
    got = hf_predict(model, load_readout(out), tokens)[:, compiled.layout["output"]["positions"]]
    got = got.double().numpy()
    want = np.asarray(pf.reference(prompts, **params)).reshape(got.shape)
    assert rel(got, want) < pf.module.TOLERANCE["float32"]
