"""MLP gadgets: exact affine maps, exact token gates and approximate products through GeLU.

Units are written in *value space*: a unit's pre-activation is sum_j a_j v_j + b over the
values v_j of residual rows; layernorm.py turns that into W_in for the block's LayerNorm.

Affine (exact): GeLU(z) - GeLU(-z) = z Phi(z) + z Phi(-z) = z, so a pair of units with
pre-activations +z and -z and output weights +1, -1 passes any affine z through with no
approximation; only rounding remains.

Gate (exact within a bound): for m in {0, 1} and |z| <= B, with C = 2 B and k = s / B
(s = config.select_sharpness),
    (GeLU(k z + k C m - k C) - GeLU(-k z + k C m - k C)) / k = m z
exactly when m = 1 (the odd-part identity), and when m = 0 both arguments are <= -s, where
|GeLU| <= s Phi(-s) (below 1e-300 for s = 40). `select` adds m (a - b) to b this way.

Product (approximate): GeLU(t) + GeLU(-t) = t erf(t / sqrt 2) = sqrt(2/pi) t^2 - O(t^4), so
sq_e(t) = sqrt(pi/2) (GeLU(e t) + GeLU(-e t)) / e^2 = t^2 (1 - (e t)^2 / 6 + ...), and
a b = (sq(k a + b / k) - sq(k a - b / k)) / 4 with k = sqrt(B_b / B_a), which balances the two
operands (bounds B_a, B_b) so that both k a and b / k are bounded by sqrt(B_a B_b). With
Richardson, (4 sq_e - sq_2e) / 3 cancels the (e t)^2 term. e is chosen per product so that
e * 2 sqrt(B_a B_b) = z (config.product_scale).
Error bound, relative to the product's bound B_a B_b: about 4 (z^2 / 6) plain or z^4
with Richardson (truncation), plus about 4 machine epsilon / z (rounding); the square gadget
alone measured 3.6e-13 (float64, z = 1e-3) and 1.3e-5 (float32, z = 0.1) of t_max^2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from raspicl.compiler.config import ZERO_BOUND

SQRT_PI_2 = math.sqrt(math.pi / 2)


def gadget_bound(bound: float) -> float:
    """The bound a product's operand or a gate is built for, from the bound its operands were
    given: that bound, or ZERO_BOUND where it is 0 (the operands were 0 on every calibration
    prompt). The one place this is decided: the weights and the monitor record (ProductPair's
    k and e, an instruction's gate_bound) both take it from here, so the monitor checks the
    gadget against the bound it was built for. ValueError for a negative or non-finite bound."""
    if not (math.isfinite(bound) and bound >= 0):
        raise ValueError(f"a gadget's bound must be finite and >= 0, got {bound!r}")
    return bound if bound > 0 else ZERO_BOUND


@dataclass
class UnitSpec:
    """A hidden unit: pre = sum w_in[row] * value(row) + b_in; adds w_out[row] * GeLU(pre)."""

    w_in: dict[int, float]
    b_in: float
    w_out: dict[int, float] = field(default_factory=dict)


def affine_units(dst_row: int, w_in: dict[int, float], bias: float) -> list[UnitSpec]:
    """Two units that add exactly sum w_in[j] v_j + bias to dst_row."""
    pos = UnitSpec(dict(w_in), bias, {dst_row: 1.0})
    neg = UnitSpec({j: -a for j, a in w_in.items()}, -bias, {dst_row: -1.0})
    return [pos, neg]


def product_params(square: bool, bound_a: float, bound_b: float,
                   z: float) -> tuple[float, float]:
    """(k, e) of a product gadget: the balance k = sqrt(B_b / B_a) (1 for a square) and the
    scale e with e * max|t| = z for operands within their bounds (each bound as gadget_bound
    gives it: a zero bound counts as ZERO_BOUND). The units and the monitor record both take
    their k and e from here."""
    bound_a, bound_b = gadget_bound(bound_a), gadget_bound(bound_b)
    if square:
        return 1.0, z / bound_a
    return math.sqrt(bound_b / bound_a), z / (2.0 * math.sqrt(bound_a * bound_b))


def product_units(row_a: int, row_b: int, bound_a: float, bound_b: float,
                  outputs: dict[int, float], z: float, richardson: bool) -> list[UnitSpec]:
    """Units that add coef * v_a * v_b to each output row (coef from `outputs`), for
    |v_a| <= bound_a and |v_b| <= bound_b; z is the config's product_scale."""
    k, scale = product_params(row_a == row_b, bound_a, bound_b, z)
    if row_a == row_b:
        combos = [({row_a: 1.0}, 1.0)]  # v_a^2
    else:
        combos = [({row_a: k, row_b: 1.0 / k}, 0.25), ({row_a: k, row_b: -1.0 / k}, -0.25)]
    scales = [(scale, 4.0 / 3.0), (2.0 * scale, -1.0 / 3.0)] if richardson else [(scale, 1.0)]
    units = []
    for direction, weight in combos:
        for e, r in scales:
            k = weight * r * SQRT_PI_2 / (e * e)
            for sign in (1.0, -1.0):
                units.append(UnitSpec({j: sign * e * c for j, c in direction.items()}, 0.0,
                                      {o: k * c for o, c in outputs.items()}))
    return units


def product_form_units(form_a: tuple[dict[int, float], float],
                       form_b: tuple[dict[int, float], float], square: bool, bound_a: float,
                       bound_b: float, outputs: dict[int, float], z: float,
                       richardson: bool) -> list[UnitSpec]:
    """product_units for operands that are affine forms of rows, ({row: coef}, bias) each (a
    fused factor, compiler/fusion.py; a plain operand is ({row: 1.0}, 0.0)): the same gadget,
    with the forms' bounds, the pre-activation k a + b / k summed row by row and its constant
    in b_in. `square`: a and b are the same form."""
    k, scale = product_params(square, bound_a, bound_b, z)
    (wa, ba), (wb, bb) = form_a, form_b
    if square:
        combos = [(dict(wa), ba, 1.0)]
    else:
        combos = []
        for sign, weight in ((1.0, 0.25), (-1.0, -0.25)):
            d = {j: k * c for j, c in wa.items()}
            for j, c in wb.items():
                d[j] = d.get(j, 0.0) + sign * c / k
            combos.append((d, k * ba + sign * bb / k, weight))
    scales = [(scale, 4.0 / 3.0), (2.0 * scale, -1.0 / 3.0)] if richardson else [(scale, 1.0)]
    units = []
    for direction, bias, weight in combos:
        for e, r in scales:
            w = weight * r * SQRT_PI_2 / (e * e)
            for sign in (1.0, -1.0):
                units.append(UnitSpec({j: sign * e * c for j, c in direction.items()},
                                      sign * e * bias, {o: w * c for o, c in outputs.items()}))
    return units


def gate_units(dst_row: int, w_in: dict[int, float], bias: float, mask_row: int,
               bound: float, sharpness: float) -> list[UnitSpec]:
    """Two units that add mask * (sum w_in[j] v_j + bias) to dst_row, for a 0/1 mask row and
    |sum w_in v + bias| <= bound. `bound` is the one the monitor records (gadget_bound's): a
    gate built for another bound than it records is never closed-checked for what it was
    built for, so a bound that is not positive and finite is a ValueError here, not replaced."""
    if not (math.isfinite(bound) and bound > 0):
        raise ValueError(f"a gate's bound must be positive and finite (gadget_bound), got "
                         f"{bound!r}")
    k = sharpness / bound
    C = 2.0 * bound
    units = []
    for sign in (1.0, -1.0):
        w = {j: sign * k * a for j, a in w_in.items()}
        w[mask_row] = w.get(mask_row, 0.0) + k * C
        units.append(UnitSpec(w, sign * k * bias - k * C, {dst_row: sign / k}))
    return units
