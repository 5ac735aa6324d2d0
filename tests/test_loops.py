"""Looped compilation: one shared group of blocks run once per iteration of a p.loop."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from raspicl import Offset, Program, ProgramError, Read, interpret, random_prompts
from raspicl.compiler import compile_program
from raspicl.compiler.ir import Value
from raspicl.compiler.layout import Layout
from raspicl.compiler.liveness import Liveness
from raspicl.compiler.loops import describe_row_mismatch
from raspicl.errors import CompileError
from raspicl.export import load, save
from raspicl.registry import find_program
from raspicl.verify import rel_err


def running_average(n: int, d: int = 2) -> Program:
    """A small loop with carried state, a gate and a product: w <- w/2 + s * x_prev."""
    p = Program("running", d=d, n=n)
    w0 = p.const("w0", np.linspace(-1, 1, d))
    x_prev = p.mov("x_prev", Read(p.x, Offset(1)))
    w = p.var("w", d, init=np.linspace(-1, 1, d))
    back, s = p.var("back", d), p.var("s", ())
    for _ in p.loop(n):
        p.mov(back, Read(w, Offset(2)))
        p.select(back, [0, 1], w0, back)
        p.dot(s, back, x_prev, scale=0.25)
        p.raw(w, [back], here=[x_prev], op="+", W=0.5 * np.eye(d))
        p.aff(w, w, s, W1=1.0, W2=np.ones((d, 1)))
    p.output(p.dot("pred", Read(w, Offset(1)), p.x), roles=("query",))
    return p


@pytest.mark.parametrize("n", [1, 2, 5])
def test_shared_loop_matches_interpreter_and_unrolled(n):
    p = running_average(n)
    prompts = random_prompts(200, 2, n, seed=n)
    want = interpret(p, prompts)
    looped = compile_program(p, loops="share")
    unrolled = compile_program(p, loops="unroll")
    for cm in (looped, unrolled):
        assert rel_err(cm.predict(prompts), want.output()) <= 1e-9
        res = cm.residuals(prompts)
        versions: dict[str, int] = {}
        for op in p.ops:  # every register version of every iteration, at every token
            versions[op.dst.name] = versions.get(op.dst.name, 0) + 1
            got = cm.decode(res, op.dst.name, versions[op.dst.name])
            assert rel_err(got, want.after[op.index]) <= 1e-9, op.describe()
    assert rel_err(looped.predict(prompts), unrolled.predict(prompts)) <= 1e-9


def test_shared_loop_stores_one_body():
    sizes = {n: compile_program(running_average(n), loops="share") for n in (2, 4, 8)}
    stored = {n: cm.layout["architecture"]["n_layers"] for n, cm in sizes.items()}
    runs = {n: len(cm.layout["architecture"]["block_order"]) for n, cm in sizes.items()}
    params = {n: cm.model.n_params() for n, cm in sizes.items()}
    assert len(set(stored.values())) == 1  # the body is stored once, whatever n
    (loop,) = sizes[8].layout["loops"]
    body = loop["blocks"]
    # the blocks run grow by one body per iteration
    assert (runs[4] - runs[2]) == 2 * len(body) and (runs[8] - runs[4]) == 4 * len(body)
    assert loop["repeat"] == 8
    order = sizes[8].layout["architecture"]["block_order"]
    for k, start in enumerate(loop["first_runs"]):
        assert order[start:start + len(body)] == body, k
    unrolled = compile_program(running_average(8), loops="unroll").model.n_params()
    assert params[8] < unrolled


def test_shared_loop_round_trips_through_export(tmp_path):
    cm = compile_program(running_average(3), loops="share")
    save(cm, tmp_path / "m")
    back = load(tmp_path / "m")
    prompts = random_prompts(20, 2, 3, seed=0)
    assert np.array_equal(back.predict(prompts), cm.predict(prompts))
    assert back.layout["architecture"]["block_order"] == cm.layout["architecture"]["block_order"]


def test_loop_body_must_repeat():
    p = Program("bad", d=1, n=1)
    w = p.var("w", 1, init=[1.0])
    with pytest.raises(ProgramError, match="iteration 1 writes different ops"):
        for k in p.loop(2):
            p.aff(w, w, W1=float(k + 1))


def test_loops_argument_is_checked():
    with pytest.raises(ValueError, match="unroll"):
        compile_program(running_average(1), loops="fold")


@pytest.mark.parametrize("n", [2, 4])
def test_sgd_looped_and_unrolled(n):
    pf = find_program("sgd")
    p = pf.build(d=2, n=n)
    prompts = random_prompts(200, 2, n, seed=10 + n)
    ref = pf.reference(prompts, d=2, n=n)
    looped = compile_program(p, loops="share")
    unrolled = compile_program(p, loops="unroll")
    a, b = looped.predict(prompts)[..., 0], unrolled.predict(prompts)[..., 0]
    assert rel_err(a, ref) <= 1e-8 and rel_err(b, ref) <= 1e-8
    assert rel_err(a, b) <= 1e-10
    assert looped.layout["architecture"]["n_layers"] < unrolled.layout["architecture"]["n_layers"]


def divided_scan(n: int = 3) -> Program:
    """A p.scan (tests/test_properties.py's scan_recipes, one example it drew) whose body
    is a move, a product and a division: iteration 0's first block clears what the pre-loop
    step wrote, iteration 1's what iteration 0 wrote, the same rows reached in another order."""
    p = Program("divided_scan", d=2, n=n)
    M = np.array([[-0.5, -0.75], [-1.0, -0.5]])

    def step(s, x, y):
        return (0.25 * s - 0.125 * x[1] * s - 0.125 * y + M @ x) / (1.0 + x @ x)

    scan = p.scan(init=np.array([0.125, 0.375]), step=step,
                  predict=lambda s, x: s @ np.array([0.0, -0.625]) + s[0] * x[0], peel=True)
    p.output(scan.prediction, roles=("x", "query"))
    return p


def test_iterations_clearing_the_same_rows_in_another_order_share():
    """Issue 10 item 4: the iterations of divided_scan are identical as written; they once
    compiled to different attn.W_V (the self-head's clears came in another order and split
    into other heads) and loops='share' refused them. Now they share one body, and the shared
    model equals the interpreter."""
    program = divided_scan()
    cm = compile_program(program, loops="share")
    (loop,) = cm.layout["loops"]
    assert loop["repeat"] == 2
    order = cm.layout["architecture"]["block_order"]
    body = loop["blocks"]
    for start in loop["first_runs"]:
        assert order[start:start + len(body)] == body
    assert cm.layout["architecture"]["n_layers"] < len(order)  # the body is stored once
    prompts = random_prompts(64, program.d, program.n, seed=3)
    assert rel_err(cm.predict(prompts), interpret(program, prompts).output()) < 1e-8


def test_iterations_that_differ_name_the_registers_ops_and_rows(monkeypatch):
    """Issue 10 item 4: when the iterations do not compile to the same weights, the
    CompileError names the residual rows that differ and the registers (with op index and
    source line) that occupy them in each iteration. divided_scan, with the clears left in
    the order of their write slots (as before _align_loop_clears): iteration 1's first block
    clears scan_num0@2 (rows 21-22) where iteration 0's clears the temporary of scan_q1@1."""
    assemble = importlib.import_module("raspicl.compiler.assemble")
    monkeypatch.setattr(assemble, "_align_loop_clears", lambda clears, sched: None)
    program = divided_scan()
    src = {op.index: op.source for op in program.ops}
    with pytest.raises(CompileError) as info:
        compile_program(program, loops="share")
    msg = str(info.value)
    assert msg.startswith("loop iteration 1 compiles to different weights than iteration 0 "
                          "(block 0 of the body, attn.W_V) in rows 13, 21-22: ")
    assert f"rows 21-22 hold 'scan_num0@2' (op 5, {src[5]}) only in iteration 1" \
        in msg
    assert f"iteration 0 holds 'scan_q1@1' (op 3, {src[3]}) in rows 12-13" in msg
    assert f"iteration 1 holds 'scan_q1@2' (op 6, {src[6]}) in rows 12-13" in msg
    assert msg.endswith("; compile it unrolled")


def test_mismatch_names_a_register_carried_in_other_rows():
    """describe_row_mismatch on a hand-made layout: the loop state scan_state sits in rows
    23-24 while iteration 0's block 1 runs (run 3) but in rows 25-26 while iteration 1's runs
    (run 6); the message names both versions, their ops and source lines, and the rows."""
    program = divided_scan()
    op4, op7 = program.ops[4], program.ops[7]
    assert (op4.dst.name, op7.dst.name) == ("scan_state", "scan_state")
    v0 = Value("scan_state", 1, 2, "op", op=op4, write_slot=5, rows=[23, 24], versioned=True)
    v1 = Value("scan_state", 2, 2, "op", op=op7, write_slot=11, rows=[25, 26], versioned=True)
    layout = Layout(27, {}, [v0, v1], [], Liveness({v0: 10, v1: None}))  # v0 cleared at run 5
    msg = describe_row_mismatch(layout, (3, 6), 1, [23, 24, 25, 26])
    assert msg.startswith(
        f" in rows 23-26: 'scan_state@1' (op 4, {op4.source}) is carried in rows 23-24 in "
        f"iteration 0 but 'scan_state@2' (op 7, {op7.source}) in rows 25-26 in iteration 1")
    assert describe_row_mismatch(layout, (3, 6), 1, []) == ""  # mlp.b_in: no residual rows


def test_an_apply_by_name_in_a_loop_is_one_var():
    """p.apply("s", ...) inside a loop body names a var made on the first iteration and
    reused by the others, as p.let("name", e) does (a value register written twice was a
    validation error)."""
    p = Program("tanh_loop", d=1, n=1)
    w = p.var("w", init=0.5)
    for _ in p.loop(3):
        s = p.apply("s", "tanh", w, range=(-2.0, 2.0))
        p.let(w, 0.5 * s + 0.25)
    p.output(p.let("pred", w * p.x), roles=("query",))
    assert p.validate() is p
    writers = [op for op in p.ops if op.dst.name == "s"]
    assert len(writers) == 3 and writers[0].dst is writers[-1].dst and writers[0].dst.kind == "var"
    prompts = random_prompts(4, 1, 1, seed=1)
    want = 0.5
    for _ in range(3):
        want = 0.5 * np.tanh(want) + 0.25
    np.testing.assert_allclose(interpret(p, prompts).output()[:, 0, 0],
                               want * prompts.xq[:, 0], rtol=1e-15)
