"""docs/benchmark.md is run, block by block, as tests/test_interop_docs.py runs docs/interop.md:
```python blocks in order in one namespace, ```bash blocks with a `raspicl` on PATH, in a fresh
temporary directory; `<!-- output -->` text blocks checked against what the block before
printed; `<!-- skip-test -->` bash blocks (the full benchmark, minutes) not run. Skipped when
transformers or transformer-lens is missing."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
from test_tutorial import _check_output, _env, _raspicl_shim, parse_blocks

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")
pytest.importorskip("transformer_lens")

PAGE = Path(__file__).resolve().parent.parent / "docs" / "benchmark.md"


def test_page_runs(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    bin_dir = tmp_path / "bin"
    _raspicl_shim(bin_dir)
    env = _env(bin_dir)
    monkeypatch.chdir(work)
    namespace: dict = {"__name__": "__benchmark__"}
    last = None
    ran = 0
    for block in parse_blocks(PAGE.read_text()):
        where = f"docs/benchmark.md:{block.line} ({block.lang} block)"
        if block.marker == "skip-test" or block.lang not in ("python", "bash", "text"):
            continue
        if block.marker == "output":
            assert last is not None, f"{where}: output shown before any code ran"
            try:
                _check_output(block, block.code, last[1], last[0])
            except AssertionError as exc:
                raise AssertionError(
                    str(exc).replace("docs/tutorial.md", "docs/benchmark.md")) from None
            continue
        if block.lang == "python":
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                exec(compile(block.code, where, "exec"), namespace)  # the page's own code
            last = (block, out.getvalue())
            ran += 1
        elif block.lang == "bash":
            proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.code], cwd=work,
                                  env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, (
                f"{where} exited with {proc.returncode}:\n{textwrap.indent(block.code, '  ')}"
                f"\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}")
            last = (block, proc.stdout)
            ran += 1
    assert ran >= 2
