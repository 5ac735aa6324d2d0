"""raspicl's language: registers, places to read them, ops, expressions, scans and programs.

Layer 2, language (docs/index.md, "The source, in layers"): it imports only the base
(errors) and, for a scan's exact token-0 decision, raspicl.semantics and raspicl.exact of its
own layer; never the interpreter, the compiler or anything built on them.
"""

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
