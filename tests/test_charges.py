"""Each gadget's local charge (raspicl.contract.charges) against an independent derivation:
the gadget itself run in torch, in float64 and float32, against the exact value (mpmath,
fractions), at random operands within the gadget's range and at ones chosen to cancel."""

from __future__ import annotations

from fractions import Fraction

import mpmath
import numpy as np
import pytest
import torch

from raspicl.arch import PRODUCT_TRUNCATION
from raspicl.compiler.gadgets.mlp import product_params, product_units
from raspicl.contract.charges import SERIES_LIMIT, mean_summation, product_pairs, quotient

KAPPA = 2.0  # CompilerConfig.rounding_factor's default
DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _gadget(a: np.ndarray, b: np.ndarray, bound_a: float, bound_b: float, z: float,
            richardson: bool, dtype: torch.dtype, approximate: str) -> np.ndarray:
    """a * b by the compiler's product units (compiler/gadgets/mlp.py), in `dtype`: the
    pre-activations, GeLU and the output sum as an MLP computes them."""
    units = product_units(0, 1, bound_a, bound_b, {0: 1.0}, z, richardson)
    W_in = torch.tensor([[u.w_in.get(0, 0.0), u.w_in.get(1, 0.0)] for u in units], dtype=dtype)
    W_out = torch.tensor([u.w_out.get(0, 0.0) for u in units], dtype=dtype)
    x = torch.tensor(np.stack([a, b], axis=1), dtype=dtype)
    h = torch.nn.functional.gelu(x @ W_in.T, approximate=approximate)
    return (h @ W_out).double().numpy()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("richardson", [True, False])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_product_gadget_within_its_charge(dtype, richardson, approximate):
    """|gadget(a, b) - a b| <= the charge, over operands across their range (small ones
    included, where the rounding, relative to the bound, dominates), the exact product by
    mpmath; z at the float32 and float64 defaults and at the edge of the series' range."""
    rng = np.random.default_rng(3)
    u = float(np.finfo(dtype).eps)
    trunc = PRODUCT_TRUNCATION[approximate]["richardson" if richardson else "plain"]
    for z in (1e-3, 0.2, SERIES_LIMIT[richardson] * 0.9):
        bound_a, bound_b = 3.0, 0.5
        k, e = product_params(False, bound_a, bound_b, z)
        n = 400
        scale = 10.0 ** rng.uniform(-4, 0, size=(n, 2))
        a = rng.uniform(-1, 1, n) * bound_a * scale[:, 0]
        b = rng.uniform(-1, 1, n) * bound_b * scale[:, 1]
        got = _gadget(a, b, bound_a, bound_b, z, richardson, DTYPES[dtype], approximate)
        exact = [mpmath.mpf(float(x)) * mpmath.mpf(float(y)) for x, y in zip(a, b, strict=True)]
        err = np.array([float(abs(mpmath.mpf(float(g)) - t)) for g, t in
                        zip(got, exact, strict=True)])
        charge, worst = product_pairs(a[None, :, None], b[None, :, None], np.array([k]),
                                      np.array([e]), False, richardson,
                                      np.zeros((1, n)), u, KAPPA, trunc)
        assert (worst[0, :, 0] <= SERIES_LIMIT[richardson]).all()
        # the operands themselves as the gadget got them: a, b rounded to the dtype (the
        # charge covers the gadget's own error beyond its inputs)
        a32 = torch.tensor(a, dtype=DTYPES[dtype]).double().numpy()
        b32 = torch.tensor(b, dtype=DTYPES[dtype]).double().numpy()
        inputs = np.abs(a32 * b32 - a * b)
        over = (err - inputs) / charge[0, :, 0]
        i = int(np.argmax(over))
        assert over[i] <= 1, (z, over[i], a[i], b[i], err[i], charge[0, i, 0])


def test_quotient_enclosure_against_exact_arithmetic():
    """Numerators and divisors perturbed within their bounds (errors up to a third of the
    divisor, where first-order bounds fail), the LayerNorm's ratio within 1e-6 of 1: the
    quotient as computed is within first + local of the exact one (fractions)."""
    rng = np.random.default_rng(9)
    B, w = 300, 2
    n0 = rng.normal(size=(B, 1, w))
    s0 = rng.uniform(0.1, 2.0, size=(B, 1)) * rng.choice([-1, 1], size=(B, 1))
    En = np.abs(rng.normal(size=(B, 1, w))) * 10.0 ** rng.uniform(-12, -1, size=(B, 1, w))
    Es = np.abs(s0) * rng.uniform(0, 0.33, size=(B, 1))
    num = n0 + rng.uniform(-1, 1, size=n0.shape) * En        # compiled numerator
    n_eff = n0 + rng.uniform(-1, 1, size=n0.shape) * En      # the one the gadget divides
    s_hat = s0 + rng.uniform(-1, 1, size=s0.shape) * Es      # compiled divisor
    ratio = 1.0 + rng.uniform(-1e-6, 1e-6, size=(B, 1))
    u = float(np.finfo(np.float64).eps)
    q, first, local = quotient(num, En, np.abs(s_hat), Es, ratio, KAPPA * u)
    model = n_eff / np.abs(s_hat)[:, :, None] * ratio[:, :, None]
    for i in range(B):
        for j in range(w):
            exact = Fraction(float(n0[i, 0, j])) / abs(Fraction(float(s0[i, 0])))
            diff = abs(Fraction(float(model[i, 0, j])) - exact)
            assert diff <= Fraction(float(first[i, 0, j] + local[i, 0, j])), (i, j)


@pytest.mark.parametrize("count", [4, 16, 64])
def test_mean_summation_against_an_exact_mean(count):
    """A float32 head averaging `count` tokens (equal scores, softmax, the weighted sum), of
    values that cancel (+-2^17 pairs among small ones): within the charge of the exact mean
    of the float32 values (fractions)."""
    rng = np.random.default_rng(count)
    B, T = 200, count + 3
    v = rng.normal(0, 0.01, size=(B, T)).astype(np.float32)
    for b in range(B):
        i, j = rng.choice(count, 2, replace=False)
        v[b, i], v[b, j] = 2.0**17, -(2.0**17) + rng.uniform(-1, 1)
    scores = torch.full((B, T), -1e9, dtype=torch.float32)
    scores[:, :count] = 0.0
    weights = torch.softmax(scores, dim=1)
    got = (weights[:, None, :] @ torch.tensor(v)[:, :, None])[:, 0, 0].double().numpy()
    ca = np.abs(v[:, :count].astype(np.float64)).sum(axis=1)
    counts = np.full(1, float(count))
    charge = mean_summation(ca[:, None, None], counts, np.zeros(B), float(np.finfo(np.float32).eps),
                            KAPPA)[:, 0, 0]
    for b in range(B):
        exact = sum(Fraction(float(x)) for x in v[b, :count]) / count
        assert abs(Fraction(float(got[b])) - exact) <= Fraction(float(charge[b])), b
