"""What the benchmark asks of a method on one model, with the answers, from the ground truth and
the interpreter only (never from the model's weights).

For a compiled model and its program, `make_task` draws prompt pairs (A_i, B_i) and picks the
variables to study: stored register versions (rows of their own; fused values are left out)
computed by an op, that vary across prompts and whose exact interchange moves the prediction.
For each it records

    values_a, values_b    the variable's value under A and B (interpreter) [N, T, width]
    tokens                the tokens where it is defined and varies across prompts
    truth                 the (residual index, token) sites where the model holds it:
                          groundtruth's sites at those tokens
    exact_all, exact_at   the exact counterfactual metric (the sum of the predictions at the
                          output positions) of A with v set to B's value at every one of those
                          tokens / at one token t (`exact_at[t]`)

`base` is A's own metric. Prompts come in two halves: `fit` (methods may train on them) and
`test` (metrics are measured on them). The metric is raspicl.benchmark.subject.metric.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field

import numpy as np

from raspicl.counterfactual import override_trace, value_of
from raspicl.groundtruth import GroundTruth, Variable
from raspicl.prompts import Prompts, random_prompts

# a variable whose exact interchange moves the metric by less than this (relative to the
# metric's size) is causally inert on these prompts and is not studied
MIN_EFFECT = 1e-6
# a token where a variable's spread across prompts is below this is constant there
MIN_SPREAD = 1e-9


# The quantities the field asks about (which algorithm, where is w?), by register name: the
# weights, the inverse (regularised) second-moment matrix, and X^T y (or its running mean).
FOCUS = {"w": re.compile(r"(^|_)w($|_)(?!0)"), "A_inv": re.compile(r"A_inv|(^|_)P$"),
         "Xty": re.compile(r"(^|_)(b|xy)($|_)")}


def focus_role(register: str) -> str | None:
    """'w', 'A_inv' or 'Xty' for a register that holds that quantity (by name), else None."""
    for role, pattern in FOCUS.items():
        if pattern.search(register):
            return role
    return None


@dataclass
class Split:
    """Prompt pairs (A_i, B_i), with A's metric and every studied variable's answers."""

    a: Prompts
    b: Prompts
    base: np.ndarray  # [N]
    values_a: dict[str, np.ndarray] = field(default_factory=dict)  # [N, T, width]
    values_b: dict[str, np.ndarray] = field(default_factory=dict)
    exact_all: dict[str, np.ndarray] = field(default_factory=dict)  # [N]
    exact_at: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)  # t -> [N]


@dataclass
class VariableTask:
    """One studied variable: its ground truth, the tokens studied and the true sites."""

    var: Variable
    tokens: tuple[int, ...]
    truth: frozenset[tuple[int, int]]

    @property
    def name(self) -> str:
        return self.var.name


@dataclass
class Task:
    """A model's benchmark task (module doc)."""

    gt: GroundTruth
    program: object
    variables: list[VariableTask]
    fit: Split
    test: Split

    def sites(self, v: VariableTask) -> list[tuple[int, int]]:
        """The candidate sites for a variable: every residual index at its studied tokens."""
        return [(i, t) for i in range(self.gt.n_residuals) for t in v.tokens]


def _metric(output: np.ndarray) -> np.ndarray:
    return output.reshape(output.shape[0], -1).sum(-1)


def make_task(gt: GroundTruth, program, layout: dict, n_fit: int = 48, n_test: int = 32,
              seed: int = 0, max_variables: int | None = None) -> Task:
    """The task for a model (module doc): n_fit + n_test prompt pairs from `seed`, at most
    `max_variables` variables: the largest-effect version of each FOCUS role first, then one
    version per register, largest exact effect first."""
    d, n = program.d, program.n
    N = n_fit + n_test
    A = random_prompts(N, d, n, seed=seed)
    B = random_prompts(N, d, n, seed=seed + 1)
    ta, tb = A.tokens(), B.tokens()
    trace_a = override_trace(program, ta, {}, layout)
    trace_b = override_trace(program, tb, {}, layout)
    base = _metric(trace_a.output())
    scale = max(1.0, float(np.abs(base).mean()))
    chosen: list[tuple[float, VariableTask, dict]] = []
    for var in gt.variables:
        if not var.stored or var.op is None or var.width == 0:
            continue
        va, vb = value_of(layout, trace_a, var.name), value_of(layout, trace_b, var.name)
        both = np.concatenate([va, vb])
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN: undefined tokens
            spread = np.nanmax(both, axis=0) - np.nanmin(both, axis=0)  # [T, width]
        tokens = tuple(t for t in var.tokens
                       if np.isfinite(spread[t]).all() and spread[t].max() > MIN_SPREAD)
        if not tokens:
            continue
        new = np.full_like(vb, np.nan)
        new[:, list(tokens)] = vb[:, list(tokens)]
        cf = _metric(override_trace(program, ta, {var.name: new}, layout).output())
        effect = float(np.abs(cf - base).mean())
        if not effect > MIN_EFFECT * scale:
            continue
        at = {}
        for t in tokens:
            one = np.full_like(vb, np.nan)
            one[:, t] = vb[:, t]
            at[t] = _metric(override_trace(program, ta, {var.name: one}, layout).output())
        truth = frozenset((i, t) for i, t in var.sites() if t in tokens)
        chosen.append((effect, VariableTask(var, tokens, truth),
                       {"a": va, "b": vb, "all": cf, "at": at}))
    chosen.sort(key=lambda c: -c[0])
    picked = []
    for role in FOCUS:  # the largest-effect version of each focus role first
        hit = next(((vt, data) for _, vt, data in chosen if focus_role(vt.var.register) == role
                    and all(vt is not p for p, _ in picked)), None)
        if hit is not None:
            picked.append(hit)
    seen = {vt.var.register for vt, _ in picked}
    for _effect, vt, data in chosen:  # then one version per register, then the rest
        if vt.var.register not in seen:
            seen.add(vt.var.register)
            picked.append((vt, data))
    picked += [(vt, data) for _, vt, data in chosen if all(vt is not p for p, _ in picked)]
    if max_variables is not None:
        picked = picked[:max_variables]

    def split(lo: int, hi: int) -> Split:
        s = Split(_take(A, lo, hi), _take(B, lo, hi), base[lo:hi])
        for vt, data in picked:
            s.values_a[vt.name] = data["a"][lo:hi]
            s.values_b[vt.name] = data["b"][lo:hi]
            s.exact_all[vt.name] = data["all"][lo:hi]
            s.exact_at[vt.name] = {t: v[lo:hi] for t, v in data["at"].items()}
        return s

    return Task(gt, program, [vt for vt, _ in picked], split(0, n_fit), split(n_fit, N))


def _take(p: Prompts, lo: int, hi: int) -> Prompts:
    w = None if p.w is None else p.w[lo:hi]
    return Prompts(p.X[lo:hi], p.y[lo:hi], p.xq[lo:hi], w)
