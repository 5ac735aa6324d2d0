"""Expressions (raspicl/lang/expr.py): operators, indexing, broadcasting, transpose, outer, eye.

Values are checked in the float64 interpreter against numpy computed here from the prompt's
tokens; lowering is checked by the ops it writes (a linear combination is one op, a pick costs
none); errors must name the operator, the registers and this file's line; a small expression
is checked symbolically with sympy; one program is compiled and checked against the
interpreter.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from raspicl import Mean, Offset, Program, ProgramError, Read, interpret, random_prompts
from raspicl.lang.expr import eye, outer, transpose

THIS_FILE = os.path.basename(__file__)
B = 6


def _prompts(d: int, n: int, seed: int = 0):
    return random_prompts(B, d, n, seed=seed)


def _tokens(prompts):
    """x and y at every token, from the prompt itself: [B, T, d], [B, T]."""
    tok = prompts.tokens()
    return tok[..., 1:], tok[..., 0]


def _trace(p: Program, prompts):
    """The interpreter's trace; a program without an output reads its last op's register."""
    if p.output_spec is None:
        p.output(p.ops[-1].dst)
    return interpret(p, prompts)


def _value(p: Program, reg, prompts) -> np.ndarray:
    return _trace(p, prompts).register(reg.name)


def test_linear_combination_is_one_op_and_matches_numpy():
    p = Program("lin", d=3, n=2)
    M = np.arange(6.0).reshape(2, 3) / 4
    e = 2.0 * p.x - 0.5 * p.x + M.T @ np.array([1.0, -1.0]) + p.y
    r = p.let("r", e)
    assert len(p.ops) == 1 and p.ops[0].is_linear
    pr = _prompts(3, 2)
    X, Y = _tokens(pr)
    want = 1.5 * X + (M.T @ np.array([1.0, -1.0]))[None, None] + Y[..., None]
    np.testing.assert_allclose(_value(p, r, pr), want, rtol=0, atol=1e-12)


def test_matrix_times_register_and_reads_at_places():
    d = 2
    p = Program("places", d=d, n=3)
    A = np.array([[1.0, 2.0], [-1.0, 0.5]])
    r = p.let("r", A @ Read(p.x, Offset(1)) - Read(p.x, Mean("x")))
    pr = _prompts(d, 3, seed=1)
    X, _ = _tokens(pr)
    T = X.shape[1]
    got = _value(p, r, pr)
    for t in range(1, T):
        xs = [s for s in range(t + 1) if s % 2 == 0 and s < T - 1]  # role 'x'
        want = X[:, t - 1] @ A.T - X[:, xs].mean(axis=1)
        np.testing.assert_allclose(got[:, t], want, atol=1e-12)
    assert np.isnan(got[:, 0]).all()  # Offset(1) lies before the prompt at token 0


def test_indexing_rows_columns_entries_cost_no_op():
    d = 3
    p = Program("index", d=d, n=1)
    S = p.let("S", outer(p.x, p.x))
    n_ops = len(p.ops)
    row, col, entry, last = S[1, :], S[:, 2], S[0, 1], p.x[-1]
    assert len(p.ops) == n_ops  # a pick is a coefficient map, not an op
    r = p.let("r", row + col + entry * p.x + last)
    assert len(p.ops) == n_ops + 1
    pr = _prompts(d, 1, seed=2)
    X, _ = _tokens(pr)
    Sv = np.einsum("bti,btj->btij", X, X)
    want = Sv[:, :, 1, :] + Sv[:, :, :, 2] + Sv[:, :, 0, 1][..., None] * X + X[..., -1:]
    np.testing.assert_allclose(_value(p, r, pr), want, atol=1e-12)


def test_slices_with_steps_and_matrix_blocks():
    p = Program("slices", d=4, n=1)
    S = p.let("S", outer(p.x, p.x))
    r = p.let("r", S[1:3, ::2])
    assert r.shape == (2, 2)
    pr = _prompts(4, 1, seed=3)
    X, _ = _tokens(pr)
    Sv = np.einsum("bti,btj->btij", X, X)
    np.testing.assert_allclose(_value(p, r, pr), Sv[:, :, 1:3, ::2], atol=1e-12)


def test_broadcast_scalar_against_vector_and_matrix():
    """The mul that needed b_shape: a scalar register times a vector and a matrix."""
    d = 2
    p = Program("bcast", d=d, n=1)
    s = p.let("s", p.x @ p.x)
    A = p.let("A", outer(p.x, p.x))
    v = p.let("v", s * p.x + 1.0)
    m = p.let("m", A * s - s)
    pr = _prompts(d, 1, seed=4)
    X, _ = _tokens(pr)
    sv = np.sum(X * X, axis=-1)
    np.testing.assert_allclose(_value(p, v, pr), sv[..., None] * X + 1.0, atol=1e-12)
    Av = np.einsum("bti,btj->btij", X, X)
    np.testing.assert_allclose(
        _value(p, m, pr), Av * sv[..., None, None] - sv[..., None, None], atol=1e-12
    )


def test_matmul_forms_transpose_outer_and_eye():
    d = 3
    p = Program("mm", d=d, n=1)
    A = p.let("A", outer(p.x, np.arange(1.0, d + 1)))  # x c^T
    Bm = p.let("Bm", A.T @ A + 2.0 * eye(d))  # matrix @ matrix
    v = p.let("v", A @ p.x)  # matrix @ vector
    w = p.let("w", p.x @ A)  # vector @ matrix
    s = p.let("s", p.x @ transpose(A) @ p.x)  # vector @ matrix @ vector
    pr = _prompts(d, 1, seed=5)
    X, _ = _tokens(pr)
    c = np.arange(1.0, d + 1)
    Av = np.einsum("bti,j->btij", X, c)
    want_B = np.einsum("btji,btjk->btik", Av, Av) + 2.0 * np.eye(d)
    np.testing.assert_allclose(_value(p, Bm, pr), want_B, atol=1e-10)
    np.testing.assert_allclose(_value(p, v, pr), np.einsum("btij,btj->bti", Av, X), atol=1e-10)
    np.testing.assert_allclose(_value(p, w, pr), np.einsum("bti,btij->btj", X, Av), atol=1e-10)
    np.testing.assert_allclose(
        _value(p, s, pr), np.einsum("bti,btji,btj->bt", X, Av, X), atol=1e-10
    )


def test_division_by_a_scalar_expression_is_div_and_by_a_number_is_a_scale():
    d = 2
    p = Program("div", d=d, n=1)
    q = p.let("q", p.x / (1.0 + p.x @ p.x))
    h = p.let("h", p.x / 4)
    kinds = [op.kind for op in p.ops]
    assert kinds.count("div") == 1
    pr = _prompts(d, 1, seed=6)
    X, _ = _tokens(pr)
    np.testing.assert_allclose(
        _value(p, q, pr), X / (1.0 + np.sum(X * X, -1))[..., None], atol=1e-12
    )
    np.testing.assert_allclose(_value(p, h, pr), X / 4, atol=1e-15)


def test_shift_applies_the_linear_map_inside_the_read():
    """e.at(Offset(1)) shifts every read: one op, a raw whose reads are all remote."""
    p = Program("shift", d=2, n=2)
    e = 3.0 * p.x - Read(p.y, Offset(1))
    r = p.let("r", e.at(Offset(1)))
    assert len(p.ops) == 1
    assert {read.at for read in p.ops[0].reads} == {Offset(1), Offset(2)}
    pr = _prompts(2, 2, seed=7)
    X, Y = _tokens(pr)
    got = _value(p, r, pr)
    np.testing.assert_allclose(got[:, 2:], 3.0 * X[:, 1:-1] - Y[:, :-2, None], atol=1e-12)


def test_distribute_or_bind_a_sum_factor():
    """x * (s - y) distributes (2d product terms, no extra op); x * (x @ w0 - y) with a
    d-entry sum binds the sum first (one aff, then d product terms)."""
    d = 4
    p = Program("dist", d=d, n=1)
    s = p.let("s", p.x @ p.x)
    n0 = len(p.ops)
    p.let("a", p.x * (s - p.y))
    assert len(p.ops) == n0 + 1
    n1 = len(p.ops)
    p.let("b", p.x * (p.x @ np.ones(d) - p.y))
    assert len(p.ops) == n1 + 2 and p.ops[n1].is_linear
    pr = _prompts(d, 1, seed=8)
    X, Y = _tokens(pr)
    tr = _trace(p, pr)
    sv = np.sum(X * X, -1)
    np.testing.assert_allclose(tr.register("a"), X * (sv - Y)[..., None], atol=1e-12)
    np.testing.assert_allclose(tr.register("b"), X * (X.sum(-1) - Y)[..., None], atol=1e-12)


def test_an_expression_used_twice_is_bound_once():
    p = Program("cse", d=2, n=1)
    u = outer(p.x, p.x) @ p.x  # x x^T bound first (a factor of degree 2), then u (degree 2)
    p.let("r", u @ u + p.x @ u)  # u is a factor three times: bound once
    assert sum(1 for op in p.ops if op.dst.name.startswith("_f")) == 2
    assert len(p.ops) == 3


def test_constant_register_is_folded_as_its_value():
    p = Program("const", d=2, n=1)
    w0 = p.const("w0", [0.5, -0.5])
    r = p.let("r", p.x @ w0)
    assert p.ops[-1].is_linear  # x . w0 with w0 constant is linear
    pr = _prompts(2, 1, seed=9)
    X, _ = _tokens(pr)
    np.testing.assert_allclose(_value(p, r, pr), X @ np.array([0.5, -0.5]), atol=1e-15)


def test_var_written_again_refuses_a_stale_expression():
    p = Program("stale", d=2, n=1)
    w = p.var("w", 2, init=[1.0, 2.0])
    e = 2.0 * w
    p.let(w, w + p.x)
    with pytest.raises(ProgramError) as exc:
        p.let("r", e)
    msg = str(exc.value)
    assert "op 'let' writing 'r'" in msg and "'w'" in msg and THIS_FILE in msg


def test_var_rewrite_with_an_expression_is_an_in_place_update():
    p = Program("inplace", d=2, n=1)
    w = p.var("w", 2, init=[1.0, -1.0])
    for _ in p.loop(3):
        p.let(w, 0.5 * w + p.x)
    pr = _prompts(2, 1, seed=10)
    X, _ = _tokens(pr)
    want = np.array([1.0, -1.0])[None, None]
    for _ in range(3):
        want = 0.5 * want + X
    np.testing.assert_allclose(_trace(p, pr).register("w"), want, atol=1e-14)


def test_loop_body_with_products_reuses_its_intermediates():
    """A product of products in a loop binds its factor to the same var every iteration, so
    the iterations stay identical (p.loop checks it)."""
    p = Program("loopy", d=2, n=1)
    M = p.var("M", (2, 2), init=np.eye(2) / 4)
    A = outer(p.x, p.x) / 8 + np.eye(2)
    for _ in p.loop(2):
        p.let(M, 2 * M - M @ A @ M)
    pr = _prompts(2, 1, seed=11)
    X, _ = _tokens(pr)
    Av = np.einsum("bti,btj->btij", X, X) / 8 + np.eye(2)
    Mv = np.broadcast_to(np.eye(2) / 4, Av.shape)
    for _ in range(2):
        Mv = 2 * Mv - Mv @ Av @ Mv
    np.testing.assert_allclose(_trace(p, pr).register("M"), Mv, atol=1e-12)


@pytest.mark.parametrize(
    "build, expect",
    [
        (lambda p: p.x + outer(p.x, p.x), ("op '+'", "'x' (vector(2))", "shapes must be equal")),
        (lambda p: p.x @ p.y, ("op '@'", "'x'", "'y'", "scalar")),
        (lambda p: outer(p.x, p.x) @ np.ones(3), ("op '@'", "inner dimensions differ")),
        (lambda p: outer(p.x, p.y), ("op 'outer'", "two vectors")),
        (lambda p: p.x / p.x, ("op '/'", "divides by a scalar")),
        (lambda p: p.x / 0, ("op '/'", "constant 0")),
        (lambda p: p.let("r", p.x * np.nan), ("op 'let' writing 'r'", "NaN or infinite")),
        (lambda p: p.x[2], ("op '[]'", "'x'", "out of range")),
        (lambda p: p.x[0, 1], ("op '[]'", "has 2 entries")),
        (lambda p: p.x["a"], ("op '[]'", "int or a slice")),
        (lambda p: (Read(p.x, Mean("x")) + 0).at(Offset(1)), ("op 'at'", "cannot be shifted")),
        (lambda p: p.let("r", "text"), ("op 'let' writing 'r'", "expression")),
        (lambda p: p.let(p.var("v", 3), p.x), ("op 'mov' writing 'v'", "vector(2)")),
    ],
    ids=[
        "add-shapes",
        "matmul-scalar",
        "matmul-inner",
        "outer-scalar",
        "div-vector",
        "div-zero",
        "let-nan",
        "index-range",
        "index-arity",
        "index-type",
        "shift-mean",
        "let-text",
        "let-shape",
    ],
)
def test_errors_name_operator_registers_and_line(build, expect):
    p = Program("bad", d=2, n=1)
    with pytest.raises(ProgramError) as exc:
        build(p)
    msg = str(exc.value)
    for part in expect:
        assert part in msg, msg
    assert THIS_FILE in msg, msg


def test_register_of_another_program_is_refused():
    p, q = Program("p", d=2, n=1), Program("q", d=2, n=1)
    with pytest.raises(ProgramError, match="another program"):
        p.let("r", p.x + q.x)


def test_ops_record_the_line_of_the_expression():
    p = Program("lines", d=2, n=1)
    e = p.x * (p.x @ p.x - p.y)  # the bound factor's op is made on this line
    line = e.source.line
    p.let("r", e)
    assert all(op.source.file.endswith(THIS_FILE) for op in p.ops)
    assert p.ops[0].source.line == line


def test_symbolic_coefficients_give_the_formula():
    """With sympy coefficients the interpreter's value is the formula itself."""
    sympy = pytest.importorskip("sympy")
    from raspicl.symbolic import prompt_symbols, prove_equal, register_expressions, run_symbolic

    lr, lam = sympy.symbols("lr lam", positive=True)
    d = 2
    p = Program("sym", d=d, n=1)
    w0 = np.array([sympy.Rational(1, 2), -sympy.Rational(1, 2)], dtype=object)
    x = p.mov("x1", Read(p.x, Offset(1)))
    p.let("w1", w0 - 2 * lr * (x * (x @ w0 - p.y) + lam * w0))
    p.output(p.let("pred", Read(p.registers["w1"], Offset(1)) @ p.x))
    assert p.is_symbolic()
    syms = prompt_symbols(p.format)
    trace = run_symbolic(p)
    xs, ys, W0 = syms.X[0], syms.y[0], sympy.Matrix(w0)
    want = W0 - 2 * lr * (xs * ((xs.T * W0)[0] - ys) + lam * W0)
    assert prove_equal(register_expressions(trace, "w1", 1), want)
    assert prove_equal(register_expressions(trace, "pred", 2), (want.T * syms.xq)[0])


def test_compiled_expression_program_matches_the_interpreter():
    from raspicl.compiler import compile_program
    from raspicl.verify import rel_err

    d = 2
    p = Program("compiled", d=d, n=2)
    S = p.let("S", outer(Read(p.x, Offset(1)), Read(p.x, Offset(1))))
    u = p.let("u", S[0, :] * p.y + S[:, 1] / (1.0 + p.x @ p.x))
    p.output(p.let("pred", u.T @ p.x - 0.5 * S[1, 1]))
    pr = _prompts(d, 2, seed=12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = compile_program(p)
        got = cm.predict(pr, check="ignore")
    assert rel_err(got, interpret(p, pr).output()) <= 1e-8


def test_language_reference_examples_run():
    """The ```python blocks of docs/language.md run (in order, one namespace), so they cannot
    rot; the error message it quotes for a shape mismatch is the one raised."""
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "language.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    assert len(blocks) >= 3
    namespace: dict = {"__name__": "__language_md__"}
    for code in blocks:
        exec(compile(code, "docs/language.md", "exec"), namespace)  # the reference's own code
    import re

    p = Program("shapes", d=2, n=1)
    with pytest.raises(ProgramError) as exc:
        p.x + outer(p.x, p.x)
    start = text.index("    op '+' on ")
    quoted = " ".join(text[start : text.index("\n\n", start)].split())
    raised = re.sub(r" at \S+:\d+: ", " at model.py:7: ", str(exc.value))
    assert quoted == raised
