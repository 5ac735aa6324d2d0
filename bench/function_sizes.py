"""The largest functions of some modules: lines and branches.

    python bench/function_sizes.py raspicl/compiler/*.py raspicl/interpret.py [--top 15]

Lines: the function's source lines (def to last statement, docstring included). Branches: the
decision points a reader follows, counted on the AST: if / elif / ternary, for / while (and
their else), except, each extra operand of and / or, each `if` of a comprehension, match case,
and assert. Cyclomatic complexity in the McCabe sense is branches + 1 (ruff's C901 counts fewer
kinds: it ignores boolean operators and comprehension conditions).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path


def branches(node: ast.AST) -> int:
    """Decision points inside `node`, not descending into nested functions or classes."""
    count = 0
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda):
            continue
        if isinstance(child, ast.If | ast.IfExp | ast.For | ast.AsyncFor | ast.While
                      | ast.ExceptHandler | ast.Assert | ast.match_case):
            count += 1
        if isinstance(child, ast.For | ast.AsyncFor | ast.While) and child.orelse:
            count += 1
        if isinstance(child, ast.BoolOp):
            count += len(child.values) - 1
        if isinstance(child, ast.comprehension):
            count += len(child.ifs)
        count += branches(child)
    return count


def functions(path: Path) -> list[tuple[str, int, int]]:
    """(qualified name, lines, branches) of every function in a file."""
    tree = ast.parse(path.read_text())
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                lines = child.end_lineno - child.lineno + 1
                out.append((f"{path}:{name}", lines, branches(child)))
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--top", type=int, default=15)
    a = ap.parse_args()
    rows = [r for f in a.files for r in functions(f)]
    rows.sort(key=lambda r: (-r[2], -r[1]))
    print(f"{'function':<60} {'lines':>6} {'branches':>9}")
    for name, lines, br in rows[:a.top]:
        print(f"{name:<60} {lines:>6} {br:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
