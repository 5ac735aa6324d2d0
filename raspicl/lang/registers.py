"""Registers: named, shaped slices of the residual stream at every token."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from raspicl.lang.source import UNKNOWN, SourceLocation

Shape = tuple[int, ...]


def shape_name(shape: Shape) -> str:
    """'scalar', 'vector(3)' or 'matrix(2x3)'."""
    if shape == ():
        return "scalar"
    if len(shape) == 1:
        return f"vector({shape[0]})"
    return f"matrix({shape[0]}x{shape[1]})"


class Arithmetic:
    """Operators on registers and reads: each builds a lazy expression (raspicl.lang.expr),
    written to the program only when bound with p.let() (or where an op must exist).

    The expression module builds on this one (an expression reads registers), so it is the one
    that connects the two: on import it installs its `as_expr` as `Arithmetic.as_expr`. Every
    raspicl.lang module is imported through raspicl/lang/__init__.py, which imports it."""

    __array_ufunc__ = None  # numpy defers to the reflected operators (2.0 * r, M @ r)
    # register or read -> its Expr: raspicl.lang.expr.as_expr, installed by that module
    as_expr: ClassVar[Callable[[Arithmetic], Any] | None] = None

    def _expr(self):
        if Arithmetic.as_expr is None:
            raise RuntimeError("raspicl.lang.expr is not imported: import raspicl.lang")
        return Arithmetic.as_expr(self)

    def __add__(self, other):
        return self._expr() + other

    def __radd__(self, other):
        return other + self._expr()

    def __sub__(self, other):
        return self._expr() - other

    def __rsub__(self, other):
        return other - self._expr()

    def __mul__(self, other):
        return self._expr() * other

    def __rmul__(self, other):
        return other * self._expr()

    def __matmul__(self, other):
        return self._expr() @ other

    def __rmatmul__(self, other):
        return other @ self._expr()

    def __truediv__(self, other):
        return self._expr() / other

    def __rtruediv__(self, other):
        return other / self._expr()

    def __neg__(self):
        return -self._expr()

    def __getitem__(self, index):
        return self._expr()[index]

    @property
    def T(self):  # noqa: N802 (numpy's name)
        return self._expr().T


@dataclass(frozen=True, eq=False)
class Register(Arithmetic):
    """A named register of a program.

    kind is 'input' (the token's own x or y part), 'const' (the same value at every token,
    baked into the positional embedding), 'var' (declared mutable: ops may overwrite it) or
    'value' (written once by the op that created it).
    """

    name: str
    shape: Shape
    kind: str = "value"
    source: SourceLocation = field(default=UNKNOWN, compare=False)
    program_id: int = 0

    @property
    def width(self) -> int:
        """Number of residual rows the register occupies (its entries, row-major)."""
        return math.prod(self.shape) if self.shape else 1

    def __repr__(self) -> str:
        return f"Register({self.name!r}, {shape_name(self.shape)})"
