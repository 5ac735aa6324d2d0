"""The package ships what it needs: every raspicl subpackage is listed in pyproject.toml (they
are listed by hand because the bundled programs are mapped in from programs/), the bundled
programs are found, and the version has one source."""

from __future__ import annotations

from pathlib import Path

import tomllib

import raspicl
from raspicl.registry import REPO_PROGRAMS, bundled_programs

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_subpackage_is_listed():
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts)
               for p in (ROOT / "raspicl").rglob("__init__.py")}
    assert on_disk <= listed, f"add to pyproject.toml's packages: {sorted(on_disk - listed)}"
    assert "raspicl.programs" in listed


def test_programs_are_mapped_from_the_top_level_folder():
    cfg = _pyproject()["tool"]["setuptools"]
    assert cfg["package-dir"]["raspicl.programs"] == "programs"
    assert REPO_PROGRAMS.resolve() == (ROOT / "programs").resolve()
    names = {p.stem for p in (ROOT / "programs").glob("*.py") if not p.name.startswith("_")}
    assert {pf.name for pf in bundled_programs()} >= names


def test_version_has_one_source():
    project = _pyproject()["project"]
    assert "version" not in project and "version" in project["dynamic"]
    attr = _pyproject()["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    # raspicl/_version.py, read without importing the package (setuptools finds the literal)
    assert attr == "raspicl._version.__version__"
    from raspicl._version import __version__

    assert raspicl.__version__ == __version__ and __version__.count(".") == 2
