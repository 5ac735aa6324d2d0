"""Symbolic execution: each reference program equals its closed form exactly, for d = 2 and 3.

The programs run through the interpreter's semantics on a prompt of sympy symbols; sympy then
proves output minus closed form is 0 — with exact numeric parameters, and with the step size,
the ridge parameter and the initial weights themselves as symbols.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sympy

from raspicl.registry import find_program
from raspicl.symbolic import prove_equal, register_expressions, run_symbolic, symbolic_prompt

PROGRAMS = Path(__file__).resolve().parent.parent / "programs"

LR = sympy.Symbol("alpha", positive=True)
LAM = sympy.Symbol("lambda", positive=True)


def load_program(name: str):
    """The module programs/<name>.py (loaded by path, through raspicl's own loader)."""
    return find_program(name).module


def w0_symbols(d: int) -> list[sympy.Symbol]:
    return list(sympy.symbols(f"w_1:{d + 1}", real=True))


def params(name: str, case: str, d: int) -> dict:
    """Keyword parameters of program() and closed_form() for one case."""
    if name == "gd_step":
        return {"rational": {"lr": sympy.Rational(1, 10), "lam": sympy.Rational(1, 2)},
                "float": {"lr": 0.25, "lam": 0.5},  # exact in binary: a float64 program
                "symbolic": {"lr": LR, "lam": LAM, "w0": w0_symbols(d)}}[case]
    return {"rational": {"lam": sympy.Rational(1, 2)},
            "float": {"lam": 0.5},
            "symbolic": {"lam": LAM}}[case]


def output_and_symbols(module, d: int, kw: dict):
    program = module.program(d=d, **kw)
    trace = run_symbolic(program)
    query = program.format.n_tokens - 1
    expr = register_expressions(trace, program.output_spec.register.name, query)
    _, syms = symbolic_prompt(program.format)
    return program, expr, syms


@pytest.mark.parametrize("case", ["rational", "float", "symbolic"])
@pytest.mark.parametrize("name", ["gd_step", "sherman_morrison"])
@pytest.mark.parametrize("d", [2, 3])
def test_output_equals_closed_form(d, name, case):
    module = load_program(name)
    kw = params(name, case, d)
    program, expr, syms = output_and_symbols(module, d, kw)
    assert program.is_symbolic() == (case != "float")
    closed = module.closed_form(syms.X[0], syms.y[0], syms.xq, d=d, **kw)
    free = expr.free_symbols
    assert set(syms.xq) <= free and syms.y[0] in free  # a real expression, not a constant
    if case == "symbolic":
        assert {LAM} <= free
        if name == "gd_step":
            assert {LR, *kw["w0"]} <= free
    assert prove_equal(expr, closed)


def test_wrong_lambda_sign_is_not_proven():
    """The paper's slip (+lam where the gradient gives -lam in w') must not pass."""
    module = load_program("gd_step")
    kw = params("gd_step", "symbolic", 2)
    _, expr, syms = output_and_symbols(module, 2, kw)
    wrong = module.closed_form(syms.X[0], syms.y[0], syms.xq, d=2, **{**kw, "lam": -LAM})
    assert not prove_equal(expr, wrong)


def test_wrong_ridge_parameter_is_not_proven():
    module = load_program("sherman_morrison")
    _, expr, syms = output_and_symbols(module, 3, {"lam": LAM})
    wrong = module.closed_form(syms.X[0], syms.y[0], syms.xq, d=3, lam=2 * LAM)
    assert not prove_equal(expr, wrong)


def test_float_coefficients_are_exact_binary_values():
    """lr = 0.1 in float64 is not 1/10, and the symbolic run does not pretend it is."""
    module = load_program("gd_step")
    _, expr, syms = output_and_symbols(module, 2, {"lr": 0.1, "lam": 0.5})
    rounded = module.closed_form(syms.X[0], syms.y[0], syms.xq, d=2, lr=0.1, lam=0.5)
    assert not prove_equal(expr, rounded)


def test_undefined_read_is_nan():
    module = load_program("gd_step")
    trace = run_symbolic(module.program(d=2, lr=LR, lam=LAM))
    x_prev = register_expressions(trace, "x_prev", 0)  # reads the token before token 0
    assert all(v is sympy.nan for v in x_prev)
    assert register_expressions(trace, "g", 0)[0] is sympy.nan  # and it propagates
    assert not prove_equal(register_expressions(trace, "pred0", 0), 0)


def test_symbolic_prompt_layout():
    module = load_program("gd_step")
    fmt = module.program(d=2).format
    tokens, syms = symbolic_prompt(fmt)
    assert tokens.shape == (1, 3, 3) and tokens.dtype == np.dtype(object)
    assert list(tokens[0, 0]) == [0, *syms.X[0]]
    assert list(tokens[0, 1]) == [syms.y[0], 0, 0]
    assert list(tokens[0, 2]) == [0, *syms.xq]
    assert all(s.is_real for s in (*syms.X[0], syms.y[0], *syms.xq))
