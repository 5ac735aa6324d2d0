"""The semantics of a program's ops, batched over prompts: `stream_ops` runs them in order.

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

`stream_ops` yields each op's result as it goes and can forget a register as soon as no later
op reads it, which is how calibration (compiler/calibrate.py) runs in memory that does not grow
with the number of ops; raspicl.interpret's `interpret` and `run_ops` keep every result (a
Trace).

Why a module of its own, below the language's program and scan modules and the interpreter:
the language's scan (lang/scan.py) runs its step on token 0 exactly to choose its form, and
the interpreter imports the language (Program, and Prompts, whose PromptFormat is the
language's). This module reads a program only through what it is given (its ops, constants,
format and is_symbolic(); raspicl.lang.ops and raspicl.lang.reads for the ops' parts) and
imports neither raspicl.lang.program nor the interpreter, so both can import it.

Accuracy (float64). Every sum the semantics forms is within about one rounding of its exact
value over the float64 values it reads (raspicl.accurate, Ogita, Rump and Oishi's Dot2 run
on all rows at once): with u = 2^-53,
- an op's bias + sum c_i v_i + sum c_j a_j b_j at each output (n terms t, bias counted):
  within u |S| + 10 n^2 u^2 sum |t| of the exact S; for a div, the quotient S / |s| within
  u (1 + 2u) |S / s| + 10 n^2 u^2 sum |t| / |s|;
- a Mean read, the mean of the k values at or before the token: within
  u (1 + 2u) |mean| + 10 k^2 u^2 sum |v| / k;
- a move, an offset read, a select: exact; an op whose every output is one term rounded
  once (c v, or a product times a power of two) and no bias: correctly rounded.
So a sum that cancels (y = [2^28, t, ..., t, -2^28] in a mean, a residual wT x - y) keeps its
small result, where a running float64 sum returned 0. Rows (tokens) with a NaN or infinite
operand keep the plain sums' semantics (a linear map's NaN spreads to every output, as a
matrix product spreads it), as do operands beyond 2^995 (raspicl.accurate.SPLIT_LIMIT);
the bounds hold barring overflow, and a product's error below 2^-1022 may be lost to
underflow (2^-1074 at most per term). It costs calibration about 2-3x the plain matrix
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from raspicl.accurate import (
    SPLIT_LIMIT,
    cumulative_sum,
    divide,
    group_sum,
    split,
    split_prod,
)
from raspicl.lang.ops import Op
from raspicl.lang.reads import At, Here, Mean, Offset, Where

_OBJECT = np.dtype(object)


@dataclass(frozen=True)
class Step:
    """One op's result as `stream_ops` yields it.

    value: what the op wrote, [B, T, width]; divisor: for a div, the divisor register's value
    the op divided by (before |.|), [B, T, 1]; None otherwise.
    """

    op: Op
    value: np.ndarray
    divisor: np.ndarray | None


def stream_ops(program, tokens: np.ndarray,
               state: dict[str, np.ndarray] | None = None,
               drop_dead: bool = False, ops: list[Op] | None = None) -> Iterator[Step]:
    """Run the ops in program order, yielding each op's result as it is computed.

    program: a Program (raspicl.lang.program; unannotated because this module does not import
    it, module doc), of which its ops, constants, format and is_symbolic() are read.
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
        s = state[op.divisor.register.name] if op.divisor is not None else None
        if op.mask is not None:  # select
            out = np.where(op.mask[None, :T, None], values[0], values[1])
            if s is not None:
                out = out / abs_(s)
        else:
            out = _apply(op, values, dtype, s)
            if op.function is not None:  # apply: f of the argument bias + linear
                out = op.function.evaluate(out)
        del values
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


def _apply(op: Op, values: list[np.ndarray], dtype, divisor: np.ndarray | None = None
           ) -> np.ndarray:
    """bias + linear + products over the reads (divided by |divisor| for a div), [B, T, width].

    float64: an op whose every output is one term rounded once (one coefficient times a
    value, or a product scaled by a power of two, with no bias beside it) is computed as it
    stands (_matmul_terms' elementwise path); any other sum, and a division, to within one
    rounding of its exact value (_accurate_terms, raspicl.accurate), except at the rows
    (tokens) where an operand or a product is not finite: those keep the plain sums'
    semantics (NaN or infinity spread to every output as a matrix product spreads them).
    Object (sympy) runs sum exactly, as matrix products."""
    B, T = values[0].shape[:2] if values else (0, 0)
    width = op.dst.width
    offsets = np.cumsum([0] + [v.shape[2] for v in values])
    V = np.concatenate(values, axis=2)
    V2 = V.reshape(B * T, V.shape[2])
    if dtype == _OBJECT or (divisor is None and _plan(op, offsets).single):
        out = _matmul_terms(op, V2, offsets, width, dtype)
        if divisor is not None:
            out = out / abs_(divisor).reshape(B * T, 1)
        return out.reshape(B, T, width)
    hi, lo, plain = _accurate_terms(op, V2, offsets, width)
    if divisor is None:
        out = hi
    else:
        d = np.broadcast_to(np.abs(divisor).reshape(B * T, 1), hi.shape)
        out = divide(hi, lo, d)
    if plain is not None:  # rows with a non-finite operand or product: the plain sums
        rows, sums = plain
        out[rows] = sums if divisor is None else sums / d[rows]
    return out.reshape(B, T, width)


@dataclass(frozen=True)
class _TermPlan:
    """How _group_sums lays out an op's terms: each output's terms one above the other,
    padded with terms that read a zero operand (a row appended) with coefficient 0, so that
    every sum is over axis 0 of a [c, width, rows] array.

    lin_cols, lin_coef [c_lin, width]: the linear terms' operand columns and coefficients;
    pr_a, pr_b, pr_coef [c_pr, width]: the product terms' (pr_a_terms, pr_b_terms: their
    operand columns in term order, pr_used: every column a product reads); bias [width];
    lin_exact, pr_exact: every coefficient is 0 or a power of two (multiplying by it is
    exact: no split_prod); pr_unit: every product's coefficient is 1; lin_split, pr_split:
    the coefficients split for split_prod; padded: some output has fewer terms than another
    (the zero operand is needed). single: every output is one term rounded once with no bias
    beside it (a coefficient times a value, or a product times a power of two), so the plain
    sum is correctly rounded already."""

    lin_cols: np.ndarray
    lin_coef: np.ndarray
    pr_a: np.ndarray
    pr_b: np.ndarray
    pr_coef: np.ndarray
    bias: np.ndarray
    lin_exact: bool
    pr_exact: bool
    lin_split: tuple[np.ndarray, np.ndarray]
    pr_split: tuple[np.ndarray, np.ndarray]
    single: bool
    pr_a_terms: np.ndarray
    pr_b_terms: np.ndarray
    pr_used: np.ndarray
    pr_unit: bool
    padded: bool


_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _plan(op: Op, offsets: np.ndarray) -> _TermPlan:
    """The op's _TermPlan (made once per op: its reads' widths are the op's own)."""
    plan = _PLANS.get(op)
    if plan is None:
        plan = _PLANS[op] = _make_plan(op, offsets)
    return plan


def _padded(outs: np.ndarray, width: int, columns: list[np.ndarray], pad: list[float]
            ) -> list[np.ndarray]:
    """Each of `columns` (one entry per term) laid out [c, width]: column o holds output o's
    terms in their order, then `pad` (one value per array) up to c, the most terms of any."""
    outs = np.asarray(outs, dtype=np.int64)
    c = int(np.bincount(outs, minlength=width).max(initial=0))
    order = np.argsort(outs, kind="stable")
    slot = np.arange(len(outs)) - np.searchsorted(outs[order], outs[order])
    out = []
    for values, fill in zip(columns, pad, strict=True):
        a = np.full((c, width), fill, dtype=np.asarray(values).dtype)
        a[slot, outs[order]] = np.asarray(values)[order]
        out.append(a)
    return out


def _make_plan(op: Op, offsets: np.ndarray) -> _TermPlan:
    lin, pr, width = op.linear, op.products, op.dst.width
    bias = np.asarray(op.bias, dtype=np.float64)
    zero = int(offsets[-1])  # the zero column appended to the operands
    lin_cols, lin_coef = _padded(lin.out, width, [offsets[lin.read] + lin.comp,
                                                  np.asarray(lin.coef, np.float64)], [zero, 0.0])
    pr_a, pr_b, pr_coef = _padded(pr.out, width, [offsets[pr.read_a] + pr.comp_a,
                                                  offsets[pr.read_b] + pr.comp_b,
                                                  np.asarray(pr.coef, np.float64)],
                                  [zero, zero, 0.0])
    terms = np.bincount(np.concatenate([lin.out, pr.out]).astype(np.int64), minlength=width)
    pr_exact = all(c == 0.0 or _power_of_two(c) for c in pr_coef.ravel())
    single = bool(terms.max(initial=0) <= 1 and pr_exact and not (terms[bias != 0] > 0).any())
    a_terms, b_terms = offsets[pr.read_a] + pr.comp_a, offsets[pr.read_b] + pr.comp_b
    return _TermPlan(lin_cols, lin_coef, pr_a, pr_b, pr_coef, bias,
                     all(c == 0.0 or _power_of_two(c) for c in lin_coef.ravel()), pr_exact,
                     split(lin_coef), split(pr_coef), single, a_terms, b_terms,
                     np.unique(np.concatenate([a_terms, b_terms])).astype(np.int64),
                     bool(np.all(np.asarray(pr.coef) == 1.0)),
                     bool((lin_cols == zero).any() or (pr_a == zero).any()))


def _power_of_two(c: float) -> bool:
    """c = +-2^k: multiplying by it is exact (barring overflow and underflow)."""
    return bool(np.isfinite(c) and c != 0.0 and math.frexp(abs(c))[0] == 0.5)


def _accurate_terms(op: Op, V2: np.ndarray, offsets: np.ndarray, width: int):
    """(hi, lo, plain): bias + linear + products at every row, hi within
    u |exact| + 10 n^2 u^2 sum |terms| of the exact value and hi + lo within the second
    term (raspicl.accurate.group_sum; n the output's terms); plain: None, or (rows, their plain
    sums) for the rows where a matrix product would spread a NaN or infinity to every output
    (an operand of a linear term, or of a product, or a product, not finite), which keep the
    plain sums' semantics, and the rows with an operand beyond SPLIT_LIMIT (2^995), where the
    products' errors cannot be split off."""
    plan = _plan(op, offsets)
    N = V2.shape[0]
    used = V2 if len(op.linear) else V2[:, plan.pr_used]
    with np.errstate(invalid="ignore"):
        top = np.abs(used).max(axis=1, initial=0.0)  # NaN where a used operand is NaN
    fits = top <= SPLIT_LIMIT
    if len(op.products):  # a product of finite operands may overflow: check where it can
        risky = np.flatnonzero(fits & (top * top >= OVERFLOW_SQUARE))
        fits[risky] = _products_finite(plan, V2[risky])
    if fits.all():
        return *_group_sums(op, plan, V2), None
    hi, lo = np.empty((N, width)), np.empty((N, width))
    if fits.any():
        hi[fits], lo[fits] = _group_sums(op, plan, V2[fits])
    rows = np.flatnonzero(~fits)
    return hi, lo, (rows, _matmul_terms(op, V2[rows], offsets, width, np.dtype(np.float64)))


# top^2 at or above this may overflow a product of two operands within top (finite below)
OVERFLOW_SQUARE = float(np.finfo(np.float64).max) / 2.0


def _products_finite(plan: _TermPlan, V2: np.ndarray) -> np.ndarray:
    """Per row of V2 (finite operands), whether every product of the op is finite."""
    with np.errstate(over="ignore", invalid="ignore"):
        a, b = V2[:, plan.pr_a_terms], V2[:, plan.pr_b_terms]
        return np.isfinite(a * b).all(axis=1)


def _group_sums(op: Op, plan: _TermPlan, V2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(hi, lo) [N, width] of bias + linear + products over V2 [N, components] (finite
    operands within SPLIT_LIMIT, finite products), by raspicl.accurate.group_sum. The terms
    are laid out [c, width, N] (operands gathered as rows of V2's transpose, the fast axis
    to gather along), each operand split once (raspicl.accurate.split_prod); where some
    output has fewer terms than another, the padding reads a zero row appended."""
    N, width = V2.shape[0], op.dst.width
    VT = np.empty((V2.shape[1] + plan.padded, N))
    VT[:V2.shape[1]] = V2.T
    if plan.padded:
        VT[-1] = 0.0
    hi_t, lo_t = split(VT)
    ps, es = [], []
    if len(op.linear):
        cols, coef = plan.lin_cols, plan.lin_coef[:, :, None]
        X = VT[cols]
        if plan.lin_exact:
            ps.append(X * coef)
            es.append(None)
        else:
            split_coef = tuple(h[:, :, None] for h in plan.lin_split)
            p, e = split_prod(X, (hi_t[cols], lo_t[cols]), coef, split_coef)
            ps.append(p)
            es.append(e)
    if len(op.products):
        a, b, coef = plan.pr_a, plan.pr_b, plan.pr_coef[:, :, None]
        p, e = split_prod(VT[a], (hi_t[a], lo_t[a]), VT[b], (hi_t[b], lo_t[b]))
        if plan.pr_unit:
            pass
        elif plan.pr_exact:
            p, e = p * coef, e * coef
        else:  # c (a b) = c p + c e: c p split again, c e rounded at third order
            e = e * coef
            p, e2 = split_prod(p, split(p), coef, tuple(h[:, :, None] for h in plan.pr_split))
            e += e2
        ps.append(p)
        es.append(e)
    if plan.bias.any():
        ps.append(np.broadcast_to(plan.bias[None, :, None], (1, width, N)))
        es.append(None)
    p = np.concatenate(ps, axis=0) if len(ps) > 1 else ps[0]
    if all(e is None for e in es):
        hi, lo = group_sum(p)
    else:
        es = [np.zeros_like(q) if e is None else e for q, e in zip(ps, es, strict=True)]
        hi, lo = group_sum(p, np.concatenate(es, axis=0) if len(es) > 1 else es[0])
    return hi.T, lo.T


def _matmul_terms(op: Op, V2: np.ndarray, offsets: np.ndarray, width: int, dtype
                  ) -> np.ndarray:
    """bias + linear + products at every row of V2 [N, components], each sum one 2-D matrix
    product over the rows (a batched 3-D product gives the same numbers, and is far slower),
    or its elementwise equal where each output takes one term (_sum_terms): exact for object
    (sympy) runs; for float64, the plain sums (what rows with a non-finite operand keep)."""
    obj = dtype == _OBJECT
    zero = 0 if obj else np.zeros((), dtype=dtype)
    out = np.full((V2.shape[0], width), zero, dtype=dtype) + _cast(op.bias, dtype)
    lin = op.linear
    if len(lin):
        def linear_matrix() -> np.ndarray:  # [width, reads]; add.at sums repeated terms
            M = np.zeros((width, V2.shape[1]), dtype=_OBJECT if obj else np.float64)
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
    return out


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
        if value.dtype != _OBJECT:
            return _mean_float(value, at.role, roles, out)
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


def _mean_float(value: np.ndarray, role: str, roles, out: np.ndarray) -> np.ndarray:
    """The Mean read of a float64 value [B, T, width] over the tokens of `role` at or before
    each token (`out` NaN where there is none yet), every prefix sum and its division by the
    count within about one rounding of the exact mean (raspicl.accurate.cumulative_sum,
    divide). A NaN or infinity spreads to the later means as in a running sum."""
    idx = np.flatnonzero(np.asarray(roles)[:value.shape[1]] == role)
    if not len(idx):
        return out
    hi, lo = cumulative_sum(value[:, idx])
    counts = np.arange(1, len(idx) + 1, dtype=np.float64)[None, :, None]
    means = divide(hi, lo, np.broadcast_to(counts, hi.shape))
    seen = np.cumsum(np.isin(np.arange(value.shape[1]), idx))  # role tokens at or before t
    at = np.flatnonzero(seen > 0)
    out[:, at] = means[:, seen[at] - 1]
    return out


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
