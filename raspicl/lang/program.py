"""Program: a prompt format, named registers and a list of ops, built by plain Python calls.

A learning algorithm is a Python function that returns a Program:

    p = Program("gd_step", d=2)
    err = p.dot("err", p.x, w0)            # <x, w0> at every token
    ...
    p.output(pred, roles=("query",))

Every op method returns the register it wrote, remembers the source line that called it, and
checks what it can check locally (shapes, coefficients); Program.validate() checks the rest.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from raspicl.errors import ProgramError
from raspicl.lang.expr import PROGRAMS, Expr, as_expr, emit
from raspicl.lang.functions import elementwise
from raspicl.lang.ops import (
    Op,
    all_finite,
    as_matrix,
    as_vector,
    coef_array,
    fail,
    is_symbolic_value,
    linear_terms,
    matmul_shapes,
    product_terms,
)
from raspicl.lang.reads import ROLES, At, Here, Mean, Offset, Read, Where
from raspicl.lang.registers import Register, Shape, shape_name
from raspicl.lang.source import SourceLocation, caller_location

_program_ids = itertools.count(1)

Operand = Register | Read


@dataclass(frozen=True)
class PromptFormat:
    """The paper's prompt: x~_i = [0, x_i], y~_i = [y_i, 0_d] for i = 1..n, then x~_q = [0, x_q].

    Token t (0-based) has role 'x' for even t < 2n, 'y' for odd t, and 'query' for t = 2n.
    """

    d: int
    n: int
    name: str = "alternating"

    @property
    def n_tokens(self) -> int:
        return 2 * self.n + 1

    @property
    def d_token(self) -> int:
        return self.d + 1

    def role(self, t: int) -> str:
        if t == 2 * self.n:
            return "query"
        return "x" if t % 2 == 0 else "y"

    def roles(self) -> list[str]:
        return [self.role(t) for t in range(self.n_tokens)]

    def positions(self, role: str) -> list[int]:
        return [t for t in range(self.n_tokens) if self.role(t) == role]


@dataclass(frozen=True)
class Output:
    """The register that holds the prediction and the roles of the tokens where it is read."""

    register: Register
    roles: tuple[str, ...]
    source: SourceLocation


@dataclass(frozen=True)
class _Checkpoint:
    """A program's state at one point (Program._checkpoint)."""

    registers: dict
    constants: dict
    n_ops: int
    writes: dict
    temps: int
    loops: int
    loop_scopes: dict


class Program:
    """A learning algorithm over the residual stream: registers, ops and an output."""

    def __init__(self, name: str, d: int, n: int = 1, params: dict | None = None):
        if not isinstance(d, int | np.integer) or d < 1:
            raise ProgramError(f"program '{name}': d must be a positive integer, got {d!r}")
        if not isinstance(n, int | np.integer) or n < 0:
            raise ProgramError(f"program '{name}': n must be a non-negative integer, got {n!r}")
        self.name = name
        self.format = PromptFormat(int(d), int(n))
        self.params: dict = dict(params or {})
        self.id = next(_program_ids)
        self.registers: dict[str, Register] = {}
        self.constants: dict[str, np.ndarray] = {}
        self.ops: list[Op] = []
        self.output_spec: Output | None = None
        self._loop: tuple[int, int] | None = None
        self._loops = 0
        self._writes: dict[str, list[Op]] = {}
        self._temps = itertools.count()
        self._loop_scopes: dict = {}
        self.temp_scope = None  # a scan's TempScope while it records its step (scan.py)
        PROGRAMS[self.id] = self
        here = caller_location()
        self.x = self._new_register("x", (int(d),), "input", here)
        self.y = self._new_register("y", (), "input", here)

    # ------------------------------------------------------------------ registers

    @property
    def d(self) -> int:
        return self.format.d

    @property
    def n(self) -> int:
        return self.format.n

    def _new_register(self, name: str, shape: Shape, kind: str,
                      source: SourceLocation) -> Register:
        if not isinstance(name, str) or not name.isidentifier():
            raise ProgramError(f"at {source}: register name {name!r} is not a Python identifier")
        if name in self.registers:
            old = self.registers[name]
            raise ProgramError(
                f"at {source}: register '{name}' already exists ({shape_name(old.shape)}, "
                f"created at {old.source}); pick another name or declare it with p.var() "
                f"and write it again"
            )
        if any(not isinstance(s, int | np.integer) or s < 1 for s in shape) or len(shape) > 2:
            raise ProgramError(f"at {source}: register '{name}' has invalid shape {shape!r}")
        reg = Register(name, tuple(int(s) for s in shape), kind, source, self.id)
        self.registers[name] = reg
        return reg

    def const(self, name: str, value) -> Register:
        """A register holding the same constant at every token (baked into the weights)."""
        source = caller_location()
        arr = _coefs(value, "its value", f"at {source}: constant '{name}'")
        if not all_finite(arr):
            raise ProgramError(f"at {source}: constant '{name}' holds NaN or infinite entries")
        reg = self._new_register(name, arr.shape, "const", source)
        self.constants[name] = arr.reshape(-1).copy()
        return reg

    def var(self, name: str, shape: Shape | int = (), init=None) -> Register:
        """A mutable register: ops may write it more than once. init, if given, is its
        value at every token before the first write."""
        source = caller_location()
        if isinstance(shape, int | np.integer) and not isinstance(shape, bool):
            shape = (shape,)
        if not isinstance(shape, tuple | list) or any(
                not isinstance(s, int | np.integer) or isinstance(s, bool) for s in shape):
            raise ProgramError(f"at {source}: register '{name}' has invalid shape {shape!r}: a "
                               f"var's shape is (), an int or a tuple of one or two positive ints")
        shape = tuple(shape)  # sizes and rank are checked with the register
        reg = self._new_register(name, shape, "var", source)
        if init is not None:
            arr = _coefs(init, "init", f"at {source}: var '{name}'")
            if arr.size != reg.width:
                raise ProgramError(
                    f"at {source}: init of var '{name}' has {arr.size} entries, "
                    f"its shape {shape_name(reg.shape)} needs {reg.width}"
                )
            if not all_finite(arr):
                raise ProgramError(f"at {source}: init of var '{name}' holds NaN or infinities")
            self.constants[name] = arr.reshape(-1).copy()
        return reg

    # ------------------------------------------------------------------ helpers

    def _read(self, operand: Operand, kind: str, dst: str, source: SourceLocation,
              what: str) -> Read:
        if isinstance(operand, Read):
            read = operand
            if not isinstance(read.register, Register):
                raise fail(kind, dst, source,
                           f"{what} is a Read of {read.register!r}, which is not a Register "
                           f"(pass the Register the program returned, not its name)")
        elif isinstance(operand, Register):
            read = Read(operand, Here())
        else:
            raise fail(kind, dst, source,
                       f"{what} must be a Register or a Read, got {type(operand).__name__}")
        reg = read.register
        if reg.program_id != self.id or self.registers.get(reg.name) is not reg:
            raise fail(kind, dst, source,
                       f"{what} reads register '{reg.name}', which belongs to another program")
        _check_where(read.at, kind, dst, source)
        return read

    def _target(self, dst: str | Register, shape: Shape, kind: str,
                source: SourceLocation) -> Register:
        """The register an op writes: a new one for a name, or an existing var."""
        if isinstance(dst, Register):
            name = dst.name
            if dst.program_id != self.id or self.registers.get(name) is not dst:
                raise fail(kind, name, source, f"register '{name}' belongs to another program")
            if dst.shape != shape:
                raise fail(kind, name, source,
                           f"the result is {shape_name(shape)} but register '{name}' is "
                           f"{shape_name(dst.shape)}")
            return dst
        if not isinstance(dst, str):
            raise fail(kind, str(dst), source, "dst must be a register name or a Register")
        if dst in self.registers:
            old = self.registers[dst]
            if old.shape != shape:
                raise fail(kind, dst, source,
                           f"the result is {shape_name(shape)} but register '{dst}' is "
                           f"{shape_name(old.shape)}")
            return old
        return self._new_register(dst, shape, "value", source)

    def _add(self, op: Op) -> Register:
        object.__setattr__(op, "index", len(self.ops))
        object.__setattr__(op, "loop", self._loop)
        self.ops.append(op)
        self._writes.setdefault(op.dst.name, []).append(op)
        if self.temp_scope is not None:
            # every register a scan's step writes, by any op (an apply, a div, a select into
            # a name of the step's own): what reads one is not loop-invariant (scan.py)
            self.temp_scope.written.add(op.dst.name)
        return op.dst

    def _insert(self, op: Op, position: int) -> Register:
        """Put op at `position` of the program (a scan hoists a loop-invariant intermediate
        before its loop) and renumber the ops after it."""
        object.__setattr__(op, "loop", None)
        self.ops.insert(position, op)
        for k in range(position, len(self.ops)):
            object.__setattr__(self.ops[k], "index", k)
        self._writes.setdefault(op.dst.name, []).append(op)
        return op.dst

    def _checkpoint(self) -> _Checkpoint:
        """What `_rollback` restores: the program as it stands (a scan tries one form of
        its plumbing and takes it back when the condition for it fails)."""
        mark = next(self._temps)
        self._temps = itertools.count(mark)
        return _Checkpoint(dict(self.registers), dict(self.constants), len(self.ops),
                           {k: list(v) for k, v in self._writes.items()}, mark, self._loops,
                           dict(self._loop_scopes))

    def _rollback(self, cp: _Checkpoint) -> None:
        """Forget every register, constant and op made since `cp` (ops are only appended, or
        inserted after the checkpoint's last op, so the ops before it are untouched)."""
        self.registers = dict(cp.registers)
        self.constants = dict(cp.constants)
        del self.ops[cp.n_ops:]
        self._writes = {k: list(v) for k, v in cp.writes.items()}
        self._temps = itertools.count(cp.temps)
        self._loops = cp.loops
        self._loop_scopes = dict(cp.loop_scopes)

    def writes(self, reg: Register) -> int:
        """How many ops have written `reg` so far (an expression notes it for each read)."""
        return len(self._writes.get(reg.name, ()))

    def last_write(self, reg: Register) -> Op:
        return self._writes[reg.name][-1]

    def temp(self, hint: str, shape: Shape) -> Register:
        """A fresh register for an intermediate of an expression: '_<hint><k>', or inside a
        scan the var its step uses at this position in every iteration."""
        scope = self._scope()
        if scope is not None:
            return scope.next(self, hint, tuple(shape))
        return self.temp_outside(hint, shape)

    def _scope(self):
        """Where an expression's intermediates live: the scan's scope while a scan records
        its step, a loop's scope inside `p.loop` (reset at each iteration, so every iteration
        writes the same vars), else None (fresh registers)."""
        if self.temp_scope is not None:
            return self.temp_scope
        if self._loop is None:
            return None
        from raspicl.lang.scan import TempScope

        loop_id, k = self._loop
        scope = self._loop_scopes.setdefault(loop_id, TempScope(f"loop{loop_id}"))
        if scope.iteration != k:
            scope.iteration = k
            scope.start("step")
        return scope

    def temp_outside(self, hint: str, shape: Shape) -> Register:
        """A fresh value register '_<hint><k>', whatever scope is open."""
        while True:
            name = f"_{hint}{next(self._temps)}"
            if name not in self.registers:
                return self._new_register(name, tuple(shape), "value", caller_location())

    # ------------------------------------------------------------------ expressions

    def let(self, dst: str | Register, expr, note: str = "") -> Register:
        """Bind an expression (raspicl.lang.expr: a + b, c * a, a @ b, a / s, S[j, :], ...)
        to a register: a new one for a name, or a var given as a Register. One op: mov for
        a single read, else one RAW op holding every linear and product term."""
        e = as_expr(expr, self)
        if e is NotImplemented:
            source = caller_location()
            raise fail("let", _dst_name(dst), source,
                       f"the value must be an expression, a register, a read or numbers; got "
                       f"{type(expr).__name__}")
        scope = self._scope()
        if scope is not None and isinstance(dst, str):
            dst = scope.var(self, dst, e.shape)  # inside a scan's step or a loop: a var
        return emit(self, dst, e, note=note)

    def expr(self, value) -> Expr:
        """value (a register, a read, numbers) as an expression of this program."""
        e = as_expr(value, self)
        if e is NotImplemented:
            raise ProgramError(f"at {caller_location()}: {value!r} is not a register, a read or "
                               f"numbers")
        return e

    def scan(self, init: dict | object, step, predict=None, name: str = "scan",
             prediction: str = "pred", peel: bool = False, clamp: bool | None = None):
        """An online learner over the examples (see raspicl/lang/scan.py): the state after
        example i is step(state after i - 1, x_i, y_i), from `init`; predict(state, x), if
        given, is written at every token (the state before x token i, the final one at the
        query). Returns a Scan with .before (the state, as expressions), .prediction and
        .form. clamp: None (default) reads the state clamped, with no select per example,
        when the start value is a fixed point at token 0 (docs/language.md §9), True
        requires that (a ProgramError otherwise), False keeps the selects."""
        from raspicl.lang.scan import run_scan

        return run_scan(self, init, step, predict, name, caller_location(), prediction, peel,
                        clamp)

    # ------------------------------------------------------------------ the ops

    def raw(self, dst: str | Register, read: Operand | list[Operand],
            here: Operand | list[Operand] | None = None, op: str = "+", W=None, bias=None,
            shape: Shape | None = None, note: str = "") -> Register:
        """The paper's read-arithmetic-write operator.

        u = concat(reads) (each read at its place, e.g. Read(r, Mean('x'))), v = concat(here)
        (registers at the current token); z = u + v or u * v (elementwise; equal widths), or
        z = u when `here` is None; then dst = W z + bias.
        """
        source = caller_location()
        name = _dst_name(dst)
        if op not in ("+", "*"):
            raise fail("raw", name, source, f"op must be '+' or '*', got {op!r}")
        reads_u = [self._read(r, "raw", name, source, "read")
                   for r in (read if isinstance(read, list | tuple) else [read])]
        if not reads_u:
            raise fail("raw", name, source, "raw needs at least one read")
        here_list = [] if here is None else (here if isinstance(here, list | tuple) else [here])
        reads_v = [self._read(r, "raw", name, source, "here") for r in here_list]
        for r in reads_v:
            if not r.here:
                raise fail("raw", name, source,
                           f"'here' operand {r.register.name} must be read at the current token")
        width_u = sum(r.register.width for r in reads_u)
        width_v = sum(r.register.width for r in reads_v)
        if reads_v and width_u != width_v:
            raise fail("raw", name, source,
                       f"'{op}' combines the reads (width {width_u}) with 'here' "
                       f"(width {width_v}) elementwise; widths must match")
        W_arr = _coefs(1.0 if W is None else W, "W", f"op 'raw' writing '{name}' at {source}")
        shape = _shape_arg(shape, "raw", name, source)
        out_width = W_arr.shape[0] if W_arr.ndim == 2 else width_u
        out_shape = _default_shape(shape, out_width, reads_u[0].register.shape
                                   if W_arr.ndim < 2 and len(reads_u) == 1 else None)
        Wm = as_matrix(W_arr, _width(out_shape), width_u, what="W", kind="raw", dst=name,
                       source=source)
        bias_v = as_vector(bias, _width(out_shape), what="bias", kind="raw", dst=name,
                           source=source)
        reads = reads_u + reads_v
        slots_u = _slots(reads_u, 0)
        slots_v = _slots(reads_v, len(reads_u))
        lin, prod = [], []
        for o in range(Wm.shape[0]):
            for k in range(width_u):
                c = Wm[o, k]
                if c == 0.0:
                    continue
                ru, cu = slots_u[k]
                if not reads_v:
                    lin.append((o, c, ru, cu))
                elif op == "+":
                    rv, cv = slots_v[k]
                    lin.append((o, c, ru, cu))
                    lin.append((o, c, rv, cv))
                else:
                    rv, cv = slots_v[k]
                    prod.append((o, c, ru, cu, rv, cv))
        target = self._target(dst, out_shape, "raw", source)
        return self._add(Op("raw", target, tuple(reads), linear_terms(lin), product_terms(prod),
                            bias_v, None, source, note))

    def mov(self, dst: str | Register, src: Operand, at: Where | None = None,
            note: str = "") -> Register:
        """dst = src read at `at` (default: the current token). Attention in the paper."""
        source = caller_location()
        name = _dst_name(dst)
        read = self._read(src, "mov", name, source, "src")
        if at is not None:
            if isinstance(src, Read):
                raise fail("mov", name, source, "give the place either in the Read or in at=")
            _check_where(at, "mov", name, source)
            read = Read(read.register, at)
        reg = read.register
        lin = [(c, 1.0, 0, c) for c in range(reg.width)]
        target = self._target(dst, reg.shape, "mov", source)
        return self._add(Op("mov", target, (read,), linear_terms(lin), product_terms([]),
                            np.zeros(reg.width), None, source, note))

    def mean(self, dst: str | Register, src: Operand, role: str, note: str = "") -> Register:
        """dst = mean of src over all tokens s <= t of the given role (uniform attention)."""
        source = caller_location()
        name = _dst_name(dst)
        if isinstance(src, Read):
            raise fail("mean", name, source, "mean takes a register, not a Read")
        if not isinstance(src, Register):
            raise fail("mean", name, source,
                       f"src must be a Register (mean reads it over the role's tokens), got "
                       f"{type(src).__name__}")
        _check_where(Mean(role), "mean", name, source)
        read = self._read(Read(src, Mean(role)), "mean", name, source, "src")
        lin = [(c, 1.0, 0, c) for c in range(src.width)]
        target = self._target(dst, src.shape, "mean", source)
        return self._add(Op("mean", target, (read,), linear_terms(lin), product_terms([]),
                            np.zeros(src.width), None, source, note))

    def aff(self, dst: str | Register, a: Operand, b: Operand | None = None, W1=None, W2=None,
            bias=None, shape: Shape | None = None, note: str = "") -> Register:
        """dst = W1 a + W2 b + bias. W1, W2 are matrices, or scalars meaning c*I (default 1).

        An MLP in the paper; exact in the compiled model (GeLU(z) - GeLU(-z) = z).
        """
        source = caller_location()
        name = _dst_name(dst)
        ra = self._read(a, "aff", name, source, "a")
        rb = None if b is None else self._read(b, "aff", name, source, "b")
        W1_arr = _coefs(1.0 if W1 is None else W1, "W1", f"op 'aff' writing '{name}' at {source}")
        shape = _shape_arg(shape, "aff", name, source)
        out_width = W1_arr.shape[0] if W1_arr.ndim == 2 else ra.register.width
        out_shape = _default_shape(shape, out_width,
                                   ra.register.shape if W1_arr.ndim < 2 else None)
        ow = _width(out_shape)
        W1m = as_matrix(W1_arr, ow, ra.register.width, what="W1", kind="aff", dst=name,
                        source=source)
        lin = [(o, W1m[o, k], 0, k) for o in range(ow) for k in range(ra.register.width)]
        reads = [ra]
        if rb is not None:
            W2m = as_matrix(W2, ow, rb.register.width, what="W2", kind="aff", dst=name,
                            source=source)
            lin += [(o, W2m[o, k], 1, k) for o in range(ow) for k in range(rb.register.width)]
            reads.append(rb)
        elif W2 is not None:
            raise fail("aff", name, source, "W2 is given but there is no operand b")
        bias_v = as_vector(bias, ow, what="bias", kind="aff", dst=name, source=source)
        target = self._target(dst, out_shape, "aff", source)
        return self._add(Op("aff", target, tuple(reads), linear_terms(lin), product_terms([]),
                            bias_v, None, source, note))

    def mul(self, dst: str | Register, a: Operand, b: Operand, a_shape: Shape | None = None,
            b_shape: Shape | None = None, scale: float = 1.0, shape: Shape | None = None,
            note: str = "") -> Register:
        """dst = scale * A B with A = a viewed as (p x q), B = b viewed as (q x r).

        A scalar is 1x1; a vector is a row on the left and a column on the right; a_shape and
        b_shape give other views (an outer product x x^T is a_shape=(d, 1), b_shape=(1, d)).
        The result is a scalar for 1x1, a vector for p x 1 or 1 x r, else a matrix.
        An MLP (GeLU) in the paper.
        """
        return self._product("mul", dst, a, b, a_shape, b_shape, scale, shape, note,
                             caller_location())

    def dot(self, dst: str | Register, a: Operand, b: Operand, scale: float = 1.0,
            note: str = "") -> Register:
        """dst = scale * <a, b> for two registers of equal width (a scalar)."""
        source = caller_location()
        name = _dst_name(dst)
        ra_ = self._read(a, "dot", name, source, "a")
        rb_ = self._read(b, "dot", name, source, "b")
        wa, wb = ra_.register.width, rb_.register.width
        if wa != wb:
            ra = a.register if isinstance(a, Read) else a
            rb = b.register if isinstance(b, Read) else b
            raise fail("dot", name, source,
                       f"register '{ra.name}' has width {wa} but register '{rb.name}' has "
                       f"width {wb}")
        return self._product("dot", dst, a, b, (1, wa), (wb, 1), scale, (), note, source)

    def _product(self, kind: str, dst, a, b, a_shape, b_shape, scale, shape, note,
                 source: SourceLocation) -> Register:
        name = _dst_name(dst)
        ra = self._read(a, kind, name, source, "a")
        rb = self._read(b, kind, name, source, "b")
        a_shape = _view_arg(a_shape, kind, name, source, "a_shape")
        b_shape = _view_arg(b_shape, kind, name, source, "b_shape")
        shape = _shape_arg(shape, kind, name, source)
        if np.ndim(scale) != 0 or isinstance(scale, bool | str):
            raise fail(kind, name, source, f"scale must be a number, got {scale!r}")
        (p, q), (q2, r) = matmul_shapes(ra.register.shape, rb.register.shape, a_shape, b_shape)
        if p * q != ra.register.width:
            raise fail(kind, name, source,
                       f"register '{ra.register.name}' ({shape_name(ra.register.shape)}) cannot "
                       f"be viewed as {p}x{q}")
        if q2 * r != rb.register.width:
            raise fail(kind, name, source,
                       f"register '{rb.register.name}' ({shape_name(rb.register.shape)}) cannot "
                       f"be viewed as {q2}x{r}")
        if q != q2:
            raise fail(kind, name, source,
                       f"inner dimensions differ: '{ra.register.name}' is viewed as {p}x{q} and "
                       f"'{rb.register.name}' as {q2}x{r}")
        if not all_finite(_coefs(scale, "scale", f"op '{kind}' writing '{name}' at {source}")):
            raise fail(kind, name, source, "scale is NaN or infinite")
        if not is_symbolic_value(scale):
            scale = float(scale)
        if shape is None:
            shape = () if p == 1 and r == 1 else (p,) if r == 1 else (r,) if p == 1 else (p, r)
        if _width(tuple(shape)) != p * r:
            raise fail(kind, name, source, f"shape {shape} does not hold a {p}x{r} result")
        same = ra == rb
        prod = [(i * r + k, scale, 0, i * q + j, 0 if same else 1, j * r + k)
                for i in range(p) for k in range(r) for j in range(q)]
        reads = (ra,) if same else (ra, rb)
        target = self._target(dst, tuple(shape), kind, source)
        return self._add(Op(kind, target, reads, linear_terms([]), product_terms(prod),
                            np.zeros(p * r), None, source, note))

    def div(self, dst: str | Register, a: Operand, s: Operand, note: str = "") -> Register:
        """dst = a / |s| for a scalar register s at the current token (LayerNorm in the paper).

        Undefined (and reported by the compiled model's guard) where s comes near zero.
        """
        source = caller_location()
        name = _dst_name(dst)
        ra = self._read(a, "div", name, source, "a")
        rs = self._read(s, "div", name, source, "s")
        if rs.register.shape != ():
            raise fail("div", name, source,
                       f"the divisor '{rs.register.name}' must be a scalar, it is "
                       f"{shape_name(rs.register.shape)}")
        if not ra.here or not rs.here:
            raise fail("div", name, source,
                       "div reads its operands at the current token; mov them here first")
        w = ra.register.width
        lin = [(c, 1.0, 0, c) for c in range(w)]
        target = self._target(dst, ra.register.shape, "div", source)
        return self._add(Op("div", target, (ra,), linear_terms(lin), product_terms([]),
                            np.zeros(w), rs, source, note))

    def select(self, dst: str | Register, tokens, a: Operand, b: Operand,
               note: str = "") -> Register:
        """dst = a at the chosen tokens, b at every other token.

        tokens: a role ('x', 'y', 'query'), a tuple of roles, or an iterable of token indices.
        An MLP gate in the compiled model, exact for |a - b| within its calibrated bound.
        """
        source = caller_location()
        name = _dst_name(dst)
        ra = self._read(a, "select", name, source, "a")
        rb = self._read(b, "select", name, source, "b")
        if ra.register.shape != rb.register.shape:
            raise fail("select", name, source,
                       f"a ('{ra.register.name}', {shape_name(ra.register.shape)}) and b "
                       f"('{rb.register.name}', {shape_name(rb.register.shape)}) differ in shape")
        mask = self._token_mask(tokens, "select", name, source)
        w = ra.register.width
        lin = [(c, 1.0, 1, c) for c in range(w)]
        gated = [(c, 1.0, 0, c) for c in range(w)] + [(c, -1.0, 1, c) for c in range(w)]
        target = self._target(dst, ra.register.shape, "select", source)
        return self._add(Op("select", target, (ra, rb), linear_terms(lin), product_terms([]),
                            np.zeros(w), None, source, note, mask, linear_terms(gated)))

    def apply(self, dst: str | Register, f, v: Operand, range=None, lam: float | None = None,
              note: str = "") -> Register:
        """dst = f(v), entry by entry: f a library function ('sigmoid', 'tanh', 'exp', 'log',
        'softplus', 'relu', 'inv_sqrt', 'soft_threshold' with lam) or a user function
        (raspicl.lang.functions.smooth), on its declared range=(lo, hi).

        The interpreter computes f exactly in float64 everywhere (NaN outside f's domain);
        the compiled model approximates f on the range by one MLP of GeLU units with a
        certified error, and its monitor refuses a prompt whose argument leaves the range.
        A name inside a scan's step or a loop is a var reused by every iteration, as p.let's.
        """
        source = caller_location()
        name = _dst_name(dst)
        read = self._read(v, "apply", name, source, "v")
        try:
            fn = elementwise(f, range, lam)
        except ValueError as exc:
            raise fail("apply", name, source, str(exc)) from None
        w = read.register.width
        lin = [(int(c), 1.0, 0, int(c)) for c in np.arange(w)]  # (`range` is the argument)
        scope = self._scope()
        if scope is not None and isinstance(dst, str):  # inside a scan's step or a loop: a
            dst = scope.var(self, dst, read.register.shape)  # var, as p.let's (one per name)
        target = self._target(dst, read.register.shape, "apply", source)
        return self._add(Op("apply", target, (read,), linear_terms(lin), product_terms([]),
                            np.zeros(w), None, source, note, function=fn))

    def _token_mask(self, tokens, kind: str, dst: str, source: SourceLocation) -> np.ndarray:
        T = self.format.n_tokens
        roles = np.array(self.format.roles())
        if isinstance(tokens, str):
            tokens = (tokens,)
        items = list(tokens)
        if items and all(isinstance(t, str) for t in items):
            for role in items:
                if role not in ROLES:
                    raise fail(kind, dst, source,
                               f"unknown role {role!r}; roles are {', '.join(ROLES)}")
            return np.isin(roles, items)
        mask = np.zeros(T, dtype=bool)
        for t in items:
            if not isinstance(t, int | np.integer) or not 0 <= t < T:
                raise fail(kind, dst, source,
                           f"token {t!r} is not a token index of this prompt (0..{T - 1})")
            mask[t] = True
        return mask

    def loop(self, n: int):
        """Repeat the ops written in the body of `for _ in p.loop(n):` n times.

        The ops are recorded unrolled (the interpreter runs them in order); each carries its
        loop and iteration, so the compiler can share one group of blocks between the
        iterations (a looped transformer). Every iteration must write the same ops.
        """
        source = caller_location()
        if not isinstance(n, int | np.integer) or n < 1:
            raise ProgramError(f"loop at {source}: the repeat count must be a positive integer, "
                               f"got {n!r}")
        if self._loop is not None:
            raise ProgramError(f"loop at {source}: loops do not nest")
        loop_id = self._loops
        self._loops += 1
        first = len(self.ops)
        try:
            for k in range(int(n)):
                self._loop = (loop_id, k)
                yield k
        finally:
            self._loop = None
        body = [op for op in self.ops[first:] if op.loop == (loop_id, 0)]
        if not body:
            raise ProgramError(f"loop at {source}: the body writes no op")
        for k in range(1, int(n)):
            ops_k = [op for op in self.ops[first:] if op.loop == (loop_id, k)]
            if len(ops_k) != len(body) or any(
                    not _same_op(a, b) for a, b in zip(body, ops_k, strict=True)):
                raise ProgramError(f"loop at {source}: iteration {k} writes different ops than "
                                   f"iteration 0; a loop body must be the same every time")

    def output(self, register: Register, roles: tuple[str, ...] | str = ("query",)) -> None:
        """Declare the prediction register and the roles of the tokens where it is read."""
        source = caller_location()
        if isinstance(roles, str):
            roles = (roles,)
        elif not isinstance(roles, tuple | list) or not all(isinstance(r, str) for r in roles):
            raise ProgramError(f"output at {source}: roles must be a role name or a tuple of "
                               f"role names ({', '.join(ROLES)}); got {roles!r}")
        roles = tuple(roles)
        if not isinstance(register, Register) or self.registers.get(register.name) is not register:
            raise ProgramError(f"output at {source}: {register!r} is not a register of this "
                               f"program")
        for role in roles:
            if role not in ROLES:
                raise ProgramError(f"output at {source}: unknown role {role!r}; roles are "
                                   f"{', '.join(ROLES)}")
        self.output_spec = Output(register, roles, source)

    # ------------------------------------------------------------------ views

    def is_symbolic(self) -> bool:
        """True if some coefficient, bias or constant is a sympy expression (object array).

        Such a program runs in the interpreter and in raspicl.symbolic, but it has no numeric
        weights: the compiler must refuse it. Otherwise every one of them is float64.
        """
        obj = np.dtype(object)
        if any(v.dtype == obj for v in self.constants.values()):
            return True
        return any(op.linear.coef.dtype == obj or op.products.coef.dtype == obj
                   or op.bias.dtype == obj for op in self.ops)

    def output_positions(self) -> list[int]:
        if self.output_spec is None:
            return []
        return [t for t in range(self.format.n_tokens)
                if self.format.role(t) in self.output_spec.roles]

    def validate(self) -> Program:
        """Check the whole program (see validate.py); returns self so calls chain."""
        from raspicl.lang.validate import validate

        validate(self)
        return self

    def listing(self) -> str:
        """One line per op: index, source line, what it computes."""
        lines = [f"program {self.name}  d={self.d} n={self.n}  params={self.params}"]
        for op in self.ops:
            lines.append(f"  [{op.index:2d}] {str(op.source):>28}  {op.describe()}")
        if self.output_spec is not None:
            lines.append(f"  output: {self.output_spec.register.name} at "
                         f"{', '.join(self.output_spec.roles)} tokens")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Program({self.name!r}, d={self.d}, n={self.n}, ops={len(self.ops)})"


def _same_op(a: Op, b: Op) -> bool:
    """Two ops that compile to the same weights: kind, registers, places and coefficients."""
    def terms(t):
        return None if t is None else [np.asarray(x).tolist() for x in vars(t).values()]

    return (a.kind == b.kind and a.dst is b.dst and a.reads == b.reads
            and a.divisor == b.divisor and terms(a.linear) == terms(b.linear)
            and terms(a.products) == terms(b.products) and terms(a.gated) == terms(b.gated)
            and np.array_equal(np.asarray(a.bias), np.asarray(b.bias))
            and (a.mask is None) == (b.mask is None)
            and (a.mask is None or np.array_equal(a.mask, b.mask))
            and a.function == b.function)


def _dst_name(dst) -> str:
    """The destination's name for messages; _target refuses anything but a str or Register."""
    if isinstance(dst, str):
        return dst
    return dst.name if isinstance(dst, Register) else repr(dst)


def _shape_arg(shape, kind: str, dst: str, source: SourceLocation,
               what: str = "shape") -> Shape | None:
    """None, or a shape: () / an int / a tuple of one or two positive ints."""
    if shape is None:
        return None
    if isinstance(shape, int | np.integer) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, tuple | list) or len(shape) > 2 or any(
            not isinstance(s, int | np.integer) or isinstance(s, bool) or s < 1 for s in shape):
        raise fail(kind, dst, source,
                   f"{what} must be (), an int or a tuple of one or two positive ints; got "
                   f"{shape!r}")
    return tuple(int(s) for s in shape)


def _view_arg(view, kind: str, dst: str, source: SourceLocation, what: str):
    """None, or a (rows, cols) view of a register in a product."""
    if view is None:
        return None
    if not isinstance(view, tuple | list) or len(view) != 2 or any(
            not isinstance(s, int | np.integer) or isinstance(s, bool) or s < 1 for s in view):
        raise fail(kind, dst, source,
                   f"{what} must be a (rows, cols) pair of positive ints; got {view!r}")
    return (int(view[0]), int(view[1]))


def _coefs(value, what: str, where: str) -> np.ndarray:
    """coef_array, with a ProgramError (prefixed by `where`) for what cannot be numbers."""
    try:
        return coef_array(value)
    except (TypeError, ValueError) as exc:
        raise ProgramError(f"{where}: {what} must be numbers (an array, a nested list of equal "
                           f"lengths or a scalar); got {value!r} ({exc})") from None


def _width(shape: Shape) -> int:
    return int(np.prod(shape)) if shape else 1


def _default_shape(shape: Shape | None, width: int, like: Shape | None) -> Shape:
    if shape is not None:
        return tuple(int(s) for s in shape)
    if like is not None and _width(like) == width:
        return like
    return () if width == 1 else (width,)


def _slots(reads: list[Read], first: int) -> list[tuple[int, int]]:
    """(read index, component) for every entry of the concatenation of reads."""
    out = []
    for i, r in enumerate(reads):
        out += [(first + i, c) for c in range(r.register.width)]
    return out


def _check_where(at, kind: str, dst: str, source: SourceLocation) -> None:
    if isinstance(at, Here):
        return
    if isinstance(at, Offset):
        if not isinstance(at.k, int | np.integer):
            raise fail(kind, dst, source,
                       f"Offset({at.k!r}) is not a whole number of tokens back (k >= 0)")
        if at.k < 0:
            raise fail(kind, dst, source,
                       f"Offset({at.k!r}) reads the future: a token can only read tokens at or "
                       f"before itself (k >= 0)")
        if not isinstance(at.clamp, bool | np.bool_):
            raise fail(kind, dst, source,
                       f"Offset({at.k}, clamp={at.clamp!r}): clamp must be True or False")
        return
    if isinstance(at, At):
        if not isinstance(at.index, int | np.integer) or at.index < 0:
            raise fail(kind, dst, source, f"At({at.index!r}) is not a token index")
        return
    if isinstance(at, Mean):
        if at.role not in ROLES:
            raise fail(kind, dst, source,
                       f"unknown role {at.role!r}; roles are {', '.join(ROLES)}")
        return
    raise fail(kind, dst, source, f"unknown place {at!r}; use Here, Offset, At or Mean")
