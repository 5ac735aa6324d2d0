"""raspicl: compile in-context learning algorithms into explicit transformer weights.

Write a learning algorithm as a Program (raspicl.lang), run it in the float64 interpreter
(raspicl.interpret), compile it to a torch transformer (raspicl.compiler.compile_program) and
verify the weights against the interpreter and independent solvers (raspicl.verify).

`__all__` is the public surface that docs/index.md ("Public API") lists; tests/test_public_api.py
keeps the two equal. Compiling, saving, loading, checking and inspecting a model
(compile_program, CompilerConfig, save, load, rel_err, inspect_text, plot_blocks) load torch,
which importing this package does not: those names are imported from their modules
(raspicl.compiler, export, verify, inspect) the first time they are asked for, by the module's
`__getattr__` (PEP 562), and are then the package's attributes as the others are.
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
    # compiling, saving and loading, checking, inspecting (imported on first use: __getattr__)
    "compile_program", "CompilerConfig", "save", "load", "rel_err", "inspect_text", "plot_blocks",
]


def __getattr__(name: str):
    """The names of __all__ that load torch, imported from their module when first asked for
    (`raspicl.compile_program`, `from raspicl import save`) and kept as the package's
    attributes after; AttributeError for any other name, as a module without this has."""
    if name in ("compile_program", "CompilerConfig"):
        from raspicl import compiler as module
    elif name in ("save", "load"):
        from raspicl import export as module
    elif name == "rel_err":
        from raspicl import verify as module
    elif name in ("inspect_text", "plot_blocks"):
        from raspicl import inspect as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = globals()[name] = getattr(module, name)
    return value


def __dir__() -> list[str]:
    """The package's attributes with the names __getattr__ gives (PEP 562)."""
    return sorted(set(globals()) | set(__all__))
