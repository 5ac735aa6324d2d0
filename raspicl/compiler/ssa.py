"""SSA renaming pass: every write of a register becomes a new value.

Walking the folded ops in program order, each op's kept reads are bound to the current value of
their register and its write makes the register's next version, so the later stages see a
dataflow graph with no overwrites. The inputs x and y, and the constants kept in the residual
(var inits and non-folded constants), are values of version 0; a select's token mask becomes a
value of its own (one per distinct mask, a 0/1 row that W_pos holds).

Sets: the Values (name, version, width, kind, op, versioned) and the Instrs (op, dst, reads,
linear, products, bias, divisor, mask, gated, gated_bias). Bounds, `defined` and the divisor's
calibrated minimum are left at their defaults for bounds.py to set.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raspicl.compiler.fold import Folded, folded_registers
from raspicl.compiler.ir import Instr, Value
from raspicl.errors import CompileError
from raspicl.lang.program import Program


@dataclass
class SSA:
    """The renamed program: what lower.Lowered holds apart from the calibration."""

    inputs: dict[str, Value]  # 'x', 'y'
    consts: dict[str, Value]  # constant registers (and var inits) kept in the residual
    const_values: dict[str, Value]  # every constant register's version-0 value, folded or not
    masks: dict[str, tuple[Value, np.ndarray]]  # token masks of selects: 0/1 rows in W_pos
    values: list[Value]
    instrs: list[Instr]
    output: Value


def rename(program: Program, folded: list[Folded]) -> SSA:
    """Values and instructions for the folded ops (fold.fold_program(program))."""
    folded_regs = folded_registers(program)
    current: dict[str, Value] = {}
    inputs = {"x": Value("x", 0, program.d, "input"), "y": Value("y", 0, 1, "input")}
    current.update(inputs)
    values: list[Value] = list(inputs.values())
    consts: dict[str, Value] = {}
    const_values: dict[str, Value] = {}
    for name, value in program.constants.items():
        v = Value(name, 0, np.asarray(value).size, "const",
                  versioned=program.registers[name].kind == "var")
        current[name] = v
        const_values[name] = v
        if name not in folded_regs:
            consts[name] = v
            values.append(v)
    versions: dict[str, int] = {}
    masks: dict[str, tuple[Value, np.ndarray]] = {}
    instrs: list[Instr] = []
    roles = program.format.roles()
    for f in folded:
        op = f.op
        reads = [(current[op.reads[i].register.name], op.reads[i].at) for i in f.kept]
        mask = None
        if op.mask is not None:
            mask = _mask_value(masks, op.mask, roles)
            if not any(mask is v for v in values):
                values.append(mask)
        divisor = None
        if op.divisor is not None and f.const_divisor is None:
            divisor = current[op.divisor.register.name]
        versions[op.dst.name] = versions.get(op.dst.name, 0) + 1
        dst = Value(op.dst.name, versions[op.dst.name], op.dst.width, "op", op=op,
                    versioned=op.dst.kind == "var")
        values.append(dst)
        current[op.dst.name] = dst
        instrs.append(Instr(op, dst, reads, f.linear, f.products, f.bias, divisor, mask=mask,
                            gated=f.gated, gated_bias=f.gated_bias, function=op.function))
    out_name = program.output_spec.register.name
    output = current[out_name]
    if output.kind == "const" and out_name in folded_regs:
        raise CompileError(f"the output '{out_name}' is a constant; nothing to compile")
    return SSA(inputs, consts, const_values, masks, values, instrs, output)


def _mask_value(masks: dict, mask: np.ndarray, roles: list[str]) -> Value:
    """The residual row holding a select's token mask (one row per distinct mask)."""
    chosen = [t for t in range(len(mask)) if mask[t]]
    role_set = sorted({roles[t] for t in chosen})
    if chosen and all(mask[t] == (roles[t] in role_set) for t in range(len(mask))):
        name = "mask:" + "+".join(role_set)
    else:
        name = "mask:t in {" + ",".join(map(str, chosen)) + "}"
    if name not in masks:
        masks[name] = (Value(name, 0, 1, "mask", 1.0), mask.astype(np.float64))
    return masks[name][0]
