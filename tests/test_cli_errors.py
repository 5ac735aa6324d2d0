"""The command line's errors: each is exit status 2 and one line naming the fault, never a
traceback (docs/cli.md, "Exit status" and "Programs and parameters").

Errors raspicl finds are `raspicl: error: ...` on stderr and main() returns 2; a bad command line
(an option's value argparse's type check refuses) is argparse's usage line, then one line
`raspicl COMMAND: error: argument --OPTION: ...`, and SystemExit(2). Also: the --set parser,
the parameter checks that run before program() (raspicl.registry.ProgramFile.check_params), the
calibration flags (raspicl.cli_programs.domain_from_args) and raspicl.prompts.load_prompts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from raspicl.cli import build_parser, main
from raspicl.cli_args import parse_sets
from raspicl.cli_programs import domain_from_args
from raspicl.errors import RaspiclError
from raspicl.prompts import PromptDistribution, Prompts, load_prompts
from raspicl.registry import SIZE_LIMITS, find_program

ROOT = Path(__file__).resolve().parent.parent

GOOD_PROGRAM = '''
from raspicl import Program

GRID = {grid}


def program(d=1):
    p = Program("doubles", d=d, n=0)
    p.output(p.aff("twice", p.x, W1=2.0))
    return p
'''


def raspicl_error(argv: list[str], capsys) -> str:
    """main(argv) returns 2 and prints one line `raspicl: error: ...`: that line."""
    status = main(argv)
    captured = capsys.readouterr()
    assert status == 2, (status, captured.out, captured.err)
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("raspicl: error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def usage_error(argv: list[str], capsys) -> str:
    """argparse refuses argv: SystemExit(2), its usage, then one error line: that line."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: raspicl") and "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"raspicl {argv[0]}: error: "), err
    return last


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- a program file at fault -----------------------------------------------------------------

def test_program_returning_a_non_program(tmp_path, capsys):
    path = write(tmp_path, "returns_int.py", "def program(d=1):\n    return 5\n")
    line = raspicl_error(["run", str(path)], capsys)
    assert "returns_int.py" in line and "returned int, not a raspicl Program" in line


@pytest.mark.parametrize("body, name", [
    ('return {}["x"]', "KeyError"),
    ("return 1 / 0", "ZeroDivisionError"),
    ("raise RuntimeError('broken\\nacross lines')", "RuntimeError"),
    ("import no_such_module_anywhere", "ModuleNotFoundError"),
])
def test_program_raising_any_exception(tmp_path, capsys, body, name):
    path = write(tmp_path, "raises.py", f"def program(d=1):\n    {body}\n")
    for command in (["run", str(path)], ["verify", str(path), "--problems", "1"]):
        line = raspicl_error(command, capsys)
        assert "raises.py" in line and f"raised {name}" in line, line


def test_program_error_names_the_file_and_the_call(tmp_path, capsys):
    # gd_step's ProgramError for a NaN coefficient, prefixed with the file and the parameters
    line = raspicl_error(["run", "gd_step", "--set", "d=1", "--set", "lr=nan"], capsys)
    assert "gd_step.py: program(d=1, lr=nan)" in line and "NaN" in line, line


def test_reference_raising(tmp_path, capsys):
    text = GOOD_PROGRAM.format(grid="[{}]") + "\n\ndef reference(prompts, d=1):\n    return {}[0]\n"
    path = write(tmp_path, "badref.py", text)
    line = raspicl_error(["run", str(path), "--seed", "0"], capsys)
    assert "badref.py" in line and "reference(" in line and "KeyError" in line, line


@pytest.mark.parametrize("grid", ["5", "[]", "[1, 2]", "'d=1'", "[{1: 2}]"])
def test_grid_must_be_a_list_of_dicts(tmp_path, capsys, grid):
    path = write(tmp_path, "badgrid.py", GOOD_PROGRAM.format(grid=grid))
    line = raspicl_error(["verify", str(path), "--problems", "1"], capsys)
    assert "badgrid.py" in line and "GRID must be a non-empty list of dicts" in line, line


def test_grid_parameters_are_checked_before_anything_compiles(tmp_path, capsys):
    path = write(tmp_path, "biggrid.py", GOOD_PROGRAM.format(grid="[{'d': 1}, {'d': 10**6}]"))
    line = raspicl_error(["verify", str(path), "--problems", "1"], capsys)
    assert "d=1000000 is larger than 256" in line
    assert capsys.readouterr().out == ""  # not even the first set's row


def test_a_file_that_is_not_python(tmp_path, capsys):
    path = write(tmp_path, "notes.txt", "x = 1\n")
    line = raspicl_error(["run", str(path)], capsys)
    assert "notes.txt is not a program file" in line


# --- output paths ----------------------------------------------------------------------------

def test_compile_out_is_an_existing_file(tmp_path, capsys):
    file = write(tmp_path, "a_file", "")
    for out in (file, file / "below"):
        line = raspicl_error(["compile", "gd_step", "--set", "d=1", "--out", str(out)], capsys)
        assert f"{file} exists and is not a directory" in line, line


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="no /dev/null")
def test_compile_out_dev_null(capsys):
    line = raspicl_error(["compile", "gd_step", "--set", "d=1", "--out", "/dev/null"], capsys)
    assert "--out /dev/null" in line and "not a directory" in line


def test_inspect_plot_is_an_existing_file(tmp_path, capsys):
    file = write(tmp_path, "a_file", "")
    line = raspicl_error(["inspect", str(tmp_path), "--plot", str(file)], capsys)
    assert "--plot" in line and "not a directory" in line


# --- option values argparse refuses -----------------------------------------------------------

@pytest.mark.parametrize("argv, fault", [
    (["run", "gd_step", "--seed", "-1"], "argument --seed: must be an integer >= 0, got -1"),
    (["verify", "gd_step", "--seed", "-1"], "argument --seed: must be an integer >= 0"),
    (["run", "gd_step", "--seed", "x"], "argument --seed: invalid int value: 'x'"),
    (["verify", "gd_step", "--problems", "-5"], "argument --problems: must be at least 1, got -5"),
    (["verify", "gd_step", "--problems", "0"], "argument --problems: must be at least 1, got 0"),
    (["compile", "gd_step", "--out", "o", "--x-scale", "nan"],
     "argument --x-scale: must be a finite number >= 0, got nan"),
    (["compile", "gd_step", "--out", "o", "--w-scale", "inf"], "argument --w-scale: must be a"),
    (["verify", "gd_step", "--noise", "-0.5"], "argument --noise: must be a finite number >= 0"),
    (["verify", "gd_step", "--noise", "lots"], "argument --noise: invalid float value: 'lots'"),
])
def test_bad_option_values(argv, fault, capsys):
    assert fault in usage_error(argv, capsys)


# --- --set parsing and the parameter checks ----------------------------------------------------

def test_parse_sets_reads_nan_and_infinities_as_floats():
    params = parse_sets(["a=nan", "b=inf", "c=-inf", "d=4", "e=0.5", "f=[1, 2]", "g=hello",
                         "h=NaN", "i= 3"])
    assert np.isnan(params["a"]) and params["b"] == np.inf and params["c"] == -np.inf
    assert params["d"] == 4 and params["e"] == 0.5 and params["f"] == [1, 2]
    assert params["g"] == "hello" and np.isnan(params["h"]) and params["i"] == 3


@pytest.mark.parametrize("item", ["d", "=4"])
def test_parse_sets_needs_name_and_value(item):
    with pytest.raises(RaspiclError, match="NAME=VALUE"):
        parse_sets([item])


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("name", ["lr", "lam"])
def test_non_finite_coefficients_are_refused(name, value, capsys):
    line = raspicl_error(["run", "gd_step", "--set", "d=1", "--set", f"{name}={value}"], capsys)
    assert f"{name}={value}" in line and "NaN or infinite" in line, line


@pytest.mark.parametrize("value, fault", [
    ("True", "d must be an integer, got True"),
    ("False", "d must be an integer, got False"),
    ("4.0", "d must be an integer, got 4.0 (write d=4)"),
    ("2.5", "d must be an integer, got 2.5"),
    ("1e9", "d must be an integer, got 1000000000.0"),
    ("'two'", "d must be an integer, got 'two'"),
    ("1000000000", "d=1000000000 is larger than 256, the largest d raspicl accepts"),
    ("257", "raise SIZE_LIMITS['d'] in raspicl/registry.py"),
])
def test_integer_parameters(value, fault, capsys):
    for command in ("run", "verify"):
        line = raspicl_error([command, "gd_step", "--set", f"d={value}"], capsys)
        assert fault in line and "gd_step.py" in line, line


def test_size_limits_hold_before_program_runs(tmp_path, capsys):
    # program() would fail loudly if it were called at all
    text = "def program(d=1, n=1, T=1):\n    raise AssertionError('called')\n"
    path = write(tmp_path, "loud.py", text)
    for name, limit in SIZE_LIMITS.items():
        line = raspicl_error(["run", str(path), "--set", f"{name}={limit + 1}"], capsys)
        assert f"{name}={limit + 1} is larger than {limit}" in line, line
        line = raspicl_error(["run", str(path), "--set", f"{name}=1.0"], capsys)
        assert f"{name} must be an integer" in line


def test_size_limit_without_a_default(tmp_path, capsys):
    path = write(tmp_path, "nodefault.py", "def program(d):\n    raise AssertionError\n")
    assert "d must be an integer" in raspicl_error(["run", str(path), "--set", "d=True"], capsys)
    line = raspicl_error(["run", str(path)], capsys)
    assert "needs the parameter d" in line


def test_size_limits_at_the_limit_are_accepted():
    pf = find_program("batch_gd")
    pf.check_params({"d": SIZE_LIMITS["d"], "n": SIZE_LIMITS["n"], "T": SIZE_LIMITS["T"]})
    pf.check_params({"d": np.int64(3)})


def test_bool_for_a_float_parameter(capsys):
    assert "lr must be a number, got True" in raspicl_error(
        ["run", "gd_step", "--set", "lr=True"], capsys)


def test_unknown_parameter_lists_the_parameters(capsys):
    for command in ("run", "verify"):
        line = raspicl_error([command, "gd_step", "--set", "bogus=1"], capsys)
        assert "no parameter 'bogus'" in line
        assert "d=2, lr=0.1, lam=0.0, w0=None" in line, line


def test_open_ended_program_takes_any_name(tmp_path):
    path = write(tmp_path, "kw.py", "def program(d=1, **extra):\n    return 5\n")
    pf = find_program(path)
    pf.check_params({"anything": 1})
    with pytest.raises(RaspiclError, match="returned int"):
        pf.build(anything=1)


# --- the calibration flags ---------------------------------------------------------------------

def _args(*flags: str):
    return build_parser().parse_args(["compile", "gd_step", "--out", "o", *flags])


def test_no_calibration_flag_is_no_domain():
    assert domain_from_args(_args()) is None
    verify_args = build_parser().parse_args(["verify", "gd_step"])
    assert domain_from_args(verify_args) is None


@pytest.mark.parametrize("flags, want", [
    (["--x-scale", "2"], PromptDistribution(x_scale=2.0)),
    (["--w-scale", "0.5"], PromptDistribution(w_scale=0.5)),
    (["--noise", "0"], PromptDistribution(noise=0.0)),
    (["--x-scale", "1", "--w-scale", "3", "--noise", "0.25"],
     PromptDistribution(x_scale=1.0, w_scale=3.0, noise=0.25)),
])
def test_distribution_flags_override_the_defaults(flags, want):
    got = domain_from_args(_args(*flags))
    assert isinstance(got, PromptDistribution) and got == want
    verify_args = build_parser().parse_args(["verify", "gd_step", *flags])
    assert domain_from_args(verify_args) == want


def _prompts(B=3, n=2, d=4, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {"X": rng.standard_normal((B, n, d)), "y": rng.standard_normal((B, n)),
            "xq": rng.standard_normal((B, d))}


def test_calibration_prompts_npz_and_safetensors(tmp_path):
    from safetensors.numpy import save_file

    arrays = _prompts()
    np.savez(tmp_path / "p.npz", **arrays)
    save_file({k: v.astype(np.float32) for k, v in arrays.items()}, tmp_path / "p.safetensors")
    for name, tol in (("p.npz", 0.0), ("p.safetensors", 1e-6)):
        got = domain_from_args(_args("--calibration-prompts", str(tmp_path / name)))
        assert isinstance(got, Prompts) and (got.batch, got.n, got.d) == (3, 2, 4)
        for k in ("X", "y", "xq"):
            assert getattr(got, k).dtype == np.float64
            np.testing.assert_allclose(getattr(got, k), arrays[k], atol=tol, rtol=tol)


def test_calibration_prompts_exclude_the_distribution_flags(tmp_path, capsys):
    np.savez(tmp_path / "p.npz", **_prompts())
    with pytest.raises(RaspiclError, match="cannot be combined with --x-scale, --noise"):
        domain_from_args(_args("--calibration-prompts", str(tmp_path / "p.npz"),
                               "--x-scale", "1", "--noise", "0"))
    line = raspicl_error(["compile", "gd_step", "--out", str(tmp_path / "o"), "--w-scale", "1",
                          "--calibration-prompts", str(tmp_path / "p.npz")], capsys)
    assert "--calibration-prompts cannot be combined with --w-scale" in line


def _bad_prompt_files(tmp_path: Path) -> list[tuple[Path, str]]:
    good = _prompts()
    cases = []

    def npz(name, **arrays):
        path = tmp_path / f"{name}.npz"
        np.savez(path, **arrays)
        return path

    cases.append((npz("no_xq", X=good["X"], y=good["y"]), "no array xq"))
    cases.append((npz("x2d", X=good["X"][0], y=good["y"], xq=good["xq"]),
                  "X must be [B, n, d], got shape (2, 4)"))
    cases.append((npz("ybad", X=good["X"], y=good["y"][:, :1], xq=good["xq"]),
                  "y must have shape (3, 2)"))
    cases.append((npz("xqbad", X=good["X"], y=good["y"], xq=good["xq"][:, :2]),
                  "xq must have shape (3, 4)"))
    nan_y = good["y"].copy()
    nan_y[1, 1] = np.nan
    cases.append((npz("nan", X=good["X"], y=nan_y, xq=good["xq"]),
                  "y holds 1 NaN or infinite entries"))
    inf_x = good["X"].copy()
    inf_x[0, 0, :2] = np.inf
    cases.append((npz("inf", X=inf_x, y=good["y"], xq=good["xq"]),
                  "X holds 2 NaN or infinite entries"))
    cases.append((npz("empty", X=np.zeros((0, 2, 4)), y=np.zeros((0, 2)), xq=np.zeros((0, 4))),
                  "holds no prompts"))
    obj = np.empty(3, dtype=object)
    cases.append((npz("pickled", X=obj, y=good["y"], xq=good["xq"]), "refuses to load"))
    cases.append((npz("strings", X=np.array([["a"]]), y=good["y"], xq=good["xq"]),
                  "X has dtype <U1"))
    npy = tmp_path / "array.npz"
    with open(npy, "wb") as f:
        np.save(f, good["X"])
    cases.append((npy, "not a .npz archive"))
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"PK\x03\x04 not really a zip")
    cases.append((junk, "not a readable .npz file"))
    junk_st = tmp_path / "junk.safetensors"
    junk_st.write_bytes(b"\x00" * 5)
    cases.append((junk_st, "not a readable .safetensors file"))
    other = tmp_path / "p.csv"
    other.write_text("1,2\n")
    cases.append((other, "expected a .npz or .safetensors file"))
    cases.append((tmp_path / "missing.npz", "no such file"))
    return cases


def test_load_prompts_errors(tmp_path):
    for path, fault in _bad_prompt_files(tmp_path):
        with pytest.raises(RaspiclError) as exc:
            load_prompts(path)
        assert fault in str(exc.value) and str(path) in str(exc.value), (path, exc.value)


def test_load_prompts_refuses_a_pickle_file(tmp_path):
    import pickle

    path = tmp_path / "evil.npz"
    path.write_bytes(pickle.dumps({"X": 1}))
    with pytest.raises(RaspiclError, match="pickled"):
        load_prompts(path)


def test_calibration_prompts_errors_on_the_command_line(tmp_path, capsys):
    path, fault = _bad_prompt_files(tmp_path)[0]
    line = raspicl_error(["compile", "gd_step", "--out", str(tmp_path / "o"),
                          "--calibration-prompts", str(path)], capsys)
    assert fault in line


class _Recorder:
    """compile_program with the signature the compiler is gaining; records its keywords."""

    def __init__(self):
        from raspicl.compiler import compile_program

        self.real, self.calls = compile_program, []

    def __call__(self, program, config=None, loops="unroll", domain=None, arch="paper",
                 **kwargs):
        self.calls.append({"domain": domain, **kwargs})  # the target: tests/test_gpt2_*.py
        return self.real(program, config, loops, arch=arch)


def test_compile_passes_domain_only_when_a_flag_is_given(tmp_path, capsys, monkeypatch):
    rec = _Recorder()
    monkeypatch.setattr("raspicl.compiler.compile_program", rec)
    assert main(["compile", "gd_step", "--set", "d=1", "--out", str(tmp_path / "a")]) == 0
    assert main(["compile", "gd_step", "--set", "d=1", "--out", str(tmp_path / "b"),
                 "--noise", "0.5"]) == 0
    np.savez(tmp_path / "p.npz", **_prompts(B=2, n=1, d=1))
    assert main(["compile", "gd_step", "--set", "d=1", "--out", str(tmp_path / "c"),
                 "--calibration-prompts", str(tmp_path / "p.npz")]) == 0
    capsys.readouterr()
    assert rec.calls[0] == {"domain": None}
    assert rec.calls[1] == {"domain": PromptDistribution(noise=0.5)}
    assert isinstance(rec.calls[2]["domain"], Prompts) and rec.calls[2]["domain"].d == 1
    assert (tmp_path / "c" / "model.safetensors").is_file()


def test_calibration_prompts_must_fit_the_program(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("raspicl.compiler.compile_program", _Recorder())
    np.savez(tmp_path / "p.npz", **_prompts(B=2, n=2, d=4))
    line = raspicl_error(["compile", "gd_step", "--set", "d=1", "--out", str(tmp_path / "o"),
                          "--calibration-prompts", str(tmp_path / "p.npz")], capsys)
    assert "d=4, n=2" in line and "needs d=1, n=1" in line, line


def test_compile_with_a_domain_end_to_end(tmp_path, capsys):
    np.savez(tmp_path / "p.npz", **_prompts(B=16, n=1, d=1))
    for flags in (["--x-scale", "2", "--noise", "0"],
                  ["--calibration-prompts", str(tmp_path / "p.npz")]):
        out = tmp_path / flags[0].strip("-")
        assert main(["compile", "gd_step", "--set", "d=1", "--out", str(out), *flags]) == 0
        assert (out / "model.safetensors").is_file() and (out / "layout.json").is_file()
    capsys.readouterr()


# --- a closed pipe ------------------------------------------------------------------------------

def test_closed_pipe_ends_quietly():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH")] if p)
    proc = subprocess.Popen([sys.executable, "-m", "raspicl", "list"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=ROOT)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert err == "", err
