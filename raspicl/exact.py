"""Exact equality of sympy values: `prove_equal`, a proof that two expressions are equal.

The symbolic proofs (raspicl.symbolic, which offers it with the rest of its interface) and the
language's scan (lang/scan.py, which decides exactly whether its start value is a fixed point
of its step at token 0) both ask it. It needs sympy alone, so it lives below both: the scan
can use it without importing the interpreter, as raspicl.symbolic does.
"""

from __future__ import annotations

import sympy


def prove_equal(expr, closed_form) -> bool:
    """True iff expr - closed_form is exactly 0 (entrywise for matrices).

    Both sides are usually rational functions of the symbols, for which together + cancel
    gives a canonical p/q: zero iff p is. Anything cancel cannot decide (an Abs it could not
    remove, say) goes on to sympy.simplify. A difference holding nan (an undefined read) is
    never proven 0.
    """
    if isinstance(expr, sympy.MatrixBase) or isinstance(closed_form, sympy.MatrixBase):
        a, b = sympy.Matrix(expr), sympy.Matrix(closed_form)
        return a.shape == b.shape and all(prove_equal(u, v) for u, v in zip(a, b, strict=True))
    diff = sympy.sympify(expr) - sympy.sympify(closed_form)
    if diff.has(sympy.nan, sympy.zoo, sympy.oo, -sympy.oo):
        return False
    reduced = sympy.cancel(sympy.together(diff))
    if reduced == 0:
        return True
    if reduced.is_rational_function() and not reduced.has(sympy.Float):
        return False  # canonical and nonzero
    return sympy.simplify(reduced) == 0
