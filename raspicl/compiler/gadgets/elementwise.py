"""The elementwise gadget: f on [lo, hi] as one MLP's sum of GeLU units, with a certified error.

    f^(v) = alpha + beta v + sum_j w_j GeLU(s_j (v - t_j))

alpha + beta v is passed exactly by a pair of units (GeLU(z) - GeLU(-z) = z, mlp.py); the rest
are K units, each one hidden unit of the MLP per component of the operand.

Two constructions, by family (`build_gadget`):

- *Kinked* (relu, soft_threshold): f = alpha + beta v + sum_k D_k ReLU(v - k) exactly, and each
  ReLU(x) is replaced by GeLU(s x) / s. Per-family proof: GeLU(x) = x F(x) with
  F(x) + F(-x) = 1 (the erf form's Phi and the tanh form's), so ReLU(x) - GeLU(s x) / s =
  |x| F(-s |x|) = g(s |x|) / s with g(y) = y F(-y) >= 0, and the error is at most
  C sum_k |D_k| / s with C = sup g (`kink_constant`, certified on a mesh with |g'| <= 2).
  s = C sum |D_k| / epsilon.
- *Smooth* (every other function): K centres t_j, K - 2 * ghosts of them over the range,
  either evenly spaced or so that each interval between them holds an equal share of the
  integral of sqrt|f''| (the spacing that makes piecewise-linear interpolation's error even;
  the better fit of the two is kept), and `ghosts` (config.apply_ghost_units) beyond each end;
  s_j = sharpness / local spacing, and (alpha, beta, w) fitted by least squares on a dense set
  of points. K climbs UNIT_LADDER from 4 until the *certificate* holds epsilon, or stops at
  max_units (CompileError by the caller).

The certificate (`certify`), never a sample: with e = f - f^ on a mesh v_0 < ... < v_M, on each
mesh interval [v_i, v_i+1] of width h_i,

    |e(v)| <= max(|e(v_i)|, |e(v_i+1)|) + h_i^2 / 8 * sup |e''|           (linear interpolation
                                                                           of e, plus its error)
    sup |e''| <= sup |f''| + sum_j |w_j| s_j^2 sup |GeLU''(s_j (v - t_j))|

with sup |f''| from the function (lang/functions.py: closed forms, or the user's declaration)
and each unit's sup |GeLU''| over its argument's interval [y_lo, y_hi] bounded in closed form:
erf form GeLU'' = phi(y) (2 - y^2), so <= phi(m) max(2, M^2 - 2); tanh form GeLU(y) = y
sigma(q(y)), q = 2 k (y + a y^3), GeLU'' = 2 sigma' q' + y (sigma'' q'^2 + sigma' q''), so
<= min(1/4, e^-|q(m)|) (2 q'(M) + M (q'(M)^2 + |q''(M)|)) (|sigma''| <= sigma' =
sigma (1 - sigma) <= min(1/4, e^-|q|)), m and M the least and largest |y| on the interval.
e(v_i) is computed in float64 (torch's GeLU, numpy's f), whose own error is charged at
(K + 8) u sum |terms| (u = 2^-53, the library functions within a few ulps, a sum of K terms
within K u of their absolute sum). The unit-by-unit bound on sup |f^''| ignores the units'
cancellation; the certificate takes the smaller of it and the signed sum f^'' at the interval's
ends plus half its width times sup |f^'''| <= sum_j |w_j| s_j^3 sup |GeLU'''| (closed forms
again, `gelu_third`). The mesh is refined where the bound exceeds the target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from raspicl.compiler.gadgets.mlp import UnitSpec, affine_units
from raspicl.contract.charges import GELU_SLOPE
from raspicl.lang.functions import Elementwise

U64 = 2.0**-53
# tanh form: GeLU(y) = y sigma(2 k (y + a y^3))
TANH_K = math.sqrt(2.0 / math.pi)
TANH_A = 0.044715
# the K ladder of the smooth construction
UNIT_LADDER = (4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
# least-squares points per unit, and the certificate's first mesh intervals per unit
FIT_POINTS = 24
MESH_START = 32
# mesh refinement: each interval over the target is cut into this many, at most this often
REFINE_SPLIT = 8
REFINE_ROUNDS = 6
MESH_MAX = 1_000_000  # mesh points at most: beyond, the bound stands as it is
# where the smooth construction's centres go (_centres): each K tries both
PLACEMENTS = ("curvature", "uniform")
# a K is certified only once its error at a dense sample is below this share of epsilon
SAMPLE_SHARE = 0.5
CHUNK = 2048  # mesh points evaluated at a time (memory: CHUNK x K float64 arrays)


@dataclass(frozen=True)
class ElementwiseGadget:
    """f^(v) = alpha + beta v + sum_j w[j] GeLU(s[j] (v - t[j])) and what is certified of it.

    epsilon: sup over [lo, hi] of |f - f^| in exact arithmetic (the certificate);
    magnitude: a bound on sum_j |w_j GeLU(s_j (v - t_j))| over [lo, hi] (the units' size, which
    their rounding is charged against at run time);
    slope_sum, shift_sum: sum_j |w_j| s_j and sum_j |w_j| s_j |t_j| (a pre-activation's rounding
    moves its unit's output by at most GELU_SLOPE |w_j| times it)."""

    alpha: float
    beta: float
    t: tuple[float, ...]
    s: tuple[float, ...]
    w: tuple[float, ...]
    epsilon: float
    magnitude: float
    slope_sum: float
    shift_sum: float

    @property
    def units(self) -> int:
        """Hidden units per component: the K GeLU units and the exact affine pair (if any)."""
        return len(self.w) + (2 if (self.alpha != 0.0 or self.beta != 0.0) else 0)

    def evaluate(self, v: np.ndarray, form: str) -> np.ndarray:
        """f^(v) in float64 (for tests and the certificate)."""
        v = np.asarray(v, dtype=np.float64)
        out = self.alpha + self.beta * v
        for tj, sj, wj in zip(self.t, self.s, self.w, strict=True):
            out = out + wj * _gelu(sj * (v - tj), form)
        return out

    def record(self) -> dict:
        return {"alpha": self.alpha, "beta": self.beta, "units": len(self.w),
                "epsilon": self.epsilon, "magnitude": self.magnitude,
                "slope_sum": self.slope_sum, "shift_sum": self.shift_sum}


def _gelu(y: np.ndarray, form: str) -> np.ndarray:
    """GeLU in float64, as the compiled model's MLP computes it (raspicl.model.gelu)."""
    return torch.nn.functional.gelu(torch.from_numpy(np.ascontiguousarray(y, dtype=np.float64)),
                                    approximate=form).numpy()


def _phi(y: np.ndarray) -> np.ndarray:
    return np.exp(-0.5 * y * y) / math.sqrt(2.0 * math.pi)


def gelu_curvature(y_lo: np.ndarray, y_hi: np.ndarray, form: str) -> np.ndarray:
    """A bound on sup |GeLU''| over [y_lo, y_hi] (elementwise), in closed form (module doc)."""
    m = np.where((y_lo <= 0) & (y_hi >= 0), 0.0, np.minimum(np.abs(y_lo), np.abs(y_hi)))
    M = np.maximum(np.abs(y_lo), np.abs(y_hi))
    if form == "none":
        return _phi(m) * np.maximum(2.0, M * M - 2.0)
    q_m = 2 * TANH_K * (m + TANH_A * m ** 3)
    dq = 2 * TANH_K * (1 + 3 * TANH_A * M * M)
    ddq = 12 * TANH_K * TANH_A * M
    return np.minimum(0.25, np.exp(-q_m)) * (2 * dq + M * (dq * dq + ddq))


def gelu_second(y: np.ndarray, form: str) -> np.ndarray:
    """GeLU second derivative at y in float64: phi(y) (2 - y^2) (erf form); 2 sigma' q' +
    y (sigma'' q'^2 + sigma' q'') with sigma = sigmoid(q(y)) (tanh form)."""
    if form == "none":
        return _phi(y) * (2.0 - y * y)
    q = 2 * TANH_K * (y + TANH_A * y ** 3)
    e = np.exp(-np.abs(q))  # sigma' and 1 - 2 sigma from e = e^-|q|, without cancellation
    d1 = e / ((1.0 + e) * (1.0 + e))
    d2 = d1 * (-np.sign(q) * (1.0 - e) / (1.0 + e))
    dq = 2 * TANH_K * (1 + 3 * TANH_A * y * y)
    ddq = 12 * TANH_K * TANH_A * y
    return 2 * d1 * dq + y * (d2 * dq * dq + d1 * ddq)


def gelu_third(y_lo: np.ndarray, y_hi: np.ndarray, form: str) -> np.ndarray:
    """A bound on the GeLU third derivative's sup |.| over [y_lo, y_hi], in closed form: erf
    form phi (y^3 - 4 y), so <= phi(m) (M^3 + 4 M); tanh form 3 sigma'' q'^2 + 3 sigma' q'' +
    y (sigma''' q'^3 + 3 sigma'' q' q'' + sigma' q'''), with |sigma''|, |sigma'''| <= sigma'
    <= min(1/4, e^-|q|) (m, M the least and largest |y| on the interval)."""
    m = np.where((y_lo <= 0) & (y_hi >= 0), 0.0, np.minimum(np.abs(y_lo), np.abs(y_hi)))
    M = np.maximum(np.abs(y_lo), np.abs(y_hi))
    if form == "none":
        return _phi(m) * (M ** 3 + 4.0 * M)
    q_m = 2 * TANH_K * (m + TANH_A * m ** 3)
    dq = 2 * TANH_K * (1 + 3 * TANH_A * M * M)
    ddq = 12 * TANH_K * TANH_A * M
    dddq = 12 * TANH_K * TANH_A
    return np.minimum(0.25, np.exp(-q_m)) * (3 * dq * dq + 3 * ddq
                                              + M * (dq ** 3 + 3 * dq * ddq + dddq))


@lru_cache(maxsize=4)
def kink_constant(form: str) -> float:
    """C = sup over y >= 0 of g(y) = y F(-y) (GeLU(y) = y F(y)), certified: g on a mesh of
    step 1e-5 over [0, 8] plus half a step times sup |g'| <= 2 (|F| <= 1, |y F'(y)| <= 1),
    plus rounding; beyond 8, g(y) <= y e^-y (both forms) < 1e-2 << C. About 0.1700 (erf)."""
    y = np.linspace(0.0, 8.0, 800_001)
    g = np.abs(_gelu(-y, form))  # GeLU(-y) = -y F(-y)
    step = 8.0 / 800_000
    return float(g.max() + step + 8 * U64)


def _kinked(fn: Elementwise) -> tuple[float, float, list[tuple[float, float]]]:
    """(alpha, beta, [(point, jump)]) with f = alpha + beta v + sum jump ReLU(v - point)."""
    if fn.name == "relu":
        return 0.0, 0.0, [(0.0, 1.0)]
    lam = fn.param  # S(v) = ReLU(v - lam) - ReLU(v + lam) + v + lam
    return lam, 1.0, [(lam, 1.0), (-lam, -1.0)]


def _kinked_gadget(fn: Elementwise, form: str, epsilon: float) -> ElementwiseGadget:
    alpha, beta, kinks = _kinked(fn)
    C = kink_constant(form)
    total = sum(abs(d) for _, d in kinks)
    s = C * total / epsilon * (1 + 16 * U64)  # so that the rounded-up bound stays within
    t = tuple(p for p, _ in kinks)
    w = tuple(d / s for _, d in kinks)
    eps = C * total / s * (1 + 4 * U64)
    span = max(abs(fn.lo), abs(fn.hi))
    # |GeLU(s (v - t)) / s| <= |v - t| + C / s
    mag = sum(abs(d) * (span + abs(p) + C / s) for p, d in kinks)
    return ElementwiseGadget(alpha, beta, t, (s,) * len(t), w, eps, mag,
                             sum(abs(wj) * s for wj in w),
                             sum(abs(wj) * s * abs(tj) for wj, tj in zip(w, t, strict=True)))


def _centres(fn: Elementwise, K: int, ghosts: int, placement: str) -> np.ndarray:
    """K centres: K - 2 ghosts over [lo, hi], evenly spaced ('uniform') or equidistributing
    sqrt|f''| plus 5% of its largest value, so that flat stretches still get some
    ('curvature'), and `ghosts` more beyond each end at the end's spacing, so that the basis is
    as rich at the ends as inside (without them the ends' error dominates and converges only
    as K^-2)."""
    inner = max(K - 2 * ghosts, 2)
    if placement == "uniform":
        t = np.linspace(fn.lo, fn.hi, inner)
    else:
        v = np.linspace(fn.lo, fn.hi, 20_001)
        rho = np.sqrt(np.abs(fn.curvature_bound(v, v)))
        rho = rho + 0.05 * rho.max() + 1e-300
        cdf = np.r_[0.0, np.cumsum(0.5 * (rho[1:] + rho[:-1]) * np.diff(v))]
        t = np.interp(np.linspace(0.0, 1.0, inner), cdf / cdf[-1], v)
    steps = np.arange(1, ghosts + 1)
    return np.r_[t[0] - (t[1] - t[0]) * steps[::-1], t, t[-1] + (t[-1] - t[-2]) * steps]


def _fit(fn: Elementwise, K: int, sharpness: float, form: str, ghosts: int,
         placement: str = "curvature"):
    """(alpha, beta, t, s, w) fitted by least squares (module doc)."""
    t = _centres(fn, K, ghosts, placement)
    gaps = np.diff(t)
    local = np.r_[gaps[0], 0.5 * (gaps[1:] + gaps[:-1]), gaps[-1]]
    s = sharpness / local
    N = FIT_POINTS * K
    lo, hi = fn.lo, fn.hi
    cheb = 0.5 * (lo + hi) + 0.5 * (hi - lo) * np.cos(np.pi * (np.arange(N) + 0.5) / N)
    v = np.r_[np.linspace(lo, hi, N), cheb, t]
    mid = 0.5 * (lo + hi)
    A = np.column_stack([np.ones_like(v), v - mid] + [_gelu(sj * (v - tj), form) / sj
                                                      for tj, sj in zip(t, s, strict=True)])
    norm = np.linalg.norm(A, axis=0)
    coef, *_ = np.linalg.lstsq(A / norm, fn.evaluate(v), rcond=1e-15)
    coef = coef / norm
    alpha, beta = coef[0] - coef[1] * mid, coef[1]
    return float(alpha), float(beta), t, s, coef[2:] / s


def _terms(fn: Elementwise, alpha, beta, t, s, w, v, form):
    """(e = f - f^, the size its float64 rounding is charged against, sum_j |w_j GeLU_j|) at
    the points v: the size is sum |terms| plus GELU_SLOPE sum_j |w_j y_j| (each argument y_j
    rounded moves its unit by at most that times its relative rounding)."""
    y = s[None, :] * (v[:, None] - t[None, :])
    g = _gelu(y, form) * w[None, :]
    f = fn.evaluate(v)
    units = np.abs(g).sum(axis=1)
    fhat = alpha + beta * v + g.sum(axis=1)
    args = GELU_SLOPE * (np.abs(w)[None, :] * np.abs(y)).sum(axis=1)
    return f - fhat, np.abs(f) + abs(alpha) + np.abs(beta * v) + units + args, units


def certify(fn: Elementwise, alpha: float, beta: float, t, s, w, form: str,
            target: float) -> tuple[float, float]:
    """(certified sup |f - f^| over [lo, hi], a bound on sum_j |w_j GeLU_j| there), by the
    mesh bound of the module doc, refining intervals over `target` up to REFINE_ROUNDS times.
    The first is a bound whatever `target` is; the refinement only tightens it."""
    t, s, w = (np.asarray(a, dtype=np.float64) for a in (t, s, w))
    K = len(w)
    rounding = (K + 8) * U64
    edges = np.linspace(fn.lo, fn.hi, MESH_START * max(K, 4) + 1)
    for _ in range(REFINE_ROUNDS + 1):
        bound, ends, _ = _interval_bounds(fn, alpha, beta, t, s, w, form, edges, rounding)
        # refine where the curvature term is what exceeds the target: where the mesh values
        # themselves do, no refinement helps
        over = (bound > target) & (bound - ends > 0.05 * target)
        if not over.any() or ends.max() > target or len(edges) > MESH_MAX:
            break
        cuts = [edges[:-1][~over]]
        a, b = edges[:-1][over], edges[1:][over]
        for k in range(REFINE_SPLIT):
            cuts.append(a + (b - a) * k / REFINE_SPLIT)
        edges = np.unique(np.r_[np.concatenate(cuts), fn.hi])
    bound, _, mag = _interval_bounds(fn, alpha, beta, t, s, w, form, edges, rounding)
    return float(bound.max()), mag


def _interval_bounds(fn, alpha, beta, t, s, w, form, edges, rounding):
    """Per mesh interval, the certified bound on |f - f^| and its part at the mesh points; and
    the units' magnitude bound."""
    out = np.empty(len(edges) - 1)
    at_ends = np.empty(len(edges) - 1)
    mag = 0.0
    lip = GELU_SLOPE * float(np.sum(np.abs(w) * s))  # |d/dv sum |w_j GeLU_j|| <= this
    for lo in range(0, len(edges) - 1, CHUNK):
        hi = min(lo + CHUNK, len(edges) - 1)
        v = edges[lo:hi + 1]
        e, size, units = _terms(fn, alpha, beta, t, s, w, v, form)
        ends = np.abs(e) + rounding * size
        a, b = v[:-1], v[1:]
        h = b - a
        y = s[None, :] * (v[:, None] - t[None, :])
        second = (w * s * s)[None, :] * gelu_second(y, form)  # f^'' term by term, signed
        fhat2 = np.abs(second.sum(axis=1)) + rounding * np.abs(second).sum(axis=1)
        ya, yb = y[:-1], y[1:]
        third = ((np.abs(w) * s ** 3)[None, :] * gelu_third(ya, yb, form)).sum(axis=1)
        # sup |f^''| on the interval: its larger end plus half the interval times sup |f^'''|,
        # or the unit-by-unit bound, whichever is smaller
        by_units = ((np.abs(w) * s * s)[None, :] * gelu_curvature(ya, yb, form)).sum(axis=1)
        fhat_curv = np.minimum(np.maximum(fhat2[:-1], fhat2[1:]) + 0.5 * h * third, by_units)
        ecurv = fn.curvature_bound(a, b) + fhat_curv
        at_ends[lo:hi] = np.maximum(ends[:-1], ends[1:])
        out[lo:hi] = at_ends[lo:hi] + h * h / 8.0 * ecurv
        mag = max(mag, float(np.max(np.maximum(units[:-1], units[1:]) + 0.5 * h * lip)))
    return np.where(np.isfinite(out), out, np.inf), at_ends, mag * (1 + rounding)


def elementwise_units(dst_row: int, w_in: dict[int, float], bias: float,
                      gadget: ElementwiseGadget) -> list[UnitSpec]:
    """The units that add f^(z) to dst_row, z = sum w_in[row] v_row + bias the argument: the
    exact affine pair for alpha + beta z, then one unit w_j GeLU(s_j (z - t_j)) per j."""
    units = []
    if gadget.alpha != 0.0 or gadget.beta != 0.0:
        units += affine_units(dst_row, {r: gadget.beta * c for r, c in w_in.items()},
                              gadget.alpha + gadget.beta * bias)
    for tj, sj, wj in zip(gadget.t, gadget.s, gadget.w, strict=True):
        units.append(UnitSpec({r: sj * c for r, c in w_in.items()}, sj * (bias - tj),
                              {dst_row: wj}))
    return units


@lru_cache(maxsize=256)
def build_gadget(fn: Elementwise, form: str, epsilon: float, sharpness: float,
                 max_units: int, ghosts: int = 4) -> ElementwiseGadget | float:
    """The gadget for fn on its range under the GeLU `form` ('none': erf, 'tanh'), certified
    within epsilon (ghosts: centres beyond each end, _centres); or, where no K <= max_units
    reaches it, the best certified error (a float: the caller refuses the op, naming it)."""
    if fn.kinks:
        return _kinked_gadget(fn, form, epsilon)
    best = math.inf
    for K in UNIT_LADDER:
        if K > max_units:
            break
        if K <= 2 * ghosts + 1:
            continue
        # both placements fitted, the one with the smaller error at a dense sample kept; that
        # error is a lower bound on the certified one, so a K whose sample exceeds
        # SAMPLE_SHARE epsilon is skipped uncertified (the rest of epsilon leaves the
        # certificate's mesh room to be coarse)
        v = np.linspace(fn.lo, fn.hi, 64 * K + 1)
        sampled = math.inf
        for placement in PLACEMENTS:
            fit = _fit(fn, K, sharpness, form, ghosts, placement)
            e, _, _ = _terms(fn, *fit, v, form)
            worst = float(np.abs(e).max()) if np.all(np.isfinite(e)) else math.inf
            if worst < sampled:
                sampled, (alpha, beta, t, s, w) = worst, fit
        if sampled > SAMPLE_SHARE * epsilon:
            best = min(best, sampled)
            continue
        eps, mag = certify(fn, alpha, beta, t, s, w, form, epsilon)
        best = min(best, eps)
        if eps <= epsilon:
            return ElementwiseGadget(alpha, beta, tuple(map(float, t)), tuple(map(float, s)),
                                     tuple(map(float, w)), eps, mag,
                                     float(np.sum(np.abs(w) * s)),
                                     float(np.sum(np.abs(w) * s * np.abs(t))))
    return best
