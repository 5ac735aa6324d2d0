"""The scan construct: an online learner written as its update, one example at a time.

    s = p.scan(init={"w": w0},
               step=lambda s, x, y: {"w": s.w - 2 * lr * x * (x @ s.w - y)},
               predict=lambda s, x: s.w @ x)
    p.output(s.prediction, roles=("x", "query"))

The state after example i is step(state after example i - 1, x_i, y_i), from `init`; the
prediction at x token i uses the state after examples 1..i-1 (init at x_1), at the query the
state after all n. What is generated (the plumbing every online learner repeated by hand):

- x_i moved to y token i (`<name>_x`, from Offset(1)); y token i holds the state after
  example i. The chain over the y tokens is a loop: y token i's step reads the state of y token
  i - 1 at Offset(2), and after k iterations the state is exact at y tokens 1..k.
- The chain is a `p.loop(n)` (the compiler may share its blocks): each iteration reads the
  state of the y token before (Offset(2)), with the start value before the first example, and
  runs the step. With `peel=True` the first step runs before the loop from the start value at
  every token (a var's initial value) and the loop has n - 1 iterations: one read (and, in the
  select form, gate) fewer when compiled unrolled, one step more to store when shared.
- The new state is carried in *unfinished* form: its product terms are bound to registers, its
  linear part is not, and the next iteration applies that linear part inside the attention read
  that fetches it from the y token before (a linear map of what a head reads). This is the
  hand-fused form of programs/sgd.py and ridge.py, generated.

How the start value reaches the first example, in one of two forms (`Scan.form`):
- *clamped*: every read of the state is clamped (Offset(2, clamp=True), Offset(1, clamp=True):
  token 0 at t < k), and x_i is gated to the y tokens once, before the loop (0 elsewhere, so
  the step sees no example at token 0). Token 0 then holds the start value in every iteration
  exactly when it is a fixed point of the step with no example, step(init, 0, 0) == init.
  That is decided exactly (`_token0`: the ops run on token 0 alone, in sympy, coefficients as
  the rationals they are, x there symbolic), by trying this form first and taking its ops back
  (Program._rollback) when it fails. No gate per example.
- *select* (the condition fails, or clamp=False): each iteration puts the start value at tokens
  0 and 1 with a select, and the state before x token i is select(token 0 -> init, else the
  new state read at Offset(1)).

The step and predict functions receive expressions (raspicl.lang.expr) and return expressions
(a dict for a dict `init`, else one); their intermediates are vars reused by every iteration
(`p.let("name", e)` inside the step names one; it is created once). A product of x_i and y_i
alone (it reads nothing the scan writes) is computed once, before the loop. Each op records the
line of the step that made it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from raspicl.errors import ProgramError
from raspicl.lang.expr import Expr, as_expr, bind_temp
from raspicl.lang.reads import Here, Offset, Read
from raspicl.lang.registers import Register, Shape, shape_name
from raspicl.lang.source import SourceLocation


class State(Mapping):
    """The state of a scan: expressions by name, as s["w"] or s.w.

    `make`, if given, builds an entry on first use (the state before each x token: an entry
    that nothing reads costs no op)."""

    def __init__(self, values: dict[str, Expr | None], make: Callable | None = None):
        self._values = dict(values)
        self._make = make

    def __getitem__(self, key: str) -> Expr:
        value = self._values[key]
        if value is None:
            value = self._values[key] = self._make(key)
        return value

    def __getattr__(self, key: str) -> Expr:
        if key.startswith("_"):
            raise AttributeError(key)
        try:
            return self[key]
        except KeyError:
            raise AttributeError(
                f"the scan's state has no entry {key!r}; it has {', '.join(self._values)}"
            ) from None

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


@dataclass
class TempScope:
    """The registers a scan's step writes: one var per (phase, position), made on first use
    and reused by every later iteration, so every iteration writes the same ops."""

    name: str
    phase: str = "step"
    position: int = 0
    iteration: int = -1
    # loop-invariant intermediates (a scan's x_i y_i): bound once, before the loop, at
    # hoist_at; `written` are the registers the scan writes (state, intermediates)
    hoist_at: int | None = None
    written: set[str] = field(default_factory=set)
    hoisted: dict[tuple, Register] = field(default_factory=dict)
    zero_init: bool = False  # registers made now start at 0 (the dry run, see _dry_run)
    vars: dict[tuple[str, int], Register] = field(default_factory=dict)
    named: dict[str, Register] = field(default_factory=dict)

    def start(self, phase: str) -> None:
        self.phase, self.position = phase, 0

    def next(self, prog, hint: str, shape: Shape) -> Register:
        key = (self.phase, self.position)
        self.position += 1
        if key not in self.vars:
            init = np.zeros(shape) if self.zero_init else None
            self.vars[key] = prog.var(
                _fresh(prog, f"{self.name}_{hint}{len(self.vars)}"), shape, init=init
            )
            self.written.add(self.vars[key].name)
        return self._check(self.vars[key], shape)

    def invariant(self, e: Expr) -> bool:
        """e reads nothing the scan writes (only x_i, y_i and what was there before)."""
        return self.hoist_at is not None and not (e.registers() & self.written)

    def var(self, prog, name: str, shape: Shape) -> Register:
        """The var behind p.let("name", e) inside the step."""
        if name not in self.named:
            init = np.zeros(shape) if self.zero_init else None
            self.named[name] = prog.var(_fresh(prog, name), shape, init=init)
            self.written.add(self.named[name].name)
        return self._check(self.named[name], shape)

    def _check(self, reg: Register, shape: Shape) -> Register:
        if reg.shape != shape:
            raise ProgramError(
                f"scan '{self.name}': its step wrote '{reg.name}' as "
                f"{shape_name(reg.shape)} and now as {shape_name(shape)}; every "
                f"example must run the same step"
            )
        return reg


@dataclass
class Scan:
    """What p.scan() made: the state before each x token (expressions), the prediction
    register (None without predict), x_i at y token i, the state vars, and the form of the
    plumbing: "clamped" (the start value is a fixed point at token 0, no select per example)
    or "select" (the start value put at tokens 0 and 1 by a select in every iteration)."""

    before: State
    prediction: Register | None
    x: Register | None
    state: dict[str, Register]
    form: str = "select"


class NotFixed(Exception):
    """The clamped form's condition fails: what token 0 holds for one entry of the state."""

    def __init__(self, entry: str, why: str):
        super().__init__(f"'{entry}' {why}")
        self.entry = entry


def _fresh(prog, name: str) -> str:
    if name not in prog.registers:
        return name
    k = 1
    while f"{name}_{k}" in prog.registers:
        k += 1
    return f"{name}_{k}"


def run_scan(
    p,
    init,
    step: Callable,
    predict: Callable | None,
    name: str,
    source: SourceLocation,
    prediction: str = "pred",
    peel: bool = False,
    clamp: bool | None = None,
) -> Scan:
    """Lower a scan to ordinary ops (see the module docstring)."""
    where = f"scan '{name}' at {source}"
    if clamp not in (None, True, False):
        raise ProgramError(f"{where}: clamp must be None (decide), True or False, got {clamp!r}")
    if p._loop is not None or p.temp_scope is not None:
        raise ProgramError(f"{where}: a scan cannot run inside a loop or another scan")
    single = not isinstance(init, Mapping)
    inits = {"state": init} if single else dict(init)
    if not inits:
        raise ProgramError(f"{where}: init has no state")
    values = {}
    for k, v in inits.items():
        if not isinstance(k, str) or not k.isidentifier():
            raise ProgramError(f"{where}: state name {k!r} is not a Python identifier")
        arr = np.asarray(v)
        if arr.dtype == np.dtype(object):
            raise ProgramError(
                f"{where}: init '{k}' must be numbers (a scan's start value is part of the weights)"
            )
        values[k] = arr.astype(np.float64)
    args = (p, values, single, step, predict, name, where, prediction, peel)
    if p.n >= 1 and clamp is not False:  # try the clamped form; take it back if it fails
        mark = p._checkpoint()
        try:
            return _lower(*args, clamped=True)
        except NotFixed as exc:
            p._rollback(mark)
            if clamp:
                raise ProgramError(
                    f"{where}: clamp=True, but the start value is not a fixed point of the "
                    f"step at token 0 (exactly, with no example there): {exc}; the scan "
                    f"needs its selects (clamp=None chooses them)"
                ) from None
    return _lower(*args, clamped=False)


def _lower(
    p,
    values: dict[str, np.ndarray],
    single: bool,
    step: Callable,
    predict: Callable | None,
    name: str,
    where: str,
    prediction: str,
    peel: bool,
    clamped: bool,
) -> Scan:
    """The scan's ops in one form (module doc). The clamped form raises NotFixed when the
    start value is not a fixed point at token 0 (`_holds_start`); the caller then takes its
    ops back."""
    if p.n == 0:  # no example: nothing to move (and no token before the query)
        x_prev = None
    elif clamped:  # x_i at y token i, 0 elsewhere: the step sees no example at token 0
        x_read = p.mov(
            _fresh(p, f"{name}_xread"),
            Read(p.x, Offset(1, clamp=True)),
            note="x_i at y token i (x_1 at token 0)",
        )
        x_prev = p.select(
            _fresh(p, f"{name}_x"),
            "y",
            x_read,
            p.const(_fresh(p, f"{name}_x0"), np.zeros(p.d)),
            note="x_i at y token i, 0 elsewhere (no example at token 0: one gate, once)",
        )
    else:
        x_prev = p.mov(_fresh(p, f"{name}_x"), Read(p.x, Offset(1)), note="x_i, at y token i")
    x_e, y_e = as_expr(x_prev, p) if x_prev is not None else None, as_expr(p.y, p)
    start = {} if clamped else {k: p.const(_fresh(p, f"{name}_{k}0"), v) for k, v in values.items()}
    state = {k: p.var(_fresh(p, f"{name}_{k}"), v.shape, init=v) for k, v in values.items()}
    shapes = {k: v.shape for k, v in values.items()}
    scope = TempScope(name, hoist_at=len(p.ops), written={r.name for r in state.values()})

    def run_step() -> dict[str, Expr]:
        scope.start("step")
        p.temp_scope = scope
        try:
            s = {k: as_expr(r, p) for k, r in state.items()}
            out = step(s["state"] if single else State(s), x_e, y_e)
            new = _as_state(p, out, single, shapes, where)
            scope.start("carry")
            return {k: _carry(e, clamped) for k, e in new.items()}
        finally:
            p.temp_scope = None

    carried = None
    if p.n >= 1 and peel:
        carried = run_step()
        if clamped:
            _holds_start(p, carried, values)
    elif p.n >= 1:
        carried = _dry_run(p, scope, run_step, values if clamped else None)
    loops = p.n - 1 if peel else p.n
    if loops >= 1:
        for _ in p.loop(loops):
            scope.start("shift")
            p.temp_scope = scope
            try:
                if clamped:  # token 0 holds the start value: y token 1 reads it there
                    _shift_clamped(p, state, carried)
                else:
                    prev = {k: _bound(carried[k].at(Offset(2))) for k in state}
            finally:
                p.temp_scope = None
            if not clamped:
                for k, reg in state.items():
                    p.select(
                        reg,
                        [0, 1],
                        start[k],
                        prev[k],
                        note=f"{k} after the example before (start value before the prompt)",
                    )
            carried = run_step()

    def make_before(k: str) -> Expr:
        if carried is None:
            return as_expr(start[k], p)
        if clamped:  # token 0 holds the start value: x_1 reads it there
            shifted = carried[k].at(Offset(1, clamp=True))
            read = shifted.single_read()
            if read is not None:
                return as_expr(read, p)
            reg = p.let(
                _fresh(p, f"{k}_before"),
                shifted,
                note=f"{k} before x token i (clamped: the start value at x_1, final at the query)",
            )
            return as_expr(reg, p)
        shifted = carried[k].at(Offset(1))
        read = shifted.single_read()
        src = read if read is not None else bind_temp(shifted, f"{k}_read")
        reg = p.select(
            _fresh(p, f"{k}_before"),
            [0],
            start[k],
            src,
            note=f"{k} before x token i (start value at x_1, final at the query)",
        )
        return as_expr(reg, p)

    before = State({k: None for k in state}, make_before)
    pred = None
    if predict is not None:
        s = before["state"] if single else before
        pred = p.let(
            _fresh(p, prediction),
            as_expr(predict(s, as_expr(p.x, p)), p),
            note="prediction at x token i and the query",
        )
    return Scan(before, pred, x_prev, state, "clamped" if clamped else "select")


def _shift_clamped(p, state: dict[str, Register], carried: dict[str, Expr]) -> None:
    """Each state var := its carried form read at Offset(2, clamp=True), one op each, in an
    order that writes no var another pending read still needs (a cycle binds one of them to
    a register first, read at the current token)."""
    pending = {k: carried[k].at(Offset(2, clamp=True)) for k in state}
    while pending:
        ready = [
            k
            for k in pending
            if not any(state[k].name in e.registers() for j, e in pending.items() if j != k)
        ]
        if not ready:
            k = next(iter(pending))
            pending[k] = as_expr(bind_temp(pending[k], "prev"), p)
            continue
        k = ready[0]
        p.let(
            state[k],
            pending.pop(k),
            note=f"{k} after the example before (clamped read: token 0 holds the start value)",
        )


def _token0(p, exprs: dict[str, Expr]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The exact values at token 0 of the expressions and of the registers they read, for
    every prompt: the ops they depend on run on token 0 alone (raspicl.semantics.stream_ops,
    the interpreter's semantics; reads are causal) in sympy
    arithmetic (coefficients as the rationals they equal), with token 0's x symbolic (y is 0
    at x_1's token)."""
    import sympy

    from raspicl.semantics import expr_value, stream_ops

    reads = set().union(*(e.registers() for e in exprs.values()))
    needed, ops = set(reads), []
    for op in reversed(p.ops):  # only what the expressions depend on
        if op.dst.name in needed:
            ops.append(op)
            needed.discard(op.dst.name)
            needed |= {r.name for r in op.registers_read}
    tokens = np.empty((1, 1, p.d + 1), dtype=object)
    tokens[0, 0, 0] = sympy.Integer(0)
    tokens[0, 0, 1:] = sympy.symbols(f"x0:{p.d}")
    state: dict[str, np.ndarray] = {}
    for _ in stream_ops(p, tokens, state=state, ops=ops[::-1]):
        pass
    roles = np.array(p.format.roles()[:1])
    values = {k: expr_value(e, state, roles, sympy.nan)[0, 0] for k, e in exprs.items()}
    return values, {name: state[name][0, 0] for name in reads}


def _holds_start(p, carried: dict[str, Expr], values: dict[str, np.ndarray]) -> None:
    """Raise NotFixed unless every carried entry equals its start value at token 0, exactly
    and for every prompt (`_token0`)."""
    _require_start(_token0(p, carried)[0], values)


def _require_start(got: dict[str, np.ndarray], values: dict[str, np.ndarray]) -> None:
    """Raise NotFixed unless each entry's exact value at token 0 is its start value: the
    difference must simplify to 0 (a proof; anything else, NaN included, is a no)."""
    for k in got:
        if not _equal(got[k], values[k]):
            raise NotFixed(k, f"is {_show(got[k])} at token 0, its start value {_show(values[k])}")


def _show(values) -> str:
    """A few entries of an exact value, for a message."""
    flat = [str(v) for v in np.asarray(values).reshape(-1)]
    text = ", ".join(flat[:4]) + (", ..." if len(flat) > 4 else "")
    return f"[{text}]" if len(flat) > 1 else text


def _equal(got: np.ndarray, want: np.ndarray) -> bool:
    """Exact sympy values equal to float ones, entry by entry (raspicl.exact.prove_equal:
    a False may be a zero sympy could not prove, and NaN or an infinity is never equal)."""
    import sympy

    from raspicl.exact import prove_equal

    return all(prove_equal(g, sympy.Rational(float(w)))
               for g, w in zip(got.reshape(-1), np.asarray(want).reshape(-1), strict=True))


def _dry_run(
    p, scope: TempScope, run_step: Callable, start: dict[str, np.ndarray] | None
) -> dict[str, Expr]:
    """Run the step once to learn the form of the carried state, then take back its ops
    (not the loop-invariant ones it hoisted): the first loop iteration must read that form
    at Offset(2) before its own step writes it. The step's registers that the form reads
    stay, with an initial value, so that first read is defined: 0 in the select form (the
    select replaces what it reads at tokens 0 and 1, and nothing else uses it before it is
    overwritten); in the clamped form (`start`, the start values) their exact values at
    token 0 in the step run from the start value, so that the first iteration reads the
    start value there. Raises NotFixed, for the clamped form, when the start value is not a
    fixed point at token 0 or one of those values is not a float."""
    mark, hoisted = len(p.ops), len(scope.hoisted)
    scope.zero_init = True
    try:
        carried = run_step()
    finally:
        scope.zero_init = False
    at0 = None
    if start is not None:  # the step run from the start value, at token 0
        got, at0 = _token0(p, carried)
        _require_start(got, start)
    keep = mark + len(scope.hoisted) - hoisted
    for op in p.ops[keep:]:
        p._writes[op.dst.name].remove(op)
        if not p._writes[op.dst.name]:
            del p._writes[op.dst.name]
    del p.ops[keep:]
    for e in carried.values():
        e.versions = {name: p.writes(p.registers[name]) for name in e.versions}
    # only what the first iteration reads at Offset(2) needs its initial value
    needed = set().union(*(e.registers() for e in carried.values()))
    for reg in list(scope.vars.values()) + list(scope.named.values()):
        if reg.name not in needed:
            p.constants.pop(reg.name, None)
        elif at0 is not None:
            init = _as_floats(at0[reg.name])
            if init is None:
                raise NotFixed(
                    reg.name,
                    f"(a step register) is {_show(at0[reg.name])} at "
                    "token 0, not a float (the first read needs it)",
                )
            p.constants[reg.name] = init
    if start is not None:  # (implied by the checks above; kept as the definition)
        _holds_start(p, carried, start)
    return carried


def _as_floats(values: np.ndarray) -> np.ndarray | None:
    """Exact sympy values as float64, None unless each is a float exactly."""
    import sympy

    out = []
    for v in values.reshape(-1):
        v = sympy.sympify(v)
        if not v.is_Rational or sympy.Rational(float(v)) != v:
            return None
        out.append(float(v))
    return np.array(out)


def _as_state(p, out, single: bool, shapes: dict[str, tuple], where: str) -> dict[str, Expr]:
    if single:
        out = {"state": out}
    if not isinstance(out, Mapping):
        raise ProgramError(
            f"{where}: the step must return a dict of the state's entries "
            f"({', '.join(shapes)}), got {type(out).__name__}"
        )
    if set(out) != set(shapes):
        raise ProgramError(
            f"{where}: the step returns {sorted(out)} but the state is {sorted(shapes)}"
        )
    new = {}
    for k, v in out.items():
        e = as_expr(v, p)
        if e is NotImplemented:
            raise ProgramError(
                f"{where}: the step's '{k}' is {type(v).__name__}, not an expression"
            )
        if e.shape != tuple(shapes[k]):
            raise ProgramError(
                f"{where}: the step's '{k}' is {shape_name(e.shape)} but its "
                f"start value is {shape_name(tuple(shapes[k]))}"
            )
        new[k] = e
    return new


def _carry(e: Expr, clamped: bool) -> Expr:
    """e with its product terms bound to a register and its linear part kept, so the next
    read can apply the linear part. Reads that cannot be shifted (by a clamped offset in the
    clamped form, a strict one otherwise: reads.compose) bind the whole of e."""

    def shiftable(at) -> bool:
        return isinstance(at, Here) or (isinstance(at, Offset) and (clamped or not at.clamp))

    if any(not shiftable(r.at) for r in e.lin):
        return as_expr(bind_temp(e, "s"), e.program)
    if not e.prod:
        return e
    scope = e.program.temp_scope
    out = Expr(e.program, e.shape, dict(e.lin), {}, e.bias, dict(e.versions), e.source)
    # product terms of the example alone (x_i y_i) are computed once, before the loop
    invariant = {
        k: P
        for k, P in e.prod.items()
        if not ({k[0].register.name, k[1].register.name} & scope.written)
    }
    for part in (invariant, {k: P for k, P in e.prod.items() if k not in invariant}):
        if part:
            prod = Expr(e.program, e.shape, {}, part, np.zeros(e.width), dict(e.versions), e.source)
            out = out + as_expr(bind_temp(prod, "p"), e.program)
    return out


def _bound(e: Expr) -> Read:
    """A read of e: e itself when it is one register read, else a register bound to it."""
    read = e.single_read()
    return read if read is not None else Read(bind_temp(e, "prev"), Here())
