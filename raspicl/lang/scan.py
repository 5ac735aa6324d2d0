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
  state of the y token before (Offset(2)), puts the start value at tokens 0 and 1 (a select),
  and runs the step. With `peel=True` the first step runs before the loop from the start
  value at every token (a var's initial value) and the loop has n - 1 iterations: one read
  and gate fewer when compiled unrolled, one step more to store when the loop is shared.
- The new state is carried in *unfinished* form: its product terms are bound to registers, its
  linear part is not, and the next iteration applies that linear part inside the attention read
  that fetches it from the y token before (a linear map of what a head reads). This is the
  hand-fused form of programs/sgd.py and ridge.py, generated.
- The state before x token i is select(token 0 -> init, else the new state read at Offset(1)).

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
    register (None without predict) and x_i at y token i."""

    before: State
    prediction: Register | None
    x: Register | None
    state: dict[str, Register]


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
) -> Scan:
    """Lower a scan to ordinary ops (see the module docstring)."""
    where = f"scan '{name}' at {source}"
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
    x_prev = (
        p.mov(_fresh(p, f"{name}_x"), Read(p.x, Offset(1)), note="x_i, at y token i")
        if p.n >= 1
        else None
    )  # no example: nothing to move (and no token before the query)
    x_e, y_e = as_expr(x_prev, p) if x_prev is not None else None, as_expr(p.y, p)
    start = {k: p.const(_fresh(p, f"{name}_{k}0"), v) for k, v in values.items()}
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
            return {k: _carry(e) for k, e in new.items()}
        finally:
            p.temp_scope = None

    carried = None
    if p.n >= 1 and peel:
        carried = run_step()
    elif p.n >= 1:
        carried = _dry_run(p, scope, run_step)
    loops = p.n - 1 if peel else p.n
    if loops >= 1:
        for _ in p.loop(loops):
            scope.start("shift")
            p.temp_scope = scope
            try:
                prev = {k: _bound(carried[k].at(Offset(2))) for k in state}
            finally:
                p.temp_scope = None
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
    return Scan(before, pred, x_prev, state)


def _dry_run(p, scope: TempScope, run_step: Callable) -> dict[str, Expr]:
    """Run the step once to learn the form of the carried state, then take back its ops
    (not the loop-invariant ones it hoisted): the first loop iteration must read that form
    at Offset(2) before its own step writes it. The step's registers stay, with initial
    value 0, so that first read is defined (its value is replaced by the start value at
    tokens 0 and 1, and is not used elsewhere before it is overwritten)."""
    mark, hoisted = len(p.ops), len(scope.hoisted)
    scope.zero_init = True
    try:
        carried = run_step()
    finally:
        scope.zero_init = False
    keep = mark + len(scope.hoisted) - hoisted
    for op in p.ops[keep:]:
        p._writes[op.dst.name].remove(op)
        if not p._writes[op.dst.name]:
            del p._writes[op.dst.name]
    del p.ops[keep:]
    for e in carried.values():
        e.versions = {name: p.writes(p.registers[name]) for name in e.versions}
    # only what the first iteration reads at Offset(2) needs its initial 0
    needed = set().union(*(e.registers() for e in carried.values()))
    for reg in list(scope.vars.values()) + list(scope.named.values()):
        if reg.name not in needed:
            p.constants.pop(reg.name, None)
    return carried


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


def _carry(e: Expr) -> Expr:
    """e with its product terms bound to a register and its linear part kept, so the next
    read can apply the linear part. Reads that cannot be shifted bind the whole of e."""
    if any(not isinstance(r.at, Here | Offset) for r in e.lin):
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
