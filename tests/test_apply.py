"""p.apply: elementwise functions, their certified GeLU gadget and the monitor's charge, each
against an independent computation (numpy formulas written here, sympy, mpmath at 30 digits,
the float64 interpreter)."""

from __future__ import annotations

import inspect
import math
import warnings

import mpmath
import numpy as np
import pytest
import sympy
import torch

from raspicl import Program, ProgramError, interpret, random_prompts
from raspicl.compiler import CompilerConfig, compile_program
from raspicl.compiler.gadgets.elementwise import (
    build_gadget,
    gelu_curvature,
    gelu_second,
    gelu_third,
    kink_constant,
)
from raspicl.contract import APPLY_RANGE
from raspicl.contract.charges import GELU_SLOPE, elementwise_charge
from raspicl.errors import ConfigError
from raspicl.lang.functions import elementwise, smooth
from raspicl.model import gelu
from raspicl.prompts import PromptDistribution, Prompts
from raspicl.registry import find_program
from raspicl.symbolic import register_expressions, run_symbolic

mpmath.mp.dps = 30
FORMS = ("none", "tanh")


def _line() -> int:
    return inspect.currentframe().f_back.f_lineno


# ------------------------------------------------------------------ language and semantics


@pytest.mark.parametrize("kwargs,message", [
    ({"f": "sigmoid"}, "'sigmoid' needs its range declared"),
    ({"f": "sigmoid", "range": (-1.0, math.inf)}, "must be finite"),
    ({"f": "sigmoid", "range": (2.0, 2.0)}, "must have lo < hi"),
    ({"f": "sigmoid", "range": "ab"}, "must be two numbers"),
    ({"f": "log", "range": (0.0, 3.0)}, "needs a range of positive numbers"),
    ({"f": "inv_sqrt", "range": (-1.0, 3.0)}, "needs a range of positive numbers"),
    ({"f": "exp", "range": (0.0, 100.0)}, "'exp' needs hi <= 80"),
    ({"f": "soft_threshold", "range": (-1.0, 1.0)}, "needs lam"),
    ({"f": "tanh", "range": (-1.0, 1.0), "lam": 0.5}, "takes none"),
    ({"f": "cosh", "range": (-1.0, 1.0)}, "unknown function 'cosh'"),
])
def test_apply_validation_names_the_op_and_line(kwargs, message):
    p = Program("v", d=1, n=1)
    z = p.mov("z", p.x)
    with pytest.raises(ProgramError) as err:
        line = _line() + 1
        p.apply("q", kwargs.pop("f"), z, **kwargs)
    text = str(err.value)
    assert "op 'apply' writing 'q' at " in text and f"test_apply.py:{line}" in text, text
    assert message in text, text


def test_user_function_declaration_is_checked():
    with pytest.raises(ValueError, match="curvature must be a finite number"):
        smooth("cube", lambda v: v ** 3, slope=1.0, curvature=math.nan)
    with pytest.raises(ValueError, match="not in the library"):
        smooth("sigmoid", np.tanh, 1.0, 1.0)


# each library function as numpy computes it here, written independently of lang/functions.py
NUMPY = {
    "sigmoid": lambda v: 0.5 * (1.0 + np.tanh(0.5 * v)),
    "tanh": lambda v: np.sinh(v) / np.cosh(v),
    "exp": lambda v: np.power(np.e, v),
    "log": lambda v: np.log(v),
    "softplus": lambda v: np.log1p(np.exp(v)),
    "relu": lambda v: np.where(v > 0, v, 0.0),
    "inv_sqrt": lambda v: v ** -0.5,
    "soft_threshold": lambda v: np.where(v > 0.5, v - 0.5, np.where(v < -0.5, v + 0.5, 0.0)),
}


@pytest.mark.parametrize("name", sorted(NUMPY))
def test_interpreter_computes_f_in_float64(name):
    positive = name in ("log", "inv_sqrt")
    p = Program("f", d=1, n=1)
    z = p.aff("z", p.x, W1=0.5, bias=3.0 if positive else 0.0)
    kw = {"lam": 0.5} if name == "soft_threshold" else {}
    out = p.apply("out", name, z, range=(0.1, 9.0) if positive else (-4.0, 4.0), **kw)
    p.output(out, roles=("x", "query"))
    prompts = random_prompts(64, 1, 1, seed=3)
    got = interpret(p, prompts).register("out")[:, [0, 2], 0]
    v = 0.5 * np.stack([prompts.X[:, 0, 0], prompts.xq[:, 0]], axis=1) + (3.0 if positive else 0)
    np.testing.assert_allclose(got, NUMPY[name](v), rtol=4e-16 * 8, atol=1e-300)


def test_sympy_knows_the_function():
    p = Program("s", d=1, n=1)
    s = p.apply("s", "sigmoid", p.x, range=(-5.0, 5.0))
    t = p.apply("t", "softplus", s, range=(-5.0, 5.0))
    p.output(t)
    expr = register_expressions(run_symbolic(p), "t", 2)
    xq = sympy.Symbol("xq_1", real=True)
    assert sympy.simplify(expr[0] - sympy.log(1 + sympy.exp(1 / (1 + sympy.exp(-xq))))) == 0


# ------------------------------------------------------------------ the gadget against mpmath


def _mp_gelu(y, form):
    y = mpmath.mpf(y)
    if form == "none":
        return y / 2 * (1 + mpmath.erf(y / mpmath.sqrt(2)))
    k = mpmath.sqrt(2 / mpmath.pi)
    return y / 2 * (1 + mpmath.tanh(k * (y + mpmath.mpf("0.044715") * y ** 3)))


MP = {
    "sigmoid": lambda v: 1 / (1 + mpmath.exp(-v)),
    "tanh": mpmath.tanh,
    "exp": mpmath.exp,
    "log": mpmath.log,
    "softplus": lambda v: mpmath.log(1 + mpmath.exp(v)),
    "relu": lambda v: max(v, 0),
    "inv_sqrt": lambda v: 1 / mpmath.sqrt(v),
    "soft_threshold": lambda v: (v - mpmath.mpf("0.5") if v > 0.5
                                 else v + mpmath.mpf("0.5") if v < -0.5 else mpmath.mpf(0)),
}
RANGES = {"sigmoid": (-8.0, 8.0), "tanh": (-3.0, 3.0), "exp": (-3.0, 1.0), "log": (0.5, 4.0),
          "softplus": (-6.0, 6.0), "relu": (-3.0, 3.0), "inv_sqrt": (0.5, 4.0),
          "soft_threshold": (-3.0, 3.0)}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("name", sorted(MP))
def test_gadget_within_its_certified_epsilon_against_mpmath(name, form):
    """Over the whole range on a dense grid (and at every unit's centre and the kinks),
    |f^ - f| evaluated in 30-digit arithmetic never exceeds the certified epsilon, which is
    within the target."""
    target = 1e-6
    fn = elementwise(name, RANGES[name], lam=0.5 if name == "soft_threshold" else None)
    g = build_gadget(fn, form, target, 0.7, 256, 4)
    assert not isinstance(g, float), g
    assert g.epsilon <= target
    lo, hi = RANGES[name]
    points = np.r_[np.linspace(lo, hi, 401), [t for t in g.t if lo <= t <= hi], 0.5, -0.5, 0.0]
    worst = mpmath.mpf(0)
    for v in points:
        if not lo <= v <= hi:
            continue
        v = mpmath.mpf(float(v))
        fhat = g.alpha + g.beta * v + mpmath.fsum(
            w * _mp_gelu(s * (v - t), form) for t, s, w in zip(g.t, g.s, g.w, strict=True))
        worst = max(worst, abs(fhat - MP[name](v)))
    assert worst <= g.epsilon, (name, form, float(worst), g.epsilon)
    assert g.epsilon <= 50 * max(float(worst), target / 50), "the certificate is vacuous"


@pytest.mark.parametrize("form", FORMS)
def test_kink_constant_against_mpmath(form):
    """C = sup_y y F(-y): mpmath finds the maximiser; the certified C lies just above."""
    g = lambda y: -_mp_gelu(-y, form)  # noqa: E731  (y F(-y))
    y_star = mpmath.findroot(lambda y: mpmath.diff(g, y), 0.75)
    C = g(y_star)
    assert float(C) <= kink_constant(form) <= float(C) + 2e-5


@pytest.mark.parametrize("form", FORMS)
def test_gelu_derivative_bounds_against_mpmath(form):
    """GELU_SLOPE bounds sup |GeLU'|; gelu_second is GeLU''; gelu_curvature and gelu_third
    bound |GeLU''| and |GeLU'''| on intervals (checked at points inside them)."""
    d1 = max(abs(mpmath.diff(lambda y: _mp_gelu(y, form), y)) for y in np.linspace(-6, 6, 241))
    assert float(d1) <= GELU_SLOPE
    rng = np.random.default_rng(0)
    for _ in range(40):
        a = rng.uniform(-9, 9)
        b = a + rng.uniform(0, 2)
        ys = np.linspace(a, b, 7)
        c2 = gelu_curvature(np.array([a]), np.array([b]), form)[0]
        c3 = gelu_third(np.array([a]), np.array([b]), form)[0]
        for y in ys:
            second = mpmath.diff(lambda t: _mp_gelu(t, form), y, 2)
            third = mpmath.diff(lambda t: _mp_gelu(t, form), y, 3)
            assert abs(float(second)) <= c2 * (1 + 1e-12)
            assert abs(float(third)) <= c3 * (1 + 1e-12)
            assert gelu_second(np.array([y]), form)[0] == pytest.approx(float(second),
                                                                          rel=1e-9, abs=1e-15)


# ------------------------------------------------------------------ the monitor's charge


@pytest.mark.parametrize("form", FORMS)
def test_charge_bounds_the_gadget_run_in_float32(form):
    """The units run as the model runs them in float32 (pre-activation, raspicl.model.gelu,
    output weights, one sum) stay within elementwise_charge of the exact f (mpmath)."""
    fn = elementwise("sigmoid", (-6.0, 6.0))
    g = build_gadget(fn, form, 1e-5, 0.7, 256, 4)
    z = np.linspace(-6.0, 6.0, 2001)
    t, s, w = (torch.tensor(a, dtype=torch.float32) for a in (g.t, g.s, g.w))
    zt = torch.tensor(z, dtype=torch.float32)
    pre = zt[:, None] * s[None, :] - (s * t)[None, :]
    units = gelu(pre, form) * w[None, :]
    out = (units.sum(dim=1) + torch.tensor(g.alpha, dtype=torch.float32)
           + torch.tensor(g.beta, dtype=torch.float32) * zt).double().numpy()
    z32 = zt.double().numpy()  # the argument as float32 holds it
    exact = np.array([float(MP["sigmoid"](mpmath.mpf(float(v)))) for v in z32])
    charge = elementwise_charge(np.abs(z32)[None, :, None], np.zeros(1), np.ones(1),
                                np.zeros((1, len(z))), g.record(),
                                float(np.finfo(np.float32).eps), 2.0)[0, :, 0]
    assert np.all(np.abs(out - exact) <= charge)


def _small(name="sigmoid", rng=(-3.0, 3.0)):
    p = Program("a", d=2, n=1)
    z = p.aff("z", p.x, W1=np.array([[0.5, -0.25]]), bias=0.1, shape=())
    s = p.apply("s", name, z, range=rng)
    q = p.aff("q", s, W1=2.0, bias=-1.0)
    p.output(q)
    return p


def test_monitor_refuses_an_argument_outside_the_range():
    line = inspect.getsourcelines(_small)[1] + 3  # the p.apply line
    p = _small()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = compile_program(p, CompilerConfig.for_dtype("float32"))
    prompts = random_prompts(64, 2, 1, seed=2)
    prompts.xq[:8] *= 20.0  # 0.5 x1 - 0.25 x2 far beyond [-3, 3]
    res = cm.residuals(prompts, check="ignore")
    report = cm.contract(res)
    z = 0.5 * prompts.xq[:, 0] - 0.25 * prompts.xq[:, 1] + 0.1
    outside = np.abs(z) > 3.0
    assert outside.any()
    refused = {f.prompt for f in report.findings if f.quantity == APPLY_RANGE}
    assert refused >= set(np.flatnonzero(outside))
    assert not report.accepted[outside].any()
    f = next(f for f in report.findings if f.quantity == APPLY_RANGE)
    assert "apply writing 's'" in f.message and f"test_apply.py:{line}" in f.message, f.message


# ------------------------------------------------------------------ random programs


def _random_program(rng: np.random.Generator):
    """One apply (or two in a chain) of a random function over a random affine argument."""
    choices = ["sigmoid", "tanh", "softplus", "relu", "soft_threshold", "exp", "log",
               "inv_sqrt", "user"]
    p = Program("rand", d=2, n=1)
    reg = p.x
    for k in range(int(rng.integers(1, 3))):
        name = str(rng.choice(choices))
        a, b = rng.uniform(-0.6, 0.6, size=2)
        if name in ("log", "inv_sqrt"):
            z = p.aff(f"z{k}", reg if reg.shape == () else p.x,
                      W1=0.2 if reg.shape == () else np.array([[0.2 * a, 0.2 * b]]),
                      bias=2.0, shape=())
            rng_ = (0.5, 4.0)
        else:
            z = p.aff(f"z{k}", reg if reg.shape == () else p.x,
                      W1=a if reg.shape == () else np.array([[a, b]]), bias=0.1, shape=())
            rng_ = (-3.0, 3.0)
        if name == "user":
            f = smooth("cube", lambda v: v ** 3 / 3.0, slope=9.0, curvature=6.0,
                       sympy_form=lambda x: x ** 3 / 3)
            reg = p.apply(f"f{k}", f, z, range=rng_)
        else:
            kw = {"lam": 0.3} if name == "soft_threshold" else {}
            reg = p.apply(f"f{k}", name, z, range=rng_, **kw)
    out = p.aff("out", reg, W1=1.5, bias=0.2)
    p.output(out, roles=("x", "query"))
    return p


@pytest.mark.parametrize("seed", range(8))
def test_no_accepted_prediction_beyond_its_bound(seed):
    rng = np.random.default_rng(seed)
    p = _random_program(rng)
    arch = ("paper", "gpt2")[seed % 2]
    dtype = ("float64", "float32")[(seed // 2) % 2]
    config = CompilerConfig.for_dtype(dtype, apply_epsilon=1e-6 if dtype == "float64" else 1e-5,
                                      tolerance=1e-4 if dtype == "float64" else 1e-2,
                                      min_acceptance=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = compile_program(p, config, arch=arch)
        if dtype == "float32":
            cm = cm.to(torch.float32)
        prompts = PromptDistribution(2.0, 1.0, 1.0).sample(300, 2, 1, seed=seed)
        out = cm.run(prompts, check="warn")
    want = interpret(p, prompts).output()
    bound = out.bound
    ok = np.isfinite(bound) & np.isfinite(want) & out.accepted[:, None, None]
    assert ok.any(), "every prediction refused: the property is vacuous"
    err = np.abs(out.values - want)
    assert not np.any(err[ok] > bound[ok]), (seed, float((err[ok] - bound[ok]).max()))


# ------------------------------------------------------------------ logistic_gd


@pytest.mark.parametrize("params", find_program("logistic_gd").grid)
def test_logistic_gd_interpreter_against_numpy(params):
    pf = find_program("logistic_gd")
    p = pf.build(**params)
    prompts = random_prompts(100, p.d, p.n, seed=4)
    got = interpret(p, prompts).output()[:, :, 0]
    np.testing.assert_allclose(got, pf.reference(prompts, **params), rtol=0, atol=1e-12)


def _check_float32(name: str, grid_entry: int, arch: str = "paper", tolerance: float | None = None,
                   relative: bool = False) -> None:
    """The program's GRID entry compiled for float32 (on its DOMAIN; `tolerance` for the
    contract if given) and run on 200 N(0, I) prompts (seed 5): it accepts >= 99%, every
    accepted prediction is within 1e-3 of the numpy reference (relative with a floor of one if
    `relative`), and within its error bound of the interpreter."""
    pf = find_program(name)
    params = pf.grid[grid_entry]
    p = pf.build(**params)
    config = CompilerConfig.for_dtype("float32") if tolerance is None else \
        CompilerConfig.for_dtype("float32", tolerance=tolerance)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = compile_program(p, config, domain=pf.domain, arch=arch).to(torch.float32)
        prompts = random_prompts(200, p.d, p.n, seed=5)
        out = cm.run(prompts, check="warn")
    ref = pf.reference(prompts, **params)[:, :, None]
    assert out.accepted.mean() >= 0.99
    acc = out.accepted
    scale = np.maximum(np.abs(ref[acc]), 1) if relative else 1.0
    assert np.all(np.abs(out.values[acc] - ref[acc]) <= 1e-3 * scale)
    want = interpret(p, prompts).output()
    assert np.all(np.abs(out.values[acc] - want[acc]) <= out.bound[acc])


@pytest.mark.parametrize("arch", ("paper", "gpt2"))
def test_logistic_gd_compiled_float32_against_numpy(arch):
    _check_float32("logistic_gd", grid_entry=0, arch=arch)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ("paper", "gpt2"))
def test_logistic_gd_verifies_in_float64(arch):
    from raspicl.verify import verify_program

    pf = find_program("logistic_gd")
    for params in pf.grid[:2]:
        r = verify_program(pf, params, "float64", problems=300, arch=arch)
        assert r.status == "PASS", r


# ------------------------------------------------------------------ logistic_sgd


@pytest.mark.parametrize("params", find_program("logistic_sgd").grid)
def test_logistic_sgd_interpreter_against_numpy(params):
    """The scan with a sigmoid in its step (clamped: x_i sigmoid(0) = 0 at token 0) against
    solvers.logistic_sgd, at every x token and the query, on the prompts it serves."""
    pf = find_program("logistic_sgd")
    p = pf.build(**params)
    prompts = pf.domain.sample(100, p.d, p.n, seed=4)
    got = interpret(p, prompts).output()[:, :, 0]
    assert got.shape == (100, p.n + 1)
    np.testing.assert_allclose(got, pf.reference(prompts, **params), rtol=0, atol=1e-12)


def test_logistic_sgd_is_a_loop_of_identical_steps_with_its_sigmoid_inside():
    """Every iteration applies the sigmoid once (n applies in the loop, one for the
    prediction); the product x_i y_i alone is before the loop."""
    p = find_program("logistic_sgd").build(d=2, n=4)
    applies = [op for op in p.ops if op.kind == "apply"]
    assert [op.loop is not None for op in applies] == [True] * 4 + [False]
    assert [op.kind for op in p.ops if op.kind == "select" and op.loop is not None] == []
    hoisted = [op for op in p.ops if op.kind == "mul" and op.loop is None
               and {r.register.name for r in op.reads} == {"logistic_sgd_x", "y"}]
    assert len(hoisted) == 1


@pytest.mark.parametrize("arch", ("paper", "gpt2"))
def test_logistic_sgd_compiled_float32_against_numpy(arch):
    _check_float32("logistic_sgd", grid_entry=0, arch=arch)


# ------------------------------------------------------------------ lasso_ista


@pytest.mark.parametrize("params", find_program("lasso_ista").grid
                         + [{"d": 2, "n": 3, "T": 3, "lam": 2.0, "w0": [1.0, -1.0]}])
def test_lasso_ista_interpreter_against_numpy(params):
    """T proximal steps on the mean statistics, the soft-threshold applied to every
    component, against solvers.lasso_ista at the query (a large lam zeroes components)."""
    pf = find_program("lasso_ista")
    p = pf.build(**params)
    prompts = pf.domain.sample(100, p.d, p.n, seed=6)
    got = interpret(p, prompts).output()[:, :, 0]
    assert got.shape == (100, 1)
    np.testing.assert_allclose(got, pf.reference(prompts, **params), rtol=0, atol=1e-12)


def test_lasso_ista_compiled_float32_paper_against_numpy():
    _check_float32("lasso_ista", grid_entry=1, tolerance=1e-3)


# ------------------------------------------------------------------ poisson_gd


@pytest.mark.parametrize("params", find_program("poisson_gd").grid)
def test_poisson_gd_interpreter_against_numpy(params):
    pf = find_program("poisson_gd")
    p = pf.build(**params)
    prompts = pf.domain.sample(100, p.d, p.n, seed=7)
    got = interpret(p, prompts).output()[:, :, 0]
    assert got.shape == (100, 1)
    np.testing.assert_allclose(got, pf.reference(prompts, **params), rtol=0, atol=1e-12)


def test_poisson_gd_keeps_its_exp_arguments_in_range_on_its_domain():
    """What DOMAIN says: on the GRID's sizes, every argument of an exp that the query's
    prediction depends on (x_j^T w_t at the query token, w_T^T x_q) lies in [-zmax, zmax]."""
    pf = find_program("poisson_gd")
    for params in pf.grid:
        p = pf.build(**params)
        prompts = pf.domain.sample(2000, p.d, p.n, seed=8)
        trace = interpret(p, prompts)
        zmax = p.params["zmax"]
        for op in p.ops:
            if op.kind == "apply":
                arg = trace.after[op.index - 1][:, -1]  # its argument, written just before
                assert p.ops[op.index - 1].dst.name == op.reads[0].register.name
                assert np.abs(arg).max() <= zmax, (params, op.dst.name)


@pytest.mark.parametrize("arch", ("paper", "gpt2"))
def test_poisson_gd_compiled_float32_against_numpy(arch):
    _check_float32("poisson_gd", grid_entry=1, arch=arch, relative=True)


# ------------------------------------------------------------------ kernel_smoother


@pytest.mark.parametrize("params", find_program("kernel_smoother").grid)
def test_kernel_smoother_interpreter_against_numpy(params):
    pf = find_program("kernel_smoother")
    p = pf.build(**params)
    prompts = pf.domain.sample(100, p.d, p.n, seed=9)
    got = interpret(p, prompts).output()[:, :, 0]
    assert got.shape == (100, 1)
    np.testing.assert_allclose(got, pf.reference(prompts, **params), rtol=0, atol=1e-12)


def test_kernel_smoother_weights_by_distance():
    """An example at the query dominates one far from it, the more so the narrower h; one
    example alone is its own y."""
    pf = find_program("kernel_smoother")
    X = np.array([[[0.1, 0.0], [2.0, 2.0]]])
    y, xq = np.array([[1.0, -1.0]]), np.array([[0.0, 0.0]])
    prompts = Prompts(X, y, xq, np.zeros((1, 2)))
    wide, narrow = (interpret(pf.build(d=2, n=2, h=h), prompts).output()[0, 0, 0]
                    for h in (3.0, 1.0))
    assert 0 < wide < narrow < 1
    one = Prompts(X[:, :1], y[:, :1], xq, np.zeros((1, 2)))
    assert interpret(pf.build(d=2, n=1), one).output()[0, 0, 0] == pytest.approx(1.0)


def test_kernel_smoother_compiled_float32_against_numpy():
    _check_float32("kernel_smoother", grid_entry=1, relative=True)


# ------------------------------------------------------------------ config


@pytest.mark.parametrize("field,value", [
    ("apply_epsilon", 0.0), ("apply_epsilon", 1.0), ("apply_epsilon", math.nan),
    ("apply_kink_epsilon", -1e-9), ("apply_sharpness", 0.0), ("apply_sharpness", 9.0),
    ("apply_max_units", 3), ("apply_max_units", 8.0), ("apply_ghost_units", -1),
    ("apply_ghost_units", True)])
def test_config_rejects_bad_apply_fields(field, value):
    with pytest.raises(ConfigError, match=f"CompilerConfig.{field} = "):
        CompilerConfig(**{field: value})


def test_too_few_units_is_a_compile_error_naming_the_op():
    p = _small("tanh")
    with pytest.raises(Exception, match=r"op 'apply' writing 's' at .*needs more than 4 GeLU "
                                        r"units"):
        compile_program(p, CompilerConfig(apply_max_units=4))


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "softplus", "exp", "log", "inv_sqrt"])
def test_derivative_bounds_against_mpmath(name):
    """slope_bound and curvature_bound (the monitor's J and the certificate's sup |f''|) bound
    |f'| and |f''| on random intervals, checked at points inside them in 30 digits."""
    fn = elementwise(name, RANGES[name])
    rng = np.random.default_rng(1)
    for _ in range(40):
        a = rng.uniform(fn.lo, fn.hi)
        b = min(a + rng.uniform(0.0, 1.5), fn.hi)
        c1 = fn.slope_bound(np.array([a]), np.array([b]))[0]
        c2 = fn.curvature_bound(np.array([a]), np.array([b]))[0]
        for v in np.linspace(a, b, 5):
            assert abs(float(mpmath.diff(MP[name], v, 1))) <= c1
            assert abs(float(mpmath.diff(MP[name], v, 2))) <= c2
