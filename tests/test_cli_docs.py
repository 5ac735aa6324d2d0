"""docs/cli.md against the argparse parser of raspicl/cli.py, so that help and docs cannot drift.

docs/cli.md has one section per command, headed "## `raspicl COMMAND`". For every command the
parser defines, its section must name every option string (--set, -v, --verbose) and every
positional by its metavar (PROGRAM, DIR), and give each of them a row in its argument table
that names its choices (float32) and its default where that is not None or False (`1000`,
`float64`); the overview table must carry the command's one-line help verbatim; and the
section must name no option the command lacks. The help itself must work:
`python -m raspicl --help` and `python -m raspicl COMMAND --help` exit 0. The exit statuses
the page documents (0, 1 for a failed check, 2 for an error) are checked by running them.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from raspicl.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
CLI_DOC = ROOT / "docs" / "cli.md"
SECTION = re.compile(r"^## `raspicl (\w+)`\s*$", re.M)
OPTION_IN_DOC = re.compile(r"(?<![\w-])(--?[a-zA-Z][\w-]*)")


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub


def _commands() -> dict[str, argparse.ArgumentParser]:
    return dict(_subparsers(build_parser()).choices)


def _sections() -> dict[str, str]:
    text = CLI_DOC.read_text()
    parts = SECTION.split(text)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def _documented_items(action: argparse.Action) -> list[str]:
    """What the page must say about one argument."""
    if isinstance(action, argparse._HelpAction):
        return []
    items = list(action.option_strings)
    if not action.option_strings:  # a positional: by the name its usage shows
        items.append(action.metavar or action.dest)
    elif action.metavar and not isinstance(action.metavar, tuple):
        items.append(action.metavar)
    items += [str(c) for c in action.choices or []]
    default = action.default
    if default not in (None, False, argparse.SUPPRESS) and not isinstance(default, bool):
        items.append(str(default))
    return items


def test_every_command_has_a_section():
    assert set(_sections()) == set(_commands()), (
        f"docs/cli.md sections {sorted(_sections())} vs commands {sorted(_commands())}")


@pytest.mark.parametrize("command", sorted(_commands()))
def test_every_argument_is_documented(command):
    section = _sections()[command]
    parser = _commands()[command]
    missing = [(a.dest, item) for a in parser._actions for item in _documented_items(a)
               if item not in section]
    assert not missing, (f"docs/cli.md, section `raspicl {command}`, does not mention "
                         f"(argument, item): {missing}")


def _table_row(section: str, action: argparse.Action) -> str | None:
    """The row of the section's argument table whose first cell names this argument."""
    names = action.option_strings or [action.metavar or action.dest]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and any(cells[0].startswith(f"`{n}") for n in names):
            return line
    return None


@pytest.mark.parametrize("command", sorted(_commands()))
def test_every_argument_has_a_table_row_with_its_default_and_choices(command):
    section = _sections()[command]
    for action in _commands()[command]._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        row = _table_row(section, action)
        assert row is not None, (f"docs/cli.md, `raspicl {command}`: no table row for "
                                 f"{action.option_strings or action.dest}")
        default = action.default
        if default not in (None, False, argparse.SUPPRESS) and not isinstance(default, bool):
            assert f"`{default}`" in row, f"the row should give the default `{default}`: {row}"
        for choice in action.choices or []:
            assert choice in row, f"the row should name the choice {choice}: {row}"


@pytest.mark.parametrize("command", sorted(_commands()))
def test_no_documented_option_is_missing_from_the_parser(command):
    section = _sections()[command]
    known = {s for a in _commands()[command]._actions for s in a.option_strings}
    stale = sorted({m for m in OPTION_IN_DOC.findall(section) if m not in known}
                   - {"-", "--"})
    assert not stale, f"docs/cli.md documents options `raspicl {command}` lacks: {stale}"


def test_overview_table_carries_each_commands_help():
    text = CLI_DOC.read_text()
    overview = text[:text.index("\n## ")]
    for choice in _subparsers(build_parser())._choices_actions:
        row = f"| [`{choice.dest}`](#raspicl-{choice.dest}) | {choice.help} |"
        assert row in overview, f"docs/cli.md's table lacks the row:\n{row}"


def test_top_level_options_are_documented():
    text = CLI_DOC.read_text()
    top = [s for a in build_parser()._actions for s in a.option_strings]
    assert set(top) == {"-h", "--help", "--version"}
    for option in top:
        assert f"`{option}`" in text


def test_every_argument_has_help():
    for name, parser in _commands().items():
        assert parser.description, f"raspicl {name} has no description"
        for a in parser._actions:
            assert a.help and a.help != argparse.SUPPRESS, f"raspicl {name}: {a.dest} has no help"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH")] if p)
    return subprocess.run([sys.executable, "-m", "raspicl", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)


def test_help_runs():
    proc = _run("--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: raspicl")
    for command in _commands():
        assert command in proc.stdout


@pytest.mark.parametrize("command", sorted(_commands()))
def test_command_help_runs(command):
    proc = _run(command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: raspicl {command}")


# --- the exit statuses docs/cli.md documents ------------------------------------------------

FAILING_PROGRAM = '''
from raspicl import Program


def program(d=1):
    p = Program("doubles", d=d, n=0)
    p.output(p.aff("twice", p.x, W1=2.0))
    return p


def reference(prompts, d=1):
    return 3.0 * prompts.xq            # wrong on purpose: the program doubles x_q
'''


def test_exit_status_1_when_a_check_fails(tmp_path, capsys):
    path = tmp_path / "doubles.py"
    path.write_text(FAILING_PROGRAM)
    status = main(["verify", str(path), "--dtype", "float64", "--problems", "8"])
    out = capsys.readouterr().out
    assert status == 1, out
    assert "FAIL" in out and "0 passed, 1 failed" in out


def test_exit_status_0_when_every_check_passes(tmp_path, capsys):
    path = tmp_path / "doubles.py"
    path.write_text(FAILING_PROGRAM.replace("3.0 * prompts.xq", "2.0 * prompts.xq"))
    assert main(["verify", str(path), "--dtype", "float64", "--problems", "8"]) == 0
    assert "1 passed, 0 failed" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["run", "no_such_program"],
    ["run", "gd_step", "--set", "no_such_parameter=1"],
    ["run", "gd_step", "--set", "d"],
    ["inspect", "no_such_directory"],
])
def test_exit_status_2_on_errors(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("raspicl: error: ")


def test_exit_status_2_on_a_bad_command_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["compile", "gd_step"])  # --out is required
    assert exc.value.code == 2


# --- links between the pages --------------------------------------------------------------

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} (.+?)\s*$", re.M)


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


@pytest.mark.parametrize("page", ["index.md", "cli.md", "tutorial.md"])
def test_relative_links_resolve(page):
    source = ROOT / "docs" / page
    for target in LINK.findall(source.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (source.parent / path).resolve() if path else source
        assert file.is_file(), f"docs/{page}: the link {target} points at a missing file"
        if anchor and file.suffix == ".md":
            slugs = {_slug(h) for h in HEADING.findall(file.read_text())}
            assert anchor in slugs, f"docs/{page}: {target}: no heading with that anchor"
