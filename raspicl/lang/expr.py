"""Expressions: registers combined with operators that read like the mathematics.

`w - 2 * lr * x * (x @ w - y)`, `A[j, :]`, `S.T`, `outer(u, u)`, `eye(d)` and `a / s` build an
`Expr`: a lazy polynomial of degree at most two over register *reads*,

    e[o] = bias[o] + sum_r L_r[o, :] . read_r + sum_(r, s) P_rs[o, :, :] : read_r read_s^T,

which is exactly the form of one op (ops.py). Nothing is written to the program until the
expression is bound to a register (`p.let(name, e)`, or a var: `p.let(var, e)`), used where a
register must exist (a divisor, a factor of a product that already holds products), or read at
another token (`e.at(Offset(1))`, which shifts every read: a linear map of what a head reads).
So a linear combination costs one op however many terms it has, and a row pick, a transpose or
a constant factor costs none: they are coefficients of the op that reads them.

Lowering rules (sugar: the compiler sees ordinary ops):
- a linear expression bound to a register is one `raw` op (`mov` for a single read);
- a product of two linear expressions is one op with product terms; a factor that is not a
  pick of one register (a sum of several reads) is first bound to a register of its own unless
  distributing it costs at most twice the product terms (`DISTRIBUTE_RATIO`);
- a factor of degree two is bound to a register first (an op holds products of reads only);
- `e / s` with s an expression is `div` (both bound to registers at the current token); it
  divides by |s| as div does, so s must stay positive for `/` to mean division.
A `const` register is read as its value (a number), as the compiler's constant folding does.
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass, field

import numpy as np

from raspicl.errors import ProgramError
from raspicl.lang.ops import Op, all_finite, fail, is_symbolic_value, linear_terms, product_terms
from raspicl.lang.reads import Here, Offset, Read, compose
from raspicl.lang.registers import Arithmetic, Register, Shape, shape_name
from raspicl.lang.source import SourceLocation, caller_location

# Distribute a product over a factor that is a sum of reads when that makes at most this many
# times the product terms of binding the factor first (one op less, a few more products).
DISTRIBUTE_RATIO = 2

# Programs by id, so that a Register (which knows only its program's id) can find its program.
PROGRAMS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _width(shape: Shape) -> int:
    return int(np.prod(shape)) if shape else 1


def _zeros(*shape: int, like=None) -> np.ndarray:
    obj = like is not None and any(a.dtype == np.dtype(object) for a in like)
    return (
        np.zeros(shape, dtype=object if obj else np.float64)
        if not obj
        else np.zeros(shape, dtype=np.int64).astype(object)
    )


@dataclass(eq=False)
class Expr:
    """A lazy expression of degree <= 2 over reads of one program's registers.

    shape: () / (k,) / (r, c); entries row-major, as a register's.
    lin:   read -> (width x read width) coefficients.
    prod:  (read a, read b) -> (width x width a x width b) coefficients.
    bias:  (width,) constant part.
    versions: register name -> number of writes of it when this expression read it, so binding
           the expression after the register was written again is refused (it would read the
           new value, not the one the formula meant).
    """

    program: object
    shape: Shape
    lin: dict[Read, np.ndarray]
    prod: dict[tuple[Read, Read], np.ndarray]
    bias: np.ndarray
    versions: dict[str, int] = field(default_factory=dict)
    source: SourceLocation = field(default_factory=caller_location)

    __array_ufunc__ = None  # numpy defers to Expr's reflected operators (2.0 * e, M @ e)

    # ------------------------------------------------------------------ views

    @property
    def width(self) -> int:
        return _width(self.shape)

    @property
    def degree(self) -> int:
        return 2 if self.prod else 1 if self.lin else 0

    def is_constant(self) -> bool:
        return not self.lin and not self.prod

    def registers(self) -> set[str]:
        names = {r.register.name for r in self.lin}
        for a, b in self.prod:
            names |= {a.register.name, b.register.name}
        return names

    def single_read(self) -> Read | None:
        """The read, if this expression is exactly one register read (identity, no bias)."""
        if self.prod or len(self.lin) != 1 or np.any(self.bias != 0):
            return None
        ((read, M),) = self.lin.items()
        if read.register.shape != self.shape or M.shape != (self.width, self.width):
            return None
        return read if np.array_equal(M, np.eye(self.width)) else None

    def is_pick(self) -> bool:
        """Degree one, no bias, one read, each entry a multiple of at most one component."""
        if self.prod or len(self.lin) != 1 or np.any(self.bias != 0):
            return False
        (M,) = self.lin.values()
        return bool(np.all(np.sum(M != 0, axis=1) <= 1))

    def describe(self) -> str:
        terms = [r.describe() for r in self.lin] + [
            f"{a.describe()}*{b.describe()}" for a, b in self.prod
        ]
        return f"expr({shape_name(self.shape)}: {' + '.join(terms) or 'constant'})"

    def __repr__(self) -> str:
        return self.describe()

    # ------------------------------------------------------------------ linear maps

    def _map(self, M: np.ndarray, shape: Shape) -> Expr:
        """The expression M e (M: new width x width), of the given shape."""
        M = np.asarray(M)
        return Expr(
            self.program,
            shape,
            {r: _dot(M, L) for r, L in self.lin.items()},
            {k: np.tensordot(M, P, axes=1) for k, P in self.prod.items()},
            _dot(M, self.bias),
            dict(self.versions),
            caller_location(),
        )

    def _reshape(self, shape: Shape) -> Expr:
        return self._map(np.eye(self.width), shape)

    @property
    def T(self) -> Expr:
        """The transpose of a matrix; a scalar or vector is its own transpose (as numpy)."""
        if len(self.shape) < 2:
            return self
        r, c = self.shape
        M = np.zeros((r * c, r * c))
        for i in range(r):
            for j in range(c):
                M[j * r + i, i * c + j] = 1.0
        return self._map(M, (c, r))

    def __getitem__(self, index) -> Expr:
        """Entries as a read: v[k], S[j, :], S[:, j], S[i, j] (ints and slices)."""
        if not isinstance(index, tuple):
            index = (index,)
        if len(index) != len(self.shape):
            raise self._fail(
                f"index {index!r} has {len(index)} entries but the expression is "
                f"{shape_name(self.shape)}"
            )
        axes, kept = [], []
        for k, (ix, size) in enumerate(zip(index, self.shape, strict=True)):
            if isinstance(ix, slice):
                axes.append(list(range(size))[ix])
                kept.append(k)
            elif isinstance(ix, int | np.integer) and not isinstance(ix, bool):
                if not -size <= ix < size:
                    raise self._fail(f"index {ix} is out of range for axis {k} of size {size}")
                axes.append([int(ix) % size])
            else:
                raise self._fail(f"index {ix!r} must be an int or a slice")
        if any(len(a) == 0 for a in axes):
            raise self._fail(f"index {index!r} selects no entry")
        strides = [int(np.prod(self.shape[k + 1 :])) for k in range(len(self.shape))]
        flat = [
            sum(i * s for i, s in zip(combo, strides, strict=True))
            for combo in itertools.product(*axes)
        ]
        shape = tuple(len(axes[k]) for k in kept)
        M = np.zeros((len(flat), self.width))
        M[np.arange(len(flat)), flat] = 1.0
        return self._map(M, shape)

    def at(self, where) -> Expr:
        """This expression read `where` (Offset(k), strict or clamped) instead of at the
        current token: every read shifts by k tokens, its place composed with `where`
        (reads.compose: Here -> Offset(k), Offset(j) -> Offset(j + k), a clamped read of
        clamped reads stays clamped)."""
        if isinstance(where, Here):
            return self
        if (
            not isinstance(where, Offset)
            or not isinstance(where.k, int | np.integer)
            or where.k < 0
        ):
            raise self._fail(
                f"an expression can be read at Here() or Offset(k >= 0), not "
                f"{where!r}; bind it to a register with p.let() first",
                "at",
            )
        where = Offset(int(where.k), bool(where.clamp))

        def shift(read: Read) -> Read:
            at = compose(where, read.at)
            if at is None:
                raise self._fail(
                    f"it reads '{read.register.name}' at {read.at.describe()}, which "
                    f"cannot be shifted by {where.k} tokens"
                    f"{' (clamped)' if where.clamp else ''} into one place; bind it with "
                    f"p.let()",
                    "at",
                )
            return Read(read.register, at)

        lin: dict[Read, np.ndarray] = {}
        for r, L in self.lin.items():
            _acc(lin, shift(r), L)
        prod: dict[tuple[Read, Read], np.ndarray] = {}
        for (a, b), P in self.prod.items():
            _acc(prod, (shift(a), shift(b)), P)
        return Expr(
            self.program,
            self.shape,
            lin,
            prod,
            self.bias.copy(),
            dict(self.versions),
            caller_location(),
        )

    def _fail(self, message: str, op: str = "[]") -> ProgramError:
        return op_error(op, (self,), message)

    # ------------------------------------------------------------------ arithmetic

    def __neg__(self) -> Expr:
        return self * -1.0

    def __pos__(self) -> Expr:
        return self

    def __add__(self, other) -> Expr:
        other = as_expr(other, self.program, "+")
        if other is NotImplemented:
            return NotImplemented
        a, b = _broadcast(self, other, "+")
        lin = {r: L.copy() for r, L in a.lin.items()}
        for r, L in b.lin.items():
            _acc(lin, r, L)
        prod = {k: P.copy() for k, P in a.prod.items()}
        for k, P in b.prod.items():
            _acc(prod, k, P)
        return Expr(
            self.program,
            a.shape,
            lin,
            prod,
            a.bias + b.bias,
            _merge_versions(a, b),
            caller_location(),
        )

    __radd__ = __add__

    def __sub__(self, other) -> Expr:
        other = as_expr(other, self.program, "-")
        if other is NotImplemented:
            return NotImplemented
        return self + (-other)

    def __rsub__(self, other) -> Expr:
        other = as_expr(other, self.program, "-")
        if other is NotImplemented:
            return NotImplemented
        return other + (-self)

    def __mul__(self, other) -> Expr:
        """Elementwise, with a scalar broadcast against a vector or matrix (c * A, s * v)."""
        if _is_number(other):
            return self._map(
                np.eye(self.width) * other
                if not is_symbolic_value(other)
                else np.eye(self.width, dtype=np.int64).astype(object) * other,
                self.shape,
            )
        other = as_expr(other, self.program, "*")
        if other is NotImplemented:
            return NotImplemented
        a, b = _broadcast(self, other, "*")
        w = a.width
        K = np.zeros((w, w, w))
        K[np.arange(w), np.arange(w), np.arange(w)] = 1.0
        return product(a, b, K, a.shape)

    __rmul__ = __mul__

    def __matmul__(self, other) -> Expr:
        other = as_expr(other, self.program, "@")
        if other is NotImplemented:
            return NotImplemented
        return matmul(self, other)

    def __rmatmul__(self, other) -> Expr:
        other = as_expr(other, self.program, "@")
        if other is NotImplemented:
            return NotImplemented
        return matmul(other, self)

    def __truediv__(self, other) -> Expr:
        """e / c for a number c; e / s for a scalar expression s is a div (by |s|)."""
        if _is_number(other):
            return self * self._reciprocal(other)
        other = as_expr(other, self.program, "/")
        if other is NotImplemented:
            return NotImplemented
        if other.is_constant() and other.shape == ():
            return self * self._reciprocal(other.bias[0])
        return divide(self, other)

    def _reciprocal(self, c):
        if is_symbolic_value(c):
            return 1 / c
        if float(c) == 0.0:
            raise op_error("/", (self,), "divides by the constant 0")
        return 1.0 / float(c)

    def __rtruediv__(self, other) -> Expr:
        """c / s for numbers c (an array or a number) over a scalar expression s."""
        other = as_expr(other, self.program, "/")
        if other is NotImplemented:
            return NotImplemented
        return other / self


# ---------------------------------------------------------------------- building blocks


def _named(e: Expr) -> str:
    """'x' (vector(2)) or 'an expression of x, w' (vector(2)), for error messages."""
    read = e.single_read()
    if read is not None:
        return f"'{read.register.name}' ({shape_name(e.shape)})"
    regs = sorted(e.registers())
    what = f"an expression of {', '.join(regs)}" if regs else "a constant"
    return f"{what} ({shape_name(e.shape)})"


def op_error(op: str, operands: tuple[Expr, ...], message: str) -> ProgramError:
    """A ProgramError naming the operator, its operands' registers and the source line."""
    names = " and ".join(_named(e) for e in operands)
    return ProgramError(f"op '{op}' on {names} at {caller_location()}: {message}")


def _is_number(v) -> bool:
    if isinstance(v, bool):
        return False
    return isinstance(v, int | float | np.integer | np.floating) or (
        is_symbolic_value(v) and not hasattr(v, "shape")
    )


def _dot(M: np.ndarray, A: np.ndarray) -> np.ndarray:
    return np.tensordot(M, A, axes=1)


def _acc(d: dict, key, value: np.ndarray) -> None:
    d[key] = d[key] + value if key in d else value.copy()


def _merge_versions(*exprs: Expr) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in exprs:
        out.update(e.versions)
    return out


def program_of(reg: Register):
    """The Program a register belongs to."""
    prog = PROGRAMS.get(reg.program_id)
    if prog is None:
        raise ProgramError(f"register '{reg.name}' belongs to no live program")
    return prog


def as_expr(value, program=None, what: str = "operand") -> Expr:
    """An Expr for a Register, a Read, an Expr, a number or an array (a constant).

    A const register becomes its value; any other register a read of it (its version noted).
    Returns NotImplemented for anything else, so Python can try the other operand.
    """
    if isinstance(value, Expr):
        return value
    if isinstance(value, Register):
        value = Read(value, Here())
    if isinstance(value, Read):
        reg = value.register
        prog = program_of(reg) if program is None else program
        if reg.program_id != prog.id or prog.registers.get(reg.name) is not reg:
            raise ProgramError(
                f"expression at {caller_location()}: register '{reg.name}' "
                f"belongs to another program"
            )
        if reg.kind == "const" and reg.name in prog.constants:
            return constant(prog, prog.constants[reg.name].reshape(reg.shape))
        w = reg.width
        return Expr(
            prog,
            reg.shape,
            {value: np.eye(w)},
            {},
            np.zeros(w),
            {reg.name: prog.writes(reg)},
            caller_location(),
        )
    if program is None:
        return NotImplemented
    if _is_number(value) or isinstance(value, np.ndarray | list | tuple):
        return constant(program, value)
    return NotImplemented


def constant(program, value) -> Expr:
    """A constant expression (no reads): a number, a vector or a matrix."""
    arr = np.asarray(value)
    if arr.dtype != np.dtype(object):
        arr = arr.astype(np.float64)
    if arr.ndim > 2:
        raise ProgramError(
            f"expression at {caller_location()}: a constant has at most two "
            f"axes, got shape {arr.shape}"
        )
    return Expr(program, tuple(arr.shape), {}, {}, arr.reshape(-1).copy(), {}, caller_location())


def _broadcast(a: Expr, b: Expr, op: str) -> tuple[Expr, Expr]:
    """The operands at one shape: equal shapes, or a scalar spread over the other's entries."""
    if a.shape == b.shape:
        return a, b
    if a.shape == ():
        return a._map(np.ones((b.width, 1)), b.shape), b
    if b.shape == ():
        return a, b._map(np.ones((a.width, 1)), a.shape)
    raise op_error(op, (a, b), "shapes must be equal or one a scalar (use @ for a matrix product)")


def matmul(a: Expr, b: Expr) -> Expr:
    """a @ b as numpy: vector @ vector (a scalar), matrix @ vector, vector @ matrix, matrix @
    matrix; a scalar operand is refused (use *)."""
    if a.shape == () or b.shape == ():
        raise op_error("@", (a, b), "'@' needs vectors or matrices; use * for a scalar")
    p, q = (1, a.shape[0]) if len(a.shape) == 1 else a.shape
    q2, r = (b.shape[0], 1) if len(b.shape) == 1 else b.shape
    if q != q2:
        raise op_error("@", (a, b), f"inner dimensions differ ({q} and {q2})")
    out = [] if len(a.shape) == 1 else [p]
    out += [] if len(b.shape) == 1 else [r]
    K = np.zeros((p * r, p * q, q * r))
    for i in range(p):
        for k in range(r):
            for j in range(q):
                K[i * r + k, i * q + j, j * r + k] = 1.0
    return product(a, b, K, tuple(out))


def outer(a, b) -> Expr:
    """The outer product a b^T of two vectors (a matrix)."""
    prog = _program_of_operands(a, b)
    a, b = as_expr(a, prog), as_expr(b, prog)
    if len(a.shape) != 1 or len(b.shape) != 1:
        raise op_error("outer", (a, b), "outer needs two vectors")
    p, r = a.width, b.width
    K = np.zeros((p * r, p, r))
    for i in range(p):
        for k in range(r):
            K[i * r + k, i, k] = 1.0
    return product(a, b, K, (p, r))


def eye(d: int) -> np.ndarray:
    """The d x d identity, a constant for expressions (I - outer(u, u), 2 * eye(d) @ S)."""
    return np.eye(d)


def transpose(a) -> Expr:
    """a.T for a register, a read or an expression."""
    prog = _program_of_operands(a)
    return as_expr(a, prog).T


def _program_of_operands(*values):
    for v in values:
        if isinstance(v, Expr):
            return v.program
        if isinstance(v, Register):
            return program_of(v)
        if isinstance(v, Read):
            return program_of(v.register)
    raise ProgramError(
        f"expression at {caller_location()}: no operand is a register or an expression of a program"
    )


def _term_count(e: Expr) -> int:
    return sum(int(np.count_nonzero(P)) for P in e.prod.values())


def product(a: Expr, b: Expr, K: np.ndarray, shape: Shape) -> Expr:
    """out[o] = sum_(i, j) K[o, i, j] a[i] b[j], expanded into one expression of degree <= 2.

    A factor of degree two is bound to a register first; so is a factor that is a sum of
    several reads when distributing over it would cost more than DISTRIBUTE_RATIO times the
    product terms of binding it (see the module docstring).
    """
    prog = a.program
    if not (a.is_constant() or b.is_constant()):
        if a.degree == 2:
            a = as_expr(bind_temp(a, "f"), prog)
        if b.degree == 2:
            b = as_expr(bind_temp(b, "f"), prog)
        if not (a.is_pick() and b.is_pick()):
            expanded = _term_count(_expand(a, b, K, shape))
            ia = a if a.is_pick() else _ident_like(a)
            ib = b if b.is_pick() else _ident_like(b)
            bound = _term_count(_expand(ia, ib, K, shape))
            if expanded > DISTRIBUTE_RATIO * bound:
                a = a if a.is_pick() else as_expr(bind_temp(a, "f"), prog)
                b = b if b.is_pick() else as_expr(bind_temp(b, "f"), prog)
    return _expand(a, b, K, shape)


def _ident_like(e: Expr) -> Expr:
    """A stand-in for e bound to a register (for counting product terms only)."""
    fake = Read(Register("_count", e.shape), Here())
    return Expr(e.program, e.shape, {fake: np.eye(e.width)}, {}, np.zeros(e.width), {}, e.source)


def _expand(a: Expr, b: Expr, K: np.ndarray, shape: Shape) -> Expr:
    """The bilinear form K applied to a and b (each of degree <= 1, or a constant)."""
    if a.degree == 2 and not b.is_constant() or b.degree == 2 and not a.is_constant():
        raise AssertionError("product() binds factors of degree two first")
    objects = [x for e in (a, b) for x in (e.bias, *e.lin.values(), *e.prod.values())]
    if any(x.dtype == np.dtype(object) for x in objects):
        K = K.astype(np.int64).astype(object)
    bias = _einsum("oab,a,b->o", K, a.bias, b.bias)
    lin: dict[Read, np.ndarray] = {}
    prod: dict[tuple[Read, Read], np.ndarray] = {}
    for r, L in a.lin.items():
        _acc(lin, r, _einsum("oab,ac,b->oc", K, L, b.bias))
    for r, L in b.lin.items():
        _acc(lin, r, _einsum("oab,a,bc->oc", K, a.bias, L))
    for k, P in a.prod.items():  # a degree two, b constant
        _acc(prod, k, _einsum("oab,ace,b->oce", K, P, b.bias))
    for k, P in b.prod.items():
        _acc(prod, k, _einsum("oab,a,bce->oce", K, a.bias, P))
    for ra, La in a.lin.items():
        for rb, Lb in b.lin.items():
            _acc(prod, (ra, rb), _einsum("oab,ac,be->oce", K, La, Lb))
    lin = {r: L for r, L in lin.items() if np.any(L != 0)}
    prod = {k: P for k, P in prod.items() if np.any(P != 0)}
    return Expr(a.program, shape, lin, prod, bias, _merge_versions(a, b), caller_location())


def _einsum(spec: str, *operands: np.ndarray) -> np.ndarray:
    """np.einsum contracted pairwise (optimize): the bilinear form K [o, a, b] against two
    coefficient matrices is a handful of matrix products, not one o·a·b·c·e loop, which made
    building sherman_morrison at d = 32 take minutes."""
    return np.einsum(spec, *operands, optimize=True)


def divide(a: Expr, s: Expr) -> Expr:
    """a / |s| as a div op: a and s bound to registers at the current token."""
    if s.shape != ():
        raise op_error("/", (a, s), "'/' divides by a scalar register or expression")
    prog = a.program
    num, den = _here_register(a, "num"), _here_register(s, "den")
    scope = prog.temp_scope
    if scope is not None and scope.hoist_at is not None \
            and not ({num.name, den.name} & scope.written):
        return as_expr(_hoist_quotient(prog, scope, num, den), prog)
    dst = prog.temp("q", a.shape)
    prog.div(dst, num, den, note=f"{num.name} / |{den.name}|")
    return as_expr(dst, prog)


def _hoist_quotient(prog, scope, num: Register, den: Register) -> Register:
    """A scan step's quotient of two registers the scan does not write (the example's x_i
    over eps + |x_i|^2 in NLMS): one div before the scan's loop, as _hoist binds an invariant
    product, instead of a division in every iteration."""
    key = ("div", num.name, prog.writes(num), den.name, prog.writes(den))
    return _hoist_op(prog, scope, key, "q", num.shape, lambda dst: prog.div(
        dst, num, den, note=f"{num.name} / |{den.name}| (loop-invariant, before the loop)"))


def _here_register(e: Expr, hint: str) -> Register:
    """The register e reads, if e is one register read here (as it was when e read it), else
    a register bound to e."""
    read = e.single_read()
    if read is not None and isinstance(read.at, Here):
        reg = read.register
        if e.program.writes(reg) == e.versions.get(reg.name, e.program.writes(reg)):
            return reg
    return bind_temp(e, hint)


def formula(e: Expr) -> str:
    """What e combines ('combines y, sgd_x*sgd_w', '1' for a constant part), for op notes."""

    def name(r: Read) -> str:
        at = "" if isinstance(r.at, Here) else f"@{r.at.describe()}"
        return r.register.name + at

    terms = [name(r) for r in e.lin] + [f"{name(a)}*{name(b)}" for a, b in e.prod]
    if np.any(e.bias != 0):
        terms.append("1")
    return f"combines {', '.join(terms)}" if terms else "a constant"


def bind_temp(e: Expr, hint: str) -> Register:
    """Bind e to a fresh register (a var reused by position inside a scan) and return it."""
    prog = e.program
    cached = e.__dict__.get("_bound")
    if cached is not None and prog.writes(cached[0]) == cached[1] and cached[2] == prog._loop:
        return cached[0]  # the same expression used twice (in one loop iteration): bound once
    scope = prog.temp_scope
    if scope is not None and scope.invariant(e):
        dst = _hoist(prog, scope, e, hint)
    else:
        dst = emit(prog, prog.temp(hint, e.shape), e, note=formula(e))
    e.__dict__["_bound"] = (dst, prog.writes(dst), prog._loop)
    return dst


def _key(e: Expr) -> tuple:
    """What makes two expressions the same: shape, reads and coefficients."""

    def arr(a: np.ndarray) -> tuple:
        return (a.shape, tuple(a.reshape(-1).tolist()))

    return (
        e.shape,
        arr(e.bias),
        tuple((r, arr(L)) for r, L in e.lin.items()),
        tuple((k, arr(P)) for k, P in e.prod.items()),
    )


def _hoist(prog, scope, e: Expr, hint: str) -> Register:
    """A loop-invariant intermediate of a scan's step, bound once before the scan's loop."""
    return _hoist_op(prog, scope, _key(e), hint, tuple(e.shape), lambda dst: emit(
        prog, dst, e, note=f"{formula(e)} (loop-invariant, before the loop)"))


def _hoist_op(prog, scope, key: tuple, hint: str, shape: Shape, write) -> Register:
    """The register `write(dst)` fills with one op, that op moved before the scan's loop (to
    scope.hoist_at) the first time `key` is seen; the same register for the same key after."""
    if key not in scope.hoisted:
        at = scope.hoist_at
        mark = len(prog.ops)
        name, k = f"{scope.name}_{hint}", 1
        while name in prog.registers:
            name, k = f"{scope.name}_{hint}{k}", k + 1
        dst = write(prog._new_register(name, shape, "value", caller_location()))
        op = prog.ops.pop(mark)
        prog._writes[dst.name].pop()
        scope.written.discard(dst.name)  # (a fresh register, written before the loop only)
        prog._insert(op, at)
        scope.hoist_at += 1
        scope.hoisted[key] = dst
    return scope.hoisted[key]


def emit(prog, dst: str | Register, e: Expr, note: str = "") -> Register:
    """Write e into dst with one op: mov for one read, otherwise the op's RAW form."""
    source = caller_location()
    name = dst if isinstance(dst, str) else dst.name
    for reg_name, version in e.versions.items():
        reg = prog.registers[reg_name]
        if prog.writes(reg) != version:
            raise fail(
                "let",
                name,
                source,
                f"the expression reads '{reg_name}' as it was before its write at "
                f"{prog.last_write(reg).source}; bind the expression with p.let() "
                f"before writing '{reg_name}' again",
            )
    if not all_finite(e.bias) or not all(
        all_finite(a) for a in (*e.lin.values(), *e.prod.values())
    ):
        raise fail(
            "let",
            name,
            source,
            "the expression's coefficients hold NaN or infinite "
            "entries (a coefficient or constant that is not finite)",
        )
    single = e.single_read()
    if single is not None:
        return prog.mov(dst, single, note=note)
    target = prog._target(dst, e.shape, "let", source)
    reads: list[Read] = []
    index: dict[Read, int] = {}

    def slot(r: Read) -> int:
        if r not in index:
            index[r] = len(reads)
            reads.append(r)
        return index[r]

    lin, prod = [], []
    for r, L in e.lin.items():
        i = slot(r)
        for o, c in zip(*np.nonzero(L != 0), strict=True):
            lin.append((int(o), L[o, c], i, int(c)))
    for (ra, rb), P in e.prod.items():
        i, j = slot(ra), slot(rb)
        for o, ca, cb in zip(*np.nonzero(P != 0), strict=True):
            prod.append((int(o), P[o, ca, cb], i, int(ca), j, int(cb)))
    if not reads:  # a constant: a raw op needs a read, so read nothing of the prompt: 0 * y
        reads.append(Read(prog.y, Here()))
    for r in reads:
        prog._read(r, "let", name, source, "read")
    bias = e.bias if e.bias.dtype == np.dtype(object) else e.bias.astype(np.float64)
    kind = "mul" if prod else "aff" if all(isinstance(r.at, Here) for r in reads) else "raw"
    op = Op(
        kind,
        target,
        tuple(reads),
        linear_terms(lin),
        product_terms(prod),
        bias.copy(),
        None,
        source,
        note or formula(e),
    )
    return prog._add(op)


# registers and reads get their operators from as_expr (raspicl.lang.registers.Arithmetic)
Arithmetic.as_expr = staticmethod(as_expr)

__all__ = ["DISTRIBUTE_RATIO", "Expr", "as_expr", "constant", "eye", "matmul", "outer", "transpose"]
