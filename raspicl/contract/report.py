"""What the runtime contract reports: findings (violated preconditions, bounds over the
tolerance) and, per batch, every prediction's error bound and which prompts it accepts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# The quantities a finding (and ContractReport.needs) names.
NEUTRAL_VARIANCE = "neutral LayerNorm variance"
PRODUCT_RANGE = "product gadget |e t|"
CLOSED_GATE = "closed gate |a - b|"
DIVISOR = "1 / |divisor|"
DIVISOR_ERROR = "divisor error bound / |divisor|"
DIVISION_REST = "division Q/s^2"  # measured only (the anchor it needs), never a finding
PREDICTION_BOUND = "prediction error bound"
APPLY_RANGE = "apply argument beyond its range"


@dataclass
class Finding:
    """One violated precondition (or an error bound over the tolerance) in one prompt."""

    prompt: int
    token: int
    op: int | None
    quantity: str
    value: float
    limit: float
    message: str


@dataclass
class ContractReport:
    """What the monitor found on a batch.

    bound: [B, n_positions, d_out], the absolute error bound of every prediction (inf where
    none could be given); accepted: [B], prompts with no finding; findings: every finding, at
    most one per prompt and kind of check (the first token); needs: per gadget, the largest
    value of its checked quantity (what compile-time feasibility tunes the constants from).
    """

    bound: np.ndarray
    relative_bound: np.ndarray
    accepted: np.ndarray
    findings: list[Finding]
    needs: dict[tuple[int, str], float]  # (op, quantity) -> its largest value
