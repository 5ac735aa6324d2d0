"""raspicl's language: registers, places to read them, ops, and programs."""

from raspicl.lang.ops import Op
from raspicl.lang.program import Output, Program, PromptFormat
from raspicl.lang.reads import ROLES, At, Here, Mean, Offset, Read
from raspicl.lang.registers import Register

__all__ = ["At", "Here", "Mean", "Offset", "Op", "Output", "Program", "PromptFormat", "ROLES",
           "Read", "Register"]
