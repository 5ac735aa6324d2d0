"""Bounds pass: every value's bound, from calibration and from its operands' bounds.

A value's bound is the largest |entry| calibration saw (calibrate.py) times `bound_margin`; the
gadgets' scales are chosen from it. Calibration alone can be blind: a value that cancels on
every calibration prompt (a residual y1 x2 - y2 x1 is exactly 0 on noiseless d = 1 prompts)
would get a bound of rounding size and a product gadget scaled for that. So every value's bound
is checked against its *interval bound*, the largest |value| its operands' bounds allow (|bias|
+ sum |c| B + sum |c| B_a B_b, over the smallest divisor): where calibration saw less than
`config.interval_fallback` of it, the value is taken to cancel on the calibration distribution
only and gets the interval bound.

These bounds choose the gadgets' scales; they are not what a model vouches for. At run time the
monitor (raspicl.monitor) checks every gadget's precondition at the magnitudes actually present
and bounds every prediction's error.

Sets: Value.bound of every input, constant and op value; Value.defined of op values;
Instr.divisor_tokens and Instr.divisor_min of divisions by a register.
"""

from __future__ import annotations

import numpy as np

from raspicl.compiler.calibrate import Calibration, Domain, abs_max, calibrate
from raspicl.compiler.config import CompilerConfig
from raspicl.compiler.ssa import SSA
from raspicl.lang.program import Program

__all__ = ["Domain", "abs_max", "attach_bounds", "calibrate", "choose_bound", "interval_bound"]


def attach_bounds(ssa: SSA, cal: Calibration, program: Program, config: CompilerConfig) -> None:
    """Set the bounds (and definedness, divisor minima) of the renamed program, in place."""
    m = config.bound_margin
    ssa.inputs["x"].bound = cal.x_abs_max * m
    ssa.inputs["y"].bound = cal.y_abs_max * m
    for name, v in ssa.const_values.items():
        v.bound = float(np.abs(np.asarray(program.constants[name], dtype=np.float64))
                        .max(initial=0.0))
    for ins in ssa.instrs:
        k = ins.op.index
        defined = cal.defined(k)
        if ins.divisor is not None:
            ins.divisor_tokens = [int(t) for t in np.flatnonzero(defined)]
            ins.divisor_min = cal.divisor_min(k, ins.divisor_tokens) / m
        read_bounds = [v.bound for v, _ in ins.reads]
        interval = interval_bound(ins.bias, ins.linear, ins.products, read_bounds,
                                  ins.dst.width)
        if ins.mask is not None:
            interval = max(interval, interval_bound(ins.bias + ins.gated_bias,
                                                    ins.linear + ins.gated, [], read_bounds,
                                                    ins.dst.width))
        if ins.divisor is not None:
            interval = interval / ins.divisor_min if ins.divisor_min > 0 else np.inf
        if ins.function is not None:  # f's largest |value| on its declared range
            interval = ins.function.abs_bound()
        ins.dst.bound = choose_bound(cal.ops[k].abs_max, interval, config)
        ins.dst.defined = defined


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
