"""Symbolic execution: a program's semantics over sympy expressions, to prove it equals a formula.

The prompt's entries become real symbols (x_i_j, y_i, xq_j; i counts examples from 1, j counts
components from 1), the program runs through the interpreter's own `run_ops` on that object
array — there is no second semantics — and every register at every token is an expression in
those symbols (and in any sympy parameters the program was built with: lr, lam, w0, ...).

    tokens, syms = symbolic_prompt(program.format)
    trace = run_symbolic(program)
    pred = register_expressions(trace, "pred", program.format.n_tokens - 1)
    assert prove_equal(pred, closed_form(syms.X[0], syms.y[0], syms.xq, ...))

Float coefficients enter as the exact rationals they equal (see semantics.py), so 0.5 is 1/2;
a coefficient such as 0.1 is not 1/10 in float64 and is not proven equal to it. Build programs
with sympy numbers (sympy.Rational(1, 10)) or symbols for exact statements.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import sympy

from raspicl.exact import prove_equal  # noqa: F401 - part of this module's interface (above)
from raspicl.interpret import Trace, run_ops
from raspicl.lang.program import Program, PromptFormat


@dataclass(frozen=True)
class PromptSymbols:
    """The symbols of one prompt: X[i] is x_{i+1} (a d x 1 Matrix), y[i] is y_{i+1}, xq is the
    query (a d x 1 Matrix)."""

    X: list[sympy.Matrix]
    y: list[sympy.Symbol]
    xq: sympy.Matrix


def prompt_symbols(fmt: PromptFormat) -> PromptSymbols:
    """Real symbols x_i_j, y_i (i = 1..n, j = 1..d) and xq_j. Symbols are equal by name and
    assumptions, so calling this twice gives the same symbols."""
    X = [sympy.Matrix([sympy.Symbol(f"x_{i}_{j}", real=True) for j in range(1, fmt.d + 1)])
         for i in range(1, fmt.n + 1)]
    y = [sympy.Symbol(f"y_{i}", real=True) for i in range(1, fmt.n + 1)]
    xq = sympy.Matrix([sympy.Symbol(f"xq_{j}", real=True) for j in range(1, fmt.d + 1)])
    return PromptSymbols(X, y, xq)


def symbolic_prompt(fmt: PromptFormat) -> tuple[np.ndarray, PromptSymbols]:
    """Object token array [1, 2n+1, d+1] in the paper's format — x~_i = [0, x_i],
    y~_i = [y_i, 0_d], x~_q = [0, x_q] — and the symbols in it."""
    syms = prompt_symbols(fmt)
    tokens = np.full((1, fmt.n_tokens, fmt.d_token), sympy.Integer(0), dtype=object)
    for i in range(fmt.n):
        tokens[0, 2 * i, 1:] = list(syms.X[i])
        tokens[0, 2 * i + 1, 0] = syms.y[i]
    tokens[0, 2 * fmt.n, 1:] = list(syms.xq)
    return tokens, syms


def run_symbolic(program: Program) -> Trace:
    """Run the program on the symbolic prompt of its format: a Trace of sympy expressions
    (batch of one). Undefined reads (before token 0, before a role's first token) are sympy.nan.
    """
    program.validate()
    tokens, _ = symbolic_prompt(program.format)
    return run_ops(program, tokens)


def register_expressions(trace: Trace, name: str, t: int):
    """Register `name` at token t: an expression for a scalar, a d x 1 Matrix for a vector,
    a Matrix of its shape for a matrix."""
    value = trace.register(name)[0, t]
    if not isinstance(value, np.ndarray):
        return value
    if value.ndim == 0:
        return value.item()
    if value.ndim == 1:
        return sympy.Matrix(list(value))
    return sympy.Matrix(value.tolist())
