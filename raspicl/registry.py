"""Finding program files: `programs/NAME.py` modules that define program(**params).

A program file defines
    program(**params) -> Program     the learning algorithm (required)
    reference(prompts, **params)     the same prediction from raspicl.solvers, [B, positions]
    GRID                             parameter sets `raspicl verify` checks by default
and is loaded by path, so programs need not be installed as a package. The bundled ones ship
with raspicl (as raspicl/programs in an installed package); ./programs in the working directory,
where it exists, takes their place.

ProgramFile.build checks the parameters before it calls program() (check_params: known names,
integers where the default is an integer, and the size parameters within SIZE_LIMITS), so that
a typo on the command line cannot allocate gigabytes, and turns whatever goes wrong inside the
program file (an exception, a result that is not a Program) into one RaspiclError naming the
file.
"""

from __future__ import annotations

import importlib.util
import inspect
import numbers
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from raspicl.errors import RaspiclError


def _bundled_dir() -> Path:
    """The bundled programs: raspicl/programs in an installed package (pyproject.toml maps the
    top-level programs/ folder there), else programs/ beside the package in a source checkout or
    an editable install."""
    here = Path(__file__).resolve().parent
    installed = here / "programs"
    return installed if installed.is_dir() else here.parent / "programs"


REPO_PROGRAMS = _bundled_dir()

# The largest value accepted for the size parameters a program file's program() takes: the
# dimension d, the number of examples n and the number of iterations T. Larger programs would
# not compile on a laptop anyway (the compiled width grows like d or d^2, the depth like n or T),
# and checking them before program() runs stops a typo (d=1e9) from being killed for memory.
# To go beyond them, raise the numbers here.
SIZE_LIMITS = {"d": 256, "n": 1024, "T": 1024}


def format_call(params: dict) -> str:
    """`d=2, lr=0.1`: parameters as a call's keyword arguments."""
    return ", ".join(f"{k}={v!r}" for k, v in params.items())


@dataclass(frozen=True)
class ProgramFile:
    """A loaded program module."""

    name: str
    path: Path
    module: ModuleType

    @property
    def shown_path(self) -> str:
        """The file's path relative to the working directory where it lies below it."""
        try:
            return str(self.path.relative_to(Path.cwd()))
        except ValueError:
            return str(self.path)

    def build(self, **params):
        """program(**params), after check_params; any failure is a RaspiclError naming the
        file (a RaspiclError the program raises keeps its class, with the call prefixed)."""
        from raspicl.lang.program import Program

        self.check_params(params)
        call = f"{self.shown_path}: program({format_call(params)})"
        try:
            result = self.module.program(**params)
        except RaspiclError as exc:  # a ProgramError of an op: keep its class, add the call
            raise _with_prefix(exc, call) from exc
        except Exception as exc:  # the program file's fault: name it and the exception
            raise RaspiclError(f"{call} raised {type(exc).__name__}: "
                               f"{_one_line(exc)}") from exc
        if not isinstance(result, Program):
            raise RaspiclError(f"{call} returned {type(result).__name__}, "
                               f"not a raspicl Program")
        return result

    def _signature(self) -> inspect.Signature:
        try:
            return inspect.signature(self.module.program)
        except (TypeError, ValueError) as exc:
            raise RaspiclError(f"{self.shown_path}: cannot read the parameters of program(): "
                               f"{exc}") from exc

    def defaults(self) -> dict:
        return {k: p.default for k, p in self._signature().parameters.items()
                if p.default is not inspect.Parameter.empty}

    def describe_params(self) -> str:
        """program()'s parameters as `d=2, lr=0.1` (a required one by its name alone)."""
        parts = []
        for k, p in self._signature().parameters.items():
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                parts.append(f"**{k}")
            elif p.kind is inspect.Parameter.VAR_POSITIONAL:
                continue
            else:
                parts.append(k if p.default is inspect.Parameter.empty else f"{k}={p.default!r}")
        return ", ".join(parts) or "none"

    def check_params(self, params: dict) -> None:
        """RaspiclError unless program() can be called with these keyword parameters: every
        name is one program() takes, every required one is given, a parameter whose default is
        an int is an int (not a bool, not a float, not even 4.0), a bool is not given where the
        default is a float, and d, n and T are integers no larger than SIZE_LIMITS."""
        sig = self._signature().parameters
        keyword = {k: p for k, p in sig.items() if p.kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
        open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.values())
        where = f"{self.shown_path}: program()"
        unknown = [k for k in params if k not in keyword]
        if unknown and not open_ended:
            names = ", ".join(repr(k) for k in unknown)
            raise RaspiclError(f"{where} has no parameter {names}; its parameters are "
                               f"{self.describe_params()}")
        missing = [k for k, p in keyword.items()
                   if p.default is inspect.Parameter.empty and k not in params]
        if missing:
            raise RaspiclError(f"{where} needs the parameter {', '.join(missing)} "
                               f"(--set {missing[0]}=VALUE); its parameters are "
                               f"{self.describe_params()}")
        for key, value in params.items():
            default = keyword[key].default if key in keyword else inspect.Parameter.empty
            int_default = isinstance(default, int) and not isinstance(default, bool)
            if key in SIZE_LIMITS or int_default:
                limit = SIZE_LIMITS.get(key)
                if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                    hint = (f" (write {key}={int(value)})" if isinstance(value, float)
                            and value.is_integer() and abs(value) <= (limit or 2**31) else "")
                    raise RaspiclError(f"{where}: {key} must be an integer, got {value!r}"
                                       f"{hint}")
                if limit is not None and value > limit:
                    raise RaspiclError(
                        f"{where}: {key}={value} is larger than {limit}, the largest {key} "
                        f"raspicl accepts (a model that size would not compile on a laptop; "
                        f"to go beyond, raise SIZE_LIMITS[{key!r}] in raspicl/registry.py)")
            elif isinstance(default, float) and isinstance(value, bool):
                raise RaspiclError(f"{where}: {key} must be a number, got {value!r}")

    @property
    def grid(self) -> list[dict]:
        """GRID (default [{}], the defaults): a non-empty list of parameter dicts."""
        grid = getattr(self.module, "GRID", [{}])
        ok = isinstance(grid, list | tuple) and grid and all(
            isinstance(g, dict) and all(isinstance(k, str) for k in g) for g in grid)
        if not ok:
            raise RaspiclError(f"{self.shown_path}: GRID must be a non-empty list of dicts of "
                               f"parameters (e.g. GRID = [{{'d': 1}}, {{'d': 2}}]), got "
                               f"{_short(grid)}")
        return [dict(g) for g in grid]

    @property
    def domain(self):
        """The prompts the program is meant to serve: the file's DOMAIN (a
        raspicl.prompts.PromptDistribution) if it declares one, else None (the compiler's
        default)."""
        from raspicl.prompts import PromptDistribution

        domain = getattr(self.module, "DOMAIN", None)
        if domain is not None and not isinstance(domain, PromptDistribution):
            raise RaspiclError(f"{self.path}: DOMAIN must be a raspicl.prompts."
                               f"PromptDistribution, got {type(domain).__name__}")
        return domain

    @property
    def has_reference(self) -> bool:
        return hasattr(self.module, "reference")

    def reference(self, prompts, **params):
        """reference(prompts, **params); an exception in it is a RaspiclError naming the file."""
        try:
            return self.module.reference(prompts, **params)
        except RaspiclError:
            raise
        except Exception as exc:
            raise RaspiclError(f"{self.shown_path}: reference(prompts, {format_call(params)}) "
                               f"raised {type(exc).__name__}: {_one_line(exc)}") from exc


def _with_prefix(exc: RaspiclError, prefix: str) -> RaspiclError:
    """The same kind of error with `prefix: ` before its message."""
    try:
        return type(exc)(f"{prefix}: {exc}")
    except Exception:  # a subclass with another constructor
        return RaspiclError(f"{prefix}: {exc}")


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line."""
    return " ".join(str(exc).split())


def _short(value, limit: int = 60) -> str:
    text = f"{type(value).__name__} {value!r}"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def programs_dir() -> Path:
    """./programs if it exists, else the bundled programs."""
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
    if path.suffix != ".py":
        raise RaspiclError(f"{path} is not a program file: a program file is Python source "
                           f"whose name ends in .py")
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
                           f"{_one_line(exc)}") from exc
    if not callable(getattr(module, "program", None)):
        raise RaspiclError(f"{path} defines no function program(**params) -> Program")
    return ProgramFile(name, path.resolve(), module)


def bundled_programs() -> list[ProgramFile]:
    """Every program file in programs_dir(), sorted by name."""
    folder = programs_dir()
    if not folder.is_dir():
        return []
    return [find_program(p) for p in sorted(folder.glob("*.py")) if not p.name.startswith("_")]
