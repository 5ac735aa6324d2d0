"""The meaning of a program: its float64 reference semantics, batched over prompts.

Every op is applied at every token, in program order. A read at a place outside the prompt
(before token 0, or before the first token of a role) is undefined and gives NaN, which then
propagates; validation guarantees the output is defined where it is read. (A clamped Offset
reads token 0 there instead.) Every read is causal, so running the ops on the first T' tokens
of a prompt gives those tokens' values exactly (`stream_ops` accepts such a prefix; the scan
decides its fixed point on token 0 alone, lang/scan.py). The same code runs
over numpy object arrays of sympy expressions (see symbolic.py), so the symbolic proofs check
exactly these semantics. It does so when the tokens are an object array or when the program has
symbolic coefficients (Program.is_symbolic()); then every float coefficient, bias and constant
enters as the exact rational it equals (0.5 as 1/2), so sympy sees exact arithmetic.

`stream_ops` is the semantics proper: it yields each op's result as it goes and can forget a
register as soon as no later op reads it, which is how calibration (compiler/calibrate.py) runs
in memory that does not grow with the number of ops; `interpret` keeps every result (a Trace).
Each op's linear and product sums are one 2-D matrix product over all B*T rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from raspicl.lang.ops import Op
from raspicl.lang.program import Program
from raspicl.lang.reads import At, Here, Mean, Offset, Where
from raspicl.prompts import Prompts, check_tokens

_OBJECT = np.dtype(object)


@dataclass
class Trace:
    """Every register at every token after every op.

    after[k]: the value op k wrote, [B, T, width]; final: each register after the last op,
    [B, T, width]; shapes: each register's shape.
    """

    program: Program
    tokens: np.ndarray
    after: list[np.ndarray]
    final: dict[str, np.ndarray]

    def register(self, name: str) -> np.ndarray:
        """A register's final value with its shape: [B, T, *shape]."""
        reg = self.program.registers[name]
        v = self.final[name]
        return v.reshape(v.shape[:2] + reg.shape)

    def output(self) -> np.ndarray:
        """The output register at the output positions: [B, n_positions, width]."""
        out = self.program.output_spec
        return self.final[out.register.name][:, self.program.output_positions(), :]


def interpret(program: Program, prompts: Prompts | np.ndarray) -> Trace:
    """Run a program on a batch of prompts (or token arrays [B, T, d+1]) in float64."""
    program.validate()
    tokens = prompts.tokens() if isinstance(prompts, Prompts) else np.asarray(prompts)
    if tokens.dtype != _OBJECT:
        tokens = tokens.astype(np.float64)
    check_tokens(tokens, program.format)
    return run_ops(program, tokens)


def run_ops(program: Program, tokens: np.ndarray) -> Trace:
    """The semantics proper, for float64 or object (sympy) token arrays."""
    after = []
    state: dict[str, np.ndarray] = {}
    for step in stream_ops(program, tokens, state=state):
        after.append(step.value)
    return Trace(program, tokens, after, state)


@dataclass(frozen=True)
class Step:
    """One op's result as `stream_ops` yields it.

    value: what the op wrote, [B, T, width]; divisor: for a div, the divisor register's value
    the op divided by (before |.|), [B, T, 1]; None otherwise.
    """

    op: Op
    value: np.ndarray
    divisor: np.ndarray | None


def stream_ops(program: Program, tokens: np.ndarray,
               state: dict[str, np.ndarray] | None = None,
               drop_dead: bool = False, ops: list[Op] | None = None) -> Iterator[Step]:
    """Run the ops in program order, yielding each op's result as it is computed.

    state: the registers' current values (filled in place; after the last op it holds every
    register's final value, as Trace.final). drop_dead: forget a register's value as soon as
    no later op reads it before writing it again, so that only the live values are held (what
    calibration needs: O(live registers) memory instead of O(ops)); the final state then
    holds only what is still live, which is nothing. A consumer that keeps no Step holds no
    other op's output. tokens may be the first T' < T tokens of a prompt (reads are causal):
    every value is then that prefix of the full run's. ops: the ops to run (default all of
    the program's, in order; a subsequence closed under what its ops read gives the same
    values for the registers it writes).
    """
    ops = program.ops if ops is None else ops
    if tokens.dtype != _OBJECT and program.is_symbolic():
        tokens = tokens.astype(object)
    dtype = tokens.dtype
    B, T, _ = tokens.shape
    nan = _nan_like(tokens)
    state = {} if state is None else state
    state.update({"x": tokens[:, :, 1:], "y": tokens[:, :, :1]})
    for name, value in program.constants.items():
        arr = np.broadcast_to(_cast(value, dtype), (B, T, value.size))
        state[name] = np.array(arr)
    roles = np.array(program.format.roles())
    live_after = _live_after(ops) if drop_dead else None
    for k, op in enumerate(ops):
        values = [value_at(state[r.register.name], r.at, roles, nan) for r in op.reads]
        if op.mask is not None:  # select
            out = np.where(op.mask[None, :T, None], values[0], values[1])
        else:
            out = _apply(op, values, dtype)
        del values
        s = None
        if op.divisor is not None:
            s = state[op.divisor.register.name]
            out = out / abs_(s)
        state[op.dst.name] = out
        if live_after is not None:
            for name in [n for n in state if n not in live_after[k]]:
                del state[name]
        yield Step(op, out, s)


def _live_after(ops) -> list[set[str]]:
    """Per op, the registers some later op reads before any op writes them again."""
    live: set[str] = set()
    out: list[set[str]] = [set()] * len(ops)
    for k in range(len(ops) - 1, -1, -1):
        out[k] = set(live)
        live.discard(ops[k].dst.name)
        live |= {r.name for r in ops[k].registers_read}
    return out


def _apply(op: Op, values: list[np.ndarray], dtype) -> np.ndarray:
    """bias + linear + products over the reads, each sum one 2-D matrix product over the
    B*T rows (a batched 3-D product gives the same numbers, and is far slower), or its
    elementwise equal where each output takes one term (_sum_terms)."""
    B, T = values[0].shape[:2] if values else (0, 0)
    width = op.dst.width
    offsets = np.cumsum([0] + [v.shape[2] for v in values])
    V = np.concatenate(values, axis=2)
    V2 = V.reshape(B * T, V.shape[2])
    obj = dtype == _OBJECT
    zero = 0 if obj else np.zeros((), dtype=dtype)
    out = np.full((B * T, width), zero, dtype=dtype) + _cast(op.bias, dtype)
    lin = op.linear
    if len(lin):
        def linear_matrix() -> np.ndarray:  # [width, reads]; add.at sums repeated terms
            M = np.zeros((width, V.shape[2]), dtype=_OBJECT if obj else np.float64)
            np.add.at(M, (lin.out, offsets[lin.read] + lin.comp), _cast(lin.coef, dtype))
            return M.T

        out = out + _sum_terms(V2, offsets[lin.read] + lin.comp, lin.out, lin.coef, width,
                               dtype, linear_matrix)
    pr = op.products
    if len(pr):
        a = V2[:, offsets[pr.read_a] + pr.comp_a]
        b = V2[:, offsets[pr.read_b] + pr.comp_b]

        def product_matrix() -> np.ndarray:  # [products, width]
            S = np.zeros((len(pr), width), dtype=_OBJECT if obj else np.float64)
            S[np.arange(len(pr)), pr.out] = _cast(pr.coef, dtype)
            return S

        out = out + _sum_terms(a * b, np.arange(len(pr)), pr.out, pr.coef, width, dtype,
                               product_matrix)
    return out.reshape(B, T, width)


def _sum_terms(X: np.ndarray, cols: np.ndarray, outs: np.ndarray, coef: np.ndarray, width: int,
               dtype, matrix) -> np.ndarray:
    """The sum over terms i of coef[i] X[:, cols[i]] into output outs[i], [N, width], with the
    numbers of X @ matrix() (the terms as a [k, width] matrix, built only where it is used).
    Where every output takes one term at most (a diagonal map, an elementwise product) and
    a row of X is finite, the matmul's entry is that one term rounded once (with or without
    FMA: the matrix's other entries add exact zeros), so the terms are multiplied elementwise
    there (an output -0 here may be +0 in the matmul; _apply adds it to a bias that is never
    -0, which gives the same). A row of X with a NaN is NaN at every output in the matmul
    (its zeros multiply the NaN too), and is set so; a row with an infinity and no NaN runs
    the matmul, whose zeros spread NaN (0 * inf): its entries are inf or NaN whatever the
    order of the sum. Object (sympy) runs and outputs with several terms run the matmul."""
    if X.dtype == _OBJECT or np.bincount(outs, minlength=1).max() > 1:
        return X @ matrix()
    out = np.zeros((X.shape[0], width), dtype=X.dtype)
    with np.errstate(invalid="ignore", over="ignore"):  # (the matmul's rows below warn not)
        out[:, outs] = X[:, cols] * _cast(coef, dtype)
    finite = np.isfinite(X)
    if not finite.all():
        nan = np.isnan(X).any(axis=1)
        out[nan] = np.nan
        inf = ~finite.all(axis=1) & ~nan
        if inf.any():
            out[inf] = X[inf] @ matrix()
    return out


def expr_value(e, state: dict[str, np.ndarray], roles, nan) -> np.ndarray:
    """The value [B, T, width] of an expression (lang/expr.Expr, not bound to a register)
    over the registers' current values `state` ([B, T, width] each, float or sympy), each
    read at its place as `value_at` reads it."""
    first = next(iter(state.values()))
    B, T, dtype = first.shape[0], first.shape[1], first.dtype
    out = np.zeros((B, T, e.width), dtype=dtype) + _cast(np.asarray(e.bias), dtype)
    for r, L in e.lin.items():
        v = value_at(state[r.register.name], r.at, roles, nan)
        out = out + np.tensordot(v, _cast(np.asarray(L), dtype), axes=([2], [1]))
    for (a, b), P in e.prod.items():
        va = value_at(state[a.register.name], a.at, roles, nan)
        vb = value_at(state[b.register.name], b.at, roles, nan)
        ab = va[..., :, None] * vb[..., None, :]  # [B, T, width a, width b]
        out = out + np.tensordot(ab, _cast(np.asarray(P), dtype), axes=([2, 3], [1, 2]))
    return out


def _cast(values: np.ndarray, dtype) -> np.ndarray:
    """Coefficients, biases or constants in the run's dtype. For an object (sympy) run, float
    entries become the exact rationals they equal and integers become sympy Integers."""
    if dtype != _OBJECT:
        return values.astype(dtype)
    import sympy

    out = np.empty(values.shape, dtype=object)
    for i, v in enumerate(values.flat):
        if isinstance(v, float | np.floating):
            v = sympy.Rational(float(v))
        elif isinstance(v, int | np.integer):
            v = sympy.Integer(int(v))
        out.flat[i] = v
    return out


def value_at(value: np.ndarray, at: Where, roles, nan) -> np.ndarray:
    """A value [B, T, width] as read at place `at` from each token: NaN (`nan`) where the
    place is undefined (a clamped Offset never is: it reads token max(t - k, 0)). roles:
    each token's role, for Mean."""
    T = value.shape[1]
    if isinstance(at, Here):
        return value
    out = np.full_like(value, nan)
    if isinstance(at, Offset):
        if at.k < T:
            out[:, at.k:] = value[:, :T - at.k]
        if at.clamp:  # token max(t - k, 0): token 0 at every t < k
            out[:, :min(at.k, T)] = value[:, :1]
        return out
    if isinstance(at, At):
        if at.index < T:
            out[:, at.index:] = value[:, at.index:at.index + 1]
        return out
    if isinstance(at, Mean):
        total = None
        count = 0
        for t in range(T):
            if roles[t] == at.role:
                total = value[:, t] if total is None else total + value[:, t]
                count += 1
            if count:
                out[:, t] = total / count
        return out
    raise TypeError(f"unknown place {at!r}")


def _nan_like(tokens: np.ndarray):
    if tokens.dtype == _OBJECT:
        import sympy

        return sympy.nan
    return np.nan


def abs_(a: np.ndarray) -> np.ndarray:
    """|a| for float or sympy object arrays."""
    if a.dtype == _OBJECT:
        import sympy

        return np.vectorize(sympy.Abs, otypes=[object])(a)
    return np.abs(a)
