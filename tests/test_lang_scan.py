"""The scan construct (raspicl/lang/scan.py): an online learner written as its update.

Values are checked in the float64 interpreter against the recursion run in numpy here, at
every x token (the state before it) and at the query (the final state); the generated plumbing
(one loop of identical iterations, start values by select, the loop-invariant x_i y_i hoisted
before the loop, no op for a state entry nothing reads) by the ops it writes; errors by their
messages; one scan compiled, unrolled and with shared loops, against the interpreter.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from raspicl import Here, Offset, Program, ProgramError, interpret, random_prompts
from raspicl.lang.expr import outer

THIS_FILE = os.path.basename(__file__)


def _ema_program(d: int, n: int, peel: bool = False, c: float = 0.25) -> Program:
    """A state (m, v) with a product in its step: m_i = m + c (x y - m), v_i = v + c (y^2 - v)
    ... and a cross term m_i += c v x, so both entries feed each other."""
    p = Program("ema", d=d, n=n)

    def step(s, x, y):
        return {"m": s.m + c * (x * y - s.m) + c * s.v * x, "v": (1 - c) * s.v + c * y * y}

    scan = p.scan(
        init={"m": np.zeros(d), "v": 1.0}, step=step, predict=lambda s, x: s.m @ x + s.v, peel=peel
    )
    p.output(scan.prediction, roles=("x", "query"))
    return p


def _ema_numpy(prompts, c: float = 0.25) -> np.ndarray:
    B, n, d = prompts.X.shape
    m, v = np.zeros((B, d)), np.ones(B)
    queries = prompts.prefix_queries()
    preds = []
    for i in range(n):
        preds.append(np.sum(m * queries[:, i], 1) + v)
        x, y = prompts.X[:, i], prompts.y[:, i]
        m, v = m + c * (x * y[:, None] - m) + c * v[:, None] * x, (1 - c) * v + c * y * y
    preds.append(np.sum(m * queries[:, n], 1) + v)
    return np.stack(preds, 1)


@pytest.mark.parametrize("peel", [False, True])
@pytest.mark.parametrize("d, n", [(1, 1), (2, 3), (3, 5)])
def test_scan_matches_the_recursion_at_every_x_token(d, n, peel):
    p = _ema_program(d, n, peel)
    prompts = random_prompts(16, d, n, seed=10 * d + n)
    got = interpret(p, prompts).output()[..., 0]
    np.testing.assert_allclose(got, _ema_numpy(prompts), rtol=1e-12, atol=1e-12)


def test_no_examples_predicts_from_the_start_value():
    p = _ema_program(2, 0)
    prompts = random_prompts(4, 2, 0, seed=1)
    np.testing.assert_allclose(interpret(p, prompts).output()[..., 0], np.ones((4, 1)))
    assert not any(op.loop for op in p.ops)


def test_generated_plumbing():
    d, n = 2, 4
    p = _ema_program(d, n)
    looped = [op for op in p.ops if op.loop is not None]
    assert sorted({op.loop[1] for op in looped}) == list(range(n))
    per_iteration = [[(op.kind, op.dst.name) for op in looped if op.loop[1] == k] for k in range(n)]
    assert all(it == per_iteration[0] for it in per_iteration)
    body = [op for op in looped if op.loop[1] == 0]
    # the start value by a select over tokens 0 and 1, and the state of the y token before
    selects = [op for op in body if op.kind == "select"]
    assert {op.dst.name for op in selects} == {"scan_m", "scan_v"}
    assert all(list(np.nonzero(op.mask)[0]) == [0, 1] for op in selects)
    # x_i y_i and y_i^2 read only the example: computed before the loop, once
    hoisted = [op for op in p.ops if op.loop is None and "loop-invariant" in op.note]
    assert len(hoisted) == 2 and all(op.index < body[0].index for op in hoisted)
    # with peel the first step runs before the loop and the loop has n - 1 iterations
    q = _ema_program(d, n, peel=True)
    assert sorted({op.loop[1] for op in q.ops if op.loop is not None}) == list(range(n - 1))


def test_state_nothing_reads_costs_no_op():
    """The prediction reads m only: no select makes v's state before the x tokens."""
    p = Program("unused", d=2, n=2)
    scan = p.scan(
        init={"m": np.zeros(2), "v": 0.0},
        step=lambda s, x, y: {"m": s.m + x * y, "v": s.v + y},
        predict=lambda s, x: s.m @ x,
    )
    p.output(scan.prediction, roles=("x", "query"))
    names = {op.dst.name for op in p.ops}
    assert "m_before" in names and "v_before" not in names
    # reading it later makes it, in order
    p.output(p.let("v_seen", scan.before.v), roles=("x", "query"))
    prompts = random_prompts(8, 2, 2, seed=3)
    Y = prompts.y
    want = np.stack([np.zeros(8), Y[:, 0], Y[:, 0] + Y[:, 1]], 1)
    np.testing.assert_allclose(interpret(p, prompts).output()[..., 0], want, atol=1e-14)


def test_named_intermediate_inside_the_step_is_one_var():
    p = Program("named", d=2, n=3)

    def step(s, x, y):
        e = p.let("err", x @ s.w - y)
        return {"w": s.w - 0.1 * x * e}

    p.output(
        p.scan(init={"w": np.zeros(2)}, step=step, predict=lambda s, x: s.w @ x).prediction,
        roles=("x", "query"),
    )
    assert p.registers["err"].kind == "var"
    assert sum(op.dst.name == "err" for op in p.ops) == 3  # once per example, same register
    prompts = random_prompts(8, 2, 3, seed=4)
    w, preds = np.zeros((8, 2)), []
    for i in range(3):
        preds.append(np.sum(w * prompts.X[:, i], 1))
        e = np.sum(prompts.X[:, i] * w, 1) - prompts.y[:, i]
        w = w - 0.1 * prompts.X[:, i] * e[:, None]
    preds.append(np.sum(w * prompts.xq, 1))
    np.testing.assert_allclose(
        interpret(p, prompts).output()[..., 0], np.stack(preds, 1), atol=1e-14
    )


def test_single_state_and_matrix_state():
    """init may be one array (the step takes and returns one expression); a matrix state."""
    d, n = 2, 3
    p = Program("gram", d=d, n=n)
    scan = p.scan(
        init=np.eye(d), step=lambda G, x, y: 0.5 * G + outer(x, x), predict=lambda G, x: x @ G @ x
    )
    p.output(scan.prediction, roles=("x", "query"))
    prompts = random_prompts(8, d, n, seed=5)
    G = np.broadcast_to(np.eye(d), (8, d, d))
    queries = prompts.prefix_queries()
    preds = []
    for i in range(n):
        preds.append(np.einsum("bi,bij,bj->b", queries[:, i], G, queries[:, i]))
        G = 0.5 * G + np.einsum("bi,bj->bij", prompts.X[:, i], prompts.X[:, i])
    preds.append(np.einsum("bi,bij,bj->b", queries[:, n], G, queries[:, n]))
    np.testing.assert_allclose(
        interpret(p, prompts).output()[..., 0], np.stack(preds, 1), rtol=1e-12
    )


@pytest.mark.parametrize(
    "make, expect",
    [
        (
            lambda p: p.scan(init={"w": np.zeros(2)}, step=lambda s, x, y: {"v": s.w}),
            ("scan 'scan'", "returns ['v']", "state is ['w']"),
        ),
        (
            lambda p: p.scan(init={"w": np.zeros(2)}, step=lambda s, x, y: {"w": s.w @ x}),
            ("the step's 'w' is scalar", "vector(2)"),
        ),
        (
            lambda p: p.scan(init={"w": np.zeros(2)}, step=lambda s, x, y: [s.w]),
            ("must return a dict",),
        ),
        (
            lambda p: p.scan(init={"1w": np.zeros(2)}, step=lambda s, x, y: s),
            ("not a Python identifier",),
        ),
        (lambda p: p.scan(init={}, step=lambda s, x, y: s), ("init has no state",)),
        (
            lambda p: p.scan(init={"w": np.zeros(2)}, step=lambda s, x, y: {"w": s.u}),
            ("no entry 'u'",),
        ),
    ],
    ids=["keys", "shape", "not-dict", "name", "empty", "attribute"],
)
def test_scan_errors(make, expect):
    p = Program("bad", d=2, n=2)
    with pytest.raises((ProgramError, AttributeError)) as exc:
        make(p)
    for part in expect:
        assert part in str(exc.value), str(exc.value)


def test_scan_errors_name_the_line():
    p = Program("bad", d=2, n=2)
    with pytest.raises(ProgramError) as exc:
        p.scan(init={"w": np.zeros(2)}, step=lambda s, x, y: {"v": s.w})
    assert THIS_FILE in str(exc.value)


def test_scan_inside_a_loop_is_refused():
    p = Program("nested", d=2, n=2)
    with pytest.raises(ProgramError, match="inside a loop"):
        for _ in p.loop(2):
            p.scan(init=np.zeros(2), step=lambda w, x, y: w)


@pytest.mark.parametrize("loops", ["unroll", "share"])
def test_compiled_scan_matches_the_interpreter(loops):
    from raspicl.compiler import compile_program
    from raspicl.verify import rel_err

    p = _ema_program(2, 3)
    prompts = random_prompts(32, 2, 3, seed=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = compile_program(p, loops=loops)
        got = cm.predict(prompts, check="ignore")
    assert rel_err(got, interpret(p, prompts).output()) <= 1e-8


# ---------------------------------------------------------------- the clamped form


def _form(p: Program) -> str:
    """The scan's form, read off its ops: the clamped form gates x once (`*_xread`)."""
    return "clamped" if any(op.dst.name.endswith("_xread") for op in p.ops) else "select"


@pytest.mark.parametrize(
    "name, params, form",
    [
        ("ridge", {}, "clamped"),  # u = A 0 = 0: A - 0 = A, b + 0 = b
        ("sgd", {"lam": 0.0}, "clamped"),  # w - 2 lr (0 (0 - 0) + 0 w) = w
        ("sgd", {"lam": 0.1}, "select"),  # (1 - 2 lr lam) w != w
        ("nlms", {}, "clamped"),  # w + mu 0 (0 - 0) / (eps + 0) = w
        ("rls_forget", {}, "select"),  # P / beta != P
        ("sgd_averaged", {}, "select"),  # k + 1 != k
        ("logistic_sgd", {}, "clamped"),  # w - lr (0 sigmoid(0 w) - 0 y) = w
    ],
)
def test_bundled_scans_choose_their_form(name, params, form):
    from raspicl.registry import find_program

    p = find_program(name).build(d=2, n=3, **params)
    assert _form(p) == form
    looped_selects = [op for op in p.ops if op.kind == "select" and op.loop is not None]
    assert bool(looped_selects) == (form == "select")


def test_fixed_point_is_decided_exactly():
    """A coefficient 1 + 2^-52 is not 1: the start value is no fixed point (a sampled float
    comparison at any tolerance above 1e-16 would call it one), unless the start value is 0.
    A step reading a register that depends on token 0's own x (symbolic in the check) is a
    fixed point when that term vanishes for every x there (z y, y = 0 at x_1's token) and not
    when it does not (z)."""

    def make(init, step, before=None):
        p = Program("exact", d=2, n=3)
        z = before(p) if before else None
        scan = p.scan(
            init={"w": init},
            step=lambda s, x, y: {"w": step(s.w, x, y, z)},
            predict=lambda s, x: s.w @ x,
        )
        p.output(scan.prediction, roles=("x", "query"))
        return p, scan

    near = lambda w, x, y, z: (1 + 2.0**-52) * w + x * y  # noqa: E731
    assert make(np.ones(2), near)[1].form == "select"
    assert make(np.zeros(2), near)[1].form == "clamped"
    energy = lambda p: p.let("z", p.x @ p.x)  # noqa: E731
    assert make(np.ones(2), lambda w, x, y, z: w + z * y, energy)[1].form == "clamped"
    assert make(np.ones(2), lambda w, x, y, z: w + 0.5 * z, energy)[1].form == "select"


def test_clamped_plumbing():
    """ridge (a fixed point): one select in the whole program, before the loop (x_i at y
    tokens, 0 elsewhere); no select in any iteration or before the prediction; every remote
    read of the state clamped; the state read at token 0 is the start value in every
    iteration (interpreter); iterations identical."""
    from raspicl.registry import find_program

    d, n = 2, 3
    p = find_program("ridge").build(d=d, n=n)
    selects = [op for op in p.ops if op.kind == "select"]
    assert len(selects) == 1 and selects[0].loop is None
    assert list(np.nonzero(selects[0].mask)[0]) == [1, 3, 5]  # the y tokens
    remote = [r for op in p.ops for r in op.reads if not isinstance(r.at, Here)]
    assert remote and all(isinstance(r.at, Offset) and r.at.clamp for r in remote)
    prompts = random_prompts(8, d, n, seed=11)
    trace = interpret(p, prompts)
    for op in p.ops:
        if op.dst.name == "ridge_A_inv":  # the state after each iteration's read
            np.testing.assert_array_equal(
                trace.after[op.index][:, 0], np.eye(d).reshape(1, -1).repeat(8, 0)
            )


def test_a_failed_try_leaves_no_trace():
    """rls_forget is not a fixed point: its program is exactly the one clamp=False builds
    (same registers, constants and ops), so its weights are what they were before the
    clamped form existed."""
    from raspicl.registry import find_program

    pf = find_program("rls_forget")
    auto, plain = pf.build(d=2, n=3), pf.build(d=2, n=3)
    assert _form(auto) == "select"
    assert list(auto.registers) == list(plain.registers)
    assert list(auto.constants) == list(plain.constants)
    assert [op.describe() for op in auto.ops] == [op.describe() for op in plain.ops]


def _textbook_sgd(d: int, n: int, clamp, peel: bool = False, lr: float = 0.1):
    p = Program("sgd", d=d, n=n)
    w0 = 0.5 * (-1.0) ** np.arange(d)
    scan = p.scan(
        init={"w": w0},
        step=lambda s, x, y: {"w": s.w - 2 * lr * x * (x @ s.w - y)},
        predict=lambda s, x: s.w @ x,
        clamp=clamp,
        peel=peel,
    )
    p.output(scan.prediction, roles=("x", "query"))
    return p, scan


def _ridge(d: int, n: int, clamp, peel: bool = False):
    p = Program("ridge", d=d, n=n)

    def step(s, x, y):
        u = s.A @ x
        return {"A": s.A - outer(u, u) / (1 + x @ u), "b": s.b + x * y}

    scan = p.scan(
        init={"A": np.eye(d), "b": np.zeros(d)},
        step=step,
        predict=lambda s, x: p.let("w", s.A @ s.b) @ x,
        clamp=clamp,
        peel=peel,
    )
    p.output(scan.prediction, roles=("x", "query"))
    return p, scan


@pytest.mark.parametrize("make, per_example", [(_textbook_sgd, 2), (_ridge, 3)])
@pytest.mark.parametrize("peel", [False, True])
def test_clamped_and_select_forms_agree(make, per_example, peel):
    """Both forms of a fixed-point scan predict the same (interpreter, and each compiled model
    against it); the clamped one needs per_example blocks per example (sgd 2, ridge 3) and
    fewer blocks than the select form."""
    from raspicl.compiler import compile_program
    from raspicl.verify import rel_err

    d = 2
    sizes = {}
    for n in (2, 3):
        prompts = random_prompts(32, d, n, seed=n)
        outs = {}
        for clamp in (None, False):
            p, scan = make(d, n, clamp, peel)
            assert scan.form == ("clamped" if clamp is None else "select")
            outs[clamp] = interpret(p, prompts).output()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cm = compile_program(p)
            assert rel_err(cm.predict(prompts, check="ignore"), outs[clamp]) <= 1e-8
            sizes[(n, clamp)] = cm.summary()["blocks"]
        np.testing.assert_allclose(outs[None], outs[False], rtol=1e-13, atol=1e-13)
        assert sizes[(n, None)] < sizes[(n, False)]
    assert sizes[(3, None)] - sizes[(2, None)] == per_example


def test_clamped_peel_and_a_state_bound_whole():
    """A state that is all quotient, s' = (s + x y) / (1 + |x|^2): its carried form is the
    division's register, so the first iteration reads that register's initial value at token
    0, which the clamped form sets to its exact value there (the start value); with and
    without peel, against the recursion in numpy and compiled."""
    from raspicl.compiler import compile_program
    from raspicl.verify import rel_err

    d, n, w0 = 2, 3, np.array([0.5, -0.25])
    prompts = random_prompts(32, d, n, seed=12)
    w, preds = np.broadcast_to(w0, (32, d)).copy(), []
    for i in range(n):
        preds.append(np.sum(w * prompts.X[:, i], 1))
        x, y = prompts.X[:, i], prompts.y[:, i]
        w = (w + x * y[:, None]) / (1 + np.sum(x * x, 1))[:, None]
    preds.append(np.sum(w * prompts.xq, 1))
    for peel in (False, True):
        p = Program("quotient", d=d, n=n)
        scan = p.scan(
            init=w0,
            step=lambda s, x, y: (s + x * y) / (1 + x @ x),
            predict=lambda s, x: s @ x,
            peel=peel,
        )
        p.output(scan.prediction, roles=("x", "query"))
        assert scan.form == "clamped"
        got = interpret(p, prompts).output()[..., 0]
        np.testing.assert_allclose(got, np.stack(preds, 1), rtol=1e-12, atol=1e-12)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cm = compile_program(p)
        assert rel_err(cm.predict(prompts, check="ignore")[..., 0], got) <= 1e-8


def test_clamp_option():
    """clamp=True requires the fixed point, naming the entry and what token 0 holds;
    clamp=False keeps the selects; anything else is refused."""
    p = Program("opt", d=2, n=2)
    with pytest.raises(ProgramError) as exc:
        p.scan(init={"w": np.ones(2)}, step=lambda s, x, y: {"w": 0.5 * s.w + x * y}, clamp=True)
    assert "clamp=True" in str(exc.value) and "'w' is [1/2, 1/2] at token 0" in str(exc.value)
    assert THIS_FILE in str(exc.value)
    _, scan = _textbook_sgd(2, 2, clamp=True)
    assert scan.form == "clamped"
    _, scan = _textbook_sgd(2, 2, clamp=False)
    assert scan.form == "select"
    with pytest.raises(ProgramError, match="clamp must be None"):
        Program("opt", d=2, n=2).scan(init=np.zeros(2), step=lambda w, x, y: w, clamp="yes")


def test_clamped_shift_of_entries_that_read_each_other():
    """(a, b) -> (b + x y, a - x y / 2): each carried entry reads the other state var, so
    writing one first would change what the other reads; the clamped shift binds one of them
    to a register first. Against the recursion in numpy, and compiled (unrolled and shared)."""
    from raspicl.compiler import compile_program
    from raspicl.verify import rel_err

    p = Program("swap", d=2, n=3)
    scan = p.scan(
        init={"a": np.ones(2), "b": np.ones(2)},
        step=lambda s, x, y: {"a": s.b + x * y, "b": s.a - 0.5 * x * y},
        predict=lambda s, x: s.a @ x + s.b @ x,
    )
    p.output(scan.prediction, roles=("x", "query"))
    assert scan.form == "clamped"
    prompts = random_prompts(16, 2, 3, seed=13)
    a, b, preds = np.ones((16, 2)), np.ones((16, 2)), []
    for i in range(3):
        preds.append(np.sum((a + b) * prompts.X[:, i], 1))
        xy = prompts.X[:, i] * prompts.y[:, i, None]
        a, b = b + xy, a - 0.5 * xy
    preds.append(np.sum((a + b) * prompts.xq, 1))
    want = interpret(p, prompts).output()
    np.testing.assert_allclose(want[..., 0], np.stack(preds, 1), rtol=1e-13, atol=1e-13)
    for loops in ("unroll", "share"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cm = compile_program(p, loops=loops)
        assert rel_err(cm.predict(prompts, check="ignore"), want) <= 1e-8


def _blocks(name: str, n: int, **params) -> int:
    from raspicl.compiler import compile_program
    from raspicl.errors import ContractWarning
    from raspicl.registry import find_program

    pf = find_program(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ContractWarning)
        return compile_program(pf.build(d=2, n=n, **params), domain=pf.domain).summary()["blocks"]


def test_a_quotient_of_the_example_alone_is_computed_once_before_the_loop():
    """NLMS's x_i / (eps + |x_i|^2) reads only the example: one div, before the loop, so an
    example costs the blocks an sgd example costs (the dot with the error, then the product),
    where a division in the step costs a block of its own per example."""
    from raspicl.registry import find_program

    p = find_program("nlms").build(d=2, n=3)  # mu 0.5, eps 1, w_0 = [0.5, -0.5]
    divs = [op for op in p.ops if op.kind == "div"]
    body = [op for op in p.ops if op.loop is not None]
    assert len(divs) == 1 and divs[0].loop is None and divs[0].index < body[0].index
    assert "loop-invariant" in divs[0].note
    per_example = _blocks("nlms", 3) - _blocks("nlms", 2)
    assert per_example == _blocks("sgd", 3) - _blocks("sgd", 2)

    # the step as mu x (y - x^T w) / (eps + |x|^2): the numerator reads the state, so the
    # division stays in the loop, one per example, and costs its own block
    q = Program("nlms_division_last", d=2, n=3)
    scan = q.scan(init={"w": np.array([0.5, -0.5])}, name="nlms",
                  step=lambda s, x, y: {"w": s.w + 0.5 * x * (y - x @ s.w) / (1.0 + x @ x)},
                  predict=lambda s, x: s.w @ x)
    q.output(scan.prediction, roles=("x", "query"))
    assert [op.loop is not None for op in q.ops if op.kind == "div"] == [True] * 3
    prompts = random_prompts(16, 2, 3, seed=4)
    np.testing.assert_allclose(interpret(q, prompts).output(), interpret(p, prompts).output(),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("outside", [False, True])
@pytest.mark.parametrize("clamp", [None, False])
def test_an_apply_inside_the_step_is_not_loop_invariant(clamp, outside):
    """An apply inside the step writes a register the scan writes: a product reading it
    (x s) stays in the loop. The apply's register was not among the scan's written ones (a
    name made a value register, not the step's var as p.let's; a var made before the scan was
    not counted either), so x s was taken for the loop-invariant x_i y_i and hoisted before
    the loop, ahead of the apply it reads: the clamped try's exact token-0 check raised
    KeyError ('s'), and the select form read 's' before any op wrote it. Both forms now match
    logistic SGD run in numpy, at every x token; the clamped one is chosen (x sigmoid(0) = 0
    at token 0, exactly)."""
    d, n, lr = 2, 3, 0.5

    def make():
        p = Program("logistic_step", d=d, n=n)
        dst = p.var("s") if outside else "s"

        def step(s, x, y):
            z = p.let("z", x @ s.w)
            sg = p.apply(dst, "sigmoid", z, range=(-12.0, 12.0))
            return {"w": s.w - lr * x * (sg - y)}

        scan = p.scan(init={"w": np.zeros(d)}, step=step, predict=lambda s, x: s.w @ x,
                      clamp=clamp)
        p.output(scan.prediction, roles=("x", "query"))
        return p, scan

    p, scan = make()
    assert scan.form == ("clamped" if clamp is None else "select")
    reads_s = [op for op in p.ops if "s" in {r.register.name for r in op.reads}]
    assert len(reads_s) == n and all(op.loop is not None for op in reads_s)
    prompts = random_prompts(16, d, n, seed=23)
    w, want = np.zeros((16, d)), []
    queries = prompts.prefix_queries()
    for i in range(n + 1):
        want.append(np.sum(w * queries[:, i], 1))
        if i < n:
            x, y = prompts.X[:, i], prompts.y[:, i]
            sg = 1.0 / (1.0 + np.exp(-np.sum(x * w, 1)))
            w = w - lr * x * (sg - y)[:, None]
    got = interpret(p, prompts).output()[..., 0]
    np.testing.assert_allclose(got, np.stack(want, 1), rtol=1e-12, atol=1e-12)
