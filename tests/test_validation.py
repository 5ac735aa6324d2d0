"""Malformed programs are refused with a ProgramError that points at the user's own line.

Every malformed case asserts that the message names the op kind, the register and the source
line (this file and the line of the offending call). The line is never hard-coded: errors
raised while an op is built are located by the traceback frame of this file; errors raised by
validate() are located by `here()`, evaluated on the same line as the offending op.

Well-formed programs (the bundled ones, and one using every op kind) validate, and the last is
checked against a hand computation in numpy.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import numpy as np
import pytest

from raspicl import At, Mean, Offset, Program, ProgramError, Read, interpret, random_prompts
from raspicl.registry import find_program

THIS_FILE = Path(__file__).name
PROGRAMS = Path(__file__).resolve().parent.parent / "programs"


def here() -> int:
    """The line number of the caller: put it on the same line as the offending op."""
    return inspect.currentframe().f_back.f_lineno


def raised_at(excinfo: pytest.ExceptionInfo) -> int:
    """The line of this file from which the exception escaped: the offending call."""
    line, tb = None, excinfo.tb
    while tb is not None:
        if tb.tb_frame.f_globals is globals():
            line = tb.tb_lineno
        tb = tb.tb_next
    assert line is not None
    return line


def assert_names(message: str, kind: str, register: str, line: int) -> None:
    """The message names the op kind, the register and this file's line (exactly)."""
    assert kind in message, message
    assert f"'{register}'" in message, message
    assert re.search(rf"{re.escape(THIS_FILE)}:{line}\b", message), (line, message)


def assert_op_error(excinfo: pytest.ExceptionInfo, kind: str, register: str,
                    line: int | None = None) -> str:
    """An error raised while building an op: `op '<kind>' writing '<register>' at <line>`."""
    message = str(excinfo.value)
    line = raised_at(excinfo) if line is None else line
    assert_names(message, f"op '{kind}'", register, line)
    head = rf"op '{kind}' writing '{register}' at \S*{re.escape(THIS_FILE)}:{line}\b"
    assert re.search(head, message), (line, message)
    return message


def load_program_module(name: str):
    """The module programs/<name>.py (loaded by path, through raspicl's own loader)."""
    return find_program(name).module


# ------------------------------------------------------------------ shapes and coefficients


def test_aff_weight_shape_mismatch():
    p = Program("bad", d=2, n=1)
    with pytest.raises(ProgramError) as err:
        p.aff("z", p.x, W1=np.ones((3, 3)))
    msg = assert_op_error(err, "aff", "z")
    assert "W1" in msg and "(3, 3)" in msg and "(3, 2)" in msg


def test_aff_second_weight_shape_mismatch():
    p = Program("bad", d=2, n=1)
    with pytest.raises(ProgramError) as err:
        p.aff("z", p.x, p.y, W2=np.ones((2, 2)))
    msg = assert_op_error(err, "aff", "z")
    assert "W2" in msg and "(2, 1)" in msg


def test_mul_inner_dimension_mismatch():
    p = Program("bad", d=2, n=1)
    m = p.const("M", np.ones((2, 3)))
    with pytest.raises(ProgramError) as err:
        p.mul("z", m, p.x)
    msg = assert_op_error(err, "mul", "z")
    assert "inner dimensions differ" in msg and "'M'" in msg and "2x3" in msg


def test_dot_width_mismatch():
    p = Program("bad", d=3, n=1)
    with pytest.raises(ProgramError) as err:
        p.dot("z", p.x, p.y)
    msg = assert_op_error(err, "dot", "z")
    assert "'x' has width 3" in msg and "'y' has width 1" in msg


def test_raw_product_with_unequal_widths():
    p = Program("bad", d=2, n=1)
    with pytest.raises(ProgramError) as err:
        p.raw("z", Read(p.x, Offset(1)), here=p.y, op="*")
    msg = assert_op_error(err, "raw", "z")
    assert "width 2" in msg and "width 1" in msg


def test_raw_unknown_arithmetic():
    p = Program("bad", d=2, n=1)
    with pytest.raises(ProgramError) as err:
        p.raw("z", p.x, here=p.x, op="-")
    assert "'-'" in assert_op_error(err, "raw", "z")


def test_div_by_a_non_scalar():
    p = Program("bad", d=2, n=1)
    with pytest.raises(ProgramError) as err:
        p.div("z", p.x, p.x)
    msg = assert_op_error(err, "div", "z")
    assert "divisor 'x' must be a scalar" in msg and "vector(2)" in msg


def test_div_reading_another_token():
    p = Program("bad", d=2, n=1)
    with pytest.raises(ProgramError) as err:
        p.div("z", Read(p.x, Offset(1)), p.y)
    assert "current token" in assert_op_error(err, "div", "z")


def test_nan_in_a_constant():
    p = Program("bad", d=2, n=1)
    with pytest.raises(ProgramError) as err:
        p.const("c", [1.0, np.nan])
    # A constant is not an op: the message names it as a constant.
    assert_names(str(err.value), "constant", "c", raised_at(err))
    assert "NaN" in str(err.value)


def test_nan_in_a_bias():
    p = Program("bad", d=2, n=1)
    with pytest.raises(ProgramError) as err:
        p.aff("z", p.x, bias=[0.0, np.nan])
    assert "bias holds NaN" in assert_op_error(err, "aff", "z")


def test_shape_override_that_cannot_hold_the_result():
    p = Program("bad", d=2, n=1)
    with pytest.raises(ProgramError) as err:
        p.mul("z", p.x, p.x, a_shape=(2, 1), b_shape=(1, 2), shape=(3,))
    msg = assert_op_error(err, "mul", "z")
    assert "(3,)" in msg and "2x2" in msg


def test_write_to_a_var_of_another_shape():
    p = Program("bad", d=2, n=1)
    v = p.var("v", (), init=0.0)
    with pytest.raises(ProgramError) as err:
        p.aff(v, p.x)
    msg = assert_op_error(err, "aff", "v")
    assert "vector(2)" in msg and "scalar" in msg


def test_register_from_another_program():
    p = Program("bad", d=2, n=1)
    other = Program("other", d=2, n=1)
    w = other.const("w", [1.0, 2.0])
    with pytest.raises(ProgramError) as err:
        p.dot("z", p.x, w)
    msg = assert_op_error(err, "dot", "z")
    assert "'w'" in msg and "another program" in msg


def test_destination_from_another_program():
    p = Program("bad", d=2, n=1)
    other = Program("other", d=2, n=1)
    v = other.var("v", 2)
    with pytest.raises(ProgramError) as err:
        p.aff(v, p.x)
    assert "another program" in assert_op_error(err, "aff", "v")


# ------------------------------------------------------------------ places and causality


def test_offset_into_the_future():
    p = Program("bad", d=2, n=1)
    with pytest.raises(ProgramError) as err:
        p.mov("z", p.x, at=Offset(-1))
    assert "reads the future" in assert_op_error(err, "mov", "z")


def test_offset_that_is_not_a_whole_number():
    p = Program("bad", d=2, n=1)
    with pytest.raises(ProgramError) as err:
        p.mov("z", Read(p.x, Offset(1.5)))
    assert "whole number" in assert_op_error(err, "mov", "z")


def test_mean_over_an_unknown_role():
    p = Program("bad", d=2, n=1)
    with pytest.raises(ProgramError) as err:
        p.mean("z", p.x, "examples")
    msg = assert_op_error(err, "mean", "z")
    assert "unknown role 'examples'" in msg


def test_mean_over_an_unknown_role_in_a_raw_read():
    p = Program("bad", d=2, n=1)
    with pytest.raises(ProgramError) as err:
        p.raw("z", Read(p.x, Mean("z")), here=p.x)
    assert "unknown role" in assert_op_error(err, "raw", "z")


def test_read_at_an_index_beyond_the_prompt():
    p = Program("bad", d=2, n=1)
    z, line = p.mov("z", Read(p.x, At(3))), here()
    p.output(z)
    with pytest.raises(ProgramError) as err:
        p.validate()
    msg = assert_op_error(err, "mov", "z", line)
    assert "token 3" in msg and "only 3 tokens" in msg


def test_offset_beyond_the_prompt():
    p = Program("bad", d=2, n=1)
    z, line = p.mov("z", p.x, at=Offset(3)), here()
    p.output(z)
    with pytest.raises(ProgramError) as err:
        p.validate()
    assert "3 tokens back" in assert_op_error(err, "mov", "z", line)


def test_mean_over_a_role_the_prompt_lacks():
    p = Program("bad", d=2, n=0)
    z, line = p.mean("z", p.y, "y"), here()
    p.output(z)
    with pytest.raises(ProgramError) as err:
        p.validate()
    msg = assert_op_error(err, "mean", "z", line)
    assert "'y'" in msg and "n=0" in msg


def test_read_of_a_register_nothing_wrote():
    p = Program("bad", d=2, n=1)
    v, declared = p.var("v", 2), here()
    z, line = p.dot("z", v, p.x), here()
    p.output(z)
    with pytest.raises(ProgramError) as err:
        p.validate()
    msg = assert_op_error(err, "dot", "z", line)
    assert "'v'" in msg and "no init value" in msg
    assert re.search(rf"{THIS_FILE}:{declared}\b", msg)


def test_output_undefined_at_the_query_because_an_op_reads_the_future():
    # n = 1: tokens x_1, y_1, x_q. 'ahead' reads the query's x from tokens 0 and 1, where it
    # lies in the future; 'first' then reads 'ahead' at token 0, so it is undefined
    # everywhere, the query included. validate() blames the op that reads the future.
    p = Program("bad", d=2, n=1)
    ahead, line = p.mov("ahead", Read(p.x, At(2))), here()
    first = p.mov("first", Read(ahead, At(0)))
    out = p.dot("out", first, p.x)
    p.output(out, roles="query")
    with pytest.raises(ProgramError) as err:
        p.validate()
    msg = assert_op_error(err, "mov", "ahead", line)
    assert "in the future at token(s) [0, 1]" in msg
    assert "'out'" in msg and "undefined at token(s) [2] (query)" in msg


def test_output_at_x_tokens_blames_the_read_that_is_undefined_there():
    # 'prev' reads one token back (undefined at token 0 only); 'late' reads 'prev' at token 2,
    # which is defined there but lies in the future at tokens 0 and 1. The output at the x
    # token 0 is undefined because of 'late', not because of 'prev'.
    p = Program("bad", d=2, n=1)
    prev = p.mov("prev", Read(p.x, Offset(1)))
    late, line = p.mov("late", Read(prev, At(2))), here()
    p.output(late, roles="x")
    with pytest.raises(ProgramError) as err:
        p.validate()
    msg = assert_op_error(err, "mov", "late", line)
    assert "'prev' at token 2" in msg and "token(s) [0] (x)" in msg


def test_output_before_the_start_of_the_prompt():
    p = Program("bad", d=2, n=2)
    prev, line = p.mov("prev", Read(p.x, Offset(1))), here()
    pred = p.dot("pred", prev, p.x)
    p.output(pred, roles="x")
    with pytest.raises(ProgramError) as err:
        p.validate()
    msg = assert_op_error(err, "mov", "prev", line)
    assert "before the first token" in msg and "'pred'" in msg and "[0] (x)" in msg


# ------------------------------------------------------------------ writes


def test_overwriting_a_register_that_is_not_a_var():
    p = Program("bad", d=2, n=1)
    z, first = p.aff("z", p.x), here()
    _, line = p.aff("z", p.x, W1=2.0), here()
    _, reader = p.dot("s", z, z), here()
    p.output(p.y)
    with pytest.raises(ProgramError) as err:
        p.validate()
    msg = assert_op_error(err, "aff", "z", line)
    assert "p.var()" in msg
    assert re.search(rf"already written by op 'aff' at \S*{THIS_FILE}:{first}\b", msg)
    # a later reader of the overwritten register is named, with its line
    assert re.search(rf"op 'dot' writing 's' at \S*{THIS_FILE}:{reader}\b", msg)


def test_overwriting_a_register_without_a_later_reader():
    p = Program("bad", d=2, n=1)
    z = p.aff("z", p.x)
    _, line = p.aff(z, p.x, W1=2.0), here()
    p.output(z)
    with pytest.raises(ProgramError) as err:
        p.validate()
    msg = assert_op_error(err, "aff", "z", line)
    assert "p.var()" in msg and "reads 'z' after" not in msg


def test_overwriting_the_input_x():
    p = Program("bad", d=2, n=1)
    _, line = p.aff(p.x, p.x, W1=2.0), here()
    p.output(p.y)
    with pytest.raises(ProgramError) as err:
        p.validate()
    msg = assert_op_error(err, "aff", "x", line)
    assert "input register 'x'" in msg


def test_overwriting_a_constant():
    p = Program("bad", d=2, n=1)
    c = p.const("c", [1.0, 2.0])
    _, line = p.mov(c, p.x), here()
    p.output(p.y)
    with pytest.raises(ProgramError) as err:
        p.validate()
    assert "const register 'c'" in assert_op_error(err, "mov", "c", line)


# ------------------------------------------------------------------ outputs


def test_no_output_declared():
    p, created = Program("bad", d=2, n=1), here()
    _, last = p.dot("pred", p.x, p.x), here()
    with pytest.raises(ProgramError) as err:
        p.validate()
    msg = str(err.value)
    assert "no output" in msg and "p.output" in msg
    assert re.search(rf"created at \S*{THIS_FILE}:{created}\b", msg)
    assert_names(msg, "op 'dot' writing 'pred'", "pred", last)


def test_output_register_never_written():
    p = Program("bad", d=2, n=1)
    v = p.var("v", 2)
    _, line = p.output(v), here()
    with pytest.raises(ProgramError) as err:
        p.validate()
    assert_names(str(err.value), "output", "v", line)
    assert "never written" in str(err.value)


def test_output_of_another_program():
    p = Program("bad", d=2, n=1)
    other = Program("other", d=2, n=1)
    w = other.const("w", [1.0, 2.0])
    with pytest.raises(ProgramError) as err:
        p.output(w)
    assert_names(str(err.value), "output", "w", raised_at(err))


def test_output_at_a_role_the_prompt_lacks():
    p = Program("bad", d=2, n=0)
    _, line = p.output(p.y, roles="y"), here()
    with pytest.raises(ProgramError) as err:
        p.validate()
    assert_names(str(err.value), "output", "y", line)


# ------------------------------------------------------------------ well-formed programs


@pytest.mark.parametrize("name", ["gd_step", "sherman_morrison"])
@pytest.mark.parametrize("d", [1, 2, 4, 8])
def test_bundled_programs_validate(name, d):
    module = load_program_module(name)
    p = module.program(d=d)
    assert p.validate() is p
    prompts = random_prompts(batch=4, d=d, n=1, seed=d)
    got = interpret(p, prompts).output()[..., 0]
    np.testing.assert_allclose(got, module.reference(prompts, d=d), rtol=1e-10, atol=1e-12)


def test_a_var_may_be_written_twice():
    p = Program("ok", d=2, n=1)
    acc = p.var("acc", 2, init=[1.0, 2.0])
    p.aff(acc, acc, p.x)
    p.aff(acc, acc, p.x, W1=2.0)
    p.output(acc)
    assert p.validate() is p


def every_op_program(d: int, n: int, lam: float, M: np.ndarray, c: np.ndarray) -> Program:
    p = Program("every_op", d=d, n=n)
    c_reg = p.const("c", c)
    acc = p.var("acc", (), init=0.5)
    x_prev = p.mov("x_prev", Read(p.x, Offset(1)))          # x_i at the y token of example i
    xy = p.mul("xy", x_prev, p.y)                           # x_i y_i there
    mxy = p.mean("mxy", xy, "y")                            # mean of x_i y_i over y tokens
    xx = p.mul("xx", p.x, p.x, a_shape=(d, 1), b_shape=(1, d))
    S = p.mean("S", xx, "x")                                # mean of x_i x_i^T over x tokens
    A = p.aff("A", S, bias=lam * np.eye(d).reshape(-1))     # S + lam I
    u = p.mul("u", A, mxy)                                  # A mxy
    s = p.dot("s", u, p.x)                                  # u . x (at the query: x_q)
    nrm = p.dot("nrm", p.x, p.x)
    den = p.aff("den", nrm, W1=-1.0, bias=-1.0)             # -(|x|^2 + 1) < 0
    q = p.div("q", u, den)                                  # u / |den| = u / (|x|^2 + 1)
    r = p.raw("r", Read(p.x, At(0)), here=c_reg, op="*", W=M)    # M (x_1 * c)
    r2 = p.raw("r2", Read(p.x, Mean("x")), here=p.x, op="+", W=2.0)  # 2 (mean x + x)
    e = p.dot("e", q, r)
    f = p.dot("f", r2, c_reg)
    my = p.mean("my", p.y, "y")
    p.aff(acc, acc, s)                                      # 0.5 + s
    p.aff(acc, acc, e, W2=-1.0)                             # ... - e
    p.raw(acc, [acc, f, my], W=np.array([[1.0, 1.0, 3.0]]))    # ... + f + 3 mean(y)
    p.output(acc, roles="query")
    return p


def test_every_op_kind_matches_a_hand_computation():
    d, n, lam = 3, 4, 0.25
    rng = np.random.default_rng(7)
    M = rng.standard_normal((d, d))
    c = rng.standard_normal(d)
    p = every_op_program(d, n, lam, M, c)
    assert {op.kind for op in p.ops} == {"raw", "mov", "mean", "aff", "mul", "dot", "div"}
    assert p.validate() is p

    prompts = random_prompts(batch=6, d=d, n=n, seed=11)
    got = interpret(p, prompts).output()
    assert got.shape == (6, 1, 1)

    # the same quantity at the query token, in plain numpy
    X, y, xq = prompts.X, prompts.y, prompts.xq
    expected = np.empty(6)
    for b in range(6):
        S = X[b].T @ X[b] / n
        mxy = X[b].T @ y[b] / n
        u = (S + lam * np.eye(d)) @ mxy
        q = u / (xq[b] @ xq[b] + 1.0)
        r = M @ (X[b, 0] * c)
        r2 = 2.0 * (X[b].mean(axis=0) + xq[b])
        expected[b] = 0.5 + u @ xq[b] - q @ r + r2 @ c + 3.0 * y[b].mean()
    np.testing.assert_allclose(got[:, 0, 0], expected, rtol=1e-12)
