"""The command line keeps the runtime contract (docs/cli.md): `predict` refuses what the model
refuses unless asked for masked output, `verify` reports a model that refuses its own domain as
REFUSES, `compile --tolerance` exists and the compiler's remedies are said as options, every
long command picks its thread count on purpose, and an unknown option is the command's error.

The prompts a model must refuse are made independently of its monitor: prompts scaled x1000
lie far outside the calibrated domain (|x| 500 to 2800 against x_abs_max ~11; at x100 the
monitor still vouched for two of them, rightly: gd_step's gadgets have room), and the
predictions kept are compared with the program file's own numpy reference().
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

from raspicl.cli import build_parser, command_threads, main
from raspicl.cli_programs import cli_remedies
from raspicl.model import THREADS_ENV
from raspicl.prompts import Prompts, random_prompts
from raspicl.registry import find_program
from raspicl.verify import MIN_ACCEPTANCE, CheckResult, in_domain_mask

FAR = [1, 4, 5, 6, 7, 9, 11]  # the prompts scaled x1000 in _mixed_prompts


@pytest.fixture(scope="module")
def gd_model(tmp_path_factory):
    """gd_step (d=2), compiled by `raspicl compile`."""
    out = tmp_path_factory.mktemp("models") / "gd2"
    assert main(["compile", "gd_step", "--set", "d=2", "--out", str(out)]) == 0
    return out


def _mixed_prompts(path) -> Prompts:
    """12 prompts of gd_step d=2, those in FAR scaled by 1000, saved as .npz."""
    p = random_prompts(12, 2, 1, seed=3)
    scale = np.ones(12)
    scale[FAR] = 1000.0
    prompts = Prompts(p.X * scale[:, None, None], p.y * scale[:, None], p.xq * scale[:, None])
    np.savez(path, X=prompts.X, y=prompts.y, xq=prompts.xq)
    return prompts


# ------------------------------------------------------------------ predict


def test_predict_refuses_by_default_and_names_the_prompts(gd_model, tmp_path, capsys):
    _mixed_prompts(tmp_path / "p.npz")
    out = tmp_path / "pred.npy"
    status = main(["predict", str(gd_model), "--prompts", str(tmp_path / "p.npz"),
                   "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2, err
    lines = err.splitlines()
    assert lines[0].startswith("raspicl: error: compiled gd_step")
    assert f"refuses {len(FAR)} of 12 prompts" in lines[0] and "--refused nan" in lines[0]
    named = [int(line.split()[1].rstrip(":")) for line in lines[1:]
             if line.startswith("  prompt ")]
    assert named == FAR[:5]  # one line each for the first five, in order
    assert lines[-1] == f"  ... and {len(FAR) - 5} more refused prompts"
    assert not out.exists()  # nothing the model cannot vouch for is written


def test_predict_refused_nan_writes_the_mask_and_the_bounds(gd_model, tmp_path, capsys):
    prompts = _mixed_prompts(tmp_path / "p.npz")
    out = tmp_path / "pred.npy"
    assert main(["predict", str(gd_model), "--prompts", str(tmp_path / "p.npz"),
                 "--out", str(out), "--refused", "nan"]) == 0
    printed = capsys.readouterr().out
    assert f"({len(FAR)} prompts refused)" in printed
    pred = np.load(out, allow_pickle=False)
    accepted = np.load(tmp_path / "pred.accepted.npy", allow_pickle=False)
    bound = np.load(tmp_path / "pred.bound.npy", allow_pickle=False)
    near = [i for i in range(12) if i not in FAR]
    assert accepted.dtype == bool and accepted.shape == (12,)
    assert list(np.flatnonzero(~accepted)) == FAR
    assert pred.shape == bound.shape == (12, 2)
    assert np.isnan(pred[FAR]).all()  # refused: NaN, not a value off by an unknown amount
    assert np.isnan(pred[:, 0]).all()  # gd_step predicts at the query only
    want = find_program("gd_step").reference(prompts, d=2)[:, 0]
    got = pred[near, 1]
    assert np.all(np.abs(got - want[near]) <= bound[near, 1])  # each within its own bound
    assert np.all(bound[near, 1] <= 1e-8 * np.maximum(np.abs(want[near]), 1.0))


def test_predict_accepts_in_domain_prompts_without_side_files(gd_model, tmp_path):
    p = random_prompts(5, 2, 1, seed=0)
    np.savez(tmp_path / "p.npz", X=p.X, y=p.y, xq=p.xq)
    assert main(["predict", str(gd_model), "--prompts", str(tmp_path / "p.npz"),
                 "--out", str(tmp_path / "pred.npy")]) == 0
    assert sorted(f.name for f in tmp_path.iterdir()) == ["p.npz", "pred.npy"]


# ------------------------------------------------------------------ verify


def _result(**kw) -> CheckResult:
    base = dict(program="p", params={}, dtype="float64", blocks=1, heads=1, d_model=1,
                d_mlp=1, n_params=1, err_registers=0.0, worst_register="-",
                err_prediction=0.0, err_interpreter_solver=0.0, err_model_solver=0.0,
                symbolic="-", tolerance=1e-8, problems=100, accepted=1.0, in_domain=100,
                accepted_in_domain=1.0)
    return CheckResult(**{**base, **kw})


@pytest.mark.parametrize("kw, status", [
    ({}, "PASS"),
    ({"accepted_in_domain": MIN_ACCEPTANCE}, "PASS"),
    ({"accepted_in_domain": 0.575}, "REFUSES"),
    ({"accepted_in_domain": 0.575, "err_registers": 1.0}, "FAIL"),
    ({"err_registers": 1.0}, "FAIL"),
    ({"contract_violations": 1}, "FAIL"),
    ({"accepted": 0.5, "in_domain": 0, "accepted_in_domain": math.nan}, "PASS"),
])
def test_check_status(kw, status):
    assert _result(**kw).status == status


def test_in_domain_mask_is_the_layouts_bounds_per_prompt(gd_model):
    layout = json.loads((gd_model / "layout.json").read_text())
    xmax, ymax = layout["domain"]["x_abs_max"], layout["domain"]["y_abs_max"]
    p = random_prompts(6, 2, 1, seed=0)
    X, y, xq = p.X.copy(), p.y.copy(), p.xq.copy()
    X[1, 0, 1] = 1.01 * xmax
    xq[2, 0] = -1.01 * xmax
    y[3, 0] = 1.01 * ymax
    X[4, 0, 0] = xmax  # on the bound: inside
    mask = in_domain_mask(layout, Prompts(X, y, xq))
    assert mask.tolist() == [True, False, False, False, True, True]


def test_verify_row_of_a_model_that_refuses_its_domain(capsys):
    """gd_step vouching for 1e-15: right to ~1e-12, so every check holds, but it refuses
    almost every problem; REFUSES, exit 1. Asked for no acceptance, the same row passes."""
    argv = ["verify", "gd_step", "--set", "d=2", "--dtype", "float64", "--problems", "50",
            "--no-symbolic", "--tolerance", "1e-15"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("gd_step"))
    assert row.split()[-1] == "REFUSES"
    share = float(row.split()[-2].rstrip("%"))
    assert share < 99
    assert "0 passed, 0 failed, 1 refuse more than 1% of their in-domain problems" in out
    assert f"at least {share:.1f}% of the in-domain problems" in out
    assert main(argv + ["--min-acceptance", "0"]) == 0
    assert "1 passed, 0 failed" in capsys.readouterr().out


@pytest.mark.parametrize("text, ok", [("99", 0.99), ("50%", 0.5), ("0", 0.0)])
def test_min_acceptance_is_a_percentage(text, ok):
    args = build_parser().parse_args(["verify", "--min-acceptance", text])
    assert args.min_acceptance == ok


@pytest.mark.parametrize("text", ["101", "-1", "nan", "most"])
def test_min_acceptance_refuses_what_is_not_a_percentage(text, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["verify", "--min-acceptance", text])
    assert exc.value.code == 2
    assert "raspicl verify: error: argument --min-acceptance" in capsys.readouterr().err


# ------------------------------------------------------------------ compile --tolerance

# The compiler's ContractWarning text (raspicl.compiler.feasibility.require_acceptance).
COMPILER_MESSAGE = (
    "program 'momentum': the compiled model (float64, tolerance 1e-08) accepts 38.9% of 512 "
    "calibration prompts ... exceeds the model's tolerance 1e-08. It refuses those prompts at "
    "run time; to accept more: compile for float64, allow a larger error "
    "(CompilerConfig(tolerance=...)), serve a narrower domain (compile_program(..., "
    "domain=PromptDistribution(...))), or rescale the program's values (e.g. a larger "
    "regulariser)")


def test_cli_remedies_are_the_commands_options():
    got = cli_remedies(COMPILER_MESSAGE, "float64", {"d": 2, "lam": 0.0}, 1e-8)
    head = COMPILER_MESSAGE[:COMPILER_MESSAGE.index("to accept more: ")]
    assert got == (head + "to accept more: allow a larger error (--tolerance, now 1e-08), "
                   "serve a narrower domain (--x-scale, --w-scale, --noise or "
                   "--calibration-prompts), or rescale the program's values (e.g. a larger "
                   "regulariser: --set lam=...)")
    f32 = cli_remedies(COMPILER_MESSAGE.replace("float64, tolerance", "float32, tolerance"),
                       "float32", {"d": 2}, None)
    assert "compile for float64 (--dtype float64), allow a larger error (--tolerance)" in f32
    assert f32.endswith("or rescale the program's values")
    hard = "cannot be compiled to work on its domain: ... Remedies: compile for float64, " \
           "allow a larger error (CompilerConfig(tolerance=...)), serve ..."
    assert "Remedies: allow a larger error (--tolerance)" in cli_remedies(hard, "float64", {})
    assert cli_remedies("no remedies here", "float64", {}) == "no remedies here"


def test_compile_tolerance_sets_the_contract_and_the_warning_speaks_cli(tmp_path, capsys):
    out = tmp_path / "gd"
    assert main(["compile", "gd_step", "--set", "d=2", "--tolerance", "1e-15",
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    layout = json.loads((out / "layout.json").read_text())
    assert layout["monitor"]["tolerance"] == 1e-15
    assert "error bound <= 1e-15 x max(|y|, 1)" in captured.out
    (warning,) = [line for line in captured.err.splitlines()
                  if line.startswith("raspicl: warning: ")]
    assert "--tolerance, now 1e-15" in warning and "--x-scale" in warning
    for python_only in ("CompilerConfig", "compile_program(", "compile for float64"):
        assert python_only not in warning
    assert "compiled gd_step {'d': 2} ->" in captured.out


def test_compile_without_parameters_has_one_space(tmp_path, capsys):
    assert main(["compile", "gd_step", "--out", str(tmp_path / "gd")]) == 0
    assert capsys.readouterr().out.startswith(f"compiled gd_step -> {tmp_path / 'gd'}/")


@pytest.mark.parametrize("text", ["0", "-1e-6", "inf", "nan"])
def test_tolerance_must_be_positive_and_finite(text, capsys):
    with pytest.raises(SystemExit):
        main(["compile", "gd_step", "--out", "x", "--tolerance", text])
    assert "raspicl compile: error: argument --tolerance" in capsys.readouterr().err


# ------------------------------------------------------------------ threads


@pytest.mark.parametrize("command", ["compile", "verify", "train", "predict", "compare",
                                     "probe"])
def test_long_commands_take_threads(command):
    sub = next(a for a in build_parser()._actions if hasattr(a, "choices") and a.choices
               and command in a.choices)
    assert "--threads" in sub.choices[command]._option_string_actions


def test_command_threads_sets_and_restores(monkeypatch):
    monkeypatch.delenv(THREADS_ENV, raising=False)
    before = torch.get_num_threads()
    with command_threads(None) as n:
        assert n == 1 and torch.get_num_threads() == 1 and os.environ[THREADS_ENV] == "1"
    with command_threads(2) as n:
        assert n == 2 and torch.get_num_threads() == 2 and os.environ[THREADS_ENV] == "2"
    assert torch.get_num_threads() == before and THREADS_ENV not in os.environ
    monkeypatch.setenv(THREADS_ENV, "3")
    with command_threads(None) as n:
        assert n == 3
    assert os.environ[THREADS_ENV] == "3"


def test_compile_runs_under_the_threads_asked_for(tmp_path, monkeypatch):
    import raspicl.compiler as compiler

    seen = []
    real = compiler.compile_program

    def spy(*args, **kwargs):
        seen.append((torch.get_num_threads(), os.environ.get(THREADS_ENV)))
        return real(*args, **kwargs)

    monkeypatch.setattr(compiler, "compile_program", spy)
    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert main(["compile", "gd_step", "--threads", "2", "--out", str(tmp_path / "a")]) == 0
    assert main(["compile", "gd_step", "--out", str(tmp_path / "b")]) == 0
    assert seen == [(2, "2"), (1, "1")]
    assert torch.get_num_threads() == 1 and THREADS_ENV not in os.environ


# ------------------------------------------------------------------ usage errors


def test_an_unknown_option_is_the_commands_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compile", "gd_step", "--out", "x", "--bogus"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: raspicl compile ")
    assert err.splitlines()[-1] == "raspicl compile: error: unrecognized arguments: --bogus"


# ------------------------------------------------------------------ smaller things


def test_tlens_boot_of_a_paper_model_says_compile_with_arch_gpt2(gd_model, tmp_path):
    from raspicl.errors import RaspiclError
    from raspicl.interop import hf, tlens

    with pytest.raises(RaspiclError, match=r"paper architecture .*compile with --arch gpt2"):
        tlens.boot(gd_model)
    with pytest.raises(RaspiclError, match=r"compile with --arch gpt2"):
        hf.load_hf(gd_model)
    with pytest.raises(RaspiclError, match=r"not a raspicl HuggingFace export"):
        tlens.boot(tmp_path)


@pytest.mark.parametrize("command", [["inspect"], ["predict", "--prompts", "p.npz", "--out",
                                                   "x.npy"]])
def test_a_broken_layout_names_its_directory(gd_model, tmp_path, monkeypatch, capsys, command):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes((gd_model / "model.safetensors").read_bytes())
    layout = json.loads((gd_model / "layout.json").read_text())
    del layout["monitor"]
    (broken / "layout.json").write_text(json.dumps(layout))
    p = random_prompts(2, 2, 1, seed=0)
    np.savez(tmp_path / "p.npz", X=p.X, y=p.y, xq=p.xq)
    monkeypatch.chdir(tmp_path)
    assert main([command[0], "broken", *command[1:]]) == 2
    assert capsys.readouterr().err == ("raspicl: error: broken/layout.json: monitor is missing "
                                       "(it must be an object)\n")


def test_train_synopsis_gives_seed_as_optional():
    from raspicl.cli import build_parser as parser

    train = next(a for a in parser()._actions if hasattr(a, "choices") and a.choices
                 and "train" in a.choices).choices["train"]
    seed = train._option_string_actions["--seed"]
    assert not seed.required and seed.default == 0
    doc = (os.path.join(os.path.dirname(__file__), "..", "docs", "cli.md"))
    with open(doc) as f:
        text = f.read()
    assert "[--seed K]" in text and " --seed K --out DIR" not in text
