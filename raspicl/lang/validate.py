"""Whole-program checks that run before a program is interpreted or compiled.

Local mistakes (shapes, coefficients, places) are caught when an op is created; here are the
mistakes that need the whole program: reading a register nothing wrote, overwriting a register
that is not a var (or the prompt itself), reading tokens outside the prompt, roles with no
tokens, and an output that is undefined where it is read because some op reads the future.
"""

from __future__ import annotations

import numpy as np

from raspicl.errors import ProgramError
from raspicl.lang.ops import Op, fail
from raspicl.lang.reads import At, Here, Mean, Offset, Read
from raspicl.lang.registers import Register


def validate(program) -> None:
    """Raise ProgramError, naming op, register and line, at the first problem found."""
    fmt = program.format
    T = fmt.n_tokens
    roles = np.array(fmt.roles())
    written: dict[str, Op] = {}
    # defined[name][t]: the register's current value is defined at token t; cause[name] is
    # the op whose read made it undefined somewhere (for the message).
    defined: dict[str, np.ndarray] = {}
    cause: dict[str, tuple[Op, Read] | None] = {}
    for reg in program.registers.values():
        if reg.kind in ("input", "const") or reg.name in program.constants:
            defined[reg.name] = np.ones(T, dtype=bool)
            cause[reg.name] = None

    for op in program.ops:
        for read in op.reads + ((op.divisor,) if op.divisor is not None else ()):
            reg = read.register
            if reg.name not in defined:
                raise fail(op.kind, op.dst.name, op.source,
                           f"reads register '{reg.name}' (declared at {reg.source}), which no "
                           f"earlier op writes and which has no init value")
            _check_place(op, read, fmt, roles)
        dst = op.dst
        if dst.kind in ("input", "const"):
            raise fail(op.kind, dst.name, op.source,
                       f"overwrites the {dst.kind} register '{dst.name}', which holds the "
                       f"{'prompt' if dst.kind == 'input' else 'constant'}; write a new register")
        if dst.kind == "value" and dst.name in written:
            first = written[dst.name]
            later = _later_reader(program, op, dst)
            still = (f"; op '{later.kind}' at {later.source} still reads it" if later else "")
            raise fail(op.kind, dst.name, op.source,
                       f"overwrites register '{dst.name}', already written by op "
                       f"'{first.kind}' at {first.source}, that is not declared with "
                       f"p.var(){still}")
        written[dst.name] = op
        ok = np.ones(T, dtype=bool)
        why: tuple[Op, Read] | None = None
        for read in op.reads + ((op.divisor,) if op.divisor is not None else ()):
            here_ok = _defined_after_read(read, defined[read.register.name], fmt, roles)
            if not here_ok.all() and why is None:
                why = cause[read.register.name] or (op, read)
            ok &= here_ok
        defined[dst.name] = ok
        cause[dst.name] = why

    out = program.output_spec
    if out is None:
        raise ProgramError(f"program '{program.name}': no output; call p.output(register)")
    if out.register.name not in defined:
        raise ProgramError(f"output at {out.source}: register '{out.register.name}' is never "
                           f"written")
    positions = [t for t in range(T) if roles[t] in out.roles]
    if not positions:
        raise ProgramError(f"output at {out.source}: the prompt has no tokens of role(s) "
                           f"{', '.join(out.roles)}")
    bad = [t for t in positions if not defined[out.register.name][t]]
    if bad:
        src = cause[out.register.name]
        if src is not None:
            op, read = src
            raise fail(op.kind, op.dst.name, op.source,
                       f"reads '{read.register.name}' at {read.at.describe()}, which lies in the "
                       f"future or outside the prompt at token(s) {bad}, where the output "
                       f"'{out.register.name}' is read")
        raise ProgramError(f"output '{out.register.name}' is undefined at tokens {bad}")


def _check_place(op: Op, read: Read, fmt, roles: np.ndarray) -> None:
    at = read.at
    T = fmt.n_tokens
    if isinstance(at, At) and at.index >= T:
        raise fail(op.kind, op.dst.name, op.source,
                   f"reads '{read.register.name}' at token {at.index}, but the prompt has only "
                   f"{T} tokens")
    if isinstance(at, Offset) and at.k >= T:
        raise fail(op.kind, op.dst.name, op.source,
                   f"reads '{read.register.name}' {at.k} tokens back, but the prompt has only "
                   f"{T} tokens")
    if isinstance(at, Mean) and not (roles == at.role).any():
        raise fail(op.kind, op.dst.name, op.source,
                   f"reads the mean of '{read.register.name}' over {at.role} tokens, but this "
                   f"prompt (n={fmt.n}) has none")


def _defined_after_read(read: Read, defined: np.ndarray, fmt, roles: np.ndarray) -> np.ndarray:
    """Where a read gives a defined value, given where the register itself is defined."""
    T = fmt.n_tokens
    at = read.at
    out = np.zeros(T, dtype=bool)
    for t in range(T):
        if isinstance(at, Here):
            out[t] = defined[t]
        elif isinstance(at, Offset):
            out[t] = t >= at.k and defined[t - at.k]
        elif isinstance(at, At):
            out[t] = t >= at.index and defined[at.index]
        elif isinstance(at, Mean):
            sel = [s for s in range(t + 1) if roles[s] == at.role]
            out[t] = bool(sel) and all(defined[s] for s in sel)
    return out


def _later_reader(program, op: Op, reg: Register) -> Op | None:
    for later in program.ops[op.index + 1:]:
        if any(r is reg for r in later.registers_read):
            return later
    return None
