"""Programs in textbook form against their other forms.

Every bundled program rewritten with the new constructs keeps its old hand-fused form in
tests/hand_fused/; a textbook form that compiles to more today is in tests/natural/ beside the
bundled program it would replace. Here:

1. both forms predict the same in the float64 interpreter, on random prompts with fixed seeds
   over several sizes (relative 1e-12);
2. at one cheap size, both are compiled and their compiled predictions agree with each other
   and with the interpreter (float64, relative 1e-8);
3. the rule for programs/: a rewritten bundled program compiles to no more blocks, d_model and
   parameters than its hand-fused form (unrolled, and with shared loops where it has a loop),
   and the three online learners of the scan construct to no more blocks than theirs.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from raspicl import interpret, random_prompts
from raspicl.compiler import CompilerConfig, compile_program
from raspicl.registry import find_program
from raspicl.verify import rel_err

ROOT = Path(__file__).resolve().parent.parent
HAND = ROOT / "tests" / "hand_fused"
NATURAL = ROOT / "tests" / "natural"

# (other form, bundled program, sizes for the interpreter check, cheap size to compile)
PAIRS = [
    (HAND / "gd_step.py", "gd_step", [{"d": 1}, {"d": 2}, {"d": 5}], {"d": 2}),
    (NATURAL / "gd_step.py", "gd_step", [{"d": 1}, {"d": 3}, {"d": 8}], {"d": 2}),
    (HAND / "sherman_morrison.py", "sherman_morrison", [{"d": 1}, {"d": 3}, {"d": 6}], {"d": 2}),
    (
        HAND / "sgd.py",
        "sgd",
        [
            {"d": 1, "n": 1},
            {"d": 2, "n": 4},
            {"d": 4, "n": 3},
            {"d": 3, "n": 5, "lam": 0.2, "lr": 0.05},
        ],
        {"d": 2, "n": 3},
    ),
    (
        HAND / "batch_gd.py",
        "batch_gd",
        [{"d": 1, "n": 2, "T": 1}, {"d": 2, "n": 3, "T": 4}, {"d": 3, "n": 2, "T": 2, "lam": 0.3}],
        {"d": 2, "n": 2, "T": 2},
    ),
    (
        HAND / "ridge.py",
        "ridge",
        [{"d": 1, "n": 1}, {"d": 2, "n": 4}, {"d": 4, "n": 3}, {"d": 2, "n": 3, "lam": 0.25}],
        {"d": 2, "n": 2},
    ),
    (
        NATURAL / "newton.py",
        "newton",
        [{"d": 1, "n": 2, "T": 1}, {"d": 2, "n": 3, "T": 4}],
        {"d": 2, "n": 2, "T": 2},
    ),
    (HAND / "nlms.py", "nlms", [{"d": 1, "n": 2}, {"d": 3, "n": 4, "mu": 1.2}], {"d": 2, "n": 2}),
    (
        HAND / "rls_forget.py",
        "rls_forget",
        [{"d": 1, "n": 2}, {"d": 3, "n": 4, "beta": 0.7}],
        {"d": 2, "n": 2},
    ),
    (
        HAND / "sgd_averaged.py",
        "sgd_averaged",
        [{"d": 1, "n": 2}, {"d": 3, "n": 4}],
        {"d": 2, "n": 2},
    ),
]


def _id(pair) -> str:
    return f"{pair[0].parent.name}-{pair[1]}"


@pytest.mark.parametrize("pair", PAIRS, ids=_id)
def test_forms_predict_the_same_in_the_interpreter(pair):
    other, name, sizes, _ = pair
    for k, params in enumerate(sizes):
        d, n = params["d"], params.get("n", 1)
        prompts = random_prompts(64, d, n, seed=1000 + 17 * k + d)
        want = interpret(find_program(name).build(**params), prompts).output()
        got = interpret(find_program(other).build(**params), prompts).output()
        assert got.shape == want.shape
        assert rel_err(got, want) <= 1e-12, (name, params)


@pytest.mark.parametrize("pair", PAIRS, ids=_id)
def test_forms_predict_the_same_compiled(pair):
    other, name, _, params = pair
    d, n = params["d"], params.get("n", 1)
    prompts = random_prompts(32, d, n, seed=7)
    programs = [find_program(name).build(**params), find_program(other).build(**params)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = [compile_program(p).predict(prompts, check="ignore") for p in programs]
    want = interpret(programs[0], prompts).output()
    assert rel_err(got[0], want) <= 1e-8
    assert rel_err(got[1], want) <= 1e-8
    assert rel_err(got[1], got[0]) <= 1e-8


def _size(program, loops: str, fusion: bool = True) -> tuple[int, int, int]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = compile_program(program, CompilerConfig(fusion=fusion), loops=loops).summary()
    return s["blocks"], s["d_model"], s["params"]


# bundled (rewritten) program -> sizes where it must be no larger than its hand-fused form
REWRITTEN = {
    "gd_step": [{"d": 2}],
    "sherman_morrison": [{"d": 2}],
    "sgd": [{"d": 2, "n": 4}],
    "batch_gd": [{"d": 2, "n": 2, "T": 3}],
    "ridge": [{"d": 2, "n": 3}],
}
LEARNERS = {
    "nlms": {"d": 2, "n": 3},
    "rls_forget": {"d": 2, "n": 3},
    "sgd_averaged": {"d": 2, "n": 3},
}


@pytest.mark.parametrize("name", sorted(REWRITTEN))
def test_rewritten_programs_are_no_larger_than_the_hand_fused_forms(name):
    for params in REWRITTEN[name]:
        new = find_program(name).build(**params)
        old = find_program(HAND / f"{name}.py").build(**params)
        loops = ["unroll"] + (["share"] if any(op.loop is not None for op in old.ops) else [])
        for mode in loops:
            # as written (no fusion): no larger in blocks, d_model and parameters
            b_new, w_new, p_new = _size(new, mode, fusion=False)
            b_old, w_old, p_old = _size(old, mode, fusion=False)
            assert b_new <= b_old and w_new <= w_old and p_new <= p_old, (
                f"{name} {params} {mode}: blocks {b_new} vs {b_old}, d_model {w_new} vs "
                f"{w_old}, params {p_new} vs {p_old}"
            )
            # fused (the default): no more blocks and no wider (sherman_morrison's formula
            # fuses into 4 % more MLP units than the one-op-per-line form: docs/language.md §10)
            b_new, w_new, _ = _size(new, mode)
            b_old, w_old, _ = _size(old, mode)
            assert b_new <= b_old and w_new <= w_old, (name, params, mode, b_new, b_old)


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_scan_learners_need_no_more_blocks_than_hand_fused(name):
    params = LEARNERS[name]
    new = find_program(name).build(**params)
    old = find_program(HAND / f"{name}.py").build(**params)
    for mode in ("unroll", "share"):
        assert _size(new, mode)[0] <= _size(old, mode)[0], (name, mode)


def test_textbook_sherman_morrison_saves_a_block():
    """The figures docs/language.md quotes: as written, 5 blocks for the formula and 6 for one
    op per line; fused, both reach the critical path, 4."""
    new, old = (find_program(f).build(d=2) for f in ("sherman_morrison",
                                                      HAND / "sherman_morrison.py"))
    assert (_size(new, "unroll", False)[0], _size(old, "unroll", False)[0]) == (5, 6)
    assert (_size(new, "unroll")[0], _size(old, "unroll")[0]) == (4, 4)


def test_symbolic_sherman_morrison_still_proves_the_closed_form():
    sympy = pytest.importorskip("sympy")
    from raspicl.symbolic import prompt_symbols, prove_equal, register_expressions, run_symbolic

    lam = sympy.Symbol("lam", positive=True)
    pf = find_program("sherman_morrison")
    program = pf.module.program(d=2, lam=lam)
    syms = prompt_symbols(program.format)
    trace = run_symbolic(program)
    want = pf.module.closed_form(list(syms.X[0]), syms.y[0], list(syms.xq), d=2, lam=lam)
    assert prove_equal(register_expressions(trace, "pred", 2), want)


def test_hand_fused_and_natural_files_are_program_files():
    for path in sorted(HAND.glob("*.py")) + sorted(NATURAL.glob("*.py")):
        pf = find_program(path)
        assert pf.module.__doc__, path
        program = pf.build()
        prompts = random_prompts(2, program.d, program.n, seed=0)
        assert np.isfinite(interpret(program, prompts).output()).all(), path
