"""Calibration: the prompts a model must serve, and the bounds the gadgets are scaled by.

A compiled model serves a *domain* of prompts: a PromptDistribution (x scale, w scale tau,
noise sigma; the default serves x ~ N(0, 1.5^2 I) with noise up to 1) or the user's own
Prompts. Calibration runs the float64 interpreter on prompts drawn from the domain and takes,
for every value, its largest |entry| times `bound_margin`. A distribution is sampled at its
four corners (x scale 1 or the domain's, noise 0 or the domain's), so that the noiseless
standard prompts and the widest noisy ones are both seen.

Calibration alone can be blind: a value that cancels on every calibration prompt (a residual
y1 x2 - y2 x1 is exactly 0 on noiseless d = 1 prompts) would get a bound of rounding size and a
product gadget scaled for that. So every value's bound is checked against its *interval
bound*, the largest |value| its operands' bounds allow (|bias| + sum |c| B + sum |c| B_a B_b,
over the smallest divisor): where calibration saw less than `config.interval_fallback` of it,
the value is taken to cancel on the calibration distribution only and gets the interval bound.

These bounds choose the gadgets' scales; they are not what a model vouches for. At run time the
monitor (raspicl.monitor) checks every gadget's precondition at the magnitudes actually present
and bounds every prediction's error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raspicl.compiler.config import CompilerConfig
from raspicl.errors import CompileError
from raspicl.interpret import Trace, interpret
from raspicl.lang.program import Program
from raspicl.prompts import PromptDistribution, Prompts

Domain = PromptDistribution | Prompts


@dataclass(frozen=True)
class Calibration:
    """The interpreter's trace on the calibration prompts, and what they were."""

    trace: Trace
    prompts: Prompts
    description: dict

    def defined(self, values: np.ndarray) -> np.ndarray:
        """Per token, whether a value [B, T, width] is defined (finite in every entry) on most
        calibration prompts. Undefinedness is structural (a read before the prompt starts, a
        division by an exact zero such as y at x tokens), so a majority decides."""
        finite = np.isfinite(values).all(axis=2)
        return finite.mean(axis=0) > 0.5


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


def calibrate(program: Program, config: CompilerConfig, domain: Domain | None) -> Calibration:
    """Run the interpreter on the calibration prompts."""
    prompts, description = calibration_prompts(program, config, domain)
    return Calibration(interpret(program, prompts), prompts, description)


def abs_max(a: np.ndarray) -> float:
    """The largest finite |entry| (0 if there is none)."""
    finite = np.abs(a[np.isfinite(a)])
    return float(finite.max(initial=0.0))


def interval_bound(bias: np.ndarray, linear, products, read_bounds: list[float],
                   width: int) -> float:
    """The largest |dst| that operands within `read_bounds` allow, over the entries of dst:
    |bias| + sum |c| B_read + sum |c| B_a B_b (linear and products as lower.Instr holds
    them)."""
    out = np.abs(np.asarray(bias, dtype=np.float64)).copy()
    if out.shape != (width,):
        out = np.zeros(width)
    for o, c, r, _ in linear:
        out[o] += abs(c) * read_bounds[r]
    for o, c, ra, _, rb, _ in products:
        out[o] += abs(c) * read_bounds[ra] * read_bounds[rb]
    return float(out.max(initial=0.0))


def choose_bound(calibrated: float, interval: float, config: CompilerConfig) -> float:
    """A value's bound: calibrated |max| times the margin, unless calibration saw less than
    interval_fallback of what the operands allow (see the module doc)."""
    margined = calibrated * config.bound_margin
    if np.isfinite(interval) and margined < config.interval_fallback * interval:
        return float(interval)
    return float(margined)
