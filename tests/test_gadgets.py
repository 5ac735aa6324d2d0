"""The gadgets on their own, evaluated with numpy/torch in value space against hand-derived
error bounds: product units (the GeLU square series), gates, affine pairs, the neutral and the
dividing LayerNorm reads, and the attention score patterns."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raspicl.compiler.config import ZERO_BOUND
from raspicl.compiler.gadgets.attention import pattern_weights
from raspicl.compiler.gadgets.layernorm import division_read, neutral_read
from raspicl.compiler.gadgets.mlp import (
    UnitSpec,
    affine_units,
    gadget_bound,
    gate_units,
    product_params,
    product_units,
)
from raspicl.lang.reads import At, Here, Mean, Offset

U64 = float(np.finfo(np.float64).eps)


def gelu(z: np.ndarray) -> np.ndarray:
    """The exact (erf) GeLU in float64, as the model's F.gelu computes it."""
    return torch.nn.functional.gelu(torch.as_tensor(z, dtype=torch.float64)).numpy()


def run_units(units: list[UnitSpec], values: dict[int, np.ndarray], out_row: int) -> np.ndarray:
    """sum_u w_out[out_row] GeLU(sum_j w_in[j] v_j + b_in): the MLP in value space."""
    total = np.zeros_like(next(iter(values.values())))
    for unit in units:
        pre = np.full_like(total, unit.b_in)
        for j, w in unit.w_in.items():
            pre = pre + w * values[j]
        total = total + unit.w_out.get(out_row, 0.0) * gelu(pre)
    return total


def product_error_bound(bound_a: float, bound_b: float, z: float, richardson: bool) -> float:
    """Derived here, not taken from the monitor. sq_e(t) = t^2 (1 - x^2/6 + x^4/40 - ...) with
    x = e t (the erf series); Richardson leaves t^2 x^4 / 10 (1 + O(x^2)). A product is
    (sq(p) - sq(m)) / 4 with |p|, |m| <= 2 sqrt(B_a B_b) and |e p| <= z, so truncation is at most
    2 (4 B_a B_b) c(z) / 4 = 2 B_a B_b c(z), c(z) = 1.1 z^4 / 10 (Richardson) or 1.1 z^2 / 6.
    Rounding: the units' outputs have magnitude about |W_out| e |t| / 2 ~ |t| / e, summing to
    under 4 B_a B_b / z; a handful of roundings each gives 16 u B_a B_b / z."""
    c = 1.1 * z**4 / 10 if richardson else 1.1 * z**2 / 6
    return bound_a * bound_b * (2 * c + 16 * U64 / z)


@pytest.mark.parametrize("richardson", [True, False])
@pytest.mark.parametrize("z", [1e-3, 0.1])
@pytest.mark.parametrize("bounds", [(1.0, 1.0), (3.0, 0.02), (250.0, 4.0)])
def test_product_units_error_within_its_bound(bounds, z, richardson):
    ba, bb = bounds
    rng = np.random.default_rng(7)
    a = rng.uniform(-ba, ba, 20000)
    b = rng.uniform(-bb, bb, 20000)
    a[:4], b[:4] = [ba, -ba, ba, 0.0], [bb, bb, -bb, bb]  # the corners
    units = product_units(0, 1, ba, bb, {5: 1.5}, z, richardson)
    assert len(units) == (8 if richardson else 4)
    got = run_units(units, {0: a, 1: b}, 5)
    err = np.abs(got - 1.5 * a * b).max()
    bound = 1.5 * product_error_bound(ba, bb, z, richardson)
    assert err <= bound
    if z == 0.1:  # truncation dominates: the bound is within a factor 30 of what happens
        assert err >= bound / 30


def test_square_units_error_within_its_bound():
    rng = np.random.default_rng(3)
    for bound_a in (0.5, 7.0):
        a = rng.uniform(-bound_a, bound_a, 10000)
        units = product_units(2, 2, bound_a, bound_a, {4: -2.0}, 1e-3, True)
        assert len(units) == 4
        err = np.abs(run_units(units, {2: a}, 4) - (-2.0) * a * a).max()
        # a square is one sq_e with |e t| <= z: half the pair's truncation, same rounding
        assert err <= 2.0 * product_error_bound(bound_a, bound_a, 1e-3, True)


def test_product_params_balance_and_scale():
    k, e = product_params(False, 4.0, 1.0, 1e-3)
    assert k == pytest.approx(0.5) and e == pytest.approx(1e-3 / 4.0)
    # k a and b / k are both within sqrt(B_a B_b) = 2, so |e (k a +- b / k)| <= z
    assert abs(e * (k * 4.0 + 1.0 / k)) == pytest.approx(1e-3)
    assert product_params(True, 0.0, 0.0, 0.1) == (1.0, 0.1)  # a zero bound counts as 1


def test_affine_units_are_exact_to_rounding():
    rng = np.random.default_rng(0)
    v = {3: rng.normal(size=1000) * 50, 8: rng.normal(size=1000)}
    units = affine_units(1, {3: 0.25, 8: -2.0}, 0.75)
    want = 0.25 * v[3] - 2.0 * v[8] + 0.75
    assert np.abs(run_units(units, v, 1) - want).max() <= 8 * U64 * np.abs(want).max()


@pytest.mark.parametrize("bound", [1.0, 30.0])
def test_gate_units_open_and_closed(bound):
    rng = np.random.default_rng(1)
    z_value = rng.uniform(-bound / 2, bound / 2, 5000)  # 2 v + 1 within the bound
    v = (z_value - 1.0) / 2.0
    units = gate_units(0, {4: 2.0}, 1.0, 9, bound, 40.0)
    open_ = run_units(units, {4: v, 9: np.ones_like(v)}, 0)
    closed = run_units(units, {4: v, 9: np.zeros_like(v)}, 0)
    # open: m z to rounding (two GeLUs of size s/B |z| scaled back by B/s)
    assert np.abs(open_ - z_value).max() <= 16 * U64 * (np.abs(z_value).max() + 2 * bound)
    # closed: both arguments <= -s, so each GeLU is below s Phi(-s) ~ 1e-348: zero
    assert np.abs(closed).max() == 0.0
    # outside its bound the closed gate leaks: the bound is what keeps it shut
    far = np.array([-6.0 * bound])
    assert abs(run_units(units, {4: far, 9: np.zeros(1)}, 0)[0]) > 0.0


def test_a_zero_bound_is_built_and_recorded_as_one_bound():
    """gadget_bound decides a gadget's bound once: a zero bound (operands 0 on every
    calibration prompt) becomes ZERO_BOUND for the units and the monitor record alike, and a
    gate is never built for a bound other than the one it is given."""
    assert gadget_bound(0.0) == ZERO_BOUND and gadget_bound(2.5) == 2.5
    assert product_params(False, 0.0, 4.0, 1e-3) == product_params(False, ZERO_BOUND, 4.0,
                                                                     1e-3)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="bound"):
            gate_units(0, {4: 2.0}, 1.0, 9, bad, 40.0)
    with pytest.raises(ValueError, match="bound"):
        gadget_bound(math.nan)


def _layernorm(A: np.ndarray, eps: float) -> np.ndarray:
    return torch.nn.functional.layer_norm(torch.as_tensor(A), (A.shape[-1],),
                                          eps=eps).numpy()


ROWS = {"zero": 0, "one": 1, "anchor_pos": 2, "anchor_neg": 3}


def test_neutral_read_recovers_values_exactly_to_rounding():
    D = 12
    rng = np.random.default_rng(2)
    A = np.zeros((500, D))
    A[:, 1] = 1.0
    A[:, 4:] = rng.normal(size=(500, D - 4)) * 100
    units = [UnitSpec({4: 1.0, 7: -0.5}, 0.25), UnitSpec({11: 3.0}, 0.0)]
    W, b = neutral_read(units, ROWS, D, 2.0**80, width=5)
    assert W.shape == (D, 5) and not W[:, 2:].any() and not b[2:].any()
    pre = _layernorm(A, 2.0**80) @ W + b
    want0 = A[:, 4] - 0.5 * A[:, 7] + 0.25
    want1 = 3.0 * A[:, 11]
    scale = np.abs(A).max()
    assert np.abs(pre[:, 0] - want0).max() <= 16 * U64 * scale
    assert np.abs(pre[:, 1] - want1).max() <= 16 * U64 * scale


def test_division_read_divides_by_the_anchored_divisor():
    """With anchors +N s, -N s in the residual, W_in reads (sum w v + b) / |s| with relative
    error about Q / (4 N^2 s^2), Q the squared deviation of the rest of the stream."""
    D, N = 10, 1e6
    rng = np.random.default_rng(4)
    s = rng.uniform(0.2, 5.0, 400) * rng.choice([-1.0, 1.0], 400)
    A = np.zeros((400, D))
    A[:, 1] = 1.0
    A[:, 2], A[:, 3] = N * s, -N * s
    A[:, 5:] = rng.normal(size=(400, D - 5))
    units = [UnitSpec({5: 2.0, 6: -1.0}, 0.5)]
    W, b = division_read(units, ROWS, D, N)
    pre = (_layernorm(A, 1e-12) @ W + b)[:, 0]
    want = (2.0 * A[:, 5] - A[:, 6] + 0.5) / np.abs(s)
    mu = A.mean(axis=1, keepdims=True)
    rest = np.delete(A - mu, [2, 3], axis=1)
    Q = (rest**2).sum(axis=1)
    rel = Q / (4 * N**2 * s**2)
    err = np.abs(pre - want)
    assert np.all(err <= 2 * rel * np.abs(want) + 1e-9 * (np.abs(want) + 1))


@pytest.mark.parametrize("place", [Here(), Offset(1), Offset(3), At(2), Mean("x")])
def test_attention_patterns_single_out_their_token_by_the_margin(place):
    T, D, d_head, M = 9, 10, 2, 100.0
    rows = {"one": 0, "pos": 1, "pos_sq": 2, "is_x": 3, "is_y": 4}
    resid = np.zeros((T, D))
    resid[:, 0] = 1.0
    resid[:, 1] = np.arange(T) / T
    resid[:, 2] = (np.arange(T) / T) ** 2
    roles = ["x" if t % 2 else "y" for t in range(T)]
    resid[:, 3] = [r == "x" for r in roles]
    resid[:, 4] = [r == "y" for r in roles]
    wq, wk = pattern_weights(place, rows, D, d_head, T, M)
    scores = (resid @ wq) @ (resid @ wk).T / math.sqrt(d_head)
    for t in range(T):
        visible = scores[t, :t + 1]
        if isinstance(place, Mean):
            chosen = [s for s in range(t + 1) if roles[s] == "x"]
            others = [s for s in range(t + 1) if roles[s] != "x"]
            if chosen and others:
                assert visible[chosen].min() - visible[others].max() >= M * (1 - 1e-12)
            if chosen:
                assert np.ptp(visible[chosen]) == 0.0
            continue
        want = {Here: t, Offset: t - getattr(place, "k", 0), At: getattr(place, "index", 0)}
        target = want[type(place)]
        if target < 0 or target > t:  # the place is outside the prompt so far: undefined
            continue
        gap = visible[target] - np.delete(visible, target).max(initial=-np.inf)
        assert gap >= M * (1 - 1e-9), (t, gap)
