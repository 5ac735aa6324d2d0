"""Lines and cyclomatic complexity of the functions in some modules, largest first.

    python bench/function_sizes.py raspicl/compiler/schedule.py raspicl/inspect ... [--top N]

Lines: a function's source lines (def to last line, docstring included). Complexity: ruff's
mccabe count (`ruff check --select C901 --config lint.mccabe.max-complexity=0`), when ruff is
on PATH or beside the Python running this; '-' otherwise. A folder stands for its *.py files.
"""

from __future__ import annotations

import argparse
import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path


def _files(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        out += sorted(p.glob("*.py")) if p.is_dir() else [p]
    return out


def _complexity(files: list[Path]) -> dict[tuple[str, int], int]:
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists() and shutil.which(ruff) is None:
        return {}
    res = subprocess.run([ruff, "check", "--select", "C901", "--config",
                          "lint.mccabe.max-complexity=0", "--output-format", "concise",
                          *map(str, files)], capture_output=True, text=True)
    out = {}
    for line in res.stdout.splitlines():
        m = re.match(r"(.+?):(\d+):\d+: C901 `.*` is too complex \((\d+) > 0\)", line)
        if m:
            out[(str(Path(m.group(1))), int(m.group(2)))] = int(m.group(3))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    files = _files(args.paths)
    cx = _complexity(files)
    rows = []
    for f in files:
        tree = ast.parse(f.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                rows.append((n, cx.get((str(f), node.lineno), "-"), f"{f}:{node.name}"))
    print("module lines: " + ", ".join(f"{f} {len(f.read_text().splitlines())}" for f in files))
    print(f"{'lines':>5}  {'cx':>3}  function")
    for n, c, name in sorted(rows, key=lambda r: -r[0])[:args.top]:
        print(f"{n:5d}  {c!s:>3}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
