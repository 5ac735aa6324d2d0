"""raspicl's public API is what docs/index.md ("Public API") lists, and the docs use only it.

The section has two lists of bullets. In the first, every backticked name is a name of the
package: `raspicl.__all__` must be exactly those names (a name added to one and not the other
fails). In the second, each bullet starts with a module (`raspicl.compiler`) and names its
public entry points: each must be an attribute of that module, and in its `__all__` where it
has one. `test_documented_surface_imports` imports all of it, so a renamed name fails too.

The docs' rule, checked on the python code blocks of README.md and docs/*.md by their AST (no
block is run here; tests/test_tutorial.py runs the tutorial's) and on programs/*.py:

- anywhere, `from raspicl import X` and `raspicl.X` (after `import raspicl`) use only names in
  `raspicl.__all__`;
- README.md and docs/tutorial.md, the newcomer's path, import nothing else: any other import
  from raspicl (`from raspicl.m import Z`, `import raspicl.m`) must be a documented entry point
  of the second list;
- the other pages of docs/ describe the internals and may import from any raspicl module, as
  may the program files (programs/*.py, which read prompts and build expressions).
"""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import raspicl

ROOT = Path(__file__).resolve().parents[1]
INDEX = ROOT / "docs" / "index.md"
NEWCOMER_PAGES = ("README.md", "docs/tutorial.md")
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.S | re.M)


def documented_surface(text: str | None = None) -> tuple[list[str], dict[str, list[str]]]:
    """(the package's names, module -> its entry points), from the "## Public API" section."""
    text = INDEX.read_text(encoding="utf-8") if text is None else text
    section = text.split("\n## Public API\n", 1)[1].split("\n## ", 1)[0]
    bullets: list[str] = []
    for line in section.splitlines():
        if line.startswith("- "):
            bullets.append(line[2:])
        elif line.startswith("  ") and bullets:  # a wrapped bullet
            bullets[-1] += " " + line.strip()
    names: list[str] = []
    modules: dict[str, list[str]] = {}
    for bullet in bullets:
        head, _, rest = bullet.partition(":")
        ticked = re.findall(r"`([^`]+)`", rest)
        module = re.fullmatch(r"`(raspicl\.[\w.]+)`", head.strip())
        if module:
            modules[module.group(1)] = ticked
        else:
            names += ticked
    return names, modules


def python_blocks(path: Path) -> list[str]:
    """The ```python code blocks of a markdown file."""
    return [m.group(2) for m in FENCE.finditer(path.read_text(encoding="utf-8"))
            if m.group(1) in ("python", "py")]


def _is_submodule(name: str) -> bool:
    """Whether raspicl.<name> is a submodule (and not a name of the package that hides one, as
    raspicl.interpret, the function, hides raspicl/interpret.py)."""
    package = ROOT / "raspicl"
    return name not in raspicl.__all__ and (
        (package / f"{name}.py").is_file() or (package / name / "__init__.py").is_file())


def raspicl_uses(tree: ast.AST) -> list[tuple[str, str | None, int]]:
    """(module, name, line) for each use of raspicl in a module's AST: `from M import N` with
    M raspicl or a submodule gives (M, N); `import M` gives (M, None); `raspicl.N` (after
    `import raspicl`) gives ("raspicl", N) unless N is a submodule (`raspicl.compiler.f` after
    `import raspicl.compiler`: that import is the use)."""
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                node.module == "raspicl" or node.module.startswith("raspicl.")):
            uses += [(node.module, a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            uses += [(a.name, None, node.lineno) for a in node.names
                     if a.name == "raspicl" or a.name.startswith("raspicl.")]
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id == "raspicl" and not _is_submodule(node.attr)):
            uses.append(("raspicl", node.attr, node.lineno))  # (a submodule's import counts)
    return uses


def rule_breaks(uses, newcomer: bool, names: list[str],
                modules: dict[str, list[str]]) -> list[str]:
    """The uses that break the docs' rule (module doc)."""
    out = []
    for module, name, line in uses:
        if module == "raspicl":
            if name is not None and name not in names:
                out.append(f"line {line}: raspicl.{name} is not in raspicl.__all__")
        elif newcomer and (module not in modules or name not in modules[module]):
            what = f"from {module} import {name}" if name else f"import {module}"
            out.append(f"line {line}: {what} is not a documented entry point")
    return out


def test_the_section_is_parsed():
    """The parser on a small section: names, wrapped bullets, module entry points."""
    text = ("# x\n\n## Public API\n\nintro\n\n- a: `A`, `b`\n- more: `C`,\n  `D`\n\n"
            "prose\n\n- `raspicl.m`: `f`, `G`\n\n## Next\n\n- `raspicl.n`: `h`\n")
    assert documented_surface(text) == (["A", "b", "C", "D"], {"raspicl.m": ["f", "G"]})


def test_all_is_the_documented_list():
    names, modules = documented_surface()
    assert names and modules
    assert len(names) == len(set(names)), "a name is listed twice in docs/index.md"
    assert len(raspicl.__all__) == len(set(raspicl.__all__)), "a name is twice in __all__"
    assert sorted(raspicl.__all__) == sorted(names), (
        f"only in raspicl.__all__: {sorted(set(raspicl.__all__) - set(names))}; "
        f"only in docs/index.md: {sorted(set(names) - set(raspicl.__all__))}")


def test_documented_surface_imports():
    """Every documented name imports: the package's, and each module's entry points."""
    names, modules = documented_surface()
    namespace: dict = {}
    exec(f"from raspicl import {', '.join(names)}", namespace)  # noqa: S102 - our own names
    assert all(namespace[n] is getattr(raspicl, n) for n in names)
    for module, entries in modules.items():
        mod = importlib.import_module(module)
        for name in entries:
            assert hasattr(mod, name), f"{module} has no {name}"
            if hasattr(mod, "__all__"):
                assert name in mod.__all__, f"{name} is not in {module}.__all__"


def test_import_is_light_and_the_lazy_names_are_their_modules():
    """`import raspicl` loads no torch (a fresh interpreter checks it); the names the package
    imports on first use (its __getattr__) are their modules' own objects."""
    code = ("import sys, raspicl\n"
            "assert 'torch' not in sys.modules, 'import raspicl loaded torch'\n"
            "from raspicl import compile_program, save\n"
            "assert 'torch' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
    _, modules = documented_surface()
    for module, entries in modules.items():
        mod = importlib.import_module(module)
        for name in entries:
            assert getattr(raspicl, name) is getattr(mod, name), f"raspicl.{name}"
    try:
        raspicl.no_such_name  # noqa: B018 - the lookup is the test
    except AttributeError:
        pass
    else:
        raise AssertionError("raspicl.no_such_name did not raise AttributeError")


def test_rule_breaks_are_found():
    """The checker must be able to fail."""
    names, modules = ["Program"], {"raspicl.export": ["load"]}
    tree = ast.parse("import raspicl\nfrom raspicl import Program, Lowered\n"
                     "from raspicl.export import load, save\nimport raspicl.compiler\n"
                     "raspicl.interpret(1)\nraspicl.compiler.compile_program\n")
    uses = raspicl_uses(tree)
    assert rule_breaks(uses, True, names, modules) == [
        "line 2: raspicl.Lowered is not in raspicl.__all__",
        "line 3: from raspicl.export import save is not a documented entry point",
        "line 4: import raspicl.compiler is not a documented entry point",
        "line 5: raspicl.interpret is not in raspicl.__all__",
    ]
    assert rule_breaks(uses, False, names, modules) == [
        "line 2: raspicl.Lowered is not in raspicl.__all__",
        "line 5: raspicl.interpret is not in raspicl.__all__",
    ]


def test_docs_and_programs_use_the_public_api():
    """The code blocks of README.md and docs/*.md and the program files keep the rule (module
    doc)."""
    names, modules = documented_surface()
    assert sorted(names) == sorted(raspicl.__all__)
    sources = [(path, python_blocks(path), path.relative_to(ROOT).as_posix() in NEWCOMER_PAGES)
               for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]]
    sources += [(path, [path.read_text(encoding="utf-8")], False)
                for path in sorted((ROOT / "programs").glob("*.py"))]
    assert any(blocks for _, blocks, newcomer in sources if newcomer)
    found = []
    for path, blocks, newcomer in sources:
        for k, code in enumerate(blocks):
            uses = raspicl_uses(ast.parse(code, f"{path.name} block {k}"))
            found += [f"{path.relative_to(ROOT)} (python block {k + 1}) {msg}"
                      for msg in rule_breaks(uses, newcomer, names, modules)]
    assert not found, "\n".join(found)
