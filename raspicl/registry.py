"""Finding program files: `programs/NAME.py` modules that define program(**params).

A program file defines
    program(**params) -> Program     the learning algorithm (required)
    reference(prompts, **params)     the same prediction from raspicl.solvers, [B, positions]
    GRID                             parameter sets `raspicl verify` checks by default
and is loaded by path, so programs need not be installed as a package.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from raspicl.errors import RaspiclError

REPO_PROGRAMS = Path(__file__).resolve().parent.parent / "programs"


@dataclass(frozen=True)
class ProgramFile:
    """A loaded program module."""

    name: str
    path: Path
    module: ModuleType

    def build(self, **params):
        return self.module.program(**params)

    @property
    def grid(self) -> list[dict]:
        return list(getattr(self.module, "GRID", [{}]))

    @property
    def has_reference(self) -> bool:
        return hasattr(self.module, "reference")

    def reference(self, prompts, **params):
        return self.module.reference(prompts, **params)

    def defaults(self) -> dict:
        sig = inspect.signature(self.module.program)
        return {k: p.default for k, p in sig.parameters.items()
                if p.default is not inspect.Parameter.empty}


def programs_dir() -> Path:
    """./programs if it exists, else the programs/ folder beside the raspicl package."""
    local = Path.cwd() / "programs"
    return local if local.is_dir() else REPO_PROGRAMS


def find_program(spec: str | Path) -> ProgramFile:
    """A program by path (programs/gd_step.py) or by name (gd_step)."""
    path = Path(spec)
    if not path.suffix:
        candidates = [programs_dir() / f"{spec}.py", REPO_PROGRAMS / f"{spec}.py"]
        path = next((c for c in candidates if c.is_file()), candidates[0])
    if not path.is_file():
        known = ", ".join(p.name for p in bundled_programs()) or "none found"
        raise RaspiclError(f"no program file {spec!r} (looked for {path}); bundled programs: "
                           f"{known}")
    name = path.stem
    mod_name = f"raspicl_program_{name}"
    spec_obj = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(spec_obj)
    sys.modules[mod_name] = module
    try:
        spec_obj.loader.exec_module(module)
    except Exception as exc:  # a broken program file is the user's error, not raspicl's
        del sys.modules[mod_name]
        raise RaspiclError(f"could not load program file {path}: {type(exc).__name__}: "
                           f"{exc}") from exc
    if not callable(getattr(module, "program", None)):
        raise RaspiclError(f"{path} defines no function program(**params) -> Program")
    return ProgramFile(name, path.resolve(), module)


def bundled_programs() -> list[ProgramFile]:
    """Every program file in programs_dir(), sorted by name."""
    folder = programs_dir()
    if not folder.is_dir():
        return []
    return [find_program(p) for p in sorted(folder.glob("*.py")) if not p.name.startswith("_")]
