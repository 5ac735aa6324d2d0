"""The meaning of a program: its float64 reference semantics, batched over prompts.

`interpret(program, prompts)` runs a validated program on a batch of prompts (or token
arrays) and keeps every op's result (a Trace); `run_ops` does the same on token arrays as
they are, float64 or numpy object arrays of sympy expressions (symbolic.py). The semantics
proper, what every op computes at every token and how accurately, is raspicl.semantics
(`stream_ops`), which this module runs: it is a module of its own so that the language's scan
can run its step on token 0 without importing the interpreter (see its docstring).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raspicl.lang.program import Program
from raspicl.prompts import Prompts, check_tokens
from raspicl.semantics import stream_ops

_OBJECT = np.dtype(object)



@dataclass
class Trace:
    """Every register at every token after every op.

    after[k]: the value op k wrote, [B, T, width]; final: each register after the last op,
    [B, T, width]; shapes: each register's shape.
    """

    program: Program
    tokens: np.ndarray
    after: list[np.ndarray]
    final: dict[str, np.ndarray]

    def register(self, name: str) -> np.ndarray:
        """A register's final value with its shape: [B, T, *shape]."""
        reg = self.program.registers[name]
        v = self.final[name]
        return v.reshape(v.shape[:2] + reg.shape)

    def output(self) -> np.ndarray:
        """The output register at the output positions: [B, n_positions, width]."""
        out = self.program.output_spec
        return self.final[out.register.name][:, self.program.output_positions(), :]


def interpret(program: Program, prompts: Prompts | np.ndarray) -> Trace:
    """Run a program on a batch of prompts (or token arrays [B, T, d+1]) in float64."""
    program.validate()
    tokens = prompts.tokens() if isinstance(prompts, Prompts) else np.asarray(prompts)
    if tokens.dtype != _OBJECT:
        tokens = tokens.astype(np.float64)
    check_tokens(tokens, program.format)
    return run_ops(program, tokens)


def run_ops(program: Program, tokens: np.ndarray) -> Trace:
    """The semantics proper, for float64 or object (sympy) token arrays."""
    after = []
    state: dict[str, np.ndarray] = {}
    for step in stream_ops(program, tokens, state=state):
        after.append(step.value)
    return Trace(program, tokens, after, state)

