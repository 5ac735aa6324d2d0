"""The operations of the language and their one internal form.

Every op, whatever its name, is stored as one read-arithmetic-write instance (the paper's RAW,
its Appendix C): it reads registers (each at a place, see reads.py), forms

    dst[o] = bias[o] + sum_linear coef * read_i[c] + sum_products coef * read_i[c] * read_j[c']

and, for `div` only, divides the result by |s| for a scalar register s read at the current
token. `mov`, `aff`, `mul`, `dot`, `mean` and `raw` are thin constructors of that form, so the
interpreter, the symbolic executor and the compiler each handle one shape of op.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np

from raspicl.errors import ProgramError
from raspicl.lang.functions import Elementwise
from raspicl.lang.reads import Read
from raspicl.lang.registers import Register, Shape
from raspicl.lang.source import UNKNOWN, SourceLocation


@dataclass(frozen=True)
class LinearTerms:
    """dst[out[k]] += coef[k] * reads[read[k]][comp[k]] for every k."""

    out: np.ndarray
    coef: np.ndarray
    read: np.ndarray
    comp: np.ndarray

    def __len__(self) -> int:
        return len(self.out)


@dataclass(frozen=True)
class ProductTerms:
    """dst[out[k]] += coef[k] * reads[read_a[k]][comp_a[k]] * reads[read_b[k]][comp_b[k]]."""

    out: np.ndarray
    coef: np.ndarray
    read_a: np.ndarray
    comp_a: np.ndarray
    read_b: np.ndarray
    comp_b: np.ndarray

    def __len__(self) -> int:
        return len(self.out)


def is_symbolic_value(value) -> bool:
    """True for a sympy expression (exact sympy numbers included), False for anything else.

    sympy is never imported here: if no one has imported it, no value can be a sympy object.
    """
    sympy = sys.modules.get("sympy")
    return sympy is not None and isinstance(value, sympy.Basic)


def coef_array(value) -> np.ndarray:
    """value as a float64 array, or as an object array when some entry is a sympy expression.

    Coefficients, biases and constants are float64 (what the compiler reads) unless a program
    is built with symbolic parameters for symbolic execution (raspicl.symbolic); such a program
    reports Program.is_symbolic() and cannot be compiled.
    """
    if is_symbolic_value(value):
        return np.asarray(value, dtype=object)
    if isinstance(value, np.ndarray) and value.dtype != np.dtype(object):
        return np.asarray(value, dtype=np.float64)
    obj = np.asarray(value, dtype=object)
    if any(is_symbolic_value(v) for v in obj.flat):
        return obj
    return np.asarray(value, dtype=np.float64)


def all_finite(arr: np.ndarray) -> bool:
    """No NaN or infinity among the numeric entries (a sympy entry is checked only for being
    nan, oo or zoo itself, not for what its symbols might take)."""
    if arr.dtype != np.dtype(object):
        return bool(np.all(np.isfinite(arr)))
    for v in arr.flat:
        if is_symbolic_value(v):
            if v.is_finite is False or v.has(sys.modules["sympy"].nan):
                return False
        elif not np.isfinite(float(v)):
            return False
    return True


def _coef_column(values: np.ndarray) -> np.ndarray:
    """A column of coefficients: float64, or object if any entry is symbolic."""
    if any(is_symbolic_value(v) for v in values):
        return values.astype(object)
    return values.astype(np.float64)


def linear_terms(rows: list[tuple[int, float, int, int]]) -> LinearTerms:
    """Build LinearTerms from (out, coef, read, comp) tuples, dropping zero coefficients.

    Coefficients are float64, or objects when some are sympy expressions (see coef_array).
    """
    rows = [r for r in rows if r[1] != 0]
    a = np.array(rows, dtype=object).reshape(-1, 4)
    return LinearTerms(
        out=a[:, 0].astype(np.int64),
        coef=_coef_column(a[:, 1]),
        read=a[:, 2].astype(np.int64),
        comp=a[:, 3].astype(np.int64),
    )


def product_terms(rows: list[tuple[int, float, int, int, int, int]]) -> ProductTerms:
    """Build ProductTerms from (out, coef, read_a, comp_a, read_b, comp_b) tuples."""
    rows = [r for r in rows if r[1] != 0]
    a = np.array(rows, dtype=object).reshape(-1, 6)
    return ProductTerms(
        out=a[:, 0].astype(np.int64),
        coef=_coef_column(a[:, 1]),
        read_a=a[:, 2].astype(np.int64),
        comp_a=a[:, 3].astype(np.int64),
        read_b=a[:, 4].astype(np.int64),
        comp_b=a[:, 5].astype(np.int64),
    )


@dataclass(frozen=True, eq=False)
class Op:
    """One operation: the internal read-arithmetic-write form of every op kind.

    kind:      the name the program used ('mov', 'aff', 'mul', 'dot', 'mean', 'raw', 'div').
    dst:       the register written.
    reads:     the registers read, each at a place.
    linear:    linear terms over the reads.
    products:  products of two read components.
    bias:      a constant added to dst (width of dst).
    divisor:   for div only: a scalar register read here; the result is divided by its |value|.
    function:  for apply only: dst = f(bias + linear), elementwise (lang/functions.py).
    mask:      for select only: a bool per token; dst = reads[0] where mask[t], else reads[1].
               (linear holds reads[1], gated holds reads[0] - reads[1]: dst = linear + mask *
               gated, which is how the compiler builds it.)
    source:    the line of the program that created the op.
    note:      a human description used in listings ("w_next = w - lr * grad").
    """

    kind: str
    dst: Register
    reads: tuple[Read, ...]
    linear: LinearTerms
    products: ProductTerms
    bias: np.ndarray
    divisor: Read | None = None
    source: SourceLocation = UNKNOWN
    note: str = ""
    mask: np.ndarray | None = None
    gated: LinearTerms | None = None
    index: int = field(default=-1, compare=False)
    loop: tuple[int, int] | None = field(default=None, compare=False)  # (loop id, iteration)
    # for apply only: dst = f(bias + linear), f elementwise (lang/functions.py); the linear
    # terms and bias are then f's argument, not the result
    function: Elementwise | None = None

    @property
    def is_linear(self) -> bool:
        return (len(self.products) == 0 and self.divisor is None and self.mask is None
                and self.function is None)

    @property
    def registers_read(self) -> tuple[Register, ...]:
        regs = [r.register for r in self.reads]
        if self.divisor is not None:
            regs.append(self.divisor.register)
        return tuple(regs)

    def where(self) -> str:
        """'op 'mul' writing 'w_next' at programs/gd_step.py:31', for error messages."""
        return f"op '{self.kind}' writing '{self.dst.name}' at {self.source}"

    def describe(self) -> str:
        reads = ", ".join(r.describe() for r in self.reads)
        if self.divisor is not None:
            reads += f"; divided by |{self.divisor.register.name}|"
        if self.function is not None:
            reads = f"{self.function.describe()}; {reads}"
        text = f"{self.dst.name} = {self.kind}({reads})"
        return f"{text}  # {self.note}" if self.note else text


def fail(kind: str, dst: str, source: SourceLocation, message: str) -> ProgramError:
    """A ProgramError that names the op, the register it writes and its source line."""
    return ProgramError(f"op '{kind}' writing '{dst}' at {source}: {message}")


def _numbers(value, what: str, kind: str, dst: str, source: SourceLocation) -> np.ndarray:
    try:
        return coef_array(value)
    except (TypeError, ValueError) as exc:
        raise fail(kind, dst, source, f"{what} must be numbers (an array, a nested list of equal "
                                      f"lengths or a scalar); got {value!r} ({exc})") from None


def as_matrix(
    value, rows: int, cols: int, *, what: str, kind: str, dst: str, source: SourceLocation
) -> np.ndarray:
    """A (rows x cols) matrix from a matrix, a scalar (c * I) or None (identity).

    float64, or an object array when some entry is a sympy expression (see coef_array).
    """
    if value is None:
        value = 1.0
    arr = _numbers(value, what, kind, dst, source)
    if arr.ndim == 0:
        if rows != cols:
            raise fail(
                kind, dst, source,
                f"{what} is a scalar, which means c*I, but it must map width {cols} to "
                f"width {rows}; give a ({rows} x {cols}) matrix",
            )
        if arr.dtype == np.dtype(object):
            arr = np.eye(rows, dtype=np.int64).astype(object) * arr.item()
        else:
            arr = float(arr) * np.eye(rows)
    if arr.shape != (rows, cols):
        raise fail(kind, dst, source, f"{what} has shape {arr.shape}, expected ({rows}, {cols})")
    if not all_finite(arr):
        raise fail(kind, dst, source, f"{what} holds NaN or infinite entries")
    return arr


def as_vector(value, width: int, *, what: str, kind: str, dst: str,
              source: SourceLocation) -> np.ndarray:
    """A vector of `width` entries from an array, a scalar (broadcast) or None (zero).

    float64, or an object array when some entry is a sympy expression (see coef_array).
    """
    if value is None:
        return np.zeros(width)
    arr = _numbers(value, what, kind, dst, source)
    if arr.ndim == 0:
        arr = np.full(width, arr.item() if arr.dtype == np.dtype(object) else float(arr),
                      dtype=arr.dtype)
    arr = arr.reshape(-1)
    if arr.shape != (width,):
        raise fail(kind, dst, source, f"{what} has {arr.size} entries, expected {width}")
    if not all_finite(arr):
        raise fail(kind, dst, source, f"{what} holds NaN or infinite entries")
    return arr


def matmul_shapes(a: Shape, b: Shape, a_shape: Shape | None,
                  b_shape: Shape | None) -> tuple[tuple[int, int], tuple[int, int]]:
    """The (p x q) and (q' x r) views of two registers in a product (q == q' checked later).

    A scalar is 1x1 and a matrix is itself. A vector is a row (1 x k) on the left and a column
    (k x 1) on the right, except beside a scalar, where it keeps its orientation as a column on
    the left (v * s) and a row on the right (s * v). a_shape / b_shape give other views (an outer
    product x x^T is a_shape=(d, 1), b_shape=(1, d)).
    """

    def view(shape: Shape, override: Shape | None, left: bool, other: Shape) -> tuple[int, int]:
        if override is not None:
            return (int(override[0]), int(override[1]))
        if shape == ():
            return (1, 1)
        if len(shape) == 1:
            if other == ():
                return (shape[0], 1) if left else (1, shape[0])
            return (1, shape[0]) if left else (shape[0], 1)
        return (shape[0], shape[1])

    return view(a, a_shape, True, b), view(b, b_shape, False, a)

