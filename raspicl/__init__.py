"""raspicl: compile in-context learning algorithms into explicit transformer weights.

Write a learning algorithm as a Program (raspicl.lang), run it in the float64 interpreter
(raspicl.interpret), compile it to a torch transformer (raspicl.compile) and verify the weights
against the interpreter and independent solvers (raspicl.verify).
"""

from raspicl import solvers
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

__version__ = "0.1.0"

__all__ = [
    "At", "CompileError", "ConfigError", "ContractWarning", "DomainError", "DomainWarning",
    "ExportError", "Here", "LoadError", "Mean", "Offset", "Output", "Program", "ProgramError",
    "PromptDistribution", "PromptFormat", "Prompts", "ROLES", "RaspiclError", "Read",
    "Register", "Trace", "interpret", "random_prompts", "solvers",
]
