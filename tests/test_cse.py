"""Common-subexpression elimination (raspicl/compiler/cse.py).

Every size is checked against an independent construction: the same program with the shared
sub-expression bound once by hand, compiled without the pass doing anything (it reports no
duplicate there). Every prediction is checked against the float64 interpreter, within the
bound the compiled model's own contract gives, and every register the pass made an alias of
is read back from the model and compared with the interpreter's value of that register.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from raspicl import Offset, Program, Read, interpret, random_prompts
from raspicl.compiler import CompilerConfig, compile_program
from raspicl.errors import ContractWarning

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("raspicl_bench_cse_sizes",
                                               ROOT / "bench" / "cse_sizes.py")
cse_sizes = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = cse_sizes
_spec.loader.exec_module(cse_sizes)
momentum = cse_sizes.momentum  # the momentum-SGD scan of issue 20 (bench/cse_sizes.py)

SIZE_KEYS = ("blocks", "blocks_run", "heads", "d_head", "d_model", "d_mlp", "params")


def compiled(program: Program, loops: str = "unroll", cse: bool = True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ContractWarning)
        return compile_program(program, CompilerConfig(cse=cse), loops=loops)


def size(cm) -> dict:
    return {k: cm.summary()[k] for k in SIZE_KEYS}


def common(cm) -> list[tuple[str, str]]:
    return [(c["value"], c["alias_of"]) for c in cm.layout["depth"].get("common", [])]


def check_against_interpreter(cm, program: Program, seed: int = 0) -> None:
    """Predictions within the contract's bound of the interpreter's, every prompt accepted;
    every register version the layout lists (aliases included) within 1e-8 (relative, at
    least 1) of the interpreter's value of it, where the interpreter defines it."""
    prompts = random_prompts(32, program.d, program.n, seed=seed)
    trace = interpret(program, prompts)
    run = cm.run(prompts)  # check="error": a refused prompt fails the test
    assert run.accepted.all()
    assert np.all(np.abs(run.values - trace.output()) <= run.bound)
    residuals = cm.residuals(prompts, check="ignore")
    for name, reg in cm.layout["registers"].items():
        for v in reg["versions"]:
            if v["op"] is None:
                continue
            want = trace.after[v["op"]].reshape(32, program.format.n_tokens, -1)
            got = cm.decode(residuals, name, v["version"])
            defined = np.isfinite(want)
            err = np.abs(got[defined] - want[defined])
            assert np.all(err <= 1e-8 * np.maximum(1.0, np.abs(want[defined]))), v["label"]


# ---------------------------------------------------------------------- the scan


@pytest.mark.parametrize("loops", ["unroll", "share"])
def test_momentum_scan_compiles_to_the_size_of_its_hand_bound_form(loops):
    """The step uses v_new in `w + v_new` and `v_new`: without the pass, two identical product
    ops per example; with it, the size of the step with the product bound once by hand, and
    the interpreter's predictions and registers (the aliases read back from the model)."""
    by_hand = compiled(momentum(bind=True), loops)
    assert common(by_hand) == []  # nothing for the pass to do there: an independent size
    plain = compiled(momentum(), loops, cse=False)
    cm = compiled(momentum(), loops)
    assert size(cm) == size(by_hand)
    assert size(plain)["params"] > size(cm)["params"]
    assert size(plain)["d_mlp"] > size(cm)["d_mlp"]
    # one duplicate per example, each the product of the other state entry
    assert [(a.split("@")[1], b.split("@")[1]) for a, b in common(cm)] == \
        [(str(k), str(k)) for k in range(1, 5)]
    check_against_interpreter(cm, momentum())


# ---------------------------------------------------------------------- written op by op


def op_by_op(d: int = 2, dedupe: bool = False) -> Program:
    """Duplicates of every kind the pass eliminates, written op by op: a product (the second
    with its factors in the other order), a chain (a product of the first duplicate, itself
    a duplicate once that one is renamed), a division and a select. dedupe=True writes each
    once by hand and reads it where the duplicates were."""
    p = Program("dupes" + ("_by_hand" if dedupe else ""), d=d, n=2)
    xp = p.mov("xp", Read(p.x, Offset(1, clamp=True)))
    e1 = p.dot("e1", xp, p.x)
    e2 = e1 if dedupe else p.dot("e2", p.x, xp)              # the same dot, factors swapped
    f1 = p.mul("f1", xp, e1)
    f2 = f1 if dedupe else p.mul("f2", xp, e2)               # a duplicate once e2 is e1
    den = p.aff("den", e1, e1, W1=1.0, W2=1.0, bias=3.0)
    den = p.raw("den2", den, here=den, op="*", W=1.0, bias=1.0)   # 1 + den^2 > 0
    q1 = p.div("q1", f1, den)
    q2 = q1 if dedupe else p.div("q2", f2, den)
    s1 = p.select("s1", "y", q1, f1)
    s2 = s1 if dedupe else p.select("s2", "y", q2, f2)
    out = p.aff("out", s1, s2, W1=np.ones((1, d)), W2=2 * np.ones((1, d)))
    p.output(out, roles=("x", "y", "query"))
    return p


def test_op_by_op_duplicates_compile_to_the_size_of_the_deduplicated_program():
    by_hand = compiled(op_by_op(dedupe=True))
    assert common(by_hand) == []
    cm = compiled(op_by_op())
    assert size(cm) == size(by_hand)
    assert common(cm) == [("e2", "e1"), ("f2", "f1"), ("q2", "q1"), ("s2", "s1")]
    assert size(compiled(op_by_op(), cse=False))["params"] > size(cm)["params"]
    check_against_interpreter(cm, op_by_op())


def test_same_terms_at_another_place_or_with_another_coefficient_are_not_merged():
    p = Program("near_dupes", d=2, n=1)
    xp = p.mov("xp", Read(p.x, Offset(1, clamp=True)))
    a = p.dot("a", xp, p.x)
    b = p.raw("b", [Read(xp, Offset(1, clamp=True))], here=p.x, op="*", W=np.ones((1, 2)))
    c = p.dot("c", xp, p.x, scale=2.0)
    p.output(p.raw("out", [a, b, c], W=np.ones((1, 3))), roles=("query",))
    cm = compiled(p)
    assert common(cm) == []
    check_against_interpreter(cm, p)


# ---------------------------------------------------------------------- shared loops


def looped(b_init: float) -> Program:
    """A loop whose two products are the same in every iteration, both read by the next one:
    iteration 0 reads the start values a = 1 and b = b_init where later iterations read the
    survivor twice."""
    p = Program("loop_dupes", d=1, n=2)
    a = p.var("a", (), init=1.0)
    b = p.var("b", (), init=b_init)
    t = p.var("t", ())
    for _ in p.loop(3):
        p.aff(t, a, b, W1=0.5, W2=0.5)
        p.mul(a, t, p.y, scale=0.5)
        p.mul(b, t, p.y, scale=0.5)
    p.output(a, roles=("y", "query"))
    return p


@pytest.mark.parametrize("b_init, shared_common", [(1.0, 3), (2.0, 0)])
def test_a_shared_loop_keeps_only_eliminations_every_iteration_agrees_on(b_init, shared_common):
    """Start values equal: the first iteration reads a's start value for b's, and every
    iteration is the same with the duplicates eliminated, shared or not. Unequal: unrolled
    still eliminates them; shared keeps them, so that the iterations stay identical."""
    p = looped(b_init)
    unrolled = compiled(p)
    assert len(common(unrolled)) == 3
    shared = compiled(p, "share")
    assert len(common(shared)) == shared_common
    if not shared_common:
        assert shared.layout["depth"]["common_kept_for_loops"] == 3
    for cm in (unrolled, shared):
        check_against_interpreter(cm, p)


# ---------------------------------------------------------------------- nothing to do


@pytest.mark.parametrize("name, params, loops", [
    ("sgd", {"d": 2, "n": 2}, "share"),
    ("nlms", {"d": 1, "n": 2}, "unroll"),
])
def test_a_program_without_duplicates_compiles_to_the_same_bytes(name, params, loops):
    from raspicl.registry import find_program

    pf = find_program(name)
    models = []
    for cse in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ContractWarning)
            models.append(compile_program(pf.build(**params), CompilerConfig(cse=cse),
                                          loops=loops, domain=pf.domain))
    off, on = models
    assert "common" not in on.layout["depth"]
    a, b = off.model.state_dict(), on.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].numpy().tobytes() == b[key].numpy().tobytes(), key
    layout_off = dict(off.layout, compiler={k: v for k, v in off.layout["compiler"].items()
                                            if k != "cse"})
    layout_on = dict(on.layout, compiler={k: v for k, v in on.layout["compiler"].items()
                                          if k != "cse"})
    assert layout_off == layout_on


# ---------------------------------------------------------------------- random programs


def random_with_duplicates(seed: int, rounds: int = 4) -> tuple[Program, int]:
    """A random program in which every op of `rounds` is written twice (the copy under another
    name), later ops reading either copy at random: products, dot products, selects and
    divisions by 1 + s^2 over the registers so far. Returns it and how many of its ops compute
    what an earlier op computes, counted here by value numbering over the registers' names (a
    copy, or the same op drawn again in a later round; a dot product's factors unordered)."""
    rng = np.random.default_rng(seed)
    d = 2
    p = Program(f"random_dupes_{seed}", d=d, n=2)
    vectors = [p.mov("xp", Read(p.x, Offset(1, clamp=True))), p.x]
    scalars = [p.y]
    same: dict[str, str] = {}  # register -> the first register computing the same
    first: dict[tuple, str] = {}

    def pick(pool):
        return pool[int(rng.integers(len(pool)))]

    def number(name: str, key: tuple) -> None:
        key = tuple(same.get(k, k) if isinstance(k, str) else k for k in key)
        if key[0] == "dot":
            key = ("dot", *sorted(key[1:]))
        same[name] = first.setdefault(key, name)

    for k in range(rounds):
        kind = ("dot", "mul", "select", "div")[int(rng.integers(4))]
        args = {"dot": lambda: (pick(vectors), pick(vectors)),
                "mul": lambda: (pick(vectors), pick(scalars)),
                "select": lambda: (pick(vectors), pick(vectors)),
                "div": lambda: (pick(vectors), pick(scalars))}[kind]()
        names = tuple(r.name for r in args)
        for copy in "ab":
            name = f"r{k}{copy}"
            if kind == "dot":
                scalars.append(p.dot(name, *args))
            elif kind == "mul":
                vectors.append(p.mul(name, *args, scale=0.5))
            elif kind == "select":
                vectors.append(p.select(name, "y", *args))
            else:
                den = p.raw(f"{name}_den", args[1], here=args[1], op="*", W=1.0, bias=1.0)
                number(den.name, ("den", names[1]))
                vectors.append(p.div(name, args[0], den))
                number(name, ("div", names[0], den.name))
                continue
            number(name, (kind, *names))
    read = vectors[-3:] + scalars[-2:]
    out = p.raw("out", read, W=np.ones((1, sum(int(np.prod(r.shape)) for r in read))) / 4)
    p.output(out, roles=("x", "y", "query"))
    return p, sum(1 for name, root in same.items() if name != root)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_programs_with_duplicates_predict_what_the_interpreter_does(seed):
    p, duplicates = random_with_duplicates(seed)
    cm = compiled(p)
    assert len(common(cm)) == duplicates
    check_against_interpreter(cm, p, seed=seed)


# ---------------------------------------------------------------------- apply


@pytest.mark.parametrize("second, merged", [("sigmoid", True), ("tanh", False)])
def test_applies_are_one_only_when_their_functions_are(second, merged):
    """Two applies of the same argument: one op when the function and range are the same,
    two when the functions differ (an apply's function is part of what it computes)."""
    p = Program("two_applies", d=1, n=1)
    z = p.aff("z", p.x, p.y, W1=0.5, W2=0.5)
    a = p.apply("a", "sigmoid", z, range=(-8.0, 8.0))
    b = p.apply("b", second, z, range=(-8.0, 8.0))
    p.output(p.aff("out", a, b, W1=1.0, W2=1.0), roles=("query",))
    cm = compiled(p)
    assert (common(cm) == [("b", "a")]) == merged
    check_against_interpreter(cm, p)
