"""Registers: named, shaped slices of the residual stream at every token."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from raspicl.lang.source import UNKNOWN, SourceLocation

Shape = tuple[int, ...]


def shape_name(shape: Shape) -> str:
    """'scalar', 'vector(3)' or 'matrix(2x3)'."""
    if shape == ():
        return "scalar"
    if len(shape) == 1:
        return f"vector({shape[0]})"
    return f"matrix({shape[0]}x{shape[1]})"


@dataclass(frozen=True, eq=False)
class Register:
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
