"""The transposed pass's GeLUs (raspicl.transposed, what predict runs without the monitor)
against the exact function (mpmath, 40 digits), within what the runtime monitor charges for
them, and its pairing of mirrored units.

The monitor (raspicl/monitor.py, the product gadget) charges each GeLU output of a product unit
kappa u |x| / 2 (x its argument, |x| <= 1 where the gadget's series check passes; kappa =
rounding_factor, u = machine epsilon): the two units of a square, GeLU(x) and GeLU(-x), are
charged kappa u |x| together. The transposed pass computes such a mirrored pair as one unit,
x erf(x / sqrt 2) (transposed.mirrored_gelu_), and every other unit with F.gelu (as the dense
pass does); a select's gate units, whose arguments are large, are charged kappa u times their
operands' size. Samples (seeded): 5 000 x ~ N(0, 3^2), 4 001 points on [-12, 12], 5 000
x ~ U[-1, 1], 2 000 x ~ N(0, 0.01^2), and, where mirrored_gelu_ sums its series (every
|x| <= 2^-7), 5 000 x ~ U[-2^-7, 2^-7] and 2 000 x ~ N(0, 1e-4^2).
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raspicl.compiler.config import CompilerConfig
from raspicl.transposed import SERIES_MAX, _mirrored, mirrored_gelu_

KAPPA = CompilerConfig().rounding_factor


def _samples() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(20261201)
    return {"N(0, 9)": rng.normal(0.0, 3.0, 5000), "grid [-12, 12]": np.linspace(-12, 12, 4001),
            "U[-1, 1]": rng.uniform(-1.0, 1.0, 5000), "N(0, 1e-4)": rng.normal(0.0, 0.01, 2000),
            # within SERIES_MAX = 2^-7: mirrored_gelu_ sums its series there
            "U[-2^-7, 2^-7]": rng.uniform(-(2.0**-7), 2.0**-7, 5000),
            "N(0, 1e-8)": rng.normal(0.0, 1e-4, 2000)}


def _exact(xs: np.ndarray, mirrored: bool) -> np.ndarray:
    """GeLU(x) (or GeLU(x) + GeLU(-x)) at 40 digits, rounded once to float64."""
    mpmath.mp.dps = 40
    half = mpmath.sqrt(2)
    out = []
    for x in xs.tolist():
        m = mpmath.mpf(x)
        erf = mpmath.erf(m / half)
        out.append(float(m * erf if mirrored else m * (1 + erf) / 2))
    return np.asarray(out)


SAMPLES = _samples()


@pytest.mark.parametrize("name", list(SAMPLES))
def test_mirrored_pair_within_its_two_units_charge(name):
    """x erf(x / sqrt 2) in float64 and float32 within kappa u |x| (the two GeLU outputs'
    charge) of the exact GeLU(x) + GeLU(-x)."""
    xs = SAMPLES[name]
    for dtype in (torch.float64, torch.float32):
        x = torch.from_numpy(xs).to(dtype)
        x64 = x.double().numpy()  # the argument the unit actually gets
        got = mirrored_gelu_(x.clone()).double().numpy()
        # the pass's own call, with a scratch buffer, computes the same numbers
        buffered = mirrored_gelu_(x.clone(), torch.empty_like(x))
        assert torch.equal(buffered, mirrored_gelu_(x.clone()))
        assert (float(x.abs().max()) <= SERIES_MAX) == name.startswith(("U[-2^-7", "N(0, 1e-8)"))
        u = torch.finfo(dtype).eps
        err = np.abs(got - _exact(x64, mirrored=True))
        worst = float(np.max(err / np.maximum(u * np.abs(x64), 1e-300)))
        assert np.all(err <= KAPPA * u * np.abs(x64)), (name, dtype, worst)


@pytest.mark.parametrize("name", list(SAMPLES))
def test_unpaired_gelu_within_its_charge(name):
    """F.gelu in float64 (the plan's single units): within kappa u |x| / 2 of the exact GeLU
    on the product units' range |x| <= 1, and within kappa u |x| everywhere (gate units)."""
    xs = SAMPLES[name]
    got = F.gelu(torch.from_numpy(xs)).numpy()
    err = np.abs(got - _exact(xs, mirrored=False))
    u = np.finfo(np.float64).eps
    small = np.abs(xs) <= 1.0
    assert np.all(err[small] <= KAPPA * u * np.abs(xs[small]) / 2)
    assert np.all(err <= KAPPA * u * np.abs(xs))


def test_mirrored_units_found_by_hand():
    """Units 0/1 mirror each other (inputs and bias negated, same output row); units 2/3 are
    a linear pair (inputs negated, output row negated); unit 4's output row is neither unit
    2's nor its negation, unit 5 has no partner; units 6/7 mirror with a zero entry (whose
    sign, 0.0 or -0.0, must not matter) and a bias only."""
    W_in = torch.tensor([[1.0, -1.0, 2.0, -2.0, -2.0, 3.0, 0.0, -0.0],
                         [0.5, -0.5, 1.0, -1.0, -1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    b_in = torch.tensor([0.25, -0.25, 0.0, 0.0, 0.0, 1.0, 0.5, -0.5], dtype=torch.float64)
    W_out = torch.tensor([[4.0], [4.0], [1.0], [-1.0], [2.0], [1.0], [3.0], [3.0]],
                         dtype=torch.float64)
    keep, n_pairs, n_linear = _mirrored(W_in, b_in, W_out)
    assert (n_pairs, n_linear) == (2, 1)
    assert sorted(keep[:n_pairs].tolist()) == [0, 6]
    assert keep[n_pairs:n_pairs + n_linear].tolist() in ([2], [3])
    assert sorted(keep[n_pairs + n_linear:].tolist()) == [4, 5]
    # the kept units' output equals all units' dense output: x erf(x / sqrt 2) =
    # GeLU(x) + GeLU(-x) for a mirrored pair, x = GeLU(x) - GeLU(-x) for a linear one
    x = torch.linspace(-2, 2, 41, dtype=torch.float64)[:, None] * torch.tensor([[1.0, -3.0]])
    pre = x @ W_in + b_in
    dense = F.gelu(pre) @ W_out
    h = pre[:, keep].clone()
    mirrored_gelu_(h[:, :n_pairs])
    h[:, n_pairs + n_linear:] = F.gelu(h[:, n_pairs + n_linear:])
    np.testing.assert_allclose((h @ W_out[keep]).numpy(), dense.numpy(), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("name", list(SAMPLES))
def test_float32_gelu_within_its_charge(name):
    """raspicl.model.gelu and gelu_ in float32 (every pass's units; the exact form computed as
    x erfc(-x / sqrt 2) / 2): within kappa u |x| / 2 of the exact GeLU on |x| <= 1 and within
    kappa u |x| everywhere, as the monitor charges. (torch's fused float32 F.gelu on the CPU
    erred by up to 2.3 u |x| on |x| < 1, over that charge: docs/compiler.md, "float32".)"""
    from raspicl.model import gelu, gelu_

    x = torch.from_numpy(SAMPLES[name]).float()
    x64 = x.double().numpy()  # the argument the unit actually gets
    exact = _exact(x64, mirrored=False)
    u = float(torch.finfo(torch.float32).eps)
    small = np.abs(x64) <= 1.0
    for got in (gelu(x), gelu_(x.clone())):
        err = np.abs(got.double().numpy() - exact)
        assert np.all(err[small] <= KAPPA * u * np.abs(x64[small]) / 2), name
        assert np.all(err <= KAPPA * u * np.abs(x64)), name
    assert torch.equal(gelu(x), gelu_(x.clone()))
