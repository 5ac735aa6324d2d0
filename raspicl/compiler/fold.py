"""Constant folding pass: reads of `const` registers become coefficients and biases.

A `const` register is never stored in the residual stream: a linear term on it is a constant
and goes into the bias; a product with it is linear in the other operand (both constant: a
constant); a division by it scales the op. Terms with a zero coefficient and reads that no term
uses any more are dropped. Registers of kind `var` keep their constant initial value in the
stream (their later writes differ), so they are not folded.

Sets, per op, a Folded: the kept reads (indices into op.reads), linear / products / gated over
the kept reads, bias and gated_bias, and const_divisor. ssa.py maps the kept reads to values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from raspicl.errors import CompileError
from raspicl.lang.ops import LinearTerms, Op
from raspicl.lang.program import Program

LinearTerm = tuple[int, float, int, int]  # (out, coef, read, comp)
ProductTerm = tuple[int, float, int, int, int, int]  # (out, coef, read_a, comp_a, read_b, comp_b)
ConstOf = Callable[[int, int], float]  # (op read index, component) -> the constant there


@dataclass
class Folded:
    """One op after folding: dst = (bias + linear + products [+ mask * (gated + gated_bias)])
    / const_divisor, the read indices of the terms being positions in `kept`.

    kept: indices into op.reads of the reads that stay, in order;
    const_divisor: |s| of a division by a constant, already applied to bias, linear and
    products (None if the op does not divide by a constant);
    gated_bias: a select's bias of the gated part (None for other ops).
    """

    op: Op
    kept: list[int]
    linear: list[LinearTerm]
    products: list[ProductTerm]
    bias: np.ndarray
    gated: list[LinearTerm] = field(default_factory=list)
    gated_bias: np.ndarray | None = None
    const_divisor: float | None = None


def folded_registers(program: Program) -> set[str]:
    """The registers folded away: those of kind 'const'."""
    return {name for name, reg in program.registers.items() if reg.kind == "const"}


def fold_program(program: Program) -> list[Folded]:
    """Fold every op of the program (in program order)."""
    folded = folded_registers(program)
    consts = {name: np.asarray(v, dtype=np.float64) for name, v in program.constants.items()}
    return [fold_op(op, folded, consts) for op in program.ops]


def fold_op(op: Op, folded_regs: set[str], consts: dict[str, np.ndarray]) -> Folded:
    """One op with the reads of registers in `folded_regs` (values in `consts`) folded in."""
    folded = {i for i, r in enumerate(op.reads) if r.register.name in folded_regs}
    index_map = {}  # op read index -> position among the unfolded reads
    for i in range(len(op.reads)):
        if i not in folded:
            index_map[i] = len(index_map)

    def const(read: int, comp: int) -> float:
        return consts[op.reads[read].register.name][comp]

    bias = op.bias.copy()
    lin = _fold_linear(op.linear, folded, const, index_map, bias)
    prod = _fold_products(op, folded, const, index_map, bias, lin)
    gated: list[LinearTerm] = []
    gated_bias = np.zeros(op.dst.width)
    if op.gated is not None:
        gated = _fold_linear(op.gated, folded, const, index_map, gated_bias)
    unfolded = sorted(index_map, key=index_map.get)
    result = _drop_unused(Folded(op, unfolded, lin, prod, bias, gated,
                                 gated_bias if op.mask is not None else None))
    if op.divisor is not None and op.divisor.register.name in folded_regs:
        _fold_divisor(result, float(consts[op.divisor.register.name][0]))
    if op.function is not None and not result.kept:
        raise CompileError(f"{op.where()}: applies {op.function.name} to a constant; compute "
                           f"the constant in Python instead (p.const)")
    return result


def _fold_products(op: Op, folded: set[int], const: ConstOf, index_map: dict[int, int],
                   bias: np.ndarray, lin: list[LinearTerm]) -> list[ProductTerm]:
    """The products over two unfolded reads; one with a folded operand is appended to `lin`,
    one of two constants goes into `bias` (both in place)."""
    prod: list[ProductTerm] = []
    P = op.products
    for o, c, ra, ca, rb, cb in zip(P.out, P.coef, P.read_a, P.comp_a, P.read_b, P.comp_b,
                                    strict=True):
        fa, fb = ra in folded, rb in folded
        if fa and fb:
            bias[o] += c * const(ra, ca) * const(rb, cb)
        elif fa:
            lin.append((int(o), float(c * const(ra, ca)), index_map[rb], int(cb)))
        elif fb:
            lin.append((int(o), float(c * const(rb, cb)), index_map[ra], int(ca)))
        else:
            prod.append((int(o), float(c), index_map[ra], int(ca), index_map[rb], int(cb)))
    return prod


def _drop_unused(f: Folded) -> Folded:
    """`f` without zero-coefficient terms and without the reads no term uses (f.kept then
    lists the op's read indices of the rest, the terms' read positions renumbered)."""
    lin = [t for t in f.linear if t[1] != 0.0]
    prod = [t for t in f.products if t[1] != 0.0]
    gated = [t for t in f.gated if t[1] != 0.0]
    used = ({t[2] for t in lin} | {t[2] for t in prod} | {t[4] for t in prod}
            | {t[2] for t in gated})
    keep = [k for k in range(len(f.kept)) if k in used]
    remap = {old: new for new, old in enumerate(keep)}
    f.kept = [f.kept[k] for k in keep]
    f.linear = [(o, c, remap[r], k) for o, c, r, k in lin]
    f.products = [(o, c, remap[ra], ca, remap[rb], cb) for o, c, ra, ca, rb, cb in prod]
    f.gated = [(o, c, remap[r], k) for o, c, r, k in gated]
    return f


def _fold_divisor(f: Folded, divisor: float) -> None:
    """Divide a folded op by the constant |divisor| (in place); 0 is a CompileError."""
    s = abs(divisor)
    if s == 0.0:
        raise CompileError(f"{f.op.where()}: divides by the constant 0")
    f.bias = f.bias / s
    f.linear = [(o, c / s, r, k) for o, c, r, k in f.linear]
    f.products = [(o, c / s, ra, ca, rb, cb) for o, c, ra, ca, rb, cb in f.products]
    f.const_divisor = s


def _fold_linear(terms: LinearTerms, folded: set[int], const: ConstOf, index_map: dict[int, int],
                 bias: np.ndarray) -> list[LinearTerm]:
    """Linear terms over the unfolded reads; terms on folded constants go into `bias` (in
    place)."""
    out = []
    for o, c, ri, ci in zip(terms.out, terms.coef, terms.read, terms.comp, strict=True):
        if ri in folded:
            bias[o] += c * const(int(ri), int(ci))
        else:
            out.append((int(o), float(c), index_map[ri], int(ci)))
    return out
