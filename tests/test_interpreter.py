"""The interpreter against the reference solvers (issue targets), and the CLI's run command."""

from __future__ import annotations

import re
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from raspicl import Prompts, interpret, random_prompts
from raspicl.registry import find_program
from raspicl.verify import rel_err


@pytest.mark.parametrize("name", ["gd_step", "sherman_morrison"])
@pytest.mark.parametrize("d", [1, 2, 4, 8, 16])
def test_theorem_programs_match_solvers(name, d):
    """1000 problems, x, w ~ N(0, I), y = w^T x: the float64 semantics equal the numpy
    reference solvers (raspicl.solvers) to rounding."""
    pf = find_program(name)
    prompts = random_prompts(1000, d, 1, seed=100 + d)
    got = interpret(pf.build(d=d), prompts).output()[..., 0]
    want = pf.reference(prompts, d=d)
    assert rel_err(got, want) <= 1e-12


def test_run_prints_seed_prediction_and_registers():
    out = subprocess.run([sys.executable, "-m", "raspicl", "run", "programs/gd_step.py",
                          "--set", "d=4", "--seed", "7"], capture_output=True, text=True,
                         check=True).stdout
    assert "seed=7" in out
    pred = float(re.search(r"prediction at token 2 \(query\): (\S+)", out).group(1))
    ref = find_program("gd_step").reference(random_prompts(1, 4, 1, 7), d=4)[0, 0]
    assert np.isclose(pred, ref, rtol=1e-5)  # printed with 6 significant digits
    for register in ("x_prev", "err", "g", "w_next", "w_query", "pred"):
        assert re.search(rf"^\s+{register}\s", out, re.M), register


def test_run_without_seed_prints_the_seed_it_drew():
    out = subprocess.run([sys.executable, "-m", "raspicl", "run", "gd_step"],
                         capture_output=True, text=True, check=True).stdout
    assert re.search(r"seed=\d+", out)


# ------------------------------------------------------------------ exact sums

U = 2.0**-53  # float64's unit roundoff


def _sum_bound(exact: Fraction, terms: list[Fraction], divisor: int = 1) -> float:
    """The error raspicl.accurate states for a sum of n terms (or its quotient by a count):
    u (1 + 2u) |exact| + 10 n^2 u^2 sum |t| / divisor."""
    n = len(terms)
    second = 10 * n * n * U * U * float(sum(abs(t) for t in terms)) / divisor
    return U * (1 + 2 * U) * abs(float(exact)) + second


def _mean_program(n: int):
    from raspicl import Mean, Program, Read

    p = Program("mean_y", d=1, n=n)
    p.output(p.mov("m", Read(p.y, Mean("y"))))
    return p


@pytest.mark.parametrize("t", [1e-8, 1e-7, 0.1, 3.0])
def test_mean_of_cancelling_ys_is_exact_to_one_rounding(t):
    """y = [2^28, t, ..., t, -2^28] (n = 8): a running float64 sum loses t beside 2^28 (the
    mean at the last y token was 0.0 for t = 1e-8, exact 7.5e-9, and 8.94e-8 for t = 1e-7,
    exact 7.5e-8; t = 3 was exact already); every prefix mean is now within
    u (1 + 2u) |exact| + 10 k^2 u^2 sum |y| / k of the exact rational mean."""
    n = 8
    y = np.array([2.0**28] + [t] * (n - 2) + [-(2.0**28)])
    prompts = Prompts(np.zeros((1, n, 1)), y[None], np.zeros((1, 1)))
    got = interpret(_mean_program(n), prompts).final["m"][0, :, 0]
    ys = [Fraction(v) for v in y]
    for token in range(1, 2 * n + 1):
        k = (token + 1) // 2  # y tokens 1, 3, 5, ... at or before this token
        exact = sum(ys[:k]) / k
        assert abs(Fraction(got[token]) - exact) <= _sum_bound(exact, ys[:k], k), token
    assert got[2 * n - 1] != 0.0


def test_mean_prefixes_match_fractions_on_random_cancelling_ys():
    rng = np.random.default_rng(7)
    n = 12
    for _ in range(20):
        y = rng.standard_normal(n) * 2.0 ** rng.integers(-40, 40, n)
        y[n // 2:] = -y[:n // 2][::-1] * (1 + rng.standard_normal(n // 2) * 1e-9)
        prompts = Prompts(np.zeros((1, n, 1)), y[None], np.zeros((1, 1)))
        got = interpret(_mean_program(n), prompts).final["m"][0, 1::2, 0]
        ys = [Fraction(v) for v in y]
        for k in range(1, n + 1):
            exact = sum(ys[:k]) / k
            assert abs(Fraction(got[k - 1]) - exact) <= _sum_bound(exact, ys[:k], k)


def _cancelling(rng, d: int) -> np.ndarray:
    """d float64 values of spread exponents whose sum nearly cancels (the last ones undo the
    first ones but for a small remainder)."""
    v = rng.standard_normal(d) * 2.0 ** rng.integers(-30, 30, d)
    half = d // 2
    v[half:2 * half] = -v[:half] * (1 + rng.uniform(-1e-12, 1e-12, half))
    return v


def test_affine_maps_and_dot_products_match_fractions():
    """An affine map (coefficients times values, a bias) and a dot product (products of two
    registers) on cancelling operands: each output within u (1 + 2u) |exact| +
    10 n^2 u^2 sum |terms| of its exact value over the float64 operands (math.fsum and
    plain float64 sums are off by far more on most of these)."""
    from raspicl import Program, Read

    rng = np.random.default_rng(3)
    d = 9
    W = rng.standard_normal((3, d)) * 2.0 ** rng.integers(-20, 20, (3, d))
    bias = np.array([2.0**30, -1.5, 0.0])
    w = _cancelling(rng, d)
    p = Program("sums", d=d, n=1)
    wreg = p.const("w", w)
    lin = p.raw("lin", Read(p.x), W=W, bias=bias)
    p.dot("dot", p.x, wreg)
    p.output(p.aff("out", lin, None, bias=[0.0, 0.0, 0.0]))
    for trial in range(40):
        x = _cancelling(rng, d)
        if trial % 2:
            x = x[::-1].copy()
        prompts = Prompts(np.zeros((1, 1, d)), np.zeros((1, 1)), x[None])
        trace = interpret(p, prompts)
        xs, ws = [Fraction(v) for v in x], [Fraction(v) for v in w]
        terms = [xs[i] * ws[i] for i in range(d)]
        exact = sum(terms)
        got = Fraction(trace.final["dot"][0, -1, 0])
        assert abs(got - exact) <= _sum_bound(exact, terms), trial
        for o in range(3):
            terms = [Fraction(W[o, i]) * xs[i] for i in range(d)] + [Fraction(bias[o])]
            exact = sum(terms)
            got = Fraction(trace.final["lin"][0, -1, o])
            assert abs(got - exact) <= _sum_bound(exact, terms), (trial, o)


def test_accurate_sums_against_fractions():
    """raspicl.accurate on its own: grouped sums with products' errors, running sums and the
    compensated division, against exact rationals on ill-conditioned inputs."""
    from raspicl.accurate import cumulative_sum, divide, group_sum, split, split_prod

    rng = np.random.default_rng(11)
    c, G = 16, 30
    a = np.stack([_cancelling(rng, c) for _ in range(G)], axis=1)  # [c, G]
    b = rng.standard_normal((c, G)) * 2.0 ** rng.integers(-10, 10, (c, G))
    p, e = split_prod(a, split(a), b, split(b))
    hi, lo = group_sum(p, e)
    for g in range(G):
        terms = [Fraction(a[j, g]) * Fraction(b[j, g]) for j in range(c)]
        exact = sum(terms)
        assert abs(Fraction(hi[g]) - exact) <= _sum_bound(exact, terms)
        assert abs(Fraction(hi[g]) + Fraction(lo[g]) - exact) \
            <= 10 * c * c * U * U * float(sum(abs(t) for t in terms))
        d = float(rng.integers(1, 50)) * (1 + 2.0**-30)
        q = divide(hi[g:g + 1], lo[g:g + 1], np.array([d]))[0]
        assert abs(Fraction(q) - exact / Fraction(d)) \
            <= _sum_bound(exact / Fraction(d), [t / Fraction(d) for t in terms])
    V = np.stack([_cancelling(rng, c) for _ in range(5)])[:, :, None]  # [5, c, 1]
    hi, lo = cumulative_sum(V)
    for lane in range(5):
        vs = [Fraction(v) for v in V[lane, :, 0]]
        for k in range(1, c + 1):
            exact = sum(vs[:k])
            assert abs(Fraction(hi[lane, k - 1, 0]) - exact) <= _sum_bound(exact, vs[:k])


def test_non_finite_terms_keep_the_plain_sums():
    """A NaN operand makes every output of a linear map NaN (as the matrix product spreads
    it); an infinity gives what the plain sum gives."""
    from raspicl import Program, Read

    p = Program("nf", d=3, n=1)
    p.output(p.raw("lin", Read(p.x), W=np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0]])))
    x = np.array([[np.nan, 1.0, 2.0], [np.inf, 1.0, 2.0], [1.0, 2.0, 3.0]])
    prompts = Prompts(np.zeros((3, 1, 3)), np.zeros((3, 1)), x)
    out = interpret(p, prompts).final["lin"][:, -1]
    assert np.isnan(out[0]).all()
    assert out[1, 0] == np.inf and np.isnan(out[1, 1])  # 0 * inf, as the matmul gives
    assert out[2].tolist() == [5.0, 5.0]
