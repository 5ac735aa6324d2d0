"""Learning from the whole prompt: sgd, ridge, batch_gd and newton predict at every x token.

Each program is checked two ways at every prefix (the prediction at x token i from the
examples before it, and at the query from all n):
1. the interpreter against the program file's reference (raspicl.solvers on each prefix), to
   rounding, over d in {1, 2, 4, 8}, n in {1, d, 2d} (and T in {1, 2, 4, 8});
2. the compiled float64 model (raspicl.verify.verify_program: every register version at every
   token against the interpreter, and the prediction against the reference) to the program's
   TOLERANCE. Compiling is the slow part; the combinations left out of the default run are
   marked slow (`pytest -m slow` runs them).

Errors are relative with a floor of one: |a - b| / max(|b|, 1).
"""

from __future__ import annotations

import numpy as np
import pytest

from raspicl.interpret import interpret
from raspicl.prompts import random_prompts
from raspicl.registry import find_program
from raspicl.verify import rel_err, verify_program

PROBLEMS = 200
INTERPRETER_TOL = {"sgd": 1e-12, "batch_gd": 1e-12, "ridge": 1e-10, "newton": 1e-10}
COMPILED_TOL = {"sgd": 1e-8, "batch_gd": 1e-8, "ridge": 1e-6, "newton": 1e-6}


def _sizes(d: int) -> list[int]:
    return sorted({1, d, 2 * d})


def _interpreter_cases() -> list[tuple[str, dict]]:
    cases = []
    for d in (1, 2, 4, 8):
        for n in _sizes(d):
            cases.append(("sgd", {"d": d, "n": n}))
            cases.append(("ridge", {"d": d, "n": n}))
            for T in (1, 2, 4, 8):
                cases.append(("batch_gd", {"d": d, "n": n, "T": T}))
                cases.append(("newton", {"d": d, "n": n, "T": T}))
    return cases


def _case_id(case) -> str:
    name, params = case
    return name + "-" + "-".join(f"{k}{v}" for k, v in params.items())


def _seed(name: str, params: dict) -> int:
    return sum(map(ord, name)) * 1000 + sum(int(v) * 17 ** i for i, v in
                                             enumerate(params.values()))


@pytest.mark.parametrize("case", _interpreter_cases(), ids=_case_id)
def test_interpreter_matches_reference_at_every_prefix(case):
    name, params = case
    pf = find_program(name)
    program = pf.build(**params)
    prompts = random_prompts(PROBLEMS, params["d"], params["n"], _seed(name, params))
    got = interpret(program, prompts).output()
    n = params["n"]
    assert got.shape == (PROBLEMS, n + 1, 1)  # x_1 .. x_n, then the query
    want = np.asarray(pf.reference(prompts, **params))
    assert want.shape == (PROBLEMS, n + 1)
    assert np.isfinite(got).all()
    err = rel_err(got[..., 0], want)
    assert err <= INTERPRETER_TOL[name], f"{name} {params}: interpreter vs reference {err:.2e}"


# Compiled checks: every case of the interpreter grid. Marked slow (left out of the default
# run, which must stay under 4 minutes on 2 CPU cores) where compile + verify took longest as
# measured on 2 cores: ridge at d = 8, n = 16 (60-150 s), newton at d = 8 (5-100 s each:
# its two d x d matrix products need d^3 product gadgets each, d_mlp = 7936) but for
# n = d = 8, T = 1, batch_gd at d = 8, n = 16 (2-7 s each), and the batch_gd cases expected
# to miss the tolerance (below).
def _slow(name: str, params: dict) -> bool:
    d, n, T = params["d"], params["n"], params.get("T")
    if name == "ridge":
        return d == 8 and n == 16
    if name == "newton":
        return d == 8 and (n, T) != (8, 1)
    if name == "batch_gd":
        return (d == 8 and n == 16) or _unstable_gd(name, params)
    return False


# batch_gd at its default lr = 0.1 is unstable where lambda_max(S) > 1 / lr = 10, which the
# calibration prompts (x ~ N(0, I)) reach for d >= 4: their iterates grow like |1 - 0.2
# lambda|^T, the calibrated bounds with them (shared by all iterations of the loop), and the
# product gadget's error, which scales with the bounds, reaches 1e-8 on ordinary prompts
# (registers 2e-9 .. 5e-6 for d >= 4, T = 8 and for d = 8, T = 4; 1e-11 at a stable lr).
# These are expected to miss the 1e-8 tolerance; test_batch_gd_compiled_at_a_stable_lr
# covers the same sizes at lr = 0.2 / d.
def _unstable_gd(name: str, params: dict) -> bool:
    d, T = params["d"], params.get("T")
    return name == "batch_gd" and d >= 4 and (T == 8 or (d == 8 and T == 4))


def _compiled_cases() -> list:
    cases = []
    for case in _interpreter_cases():
        marks = []
        if _slow(*case):
            marks.append(pytest.mark.slow)
        if _unstable_gd(*case):
            marks.append(pytest.mark.xfail(
                reason="lr = 0.1 diverges on some calibration prompts; the gadgets' error "
                       "scales with the calibrated bounds", strict=False))
        cases.append(pytest.param(case, marks=marks, id=_case_id(case)))
    return cases


@pytest.mark.parametrize("case", _compiled_cases())
def test_compiled_matches_reference_at_every_prefix(case):
    name, params = case
    result = verify_program(find_program(name), params, "float64", problems=PROBLEMS,
                            seed=_seed(name, params) + 1)
    tol = COMPILED_TOL[name]
    detail = (f"{name} {params}: registers {result.err_registers:.2e} (worst "
              f"{result.worst_register}), prediction vs interpreter {result.err_prediction:.2e}, "
              f"vs reference {result.err_model_solver:.2e}")
    assert result.err_interpreter_solver <= INTERPRETER_TOL[name], detail
    assert result.err_registers <= tol, detail
    assert result.err_prediction <= tol, detail
    assert result.err_model_solver <= tol, detail
    assert result.passed, detail


@pytest.mark.parametrize("params", [
    pytest.param({"d": d, "n": n, "T": T, "lr": 0.2 / d}, id=f"d{d}-n{n}-T{T}",
                 marks=() if (n, T) == (d, 8) else (pytest.mark.slow,))
    for d in (4, 8) for n in _sizes(d) for T in (4, 8)])
def test_batch_gd_compiled_at_a_stable_lr(params):
    """With 2 lr lambda_max(S) < 2 on the calibration prompts the iterates stay bounded and
    the compiled model meets the 1e-8 tolerance at every size."""
    result = verify_program(find_program("batch_gd"), params, "float64", problems=PROBLEMS,
                            seed=_seed("batch_gd", params) + 2)
    assert result.err_interpreter_solver <= INTERPRETER_TOL["batch_gd"]
    assert max(result.err_registers, result.err_prediction,
               result.err_model_solver) <= COMPILED_TOL["batch_gd"], result


@pytest.mark.parametrize("name", ["sgd", "ridge", "batch_gd", "newton"])
def test_loop_bodies_are_identical_iterations(name):
    """Every op of the loop carries its iteration; all iterations write the same ops."""
    params = {"d": 2, "n": 3, "T": 3} if name in ("batch_gd", "newton") else {"d": 2, "n": 3}
    program = find_program(name).build(**params)
    looped = [op for op in program.ops if op.loop is not None]
    iterations = sorted({op.loop[1] for op in looped})
    assert iterations == [0, 1, 2]
    per_iteration = [[op for op in looped if op.loop[1] == k] for k in iterations]
    assert len({len(ops) for ops in per_iteration}) == 1
    for ops in zip(*per_iteration, strict=True):
        assert len({(op.kind, op.dst.name) for op in ops}) == 1
