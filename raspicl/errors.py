"""The exceptions raspicl raises, so callers can tell a bad program from a bad file or input."""

from __future__ import annotations


class RaspiclError(Exception):
    """Base class of every error raspicl raises on purpose."""


class ProgramError(RaspiclError):
    """A program is malformed: the message names the op, the register and the source line."""


class ConfigError(RaspiclError, ValueError):
    """A CompilerConfig field is outside the condition its docstring states: the message names
    the field, its value and the condition."""


class CompileError(RaspiclError):
    """A well-formed program cannot be compiled under the given configuration."""


class LoadError(RaspiclError):
    """An exported model (model.safetensors + layout.json) is missing, mismatched or corrupted."""


class ExportError(RaspiclError):
    """`save` refused to write a model directory (a symbolic link, a path that is not a
    directory, a dtype the gadgets cannot run in, a layout the loader would refuse) or the
    operating system failed to write it."""


class DomainError(RaspiclError):
    """A prompt lies outside the input domain under which a compiled model's error bound holds."""


class DomainWarning(UserWarning):
    """The warning raised instead of DomainError when the caller asks for warnings
    (check='warn'): the model ran, but outside the domain where its error bound holds."""


class ContractWarning(UserWarning):
    """A compiled model's error bound exceeds its tolerance on more of its own calibration
    prompts than CompilerConfig.min_acceptance allows: the model is sound (it refuses those
    prompts at run time) but refuses more of its domain than it should."""
