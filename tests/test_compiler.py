"""The compiler against the interpreter and the reference solvers (issue targets), and the
gadgets one at a time on small programs whose answer numpy computes independently."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import numpy as np
import pytest
import torch

from raspicl import At, Offset, Program, Read, interpret, random_prompts
from raspicl.compiler import CompilerConfig, compile_program
from raspicl.errors import ConfigError
from raspicl.registry import find_program
from raspicl.verify import rel_err, verify_program

TARGETS = {"gd_step": (1e-8, 9), "sherman_morrison": (1e-6, 14)}


@pytest.mark.parametrize("name", sorted(TARGETS))
@pytest.mark.parametrize("d", [1, 2, 4, 8])
def test_theorem_programs_float64(name, d):
    """1000 random problems: every register at every token, and the prediction vs solvers."""
    tol, paper_layers = TARGETS[name]
    r = verify_program(find_program(name), {"d": d}, "float64", problems=1000, seed=d,
                       symbolic=False)
    assert r.err_registers <= tol, r.worst_register
    assert r.err_prediction <= tol
    assert r.err_model_solver <= tol
    assert r.err_interpreter_solver <= 1e-12
    assert r.blocks < paper_layers


@pytest.mark.parametrize("name", sorted(TARGETS))
@pytest.mark.parametrize("d", [1, 2, 4, 8])
def test_theorem_programs_float32_cpu(name, d):
    """float32 on the CPU, weights tuned for float32: the 1e-3 target."""
    r = verify_program(find_program(name), {"d": d}, "float32", problems=1000, seed=d,
                       symbolic=False)
    assert r.err_prediction <= 1e-3
    assert r.err_model_solver <= 1e-3


def _check(p: Program, tol: float = 1e-9, n_prompts: int = 200, seed: int = 0):
    prompts = random_prompts(n_prompts, p.d, p.n, seed)
    cm = compile_program(p)
    trace = interpret(p, prompts)
    res = cm.residuals(prompts)
    versions: dict[str, int] = {}
    for op in p.ops:
        versions[op.dst.name] = versions.get(op.dst.name, 0) + 1
        got = cm.decode(res, op.dst.name, versions[op.dst.name])
        assert rel_err(got, trace.after[op.index]) <= tol, op.describe()
    return cm, prompts, trace


def test_moves_read_offsets_absolute_tokens_and_means():
    p = Program("moves", d=2, n=3)
    back2 = p.mov("back2", Read(p.x, Offset(2)))
    first_y = p.mov("first_y", Read(p.y, At(1)))
    mean_x = p.mean("mean_x", p.x, "x")
    mean_y = p.mean("mean_y", p.y, "y")
    total = p.aff("total", back2, mean_x, W1=1.0, W2=1.0)
    p.aff("both", first_y, mean_y, W1=2.0, W2=-1.0, bias=0.5)
    p.output(total, roles=("query",))
    cm, prompts, trace = _check(p)
    # independent numpy: at the query (t = 6) back2 is x_3 (token 4); mean_x averages x_1..x_3
    X, y = prompts.X, prompts.y
    q = 6
    assert np.allclose(trace.register("back2")[:, q], X[:, 2], atol=0)
    assert np.allclose(trace.register("mean_x")[:, q], X.mean(axis=1), rtol=1e-15)
    assert np.allclose(trace.register("first_y")[:, q], y[:, 0], atol=0)
    assert np.allclose(cm.predict(prompts)[:, 0], X[:, 2] + X.mean(axis=1), rtol=1e-10)


def test_products_matrix_shapes_and_negative_divisor():
    p = Program("arith", d=3, n=1)
    outer = p.mul("outer", p.x, p.x, a_shape=(3, 1), b_shape=(1, 3))
    mv = p.mul("mv", outer, p.x)  # x (x^T x)
    s = p.aff("s", p.dot("xx", p.x, p.x), bias=-40.0)  # mostly negative: |s| matters
    q = p.div("q", mv, s)
    p.output(q, roles=("x",))
    cm, prompts, _ = _check(p, tol=1e-8)
    x = prompts.X[:, 0]
    sq = (x * x).sum(axis=1)
    expect = x * sq[:, None] / np.abs(sq - 40.0)[:, None]
    assert rel_err(cm.predict(prompts)[:, 0], expect) <= 1e-8


def test_division_is_by_absolute_value():
    p = Program("div", d=1, n=1)
    num = p.aff("num", p.x, bias=3.0, shape=())
    den = p.aff("den", p.x, bias=-5.0, shape=())  # negative for |x| < 5
    out = p.div("out", num, den)
    p.output(out, roles=("x",))
    cm, prompts, _ = _check(p, tol=1e-8)
    x = prompts.X[:, 0, 0]
    assert np.allclose(cm.predict(prompts)[:, 0, 0], (x + 3.0) / np.abs(x - 5.0), rtol=1e-8)


def test_independent_ops_share_blocks():
    """Two products of the same inputs run in one MLP (the paper's Lemma 7)."""
    p = Program("parallel", d=2, n=1)
    a = p.mul("a", p.x, p.x, a_shape=(2, 1), b_shape=(1, 2))
    b = p.dot("b", p.x, p.x)
    p.output(p.aff("c", b, bias=1.0), roles=("query",))
    cm, _, _ = _check(p)
    blocks = {o["dst"]: o["block"] for o in cm.layout["ops"]}
    assert blocks["a"] == blocks["b"]
    assert a.name == "a"


def test_rows_are_reused_after_registers_die():
    """A chain of writes to a var reuses its rows: the width does not grow with the chain."""
    def chain(k: int) -> Program:
        p = Program("chain", d=4, n=1)
        w = p.var("w", 4, init=np.ones(4))
        for _ in range(k):
            p.aff(w, w, p.x, W1=0.5, W2=1.0)
        p.output(p.dot("pred", w, p.x), roles=("query",))
        return p

    short, long = compile_program(chain(2)), compile_program(chain(8))
    assert long.layout["architecture"]["d_model"] == short.layout["architecture"]["d_model"]
    _check(chain(8))


def test_constants_are_folded_into_weights():
    """A product with a constant register is linear: it needs no GeLU product units."""
    p = Program("fold", d=3, n=1)
    A = p.const("A", np.arange(9.0).reshape(3, 3))
    p.output(p.mul("Ax", A, p.x), roles=("query",))
    cm, prompts, _ = _check(p, tol=1e-12)
    assert "A" not in cm.layout["registers"]
    assert np.allclose(cm.predict(prompts)[:, 0], prompts.xq @ np.arange(9.0).reshape(3, 3).T,
                       rtol=1e-12)


def test_float32_config_runs_in_float32():
    p = find_program("gd_step").build(d=2)
    cm = compile_program(p, CompilerConfig.for_dtype("float32")).to(torch.float32)
    assert cm.model.dtype == torch.float32
    prompts = random_prompts(50, 2, 1, 0)
    assert rel_err(cm.predict(prompts), interpret(p, prompts).output()) <= 1e-3


def test_config_rejects_unknown_dtype():
    with pytest.raises(ValueError, match="float64"):
        CompilerConfig.for_dtype("bfloat16")


# ------------------------------------------------------------------ config conditions


def test_default_configs_meet_their_conditions():
    for config in (CompilerConfig(), CompilerConfig.for_dtype("float64"),
                   CompilerConfig.for_dtype("float32"),
                   CompilerConfig.for_dtype("float32", tolerance=1e-2)):
        assert replace(config) == config  # __post_init__ ran again, and passed


BAD_FIELDS = [
    ("attention_margin", 0.0), ("attention_margin", math.inf),
    ("neutral_ln_eps", 2.0**81), ("neutral_ln_eps", 0.0), ("neutral_ln_eps", 3.0),
    ("division_ln_eps", -1e-12), ("division_ln_eps", math.nan),
    ("division_anchor", 0.0), ("division_anchor", 1e200),
    ("ln_anchor", -1.0), ("ln_anchor", 1e160),
    ("ln_restore_anchor", 2.0**30 + 1.0), ("ln_restore_anchor", 0.0),
    ("ln_division_anchor", -1.0),
    ("product_scale", 0.0), ("product_scale", 0.6), ("product_scale", -1e-3),
    ("product_range", 0.0), ("product_range", 0.3), ("product_range", math.nan),
    ("richardson", 1),
    ("select_sharpness", 3.0), ("select_sharpness", 8.0), ("select_sharpness", math.inf),
    ("bound_margin", 0.5), ("bound_margin", math.nan),
    ("interval_fallback", 0.0), ("interval_fallback", 1.0),
    ("calibration_prompts", 0), ("calibration_prompts", 512.0),
    ("calibration_seed", -1),
    ("target_dtype", "float16"),
    ("tolerance", 0.0), ("tolerance", -1e-8), ("tolerance", math.inf),
    ("rounding_factor", 1.0), ("rounding_factor", math.inf),
    ("feasibility_passes", -1), ("feasibility_passes", 1.5),
    ("min_acceptance", 1.5), ("min_acceptance", -0.1),
    ("fusion", "yes"), ("fusion_max_readers", 0), ("fusion_width_slack", 0.9),
    ("fusion_always", None),
]


@pytest.mark.parametrize(("field", "value"), BAD_FIELDS)
def test_config_rejects_a_field_outside_its_condition(field, value):
    """Every field's stated condition is checked when the config is made, with an error that
    names the field and its value (ConfigError is a ValueError and a RaspiclError)."""
    base = CompilerConfig.for_dtype("float32") if field == "ln_restore_anchor" \
        else CompilerConfig()
    with pytest.raises(ConfigError, match=rf"CompilerConfig\.{field} = "
                                          rf"{re.escape(repr(value))}: must be "):
        replace(base, **{field: value})
    assert issubclass(ConfigError, ValueError)


def test_module_constants_meet_their_conditions():
    from raspicl.compiler import config

    assert config.CALIBRATION_CHUNK >= 1 and config.MEASURE_CHUNK >= 1
    assert config.MEASURE_MEMORY > 0
    assert math.isfinite(config.ZERO_BOUND) and config.ZERO_BOUND > 0


def test_product_scale_limit_follows_richardson():
    CompilerConfig(product_scale=0.8, richardson=False)  # within the plain gadget's 1
    with pytest.raises(ConfigError, match="product_scale"):
        CompilerConfig(product_scale=0.8)
    with pytest.raises(ConfigError, match="product_scale"):
        CompilerConfig(product_scale=1.5, richardson=False)


def test_min_select_sharpness_is_where_the_closed_gate_leaks_below_rounding():
    """Closed, a gate leaks at most Phi(-s) times its bound. The smallest s with
    Phi(-s) <= 2^-53 (half an ulp of the bound), found with mpmath, is what the config
    requires (to 0.01, rounded up). In float64 torch's GeLU rounds 1 + erf to a multiple of
    2^-53, which lifts that leak by under 1% (to 1.004 2^-53 B at B = 1e-3): within one ulp
    of the bound, a quarter of the 2 kappa u B the monitor charges a gate. select_sharpness = 3
    (which compiled and, on newton d = 1 n = 2 T = 2, had 100 of 100 prompts accepted, 33 beyond
    the tolerance) leaks 1e-3 of its bound."""
    import mpmath

    from raspicl.compiler.config import MIN_SELECT_SHARPNESS
    from raspicl.compiler.gadgets.mlp import gate_units

    mpmath.mp.dps = 40
    half_ulp = mpmath.mpf(2) ** -53
    s_min = mpmath.findroot(lambda s: mpmath.ncdf(-s) - half_ulp, 8)
    assert s_min <= MIN_SELECT_SHARPNESS < s_min + 0.01
    assert mpmath.ncdf(-MIN_SELECT_SHARPNESS) <= half_ulp

    def closed_leak(sharpness: float, bound: float) -> float:
        z = np.linspace(-bound, bound, 2001)  # |a - b| within the bound, mask 0
        units = gate_units(0, {1: 1.0}, 0.0, 2, bound, sharpness)
        out = np.zeros_like(z)
        for u in units:
            pre = torch.as_tensor(u.w_in[1] * z + u.w_in[2] * 0.0 + u.b_in)
            out += u.w_out[0] * torch.nn.functional.gelu(pre).numpy()
        return float(np.abs(out).max())

    for bound in (1e-3, 1.0, 37.5):
        assert closed_leak(MIN_SELECT_SHARPNESS, bound) <= 2.0**-52 * bound
        assert closed_leak(3.0, bound) > 1e-3 * bound
    with pytest.raises(ConfigError, match="select_sharpness"):
        compile_program(find_program("newton").build(d=1, n=2, T=2),
                        CompilerConfig(select_sharpness=3))
