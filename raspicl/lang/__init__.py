"""raspicl's language: registers, places to read them, ops, expressions, scans and programs."""

from raspicl.lang.expr import Expr, eye, outer, transpose
from raspicl.lang.functions import Elementwise, smooth
from raspicl.lang.ops import Op
from raspicl.lang.program import Output, Program, PromptFormat
from raspicl.lang.reads import ROLES, At, Here, Mean, Offset, Read
from raspicl.lang.registers import Register
from raspicl.lang.scan import Scan, State

__all__ = ["At", "Expr", "Here", "Mean", "Offset", "Op", "Output", "Program", "PromptFormat",
           "ROLES", "Read", "Register", "Scan", "State", "Elementwise", "eye", "outer", "smooth",
           "transpose"]
