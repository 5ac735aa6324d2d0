"""Calibration pass: the prompts a model must serve, and what the interpreter sees on them.

A compiled model serves a *domain* of prompts: a PromptDistribution (x scale, w scale tau,
noise sigma; the default serves x ~ N(0, 1.5^2 I) with noise up to 1) or the user's own
Prompts. A distribution is sampled at its four corners (x scale 1 or the domain's, noise 0 or
the domain's), so that the noiseless standard prompts and the widest noisy ones are both seen.

Calibration runs the float64 interpreter on those prompts, config.CALIBRATION_CHUNK prompts at
a time (semantics.stream_ops, which drops every register value no later op reads), and keeps
per op only running statistics, never the op's output over all prompts: memory is O(one chunk
of the live registers + ops * tokens), not O(ops * prompts * tokens * width). The statistics
are maxima, minima and counts, so they do not depend on the chunk size.

Sets: Calibration.prompts, .description (for the layout), .x_abs_max, .y_abs_max, and per op
(in program order) OpStats.abs_max, .finite and, for a div, .divisor_abs_min. bounds.py turns
them into each value's bound; lower.py into Value.defined and Instr.divisor_min/_tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raspicl.compiler.config import CALIBRATION_CHUNK, CompilerConfig
from raspicl.errors import CompileError
from raspicl.lang.program import Program
from raspicl.prompts import PromptDistribution, Prompts, check_tokens
from raspicl.semantics import stream_ops

Domain = PromptDistribution | Prompts


@dataclass
class OpStats:
    """Running statistics of one op's output over the calibration prompts.

    abs_max: the largest finite |entry| over prompts, tokens and components (0 if none);
    finite: [T] ints, per token the number of prompts on which every component is finite;
    divisor_abs_min: for a div, [T], per token the smallest finite |divisor| over the prompts
    (inf where none is finite); None for other ops.
    """

    abs_max: float
    finite: np.ndarray
    divisor_abs_min: np.ndarray | None = None

    def merge(self, other: OpStats) -> None:
        """Fold in the statistics of another chunk of prompts."""
        self.abs_max = max(self.abs_max, other.abs_max)
        self.finite = self.finite + other.finite
        if self.divisor_abs_min is not None:
            self.divisor_abs_min = np.minimum(self.divisor_abs_min, other.divisor_abs_min)


@dataclass(frozen=True)
class Calibration:
    """What calibration saw: the prompts, their JSON description, the inputs' largest finite
    |entry| and every op's OpStats (ops[k] for program.ops[k])."""

    prompts: Prompts
    description: dict
    x_abs_max: float
    y_abs_max: float
    ops: list[OpStats]

    @property
    def count(self) -> int:
        """The number of calibration prompts."""
        return self.prompts.batch

    def defined(self, op_index: int) -> np.ndarray:
        """Per token, whether op `op_index`'s value is defined (finite in every entry) on most
        calibration prompts. Undefinedness is structural (a read before the prompt starts, a
        division by an exact zero such as y at x tokens), so a majority decides."""
        return self.ops[op_index].finite / self.count > 0.5

    def divisor_min(self, op_index: int, tokens: list[int]) -> float:
        """The smallest finite |divisor| of div op `op_index` over `tokens` (inf if none)."""
        per_token = self.ops[op_index].divisor_abs_min
        if per_token is None:
            raise AssertionError(f"op {op_index} has no divisor")
        return float(per_token[tokens].min(initial=np.inf))


def calibration_prompts(program: Program, config: CompilerConfig,
                        domain: Domain | None) -> tuple[Prompts, dict]:
    """The prompts calibration runs on, and a JSON description of them for the layout."""
    domain = PromptDistribution() if domain is None else domain
    if isinstance(domain, Prompts):
        if domain.X.ndim != 3 or domain.X.shape[1:] != (program.n, program.d):
            raise CompileError(f"calibration prompts have X of shape {list(domain.X.shape)}; "
                               f"program '{program.name}' needs [batch, {program.n}, "
                               f"{program.d}]")
        tokens = domain.tokens()
        if not np.isfinite(tokens).all():
            raise CompileError("calibration prompts hold NaN or infinite entries")
        return domain, {"kind": "prompts", "count": domain.batch,
                        "x_abs_max": float(np.abs(tokens[:, :, 1:]).max(initial=0.0)),
                        "y_abs_max": float(np.abs(tokens[:, :, :1]).max(initial=0.0))}
    if not isinstance(domain, PromptDistribution):
        raise TypeError(f"domain must be a PromptDistribution or Prompts, got "
                        f"{type(domain).__name__}")
    corners = []
    for x_scale in sorted({1.0, float(domain.x_scale)}):
        for noise in sorted({0.0, float(domain.noise)}):
            corners.append(PromptDistribution(x_scale, domain.w_scale, noise))
    per = -(-config.calibration_prompts // len(corners))
    parts = [c.sample(per, program.d, program.n, config.calibration_seed + i)
             for i, c in enumerate(corners)]
    prompts = Prompts(*(np.concatenate([getattr(p, f) for p in parts])
                        for f in ("X", "y", "xq", "w")))
    return prompts, {"kind": "distribution", **domain.to_dict(), "count": prompts.batch,
                     "seed": config.calibration_seed,
                     "corners": [c.to_dict() for c in corners]}


def calibrate(program: Program, config: CompilerConfig, domain: Domain | None,
              chunk: int | None = None) -> Calibration:
    """Run the interpreter on the calibration prompts, `chunk` at a time (default
    config.CALIBRATION_CHUNK), keeping OpStats."""
    chunk = CALIBRATION_CHUNK if chunk is None else chunk
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    prompts, description = calibration_prompts(program, config, domain)
    tokens = prompts.tokens().astype(np.float64)
    check_tokens(tokens, program.format)
    ops: list[OpStats] | None = None
    for start in range(0, len(tokens), chunk):
        part = [_stats(step.value, step.divisor)
                for step in stream_ops(program, tokens[start:start + chunk], drop_dead=True)]
        if ops is None:
            ops = part
        else:
            for total, new in zip(ops, part, strict=True):
                total.merge(new)
    if ops is None:  # no prompts: nothing seen, nothing defined
        T = program.format.n_tokens
        ops = [OpStats(0.0, np.zeros(T, dtype=np.int64),
                       np.full(T, np.inf) if op.divisor is not None else None)
               for op in program.ops]
    return Calibration(prompts, description, abs_max(tokens[:, :, 1:]),
                       abs_max(tokens[:, :, :1]), ops)


def _stats(value: np.ndarray, divisor: np.ndarray | None) -> OpStats:
    """OpStats of one chunk: value [B, T, width], divisor [B, T, 1] or None."""
    finite = np.isfinite(value)
    stats = OpStats(abs_max(value, finite), finite.all(axis=2).sum(axis=0))
    if divisor is not None:
        s = np.abs(divisor)
        stats.divisor_abs_min = np.where(np.isfinite(s), s, np.inf).min(axis=(0, 2))
    return stats


def abs_max(a: np.ndarray, finite: np.ndarray | None = None) -> float:
    """The largest finite |entry| (0 if there is none); `finite` is np.isfinite(a) if known."""
    finite = np.isfinite(a) if finite is None else finite
    return float(np.abs(a[finite]).max(initial=0.0))
