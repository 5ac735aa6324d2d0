"""No import cycles between raspicl's files, except the known ones this test lists.

A cycle is a set of files each of which imports, directly or through the others, every other:
none of them can be read (or changed) without the rest. The test builds raspicl's import graph
from the source (an AST walk: nothing is imported) and finds its strongly connected components
(Tarjan's algorithm); every component of two or more files is a cycle.

Every import statement counts, wherever it stands: at module level, inside a function (an
import deferred to call time is still a dependency a reader has to follow) and under
`if TYPE_CHECKING:` (a type the module names is part of what it means). This is how issue 24
measured the cycles. An edge goes to the file the statement imports: `from raspicl.a import b`
goes to raspicl/a/b.py where b is a submodule, else to raspicl/a.py or raspicl/a/__init__.py;
relative imports are resolved against the importing file's package. Importing a submodule is
not counted as importing its package's __init__.py (Python runs it, but it names nothing of
it), and imports of anything outside raspicl are ignored.

The found cycles must equal KNOWN_CYCLES exactly: a new cycle fails the test, and so does a
known one that is gone (remove it from the list), so the list only shrinks and stays true.

More import rules, each a direction of the layers:
- the passes after fusion (FUSION_READERS) do not reach raspicl/compiler/fusion.py at all;
  they read the pass's typed result on Lowered;
- the language (raspicl/lang/) reaches none of what is built on it: the interpreter, the
  symbolic proofs, the compiler, the command line (its scan decides its form through
  raspicl/semantics.py and raspicl/exact.py, which import no layer above the language's ops);
- nothing imports raspicl/cli.py but raspicl/__main__.py: the command line is the top, and a
  command's module takes its argument types from raspicl/cli_args.py;
- every module has a layer (docs/index.md, "The source, in layers", which LAYERS must match),
  and imports only from its own layer and those below (raspicl/__init__.py, the public API,
  names what the layers offer and stands outside them).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "raspicl"

# Issue 24 broke them all; a cycle found later goes here only with the reason it cannot be
# broken yet. Each is one strongly connected component, as paths relative to the repository.
KNOWN_CYCLES: set[frozenset[str]] = set()


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under `package` (a package's own name
    maps to its __init__.py)."""
    files = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def imports(module: str, path: Path, modules: Iterable[str]) -> set[str]:
    """The modules of `modules` that the file of `module` imports, by any import statement in
    it (module level, function bodies, TYPE_CHECKING blocks alike)."""
    known = set(modules)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: up level - 1 packages from this file's package
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:  # a submodule, else a name the module defines
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
    found.discard(module)
    return found & known


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports."""
    files = module_files(package)
    return {m: imports(m, path, files) for m, path in files.items()}


def cycles(graph: Mapping[str, Iterable[str]]) -> list[frozenset[str]]:
    """The strongly connected components of two or more nodes (Tarjan's algorithm, written
    iteratively: raspicl's import chains are shallow, but a recursion limit is no test's
    business). Edges to nodes that are not keys of `graph` are ignored."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        # each frame: a node and the iterator over its remaining successors
        work = [(root, iter(sorted(w for w in graph[root] if w in graph)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, successors = work[-1]
            w = next(successors, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(u for u in graph[w] if u in graph))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == index[v]:  # v roots a component: pop it
                component = set()
                while True:
                    u = stack.pop()
                    on_stack.discard(u)
                    component.add(u)
                    if u == v:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def _as_files(component: frozenset[str], files: Mapping[str, Path]) -> frozenset[str]:
    return frozenset(files[m].relative_to(ROOT).as_posix() for m in component)


def test_cycle_finder_finds_a_cycle_and_not_a_dag():
    """The finder on small graphs: it must be able to fail."""
    # a -> b -> c -> a is a cycle; d hangs off it; e -> f -> e is a second one
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"}, "f": {"e", "a"}}
    assert set(cycles(graph)) == {frozenset("abc"), frozenset("ef")}
    # a diamond with a shared tail: no cycle
    dag = {"a": {"b", "c"}, "b": {"d"}, "c": {"d"}, "d": {"e"}, "e": set()}
    assert cycles(dag) == []
    assert cycles({"a": {"a"}}) == []  # a module importing itself is no cycle between files


def test_imports_are_resolved(tmp_path):
    """Relative imports, `from package import submodule`, function-level and TYPE_CHECKING
    imports all make edges; a name that is not a submodule makes an edge to its module."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from pkg.a import f\n")
    (pkg / "a.py").write_text("from . import b\ndef f():\n    from .sub import c\n")
    (pkg / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.sub.c import X\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text("from ..a import f\nimport os\n")
    assert import_graph(pkg) == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.b", "pkg.sub.c"},
        "pkg.b": {"pkg.sub.c"},
        "pkg.sub": set(),
        "pkg.sub.c": {"pkg.a"},
    }
    assert cycles(import_graph(pkg)) == [frozenset({"pkg.a", "pkg.b", "pkg.sub.c"})]


def test_no_import_cycles_but_the_known_ones():
    """raspicl's import cycles are exactly KNOWN_CYCLES (module doc)."""
    files = module_files()
    found = {_as_files(c, files) for c in cycles(import_graph())}
    new = found - KNOWN_CYCLES
    gone = KNOWN_CYCLES - found
    msg = []
    for c in sorted(new, key=sorted):
        msg.append("an import cycle between " + ", ".join(sorted(c)))
    for c in sorted(gone, key=sorted):
        msg.append("a known cycle is no longer found (take it out of KNOWN_CYCLES, or put the "
                   "files it now has there): " + ", ".join(sorted(c)))
    assert not msg, "\n".join(msg)


# The passes after fusion read its typed result on Lowered (ir.FusedDefinitions, records.Fusion)
# and never call back into the pass: fusion.py runs once, from compile_program (issue 24).
FUSION_READERS = ("raspicl.compiler.placement", "raspicl.compiler.temporaries",
                  "raspicl.compiler.layout", "raspicl.compiler.liveness",
                  "raspicl.compiler.assemble", "raspicl.compiler.describe")


def test_passes_after_fusion_do_not_import_it():
    """Placement, temporaries, layout, liveness, assembly and describe do not import
    raspicl.compiler.fusion, directly or through the modules they import."""
    graph = import_graph()
    for module in FUSION_READERS:
        seen, todo = set(), [module]
        while todo:
            for m in graph[todo.pop()] - seen:
                seen.add(m)
                todo.append(m)
        assert "raspicl.compiler.fusion" not in seen, f"{module} reaches compiler/fusion.py"


def _reach(graph: Mapping[str, Iterable[str]], module: str) -> set[str]:
    """The modules `module` imports, directly or through the modules it imports."""
    seen, todo = set(), [module]
    while todo:
        for m in set(graph[todo.pop()]) - seen:
            seen.add(m)
            todo.append(m)
    return seen


# What the language is built under: none of it may be reached from raspicl/lang/.
ABOVE_THE_LANGUAGE = ("raspicl.interpret", "raspicl.symbolic", "raspicl.prompts",
                      "raspicl.compiler", "raspicl.cli", "raspicl.cli_programs")


def test_the_language_reaches_nothing_built_on_it():
    """No module of raspicl/lang/ imports, directly or through others, the interpreter, the
    symbolic proofs, prompts, the compiler or the command line."""
    graph = import_graph()
    for module in sorted(m for m in graph if m == "raspicl.lang" or m.startswith("raspicl.lang.")):
        above = {m for m in _reach(graph, module)
                 if any(m == a or m.startswith(a + ".") for a in ABOVE_THE_LANGUAGE)}
        assert not above, f"{module} reaches {sorted(above)}"


def test_only_the_entry_point_imports_the_command_line():
    """raspicl.cli is imported by raspicl/__main__.py alone (the `raspicl` script names it in
    pyproject.toml); every command module registers itself on the parser cli.py builds."""
    graph = import_graph()
    importers = sorted(m for m, targets in graph.items() if "raspicl.cli" in targets)
    assert importers == ["raspicl.__main__"]


# The layers, bottom to top: each a name and the modules (a package stands for everything in
# it) it holds. docs/index.md draws the same list.
LAYERS: list[tuple[str, list[str]]] = [
    ("base", ["errors", "accurate", "cli_args", "_version"]),
    ("language", ["lang", "semantics", "exact"]),
    ("semantics", ["prompts", "interpret", "symbolic", "solvers", "registry"]),
    ("runtime", ["arch", "model", "compact", "transposed", "sparse_weights", "slots", "guards",
                 "layout_records", "layout_file", "schema", "tensorfile", "timeline",
                 "disguise_layout"]),
    ("contract", ["contract", "monitor"]),
    ("compiled model", ["compiled"]),
    ("compiler", ["compiler"]),
    ("interop", ["interop"]),
    ("storage", ["export", "groundtruth"]),
    ("analysis and commands", ["verify", "inspect", "counterfactual", "disguise", "benchmark",
                               "icl", "cli_programs"]),
    ("entry point", ["cli", "__main__"]),
]


def layer_of(module: str) -> int | None:
    """The index in LAYERS of the layer holding `module` (raspicl.x or raspicl.x.y), None for
    the package's own __init__."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    for i, (_, names) in enumerate(LAYERS):
        if parts[1] in names:
            return i
    raise AssertionError(f"{module} has no layer: add it to LAYERS and docs/index.md")


def test_every_import_goes_down_the_layers():
    graph = import_graph()
    up = sorted(f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
                for a, targets in graph.items() if layer_of(a) is not None
                for b in targets if layer_of(b) is not None and layer_of(b) > layer_of(a))
    assert not up, "imports from a higher layer:\n" + "\n".join(up)


def test_a_module_above_its_layer_is_found():
    graph = {"raspicl.lang.ops": {"raspicl.compiler.ir"}, "raspicl.compiler.ir": set()}
    assert [(a, b) for a, bs in graph.items() for b in bs if layer_of(b) > layer_of(a)] == \
        [("raspicl.lang.ops", "raspicl.compiler.ir")]


def test_the_docs_draw_the_layers_the_test_checks():
    text = (ROOT / "docs" / "index.md").read_text()
    section = text.split("\n## The source, in layers\n", 1)[1].split("\n## ", 1)[0]
    items = re.findall(r"^\d+\. \*\*(.+?)\*\*: (.*?)(?=^\d+\. |^\n|\Z)", section,
                       flags=re.M | re.S)
    drawn = [(name, re.findall(r"`([A-Za-z_]+)/?`", body)) for name, body in items]
    assert drawn == LAYERS
