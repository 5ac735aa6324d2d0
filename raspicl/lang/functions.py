"""Elementwise functions for `p.apply`: a small library and user-supplied smooth functions.

An `Elementwise` is a function of one real variable on a declared closed range [lo, hi]. It
gives everything the rest of raspicl needs from it, and nothing is sampled:

- its value in float64 (`evaluate`: the interpreter's semantics, computed with the usual
  stable formulas) and as a sympy expression (`symbolic`: raspicl.symbolic);
- `slope_bound(a, b)`: sup |f'| over [a, b] (arrays of intervals inside the range), which the
  runtime monitor multiplies a value's error by (raspicl.contract);
- `curvature_bound(a, b)`: sup |f''| over [a, b] on the smooth pieces, which the gadget's
  certificate uses between mesh points (raspicl.compiler.gadgets.elementwise);
- `kinks`: the points where f' jumps (ReLU at 0, the soft-threshold at +-lam), with the jump
  of f' at each: those functions get a gadget of their own, with a per-family proof;
- its JSON form (`record`, `from_record`) for the layout's monitor record. A user function's
  record holds its declared bounds, not its code: the monitor needs only sup |f'|.

The library's bounds are closed forms (each function's derivatives are monotone in |v| or in v,
or have a known global maximum); a user function's are what its author declares, over the
whole range (`smooth`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

# sup over R of |sigma''| = |sigma (1 - sigma)(1 - 2 sigma)|: 1 / (6 sqrt 3), at
# v = +-log(2 + sqrt 3); sup |tanh''| = 4 / (3 sqrt 3), at tanh v = +-1/sqrt 3.
SIGMOID_CURVATURE = 1.0 / (6.0 * math.sqrt(3.0))
TANH_CURVATURE = 4.0 / (3.0 * math.sqrt(3.0))
# the closed-form bounds are computed in float64, within a few ulps of the exact sup (the
# sigmoid's and tanh's derivatives without cancellation); they are rounded up by this factor
ROUND_UP = 1.0 + 2.0**-40
SIGMOID_PEAK = math.log(2.0 + math.sqrt(3.0))
TANH_PEAK = math.atanh(1.0 / math.sqrt(3.0))
# exp's range must keep exp(hi) finite in float32 as well as float64 (exp(88.7) overflows
# float32): the compiled model holds the values.
EXP_MAX = 80.0

LIBRARY = ("sigmoid", "tanh", "exp", "log", "softplus", "relu", "inv_sqrt", "soft_threshold")


@dataclass(frozen=True)
class UserFunction:
    """A user-supplied smooth function: its float64 code (vectorised over numpy arrays), the
    bounds its author declares over the range it is applied on (sup |f'| and sup |f''|), and
    optionally its sympy form (a callable of one sympy expression); without one, symbolic
    execution writes it as an undefined sympy Function of that name."""

    name: str
    f: Callable[[np.ndarray], np.ndarray]
    slope: float
    curvature: float
    sympy_form: Callable | None = None


def smooth(name: str, f: Callable[[np.ndarray], np.ndarray], slope: float, curvature: float,
           sympy_form: Callable | None = None) -> UserFunction:
    """A user function for `p.apply`: f vectorised over float64 arrays, with sup |f'| <= slope
    and sup |f''| <= curvature over the range it is applied on (the author's declaration; the
    gadget's certificate and the monitor rely on it). ValueError for a bad name or bound."""
    if not (isinstance(name, str) and name.isidentifier()) or name in LIBRARY:
        raise ValueError(f"a user function needs an identifier name not in the library "
                         f"{LIBRARY}, got {name!r}")
    if not callable(f):
        raise ValueError(f"user function '{name}': f must be callable, got {f!r}")
    for what, b in (("slope", slope), ("curvature", curvature)):
        if isinstance(b, bool) or not isinstance(b, int | float) or not (
                math.isfinite(b) and b >= 0):
            raise ValueError(f"user function '{name}': {what} must be a finite number >= 0, "
                             f"got {b!r}")
    return UserFunction(name, f, float(slope), float(curvature), sympy_form)


@dataclass(frozen=True, eq=False)
class Elementwise:
    """f on [lo, hi]: a library function by name (param: the soft-threshold's lam) or a user
    function (user). Build it with `elementwise`, which checks the range."""

    name: str
    lo: float
    hi: float
    param: float = 0.0
    user: UserFunction | None = field(default=None)

    # -- identity

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Elementwise) and self.name == other.name
                and self.lo == other.lo and self.hi == other.hi and self.param == other.param
                and self.user is other.user)

    def __hash__(self) -> int:
        return hash((self.name, self.lo, self.hi, self.param, id(self.user)))

    def describe(self) -> str:
        lam = f", lam={self.param:g}" if self.name == "soft_threshold" else ""
        return f"{self.name}{lam} on [{self.lo:g}, {self.hi:g}]"

    # -- values

    def evaluate(self, v: np.ndarray) -> np.ndarray:
        """f(v) in float64 (NaN where f is undefined, e.g. log of a negative), or a sympy
        expression per entry for an object array (symbolic execution)."""
        v = np.asarray(v)
        if v.dtype == np.dtype(object):
            return np.vectorize(self.symbolic, otypes=[object])(v)
        v = v.astype(np.float64)
        with np.errstate(all="ignore"):
            return _float(self, v)

    def symbolic(self, x):
        """f(x) for one sympy expression x."""
        import sympy

        if not isinstance(x, sympy.Basic):
            x = sympy.sympify(x)
        n = self.name
        if self.user is not None:
            if self.user.sympy_form is not None:
                return self.user.sympy_form(x)
            return sympy.Function(self.user.name)(x)
        if n == "sigmoid":
            return 1 / (1 + sympy.exp(-x))
        if n == "tanh":
            return sympy.tanh(x)
        if n == "exp":
            return sympy.exp(x)
        if n == "log":
            return sympy.log(x)
        if n == "softplus":
            return sympy.log(1 + sympy.exp(x))
        if n == "relu":
            return sympy.Max(x, 0)
        if n == "inv_sqrt":
            return 1 / sympy.sqrt(x)
        lam = sympy.Rational(self.param)
        return sympy.Max(x - lam, 0) - sympy.Max(-x - lam, 0)

    def derivative(self, v: np.ndarray) -> np.ndarray | None:
        """f'(v) in float64 for a library function (0 at a kink: any value between the one-sided
        slopes would do for the monitor, which charges the rest); None for a user function,
        whose code gives f alone."""
        if self.user is not None:
            return None
        v = np.asarray(v, dtype=np.float64)
        n = self.name
        with np.errstate(all="ignore"):
            if n == "sigmoid":
                return _sigmoid_slope(v)
            if n == "tanh":
                return 1.0 / np.cosh(v) ** 2
            if n == "exp":
                return np.exp(v)
            if n == "log":
                return 1.0 / v
            if n == "softplus":
                return _sigmoid(v)
            if n == "inv_sqrt":
                return -0.5 / (v * np.sqrt(v))
            if n == "relu":
                return np.where(v > 0, 1.0, 0.0)
            return np.where(np.abs(v) > self.param, 1.0, 0.0)

    # -- bounds over intervals [a, b] inside the range (arrays, a <= b)

    def slope_bound(self, a, b) -> np.ndarray:
        """sup |f'| over [a, b], elementwise (a <= b, both inside the range), rounded up by a
        relative ROUND_UP (its closed form is computed in float64)."""
        return self._slope(a, b) * ROUND_UP

    def _slope(self, a, b) -> np.ndarray:
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        near0 = np.where((a <= 0) & (b >= 0), 0.0, np.minimum(np.abs(a), np.abs(b)))
        n = self.name
        with np.errstate(all="ignore"):
            if self.user is not None:
                return np.full(np.broadcast(a, b).shape, self.user.slope)
            if n == "sigmoid":
                return _sigmoid_slope(near0)
            if n == "tanh":
                return 1.0 / np.cosh(near0) ** 2
            if n == "exp":
                return np.exp(b)
            if n == "log":
                return 1.0 / a
            if n == "softplus":
                return _sigmoid(b)
            if n == "inv_sqrt":
                return 0.5 / (a * np.sqrt(a))
            if n == "relu":
                return np.where(b > 0, 1.0, 0.0)
            lam = self.param
            return np.where((b > lam) | (a < -lam), 1.0, 0.0)

    def curvature_bound(self, a, b) -> np.ndarray:
        """sup |f''| over [a, b] (0 on the pieces of a kinked function), rounded up by a
        relative ROUND_UP."""
        return self._curvature(a, b) * ROUND_UP

    def _curvature(self, a, b) -> np.ndarray:
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        shape = np.broadcast(a, b).shape
        n = self.name
        with np.errstate(all="ignore"):
            if self.user is not None:
                return np.full(shape, self.user.curvature)
            if n == "sigmoid":  # |sigma''| = sigma' |1 - 2 sigma|, even, peaks at |v| = V
                return _peaked(a, b, SIGMOID_PEAK,
                               lambda x: _sigmoid_slope(x) * np.abs(np.tanh(0.5 * x)))
            if n == "tanh":  # |tanh''| = 2 tanh (1 - tanh^2), even, peaks at |v| = V
                return _peaked(a, b, TANH_PEAK, lambda x: 2.0 * np.abs(np.tanh(x))
                               / np.cosh(x) ** 2)
            if n == "exp":
                return np.exp(b)
            if n == "log":
                return 1.0 / (a * a)
            if n == "softplus":  # sigma' = sigma (1 - sigma), largest nearest 0
                near0 = np.where((a <= 0) & (b >= 0), 0.0, np.minimum(np.abs(a), np.abs(b)))
                return _sigmoid_slope(near0)
            if n == "inv_sqrt":
                return 0.75 / (a * a * np.sqrt(a))
            return np.zeros(shape)

    @property
    def kinks(self) -> tuple[tuple[float, float], ...]:
        """(point, jump of f') for a piecewise-linear function; () for a smooth one."""
        if self.name == "relu":
            return ((0.0, 1.0),)
        if self.name == "soft_threshold":
            return ((-self.param, -1.0), (self.param, 1.0))
        return ()

    def abs_bound(self) -> float:
        """sup |f| over the range: every library function is monotone on it, so an end
        attains it; for a user function, the largest |f| at 1025 points plus half a spacing
        times its declared slope (a bound: |f| moves at most slope per unit)."""
        if self.user is not None:
            v = np.linspace(self.lo, self.hi, 1025)
            step = (self.hi - self.lo) / 1024
            return float(np.nanmax(np.abs(self.evaluate(v)))) + 0.5 * step * self.user.slope
        return float(np.max(np.abs(self.evaluate(np.array([self.lo, self.hi])))))

    # -- JSON form (the layout's monitor record)

    def record(self) -> dict:
        out = {"name": self.name, "lo": self.lo, "hi": self.hi, "param": self.param}
        if self.user is not None:
            out |= {"user": True, "slope": self.user.slope, "curvature": self.user.curvature}
        return out

    @classmethod
    def from_record(cls, rec: dict) -> Elementwise:
        """The function as the monitor needs it: a library function whole, a user function as
        its declared bounds (its code is not in the layout: evaluating it raises)."""
        user = None
        if rec.get("user"):
            user = UserFunction(str(rec["name"]), _no_code(str(rec["name"])),
                                float(rec["slope"]), float(rec["curvature"]))
        return cls(str(rec["name"]), float(rec["lo"]), float(rec["hi"]),
                   float(rec.get("param", 0.0)), user)


def _no_code(name: str) -> Callable[[np.ndarray], np.ndarray]:
    def f(v: np.ndarray) -> np.ndarray:
        raise ValueError(f"user function '{name}' read from a layout has no code, only its "
                         f"declared bounds")
    return f


def _peaked(a: np.ndarray, b: np.ndarray, peak: float, g) -> np.ndarray:
    """sup over [a, b] of g(|v|), for g >= 0 increasing on [0, peak] and decreasing beyond
    (g(peak) is the global maximum): g at the |v| of the interval nearest peak."""
    m = np.where((a <= 0) & (b >= 0), 0.0, np.minimum(np.abs(a), np.abs(b)))
    M = np.maximum(np.abs(a), np.abs(b))
    return g(np.clip(peak, m, M))


def _sigmoid_slope(v: np.ndarray) -> np.ndarray:
    """sigma'(v) = sigma (1 - sigma) = e / (1 + e)^2 with e = e^-|v|, without cancellation."""
    e = np.exp(-np.abs(v))
    return e / ((1.0 + e) * (1.0 + e))


def _sigmoid(v: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-v) without overflow: e^v / (1 + e^v) for v < 0."""
    e = np.exp(-np.abs(v))
    return np.where(v >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _float(fn: Elementwise, v: np.ndarray) -> np.ndarray:
    n = fn.name
    if fn.user is not None:
        return np.asarray(fn.user.f(v), dtype=np.float64)
    if n == "sigmoid":
        return _sigmoid(v)
    if n == "tanh":
        return np.tanh(v)
    if n == "exp":
        return np.exp(v)
    if n == "log":
        return np.log(v)
    if n == "softplus":
        return np.logaddexp(0.0, v)
    if n == "relu":
        return np.maximum(v, 0.0) + 0.0 * v  # NaN stays NaN
    if n == "inv_sqrt":
        return 1.0 / np.sqrt(v)
    lam = fn.param
    return np.sign(v) * np.maximum(np.abs(v) - lam, 0.0)


def elementwise(f: str | UserFunction, range_, lam: float | None = None) -> Elementwise:
    """The Elementwise for `p.apply`: f a library name or a `smooth(...)` user function, on
    range_ = (lo, hi). ValueError (the builder adds the op and line) when the range is missing,
    not two finite numbers with lo < hi, or outside the function's domain."""
    if isinstance(f, UserFunction):
        name, user = f.name, f
    elif isinstance(f, str) and f in LIBRARY:
        name, user = f, None
    else:
        raise ValueError(f"unknown function {f!r}: a library name ({', '.join(LIBRARY)}) or "
                         f"raspicl.lang.functions.smooth(...)")
    if range_ is None:
        raise ValueError(f"'{name}' needs its range declared, range=(lo, hi): the gadget "
                         f"approximates f there and the monitor refuses arguments outside it")
    try:
        lo, hi = (float(x) for x in range_)
    except (TypeError, ValueError):
        raise ValueError(f"range must be two numbers (lo, hi), got {range_!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"range ({lo!r}, {hi!r}) must be finite")
    if not lo < hi:
        raise ValueError(f"range ({lo:g}, {hi:g}) must have lo < hi")
    if name in ("log", "inv_sqrt") and not lo > 0:
        raise ValueError(f"'{name}' needs a range of positive numbers, got lo = {lo:g}")
    if name == "exp" and hi > EXP_MAX:
        raise ValueError(f"'exp' needs hi <= {EXP_MAX:g} (exp(hi) must be finite in float32), "
                         f"got {hi:g}")
    param = 0.0
    if name == "soft_threshold":
        if lam is None or isinstance(lam, bool) or not isinstance(lam, int | float) or not (
                math.isfinite(lam) and lam >= 0):
            raise ValueError(f"'soft_threshold' needs lam, a finite number >= 0, got {lam!r}")
        param = float(lam)
    elif lam is not None:
        raise ValueError(f"lam is the soft-threshold's parameter; '{name}' takes none")
    return Elementwise(name, lo, hi, param, user)
