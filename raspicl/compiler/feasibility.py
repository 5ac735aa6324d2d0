"""Compile-time feasibility: the finished model must keep its own contract on its domain.

After assembly the compiled model runs on the calibration prompts (its compact plan,
raspicl.compact, the pass CompiledModel runs by default) and the runtime monitor
(raspicl.monitor, streamed: no residual list is held) walks the pass. What it measures
re-tunes the constants that depend on what the model actually holds, including garbage at
tokens where a value is undefined:
- a neutral LayerNorm's eps, per block, to at least 2^(p+2) var bound_margin^2 (a power of 4,
  so that sqrt(eps) stays exact), up to MAX_NEUTRAL_EPS of the dtype;
- a division's anchor N, per block, so that the rest of the stream perturbs the quotient by
  Q / (4 N^2 s^2) <= machine epsilon, up to MAX_ANCHOR_GROWTH times the config's N, and under
  a target that reads through LayerNorm (gpt2) no further than `balanced_anchor`;
- a gate's bound, per select, to bound_margin times the largest |a - b| it must keep closed;
- with config.product_range (float32), a product's scales e, per op, raised until its largest
  |e t| reaches product_range (the bounds alone assume its operands peak together).
Then it compiles again, at most config.feasibility_passes times. Blocks that a shared loop
runs several times get the largest constant any of their runs needs. If the finished model
still refuses more than 1 - min_acceptance of the calibration prompts, the compile fails with
a CompileError that names the op, the quantity and its limit, and the remedies.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np
import torch

from raspicl.compact import CompactPlan
from raspicl.compiler.assemble import Tuning
from raspicl.compiler.config import MEASURE_CHUNK, MEASURE_MEMORY, CompilerConfig
from raspicl.compiler.gadgets.mlp import gadget_bound
from raspicl.compiler.lower import Lowered
from raspicl.compiler.schedule import Schedule
from raspicl.contract import (
    CLOSED_GATE,
    DIVISION_REST,
    DIVISOR_ERROR,
    NEUTRAL_VARIANCE,
    PREDICTION_BOUND,
    PRODUCT_RANGE,
    ContractReport,
    ContractStream,
    parse_instructions,
    walk_scratch_rows,
)
from raspicl.contract.residuals import walk_reads
from raspicl.errors import CompileError, ContractWarning
from raspicl.model import Transformer
from raspicl.prompts import Prompts
from raspicl.sparse_weights import SparseWeights

MAX_NEUTRAL_EPS = {"float64": 2.0**600, "float32": 2.0**100}
MAX_ANCHOR_GROWTH = 1e3
# The most a product's scales may grow beyond what its operands' bounds give (config
# product_range): a pair whose |t| stays far below the bounds on the calibration prompts
# (or is always 0) is not scaled for values it has never shown by more than this.
MAX_PRODUCT_GAIN = 8.0
# A product's scales are re-tuned only when that changes them by more than this factor (each
# re-tuning compiles and measures the model once more).
PRODUCT_GAIN_STEP = 1.05


@dataclass(frozen=True)
class Feasibility:
    """What the last calibration run of the model found."""

    report: ContractReport
    passes: int

    @property
    def acceptance(self) -> float:
        return float(self.report.accepted.mean()) if len(self.report.accepted) else 1.0


def measure_chunk(layout: dict, n_tokens: int, adjoint: str = "off") -> int:
    """Prompts in the first measuring pass: as many as keep what one chunk could hold within
    config.MEASURE_MEMORY, at most config.MEASURE_CHUNK and at least 1. It counts, per
    prompt and token, the rows of every value and of every landing, twice (the walk keeps an
    error bound beside each value), as if the streamed monitor held them all at once, and
    what the pass needs beside them (`_beside`): all float64. The monitor holds
    far less (raspicl.monitor.ContractStream drops what no later instruction reads), so the
    later chunks are sized by what the first one measured (`next_chunk`). With the adjoint
    the walk also keeps its tape (raspicl.contract.adjoint), every node's charge to the end:
    measured at 1.2-1.9 rows per row of every instruction's result and reads (sgd, ridge,
    sherman_morrison, batch_gd, both targets), counted here as 2."""
    mon = layout["monitor"]
    rows = sum(len(v["rows"]) for v in mon["values"].values())
    _, landings, _, _ = walk_reads(layout)
    rows += sum(len(r) for group in landings.values() for r in group)
    per_prompt = 2 * rows * n_tokens * 8 + _beside(layout, n_tokens)
    if adjoint != "off":
        per_prompt += 2 * _tape_rows(layout) * n_tokens * 8
    return _prompts_within(per_prompt)


def _tape_rows(layout: dict) -> int:
    """Per token, the rows of every instruction's result and of the values it reads."""
    mon = layout["monitor"]
    width = {label: len(v["rows"]) for label, v in mon["values"].items()}
    return sum(len(rec["bias"]) + sum(width.get(r["value"], len(rec["bias"]))
                                      for r in rec["reads"]) for rec in mon["instructions"])


def _prompts_within(per_prompt: float) -> int:
    """How many prompts of `per_prompt` bytes config.MEASURE_MEMORY holds, between 1 and
    config.MEASURE_CHUNK."""
    return int(max(1, min(MEASURE_CHUNK, MEASURE_MEMORY // max(per_prompt, 1))))


def _beside(layout: dict, n_tokens: int) -> int:
    """Bytes per prompt a measuring pass needs beside what the monitor holds: the forward
    pass's few residuals of d_model rows and one instruction's walk in flight
    (monitor.walk_scratch_rows), float64."""
    return (4 * layout["architecture"]["d_model"] + walk_scratch_rows(layout)) * n_tokens * 8


def next_chunk(layout: dict, n_tokens: int, peak_bytes: int, prompts: int) -> int:
    """Prompts per measuring pass after a first pass of `prompts` prompts whose monitor held
    at most `peak_bytes` at once (ContractStream.peak_bytes): as many as keep that, and what
    the pass needs beside it (`_beside`), within config.MEASURE_MEMORY, between 1 and
    config.MEASURE_CHUNK."""
    return _prompts_within(peak_bytes / max(prompts, 1) + _beside(layout, n_tokens))


def measure(model: Transformer | SparseWeights, layout: dict, prompts, dtype: str,
            chunk: int | None = None, compact: bool = True,
            plan: CompactPlan | None = None, adjoint: str = "off") -> ContractReport:
    """The monitor's walk over the model's forward pass on `prompts`, in `dtype`, `chunk`
    prompts at a time (default: measure_chunk for the first chunk, next_chunk after), each
    residual fed to the streamed monitor as the pass makes it (no residual list is held). The
    report does not depend on the chunk: the monitor judges each prompt on its own and the
    merged needs are maxima.

    compact: run the compact plan (raspicl.compact), the pass CompiledModel runs by default;
    it differs from the dense pass only in the order of floating-point sums (a relative 1e-11
    in the measured needs of the bundled programs, far inside the bound_margin^2 the re-tuned
    constants keep above them) and costs a fraction of it.
    model: a Transformer, or the compiler's SparseWeights (their compact plan is made from
    their entries, and the dense model only for the dense pass); plan: the compact plan of
    `model` in `dtype`, where the caller has made it already; adjoint: the monitor's
    (raspicl.monitor.check_contract). Tuning needs only the preconditions' measures, which
    the forward walk gives: 'off' by default, and `tighten` re-walks with the adjoint only
    the prompts the forward bound alone refused."""
    tdtype = {"float64": torch.float64, "float32": torch.float32}[dtype]
    tokens = torch.as_tensor(prompts.tokens(), dtype=tdtype)
    # as in CompiledModel: a non-finite token runs the dense pass, which spreads it as NaN
    compact = compact and bool(torch.isfinite(tokens).all())
    if isinstance(model, SparseWeights):
        weights = model.to(tdtype)
        model = weights.shell() if compact else weights.transformer()
        if compact and plan is None:
            plan = weights.plan(model)
    elif model.dtype != tdtype:
        model = _converted(model, tdtype)
    if not (compact and CompactPlan.supports(model)):
        plan = None
    elif plan is None:
        plan = CompactPlan(model)
    size = chunk or measure_chunk(layout, tokens.shape[1], adjoint)
    parsed = parse_instructions(layout)  # parsed once for every chunk
    parts = []
    start = 0
    while start < len(tokens):
        monitor = ContractStream(layout, dtype, parsed, adjoint=adjoint)
        part = tokens[start:start + size]
        with torch.no_grad():
            for r in model.stream(part, plan=plan):
                monitor.feed(r.double().numpy())
        parts.append((start, monitor.report()))
        start += len(part)
        if chunk is None:
            size = next_chunk(layout, tokens.shape[1], monitor.peak_bytes, len(part))
    return _merge(parts)


def tighten(report: ContractReport, model: Transformer | SparseWeights, layout: dict, prompts,
            dtype: str, plan: CompactPlan | None = None) -> ContractReport:
    """`report` (measured with the forward enclosure alone) with the prompts it refused for
    their error bound alone, or for a divisor's error bound (DIVISOR_ERROR, which the adjoint
    bound of the divisor may lift), measured again with the adjoint bound
    (raspicl.contract.adjoint): what the runtime monitor, which tightens where needed, reports
    on them. The other prompts keep their report: the adjoint changes nothing where the
    forward bound is within the tolerance or another precondition fails."""
    hard = {f.prompt for f in report.findings
            if f.quantity not in (PREDICTION_BOUND, DIVISOR_ERROR)}
    again = np.array([b for b in np.flatnonzero(~report.accepted) if b not in hard],
                     dtype=np.int64)
    if not len(again):
        return report
    sub = Prompts(prompts.X[again], prompts.y[again], prompts.xq[again],
                  None if prompts.w is None else prompts.w[again])
    new = measure(model, layout, sub, dtype, plan=plan, adjoint="needed")
    accepted, bound, rel = report.accepted.copy(), report.bound.copy(), \
        report.relative_bound.copy()
    accepted[again], bound[again], rel[again] = new.accepted, new.bound, new.relative_bound
    redone = set(again.tolist())
    findings = [f for f in report.findings if f.prompt not in redone]
    findings += [replace(f, prompt=int(again[f.prompt])) for f in new.findings]
    findings.sort(key=lambda f: f.prompt)
    return ContractReport(bound, rel, accepted, findings, report.needs)


def _converted(model: Transformer, dtype: torch.dtype) -> Transformer:
    """A copy of `model` in `dtype`, converting each weight once (a deepcopy then .to would
    first copy every float64 weight)."""
    with torch.device("meta"):
        copy = Transformer(model.cfg)
    copy.load_state_dict({k: v.to(dtype) for k, v in model.state_dict().items()}, assign=True)
    return copy.requires_grad_(False)


def _merge(parts: list[tuple[int, ContractReport]]) -> ContractReport:
    """One report for the chunks (each with its first prompt's index)."""
    needs: dict = {}
    findings = []
    for start, rep in parts:
        for key, value in rep.needs.items():
            needs[key] = max(needs.get(key, 0.0), value)
        findings += [replace(f, prompt=f.prompt + start) for f in rep.findings]
    return ContractReport(np.concatenate([r.bound for _, r in parts]),
                          np.concatenate([r.relative_bound for _, r in parts]),
                          np.concatenate([r.accepted for _, r in parts]), findings, needs)


def retune(report: ContractReport, low: Lowered, sched: Schedule, tuning: Tuning,
           config: CompilerConfig) -> Tuning | None:
    """The constants the measured needs call for, or None if the current ones suffice."""
    dtype = config.target_dtype
    m2 = config.bound_margin ** 2
    u = float(np.finfo(dtype).eps)
    by_op = {ins.op.index: ins for ins in low.instrs}
    eps = dict(tuning.neutral_eps)
    anchor = dict(tuning.anchor)
    gate_floor: dict[int, float] = {}
    gain: dict[int, float] = {}
    changed = False
    for (op, quantity), need in report.needs.items():
        ins = by_op[op]
        if quantity == NEUTRAL_VARIANCE:
            have = tuning.eps_of(ins.block, config)
            if need * m2 > have:
                want = min(_power_of_4_above(need * m2), MAX_NEUTRAL_EPS[dtype])
                if want > have:
                    eps[ins.block] = max(eps.get(ins.block, 0.0), want)
                    changed = True
        elif quantity == DIVISION_REST:
            have = tuning.anchor_of(ins.block, config)
            want = min(math.sqrt(need / (4 * u)) * config.bound_margin,
                       MAX_ANCHOR_GROWTH * config.division_anchor)
            if sched.arch.reads_through_layernorm:
                want = min(want, balanced_anchor(need, ins.divisor.bound,
                                                 config.ln_restore_anchor or config.ln_anchor,
                                                 config.bound_margin))
            if np.isfinite(want) and want > have * 1.0001:
                anchor[ins.block] = max(anchor.get(ins.block, 0.0), want)
                changed = True
        elif quantity == PRODUCT_RANGE and config.product_range is not None:
            if np.isfinite(need):
                want = ins.product_gain * config.product_range / max(need, 1e-300)
                gain[op] = min(max(want, ins.product_gain), MAX_PRODUCT_GAIN)
        elif quantity == CLOSED_GATE:
            want = need * config.bound_margin
            if np.isfinite(want) and want > ins.gate_floor and want > _gate_bound(ins):
                gate_floor[ins.op.index] = want
                changed = True
    gain = _twin_gains(low, gain)
    if any(g > by_op[op].product_gain * PRODUCT_GAIN_STEP for op, g in gain.items()):
        changed = True
    if not changed:
        return None
    for op, floor in gate_floor.items():
        by_op[op].gate_floor = floor
    for op, g in gain.items():
        by_op[op].product_gain = g
    _unify_twins(low, sched, eps, anchor)
    return Tuning(eps, anchor)


def _twin_gains(low: Lowered, gain: dict[int, float]) -> dict[int, float]:
    """The product gains `gain` asks for, one per group of twins (the iterations of a loop:
    their weights must agree): the smallest any of them asks for (its largest |e t| at the
    target, the others' below it); a twin that asks for none keeps its own."""
    groups: dict[int, list] = {}
    for ins in low.instrs:
        twin = ins.dst
        while twin.template is not None:
            twin = twin.template
        groups.setdefault(id(twin), []).append(ins)
    out = {}
    for group in groups.values():
        wanted = [gain.get(ins.op.index, ins.product_gain) for ins in group]
        if any(ins.op.index in gain for ins in group):
            for ins in group:
                out[ins.op.index] = min(wanted)
    return out


def balanced_anchor(need: float, divisor_bound: float, restore: float,
                    margin: float) -> float:
    """The division anchor N of a target that reads through LayerNorm (gpt2) past which a
    larger one costs more than it gains. The quotient's relative error is Q / (4 N^2 s^2)
    (`need` = the largest Q / s^2 measured); but the attention after the division reads every
    row, and clears the anchors, through an ln1 that also sees the anchors +-N s beside the
    restored constant ones +-N_r (`restore`), i.e. times ratio = 1 / sqrt(1 + (N s / N_r)^2 +
    ...), off by (N s)^2 / (2 N_r^2) at |s| = the divisor's bound. The two are equal, at
    the margined extremes (need * margin^2, the bound), for
    N^4 = need margin^2 N_r^2 / (2 bound^2); both are then sqrt(need / 8) margin bound / N_r.
    In float32 the first rule alone (Q / (4 N^2 s^2) <= u / margin^2) drove N to 6e5 in ridge
    d = 8 n = 8 (N s up to N_r / 80), and the reads after a division at n = 16 were off by up
    to 3e-4 per step (docs/compiler.md, "float32"). inf where the need or the bound is not
    positive and finite."""
    if not (np.isfinite(need) and need > 0 and np.isfinite(divisor_bound)
            and divisor_bound > 0):
        return math.inf
    return (need * margin * margin / 2.0) ** 0.25 * math.sqrt(restore / divisor_bound)


def _gate_bound(ins) -> float:
    """The smallest gate bound the compiler would build the select's gates for without a
    floor (the interval over its operands' bounds, as gadget_bound builds it: a gate whose
    operands were 0 on every calibration prompt is built for ZERO_BOUND): a floor below it
    changes nothing. (Taking such a gate as built for 0 would let a floor of the model's
    rounding noise, 1e-13, replace the ZERO_BOUND it was built for.)"""
    bounds = [v.bound for v, _ in ins.reads]
    per_out: dict[int, float] = {}
    for o, c, r, _ in ins.gated:
        per_out[o] = per_out.get(o, 0.0) + abs(c) * bounds[r]
    return min([gadget_bound(b) for b in per_out.values()] or [0.0])


def _unify_twins(low: Lowered, sched: Schedule, eps: dict, anchor: dict) -> None:
    """Runs of one shared block, and twin selects of a shared loop, get the largest constant."""
    for loop in sched.loops:
        for j in range(loop.length):
            runs = [start + j for start in loop.starts]
            for table in (eps, anchor):
                values = [table[r] for r in runs if r in table]
                if values:
                    for r in runs:
                        table[r] = max(values)
    root: dict[int, list] = {}
    for ins in low.instrs:
        twin = ins.dst
        while twin.template is not None:
            twin = twin.template
        root.setdefault(id(twin), []).append(ins)
    for group in root.values():
        floor = max(ins.gate_floor for ins in group)
        for ins in group:
            ins.gate_floor = floor


def _power_of_4_above(x: float) -> float:
    """The smallest 4^k >= x (k >= 0)."""
    if not np.isfinite(x):
        return math.inf
    k = max(0, math.ceil(math.log2(max(x, 1.0)) / 2))
    return 4.0 ** k if k < 512 else math.inf


def require_acceptance(feas: Feasibility, program_name: str, config: CompilerConfig) -> None:
    """CompileError if a gadget precondition fails on more than 1 - min_acceptance of the
    calibration prompts (the model cannot work on its own domain); a ContractWarning if only
    the error bound is over the tolerance there (the model works, and refuses what it cannot
    vouch for)."""
    report = feas.report
    n = len(report.accepted)
    if not n:
        return
    hard = [f for f in report.findings if f.quantity != PREDICTION_BOUND]
    hard_rate = len({f.prompt for f in hard}) / n
    if hard_rate <= 1 - config.min_acceptance and feas.acceptance >= config.min_acceptance:
        return
    pool = hard if hard_rate > 1 - config.min_acceptance else report.findings
    kinds = Counter((f.op, f.quantity) for f in pool)
    (op, quantity), count = kinds.most_common(1)[0]
    example = next(f for f in pool if (f.op, f.quantity) == (op, quantity))
    what = (f"the compiled model ({config.target_dtype}, tolerance "
            f"{config.contract_tolerance:g}) accepts {feas.acceptance:.1%} of {n} calibration "
            f"prompts from its own domain (at least {config.min_acceptance:.0%} wanted) after "
            f"{feas.passes} tuning passes; most common finding ({count} prompts): "
            f"{example.message}")
    remedies = ("compile for float64, allow a larger error (CompilerConfig(tolerance=...)), "
                "serve a narrower domain (compile_program(..., domain=PromptDistribution(...))"
                "), or rescale the program's values (e.g. a larger regulariser)")
    if pool is hard:
        raise CompileError(f"program '{program_name}' cannot be compiled to work on its "
                           f"domain: {what}. Remedies: {remedies}")
    warnings.warn(f"program '{program_name}': {what}. It refuses those prompts at run time; "
                  f"to accept more: {remedies}", ContractWarning, stacklevel=3)


__all__ = ["Feasibility", "measure", "require_acceptance", "retune", "tighten"]
