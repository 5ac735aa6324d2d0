"""The local charges of the gadgets: what one gadget adds to the error of its result at the
magnitudes present, beyond what its operands' errors carry into it (raspicl.contract.forward
propagates those). One function per gadget, each tested against an independent derivation
(tests/test_charges.py: the gadget itself run in torch against mpmath's exact value, a
quotient against exact rational arithmetic, a head's average against an exact mean).

u is the machine epsilon of the model's dtype and kappa (`rounding_factor`) the multiple of it
charged per rounded operation.
"""

from __future__ import annotations

import math

import numpy as np

SQRT_PI_2 = math.sqrt(math.pi / 2)
# Above these |e t| the product gadget's truncation series (its first three terms) no longer
# bounds the error: Richardson needs the 2e scale within 1, the plain gadget e itself.
SERIES_LIMIT = {True: 0.5, False: 1.0}
# sup |GeLU'(y1) - GeLU'(y2)| = max GeLU' - min GeLU' (1.25781 for the erf GeLU, 1.25799 for
# the tanh form, at y = +-sqrt 2): a select's gate units GeLU(+-k z + k C m - k C) / k, with
# the mask read as m (1 + d) through a LayerNorm (gpt2), are both shifted by k C d, which
# moves their difference by at most GATE_SLOPE C |d| (tests/test_fusion.py checks it).
GATE_SLOPE = 1.26
# The second-order remainder of a product: a_eff b_eff - a b = v_a e_b + v_b e_a + r with
# |r| <= PRODUCT_REMAINDER E_a E_b, where v are the compiled operands and a_eff, b_eff the ones
# the gadget multiplies (each within E of the exact a, b; v within E of a, so a_eff within
# 2 E of v): r = (a_eff - v_a) e_b + (b - v_b) e_a, at most 2 E_a E_b + E_b E_a.
PRODUCT_REMAINDER = 3.0
# sup |GeLU'| over R, rounded up: 1.1289 for the erf form (at y = sqrt 2), 1.1300 for the
# tanh form (tests/test_charges.py checks both against mpmath). A unit's pre-activation off
# by dy moves its output by at most GELU_SLOPE |dy|.
GELU_SLOPE = 1.14


def elementwise_charge(arg_mag: np.ndarray, arg_bias: np.ndarray, coef_sum: np.ndarray,
                       mu: np.ndarray, gadget: dict, u: float, kappa: float) -> np.ndarray:
    """The own error of an apply's gadget at one component ([B, T, w]): its certified
    approximation error epsilon plus its rounding, for an argument z = sum c v + b formed in
    the units' pre-activations, with arg_mag = sum |c| |v| [B, T, w], arg_bias = |b| [w],
    coef_sum = sum |c| [w] and mu the MLP input's |mean| [B, T]. gadget: the monitor record
    (compiler/gadgets/elementwise.ElementwiseGadget.record: alpha, beta, units, epsilon,
    magnitude M >= sum_j |w_j GeLU_j| over the range, slope_sum S1 = sum |w_j| s_j, shift_sum
    S2 = sum |w_j| s_j |t_j|).

    f^ = alpha + beta z + sum_j w_j GeLU(s_j (z - t_j)):
    - the units' outputs, each rounded in its GeLU (kappa u) and its product by W_out (u), and
      summed with the affine pair into one output over n = units + 2 terms (at most n u of
      their absolute sum): (kappa + 2 + n) u (M + |beta| (|z| terms) + |alpha|);
    - each pre-activation s_j z - s_j t_j rounded, kappa u (s_j (arg_mag + |b| + 2 mu sum
      |c|) + s_j |t_j|) (its weights, its bias, the LayerNorm mean read off the zero row),
      which moves its unit by GELU_SLOPE |w_j| times that; the affine pair's the same with
      |beta| for |w_j| s_j."""
    ku = kappa * u
    n = float(gadget["units"]) + 2.0
    z = arg_mag + arg_bias[None, None, :]
    spread = z + 2.0 * mu[:, :, None] * coef_sum[None, None, :]
    alpha, beta = abs(float(gadget["alpha"])), abs(float(gadget["beta"]))
    outputs = (kappa + 2.0 + n) * u * (float(gadget["magnitude"]) + beta * z + alpha)
    pre = ku * (GELU_SLOPE * (float(gadget["slope_sum"]) * spread + float(gadget["shift_sum"]))
                + beta * spread + alpha * 2.0 * mu[:, :, None])
    return float(gadget["epsilon"]) + outputs + pre


def product_pairs(va: np.ndarray, vb: np.ndarray, k: np.ndarray, e: np.ndarray, square: bool,
                  richardson: bool, mu: np.ndarray, u: float, kappa: float,
                  truncation: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """The own error of P product gadgets of one kind and their largest |e t| ([B, T, P]
    each), for operands va, vb [B, T, P], balances k and scales e [P], the MLP input's |mean|
    mu [B, T], the dtype's epsilon u and kappa.

    A gadget is sq(k a + b / k) - sq(k a - b / k) over 4 (or sq(a) for a square), with
    sq_e(t) = sqrt(pi/2) (GeLU(e t) + GeLU(-e t)) / e^2 = t^2 (1 - (et)^2 / 6 + ...); with
    Richardson (4 sq_e - sq_2e) / 3 = t^2 (1 - (et)^4 / 10 + 0.06 (et)^6 - ...). Per square
    term, weight w:
    - truncation |w| t^2 (c0 x^4 + c1 x^6 + c2 x^8) with x = e t (c0 x^2 + c1 x^4 without
      Richardson): an alternating series, bounded by its leading terms while x is within
      SERIES_LIMIT (`truncation` gives the GeLU's coefficients: raspicl.arch);
    - the units' rounding: two units of size |W_out| e |t| / 2 = |w r| sqrt(pi/2) |t| / 2e per
      scale e_s (Richardson weight r), each rounded in its GeLU (kappa u), its product by
      W_out (u) and the output's sum, whose partial sums the large, cancelling units reach (u
      each): (kappa + 2) u sqrt(pi/2) |t| sum |r| / e_s (tests/test_charges.py runs the
      gadget in float32 and float64 against mpmath: kappa u alone was exceeded by 1.26x);
    - the pre-activation's own rounding dt = kappa u (|t| + 2 mu (k + 1/k)) (its weights and
      the LayerNorm mean), at second order |w| sum |r| dt^2, and in the GeLUs' argument.
    """
    ku = kappa * u
    combos = [(va, 1.0)] if square else [(k * va + vb / k, 0.25), (k * va - vb / k, 0.25)]
    e = np.abs(e)
    c = truncation
    # the GeLUs' rounding summed over the scales (e, 4/3) and (2e, -1/3) with Richardson,
    # (e, 1) without: sum |r| / e_s and sum |r|
    per_e = (4.0 / 3.0 + 1.0 / 6.0) / e if richardson else 1.0 / e
    weight = 5.0 / 3.0 if richardson else 1.0
    spread = 2 * mu[:, :, None] * (k + 1 / k)
    err = np.zeros_like(va)
    worst = np.zeros_like(va)
    for t, w in combos:
        a = np.abs(t)
        x = a * e
        worst = np.maximum(worst, x)
        x2 = x * x
        if richardson:  # c0 x^4 + c1 x^6 + c2 x^8
            trunc = x2 * x2 * (c[0] + x2 * (c[1] + c[2] * x2))
        else:           # c0 x^2 + c1 x^4
            trunc = x2 * (c[0] + c[1] * x2)
        dt = ku * (a + spread)
        err += w * (a * a * trunc + ((kappa + 2.0) * u * SQRT_PI_2) * (a + dt) * per_e
                    + weight * dt * dt)
    return err, worst


def product_remainder(ea: np.ndarray, eb: np.ndarray) -> np.ndarray:
    """The second-order part of a product's error that its linearisation leaves out
    (PRODUCT_REMAINDER)."""
    return PRODUCT_REMAINDER * ea * eb


def quotient(num: np.ndarray, err_num: np.ndarray, s: np.ndarray, es: np.ndarray,
             ratio: np.ndarray, ku: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A division num / |s| by a LayerNorm: (q = num / S, the first-order bound
    (E_n + |q| E_s) / S, the local charge), S = |s| [B, T], num and err_num [B, T, w], es the
    divisor's bound [B, T] (E_s < S: the caller checks it), ratio the LayerNorm's own factor
    [B, T] (its quotient is (num / S) ratio, then rounded).

    With n, S_eff the numerator and divisor the gadget uses (|n - n0| <= E_n, S_eff = S
    here: the LayerNorm's departure from it is `ratio`), n0, S0 the exact ones and n^ = num:
        n / S - n0 / S0 = e_n / S - q^ (S - S0) / S + (q^ - q0) (S - S0) / S
    exactly, with |q^ - q0| <= E_n / S + (|n^| + E_n) E_s / (S (S - E_s)): the first two
    terms are linear in the errors (the adjoint's edges, 1/S and -q^ sign(s) / S), the last
    the remainder charged here, beside what the LayerNorm's ratio and rounding do to n / S,
    which is within 2 E_n / S of |q^|: (|q^| + 2 E_n / S) (|ratio - 1| + ku)."""
    inv = (1.0 / s)[:, :, None]
    e3 = es[:, :, None]
    q = num * inv
    aq = np.abs(q)
    first = err_num * inv + aq * e3 * inv
    remainder = e3 * inv * (err_num * inv + (np.abs(num) + err_num) * e3 * inv
                            / (s - es)[:, :, None])
    local = remainder + (aq + 2 * err_num * inv) * (np.abs(ratio - 1.0) + ku)[:, :, None]
    return q, first, local


def mean_summation(ca: np.ndarray, count: np.ndarray, skew: np.ndarray, u: float,
                   kappa: float) -> np.ndarray:
    """The own error of a head that averages `count` tokens ([T] counts so far) whose |values|
    sum to ca [B, T, w]: each weight within skew / count of uniform (the scores' perturbation,
    skew = e^(2 delta) - 1, [B]), each token's value projection rounded (kappa u), its weight
    and product (2 u), and the sum of count terms ((count - 1) u): all relative to the terms,
    sum |v| / count, which a cancelling mean can lie far below."""
    per = skew[:, None, None] + u * (kappa + count + 1.0)[None, :, None]
    return per * ca / np.maximum(count, 1.0)[None, :, None]
