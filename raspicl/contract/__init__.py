"""The runtime contract: every gadget's precondition checked, and every prediction's error
bounded, at the magnitudes actually present in a compiled model's residual stream.

- records: the monitor record (layout['monitor']) as instructions;
- residuals, layernorm: what the walk reads from a forward pass, and what a read through a
  LayerNorm adds;
- charges: each gadget's own error at the magnitudes present;
- forward: the walk (check_contract, ContractStream): the rigorous componentwise enclosure
  that every precondition is checked against, recording its tape;
- adjoint: the reverse pass over that tape, a second sound bound that sees cancellation;
- report: findings and reports.

It imports the language's places, the architecture's constants and the guards' token names,
and nothing of the compiler or the model.

Layer 5, contract (docs/index.md, "The source, in layers"): it imports the language and the
runtime below it, never the compiled model, the compiler or anything above.
"""

from raspicl.contract.forward import (
    ADJOINT_MODES,
    ContractStream,
    check_contract,
    walk_scratch_rows,
    walk_with_tape,
)
from raspicl.contract.records import (
    Instruction,
    ProductPair,
    Read,
    instruction_record,
    parse_instructions,
)
from raspicl.contract.report import (
    APPLY_RANGE,
    CLOSED_GATE,
    DIVISION_REST,
    DIVISOR,
    DIVISOR_ERROR,
    NEUTRAL_VARIANCE,
    PREDICTION_BOUND,
    PRODUCT_RANGE,
    ContractReport,
    Finding,
)

__all__ = [
    "ADJOINT_MODES", "APPLY_RANGE", "CLOSED_GATE", "DIVISION_REST", "DIVISOR", "DIVISOR_ERROR",
    "NEUTRAL_VARIANCE", "PREDICTION_BOUND", "PRODUCT_RANGE", "ContractReport", "ContractStream",
    "Finding", "Instruction", "ProductPair", "Read", "check_contract", "instruction_record",
    "parse_instructions", "walk_scratch_rows", "walk_with_tape",
]
