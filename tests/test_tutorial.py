"""docs/tutorial.md is run, block by block, so that it cannot rot.

The tutorial is read like a notebook, and run like one, in a fresh temporary directory:
- ```python blocks run in order in ONE shared namespace (exec), as in a Python session started
  in that directory; their own `assert`s check the numbers the text quotes;
- ```bash blocks run with bash -e -o pipefail (check=True), with a `raspicl` command on PATH
  that runs this checkout's `python -m raspicl`;
- a block right after `<!-- file: NAME -->` is not run but written to NAME, and one after
  `<!-- append: NAME -->` is added to the end of NAME (the reader saves them by hand);
- a block right after `<!-- skip-test -->` is not run (installation commands only);
- a ```text block right after `<!-- output -->` shows the output of the block run just before
  it: exactly (trailing spaces and blank lines aside), or, if it has lines that are a lone
  `...`, as an excerpt: each of its other lines must appear, in order, among the lines printed;
- other blocks (```text, ```json) are illustrations and are not run.

The markdown image links must point at committed PNGs under docs/img, each under 300 kB, and
the embedded block plot must have the size of the one the tutorial's own code draws.

When the compiler changes what the tutorial prints (a model's size, its block order), run
    RASPICL_UPDATE_TUTORIAL=1 python -m pytest tests/test_tutorial.py
to rewrite every shown output that is complete (has no `...` line) with what was printed, and
the embedded plot with the one drawn; then review the diff, and the prose around it, by hand.
Excerpts (with `...`) are never rewritten: fix them by hand from the failure message.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "docs" / "tutorial.md"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MARKER = re.compile(r"^<!--\s*(skip-test|output|file:\s*\S+|append:\s*\S+)\s*-->\s*$")
FENCE = re.compile(r"^```(\w*)\s*$")
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
UPDATE = os.environ.get("RASPICL_UPDATE_TUTORIAL") == "1"


@dataclass
class Block:
    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    marker: str | None  # 'skip-test', 'output', 'file: NAME', 'append: NAME', or None

    def where(self) -> str:
        return f"docs/tutorial.md:{self.line} ({self.lang} block)"


def parse_blocks(text: str) -> list[Block]:
    """The fenced blocks of a markdown text, in order, each with the marker on the line
    before its opening fence (blank lines between them are not allowed)."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start = i
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        if j == len(lines):
            raise AssertionError(f"docs/tutorial.md:{start + 1}: unclosed code block")
        marker = None
        if start > 0:
            mm = MARKER.match(lines[start - 1].strip())
            if mm:
                kind, _, arg = mm.group(1).partition(":")
                marker = kind + (f": {arg.strip()}" if arg else "")
        blocks.append(Block(m.group(1), "\n".join(lines[start + 1:j]) + "\n", start + 1,
                            marker))
        i = j + 1
    return blocks


def _blocks() -> list[Block]:
    return parse_blocks(TUTORIAL.read_text())


def _env(bin_dir: Path) -> dict:
    """PATH with a `raspicl` that runs this checkout (and the interpreter's own bin dir, where
    a virtual environment's console scripts live); PYTHONPATH with the checkout."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent),
                                   env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH")] if p)
    env["MPLBACKEND"] = "Agg"
    return env


def _raspicl_shim(bin_dir: Path) -> None:
    bin_dir.mkdir()
    shim = bin_dir / "raspicl"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m raspicl "$@"\n')
    shim.chmod(0o755)


def _is_excerpt(block: Block) -> bool:
    return any(line.strip() == "..." for line in block.code.splitlines())


def _rewrite(updates: list[tuple[Block, str]]) -> None:
    """Replace the bodies of the given output blocks of the tutorial with new text."""
    lines = TUTORIAL.read_text().splitlines()
    for block, new in sorted(updates, key=lambda u: -u[0].line):
        start = block.line  # index of the first line after the opening fence
        lines[start:start + len(block.code.splitlines())] = new.rstrip("\n").splitlines()
    TUTORIAL.write_text("\n".join(lines) + "\n")


def _lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _check_output(block: Block, expected: str, printed: str, source: Block) -> None:
    if not _is_excerpt(block):
        if _lines(expected) != _lines(printed):
            raise AssertionError(
                f"{block.where()}: the output shown is not what {source.where()} prints:\n"
                f"--- shown ---\n{expected}--- printed ---\n{printed}")
        return
    got = [line.rstrip() for line in printed.splitlines()]
    k = 0
    for want in expected.splitlines():
        want = want.rstrip()
        if want.strip() in ("", "..."):
            continue
        while k < len(got) and got[k] != want:
            k += 1
        if k == len(got):
            raise AssertionError(
                f"{block.where()}: the output shown is not what {source.where()} prints; "
                f"this line is missing (or out of order):\n  {want}\n"
                f"--- printed ---\n{printed}")
        k += 1


def test_blocks_are_well_formed():
    blocks = _blocks()
    langs = {b.lang for b in blocks}
    assert langs <= {"python", "bash", "text", "json"}, langs
    assert sum(b.lang == "python" for b in blocks) >= 8
    for b in blocks:
        if b.marker == "skip-test":
            # only shell set-up may be skipped: every line of Python is run
            assert b.lang == "bash", f"{b.where()}: only bash blocks may be skipped"
        if b.marker == "output":
            assert b.lang == "text", f"{b.where()}: <!-- output --> precedes a text block"
        if b.marker and b.marker.startswith(("file", "append")):
            assert b.lang == "python", f"{b.where()}: files written are Python"


def test_images_are_committed_and_small():
    links = IMAGE.findall(TUTORIAL.read_text())
    assert links, "the tutorial embeds at least one plot"
    for link in links:
        assert not link.startswith(("http:", "https:", "/")), f"{link}: use a relative link"
        path = (TUTORIAL.parent / link).resolve()
        assert path.is_file(), f"{link} does not exist"
        assert path.parent == (ROOT / "docs" / "img").resolve(), f"{link}: keep it in docs/img"
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC, f"{link} is not a PNG"
        assert len(data) < 300_000, f"{link} is {len(data)} bytes; keep it under 300 kB"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


# §8 compiles a float32 model that vouches for few of its calibration prompts, and says so: its
# ContractWarning is part of the lesson, not a fault of the page.
@pytest.mark.filterwarnings("ignore::raspicl.errors.ContractWarning")
def test_tutorial_runs(tmp_path, monkeypatch):
    """Every block, in order, in a fresh directory; stops at the first one that fails."""
    work = tmp_path / "tutorial"
    work.mkdir()
    bin_dir = tmp_path / "bin"
    _raspicl_shim(bin_dir)
    env = _env(bin_dir)
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(work))  # `import momentum`, as in a session started here
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": "__tutorial__"}
    modules_before = set(sys.modules)
    last: tuple[Block, str] | None = None
    updates: list[tuple[Block, str]] = []
    try:
        for block in _blocks():
            if block.marker == "skip-test":
                continue
            if block.marker == "output":
                assert last is not None, f"{block.where()}: output shown before any code ran"
                try:
                    _check_output(block, block.code, last[1], last[0])
                except AssertionError:
                    if not UPDATE or _is_excerpt(block):
                        raise
                    updates.append((block, last[1]))
                continue
            if block.marker and block.marker.startswith(("file", "append")):
                mode, name = block.marker.split(": ")
                target = work / name
                with open(target, "w" if mode == "file" else "a") as f:
                    f.write(block.code)
                continue
            if block.lang == "python":
                out = io.StringIO()
                code = compile(block.code, block.where(), "exec")
                with contextlib.redirect_stdout(out):
                    exec(code, namespace)  # the tutorial's own code, as in a notebook
                last = (block, out.getvalue())
            elif block.lang == "bash":
                proc = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block.code],
                                      cwd=work, env=env, capture_output=True, text=True,
                                      timeout=300)
                if proc.returncode != 0:
                    raise AssertionError(
                        f"{block.where()} exited with {proc.returncode}:\n"
                        f"{textwrap.indent(block.code, '  ')}\n--- stdout ---\n{proc.stdout}"
                        f"\n--- stderr ---\n{proc.stderr}")
                last = (block, proc.stdout)
    finally:
        for name in set(sys.modules) - modules_before:
            if name == "momentum" or name.startswith("raspicl_program_"):
                del sys.modules[name]

    if updates:
        _rewrite(updates)
    # the plot the tutorial embeds is one its code draws, and still has that plot's size
    for link in IMAGE.findall(TUTORIAL.read_text()):
        committed = (TUTORIAL.parent / link).resolve()
        drawn = work / "out" / "momentum-plots" / committed.name.removeprefix("momentum_")
        assert drawn.is_file(), f"the tutorial's code does not draw {drawn.name} ({link})"
        if UPDATE:
            shutil.copyfile(drawn, committed)
        assert _png_size(drawn) == _png_size(committed), (
            f"{link} is {_png_size(committed)} pixels but the tutorial's code draws "
            f"{_png_size(drawn)}: regenerate it (copy {drawn.name} from a run of the tutorial)")


if shutil.which("bash") is None:  # pragma: no cover
    pytestmark = pytest.mark.skip(reason="the tutorial's shell blocks need bash")
