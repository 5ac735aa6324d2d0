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
from raspicl.lang.reads import At, Here, Mean, Offset, Read, source_token
from raspicl.lang.registers import Register


def validate(program) -> None:
    """Raise ProgramError, naming op, register and line, at the first problem found."""
    fmt = program.format
    T = fmt.n_tokens
    roles = np.array(fmt.roles())
    written: dict[str, Op] = {}
    # defined[name][t]: the register's current value is defined at token t. blame[name][t]:
    # where it is not, the op and read whose place lies outside the prompt (or in the future)
    # and from which the undefined value flowed to this register (for the message).
    defined: dict[str, np.ndarray] = {}
    blame: dict[str, list[tuple[Op, Read] | None]] = {}
    for reg in program.registers.values():
        if reg.kind in ("input", "const") or reg.name in program.constants:
            defined[reg.name] = np.ones(T, dtype=bool)
            blame[reg.name] = [None] * T

    for op in program.ops:
        reads = op.reads + ((op.divisor,) if op.divisor is not None else ())
        for read in reads:
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
            still = (f"; op '{later.kind}' writing '{later.dst.name}' at {later.source} reads "
                     f"'{dst.name}' after this second write" if later else "")
            raise fail(op.kind, dst.name, op.source,
                       f"overwrites register '{dst.name}', already written by op "
                       f"'{first.kind}' at {first.source}; only a register declared with "
                       f"p.var() may be written more than once{still}")
        written[dst.name] = op
        ok = np.ones(T, dtype=bool)
        why: list[tuple[Op, Read] | None] = [None] * T
        for t in range(T):
            if op.mask is not None:  # select: only the chosen operand matters at t
                chosen = (reads[0],) if op.mask[t] else (reads[1],)
            else:
                chosen = reads
            for read in chosen:
                name = read.register.name
                sources = _sources(read.at, t, roles)
                if sources is None:
                    ok[t], why[t] = False, (op, read)
                    break
                bad = [s for s in sources if not defined[name][s]]
                if bad:
                    ok[t], why[t] = False, blame[name][bad[0]]
                    break
        defined[dst.name] = ok
        blame[dst.name] = why

    out = program.output_spec
    if out is None:
        last = f"; the last op is {program.ops[-1].where()}" if program.ops else ""
        raise ProgramError(f"program '{program.name}' (created at {program.x.source}) has no "
                           f"output: declare one with p.output(register){last}")
    if out.register.name not in defined:
        raise ProgramError(f"output at {out.source}: register '{out.register.name}' is never "
                           f"written")
    positions = [t for t in range(T) if roles[t] in out.roles]
    if not positions:
        raise ProgramError(f"output at {out.source}: register '{out.register.name}' is read "
                           f"at {', '.join(out.roles)} tokens, but this prompt (n={fmt.n}) has "
                           f"none")
    bad = [t for t in positions if not defined[out.register.name][t]]
    if bad:
        src = blame[out.register.name][bad[0]]
        where = f"token(s) {bad} ({', '.join(sorted({str(roles[t]) for t in bad}))})"
        if src is not None:
            op, read = src
            outside = [t for t in range(T) if _sources(read.at, t, roles) is None]
            raise fail(op.kind, op.dst.name, op.source,
                       f"reads '{read.register.name}' at {read.at.describe()}, which "
                       f"{_outside_reason(read.at)} at token(s) {outside}; the output "
                       f"'{out.register.name}' (declared at {out.source}) depends on this read "
                       f"and is undefined at {where}")
        raise ProgramError(f"output at {out.source}: register '{out.register.name}' is "
                           f"undefined at {where}")


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


def _sources(at, t: int, roles: np.ndarray) -> list[int] | None:
    """The tokens a read at place `at` reads at token t; None where the place lies outside the
    prompt or in the future there (the read is undefined whatever the register holds)."""
    if isinstance(at, Here):
        return [t]
    if isinstance(at, Offset | At):
        s = source_token(at, t)
        return None if s is None else [s]
    if isinstance(at, Mean):
        sel = [s for s in range(t + 1) if roles[s] == at.role]
        return sel or None
    raise TypeError(f"unknown place {at!r}")


def _outside_reason(at) -> str:
    if isinstance(at, Offset):
        return "lies before the first token of the prompt"
    if isinstance(at, At):
        return "lies in the future"
    if isinstance(at, Mean):
        return f"has no {at.role} token at or before it"
    return "is undefined"


def _later_reader(program, op: Op, reg: Register) -> Op | None:
    for later in program.ops[op.index + 1:]:
        if any(r is reg for r in later.registers_read):
            return later
    return None
