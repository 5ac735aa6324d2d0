"""Guarded inputs: a compiled model checks its prompt's shape, finiteness and
domain before running, and its divisors after; each finding is an error, or a warning or
nothing where the caller asks for it (check='warn' / 'ignore')."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from raspicl import Program, random_prompts
from raspicl.compiler import compile_program
from raspicl.errors import DomainError, DomainWarning
from raspicl.export import load, save
from raspicl.guards import check_prompt
from raspicl.registry import find_program


@pytest.fixture(scope="module")
def gd():
    return compile_program(find_program("gd_step").build(d=2))


@pytest.fixture(scope="module")
def near_zero():
    """q = (x + 3) / |x - 1| with d = 1: the prompt sets the divisor at the x tokens."""
    p = Program("near_zero", d=1, n=1)
    s = p.aff("s", p.x, bias=-1.0, shape=())
    num = p.aff("num", p.x, bias=3.0, shape=())
    p.output(p.div("q", num, s), roles=("query",))
    return compile_program(p)


def _tokens(cm, batch=4, seed=0):
    p = cm.layout["prompt"]
    return random_prompts(batch, p["d"], p["n_examples"], seed).tokens()


def test_in_domain_prompts_pass_silently(gd, near_zero):
    for cm in (gd, near_zero):
        tok = _tokens(cm, batch=200)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert check_prompt(cm.layout, tok) == []
            res = cm.residuals(tok)
            assert cm.contract(res).accepted.all()
            cm.predict(tok)


def test_wrong_token_count(gd):
    tok = _tokens(gd)[:, :2]
    for check in ("error", "warn", "ignore"):
        with pytest.raises(ValueError, match=r"\[batch, 3, 3\].*got \[4, 2, 3\]"):
            gd.predict(tok, check=check)


def test_wrong_width(gd):
    tok = np.concatenate([_tokens(gd), np.zeros((4, 3, 1))], axis=2)
    with pytest.raises(ValueError, match=r"\[batch, 3, 3\].*got \[4, 3, 4\]"):
        gd.predict(tok)
    with pytest.raises(ValueError, match="got"):
        check_prompt(gd.layout, tok[0])


# A NaN token also trips the gadgets it reaches: those findings come with the one asserted below.
@pytest.mark.filterwarnings("ignore::raspicl.errors.DomainWarning")
def test_nan_names_token_role_and_component(gd):
    tok = _tokens(gd)
    tok[1, 2, 2] = np.nan  # the query's x[1]
    with pytest.raises(DomainError, match=r"token 2 \(query\) of prompt 1, component 2 \(x\[1\]\)"
                                          r", is NaN"):
        gd.predict(tok)
    with pytest.warns(DomainWarning, match="is NaN"):
        out = gd.predict(tok, check="warn")
    assert np.isnan(out[1]).all() and np.isfinite(out[0]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gd.predict(tok, check="ignore")


def test_inf_names_token_role_and_component(gd):
    tok = _tokens(gd)
    tok[0, 1, 0] = np.inf
    with pytest.raises(DomainError, match=r"token 1 \(y, example 1\) of prompt 0, component 0 "
                                          r"\(y\), is \+inf"):
        gd.residuals(tok)


@pytest.mark.parametrize("check", ["error", "warn"])
def test_x_beyond_domain(gd, check):
    """check_prompt still reports |x| beyond calibration (verify notes it); the model itself
    refuses such a prompt only where its monitor cannot vouch for the answer."""
    bound = gd.layout["domain"]["x_abs_max"]
    tok = _tokens(gd)
    tok[3, 0, 1] = -(bound + 1.0)
    tok[2, 0, 2] = bound + 0.5
    want = re.escape(f"|x| = {bound + 1:.4g} at token 0 (x, example 1) of prompt 3, component 1 "
                     f"(x[0]), exceeds the domain x_abs_max = {bound:.4g} under which the error "
                     f"bound holds (2 entries in 2 prompts)")
    assert check_prompt(gd.layout, tok, "ignore")[0] == want.replace("\\", "")
    tok[3, 0, 1] = -1000 * bound  # far beyond: the product gadget's range
    if check == "error":
        with pytest.raises(DomainError, match=r"cannot vouch for 1 of 4 prompts:\n.*prompt 3"):
            gd.predict(tok)
    else:
        with pytest.warns(DomainWarning, match="prompt 3"):
            out = gd.predict(tok, check="warn")
        assert out.shape == (4, 1, 1)


def test_y_beyond_domain(gd):
    bound = gd.layout["domain"]["y_abs_max"]
    tok = _tokens(gd)
    tok[0, 1, 0] = 2 * bound
    with pytest.warns(DomainWarning, match="y_abs_max"):
        msgs = check_prompt(gd.layout, tok, "warn")
    assert len(msgs) == 1
    tok[0, 1, 0] = 1e6 * bound
    with pytest.raises(DomainError, match="prompt 0"):
        gd.predict(tok)


def test_values_at_the_bound_pass(gd):
    tok = _tokens(gd)
    tok[0, 0, 1] = gd.layout["domain"]["x_abs_max"]
    assert check_prompt(gd.layout, tok) == []


def test_divisor_too_close_to_zero(near_zero):
    cm = near_zero
    (div,) = cm.layout["domain"]["divisors"]
    assert div["register"] == "s" and 0 < div["abs_min"] < 0.1
    assert div["tokens"] == [0, 1, 2]
    tok = _tokens(cm)
    tok[2, 2, 1] = 1.0 + 1e-9  # |s| = 1e-9 at the query of prompt 2; |x| is in the domain
    assert check_prompt(cm.layout, tok) == []
    want = r"cannot vouch for 1 of 4 prompts:\n.*q\[0\].*div writing 'q'.*prompt 2"
    with pytest.raises(DomainError, match=want):
        cm.predict(tok)
    with pytest.raises(DomainError, match=want):
        cm.residuals(tok)
    with pytest.warns(DomainWarning, match="prompt 2"):
        out = cm.predict(tok, check="warn")
    assert out.shape == (4, 1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = cm.predict(tok, check="ignore")
    x = tok[:, 2, 1]
    ok = np.arange(4) != 2
    assert np.allclose(out[ok, 0, 0], (x[ok] + 3) / np.abs(x[ok] - 1), rtol=1e-8)


def test_divisor_check_ignores_tokens_where_it_is_undefined():
    """s reads x one token back: at token 0 it is undefined and the model's value there is
    whatever the weights make of nothing, which the guard must not report."""
    from raspicl import Offset, Read

    p = Program("back", d=1, n=1)
    prev = p.mov("prev", Read(p.x, Offset(2)))
    s = p.aff("s", prev, bias=-1.0, shape=())
    p.output(p.div("q", p.aff("num", p.x, bias=3.0, shape=()), s), roles=("query",))
    cm = compile_program(p)
    (div,) = cm.layout["domain"]["divisors"]
    assert div["tokens"] == [2]
    tok = _tokens(cm)
    tok[0, 0, 1] = 1.0 + 1e-9  # x_1 = 1: s at the query is ~0
    with pytest.raises(DomainError, match=r"token 2 \(query\) of prompt 0"):
        cm.predict(tok)


def test_guards_survive_export(near_zero, tmp_path):
    cm = load(save(near_zero, tmp_path / "m"))
    tok = _tokens(cm)
    tok[0, 2, 1] = 1.0 - 1e-10
    with pytest.raises(DomainError, match="prompt 0"):
        cm.predict(tok)


def test_unknown_check_mode(gd):
    with pytest.raises(ValueError, match="'error', 'warn', 'ignore'"):
        gd.predict(_tokens(gd), check="strict")


def test_verification_stays_inside_the_domain():
    """verify's random problems come from the calibration distribution: no guard fires."""
    from raspicl.verify import verify_program

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = verify_program(find_program("sherman_morrison"), {"d": 2}, "float64", problems=1000,
                           seed=0, symbolic=False)
    assert r.passed


def test_cli_verify_unaffected(capsys):
    from raspicl.cli import main

    assert main(["verify", "gd_step", "--set", "d=2", "--dtype", "float64", "--problems", "200",
                 "--no-symbolic"]) == 0
    assert "1 passed, 0 failed" in capsys.readouterr().out


@pytest.mark.parametrize("method", ["predict", "run", "residuals"])
def test_refusal_warnings_point_at_the_caller(gd, method):
    tok = _tokens(gd)
    tok[0, 0, 1] = 1e6
    with pytest.warns(DomainWarning) as record:
        getattr(gd, method)(tok, check="warn")
    assert record[0].filename == __file__
