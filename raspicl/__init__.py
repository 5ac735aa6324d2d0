"""raspicl: compile in-context learning algorithms into explicit transformer weights.

Write a learning algorithm as a Program (raspicl.lang), run it in the float64 interpreter
(raspicl.interpret), compile it to a torch transformer (raspicl.compiler.compile_program) and
verify the weights against the interpreter and independent solvers (raspicl.verify).

`__all__` is the public surface that docs/index.md ("Public API") lists, with the entry points
that live in their own modules (compiler, export, verify, inspect: they load torch, which
importing this package does not); tests/test_public_api.py keeps the two equal.
"""

from raspicl import solvers
from raspicl._version import __version__ as __version__  # (the package's version)
from raspicl.errors import (
    CompileError,
    ConfigError,
    ContractWarning,
    DomainError,
    DomainWarning,
    ExportError,
    LoadError,
    ProgramError,
    RaspiclError,
)
from raspicl.interpret import Trace, interpret
from raspicl.lang import (
    ROLES,
    At,
    Here,
    Mean,
    Offset,
    Output,
    Program,
    PromptFormat,
    Read,
    Register,
)
from raspicl.prompts import PromptDistribution, Prompts, random_prompts

__all__ = [
    # programs and places
    "Program", "Read", "Here", "Offset", "At", "Mean", "Register", "Output", "PromptFormat",
    "ROLES",
    # the interpreter
    "interpret", "Trace",
    # prompts
    "Prompts", "PromptDistribution", "random_prompts",
    # reference solvers
    "solvers",
    # errors and warnings
    "RaspiclError", "ProgramError", "CompileError", "ConfigError", "DomainError", "DomainWarning",
    "ContractWarning", "ExportError", "LoadError",
]
