"""The `raspicl` command: one parser of every command, and `main`, which runs one.

The commands are registered by their own modules (each has `add_commands`): list, run,
compile, verify and inspect (raspicl.cli_programs); train and predict, compare and probe,
sweep and report (raspicl.icl.cli_train, cli_analysis, cli_sweep); benchmark
(raspicl.benchmark.suite). Their argument types are raspicl.cli_args. This module imports
them, and no module of raspicl imports it but raspicl/__main__.py (`python -m raspicl`): it
is the top of the command line, as `raspicl` (pyproject.toml's script) is.

What every command shares is here, in `main`: exit status 2 and one line for an error raspicl
reports (argparse's usage errors included, from the command's own parser); status 130 and one
line for Ctrl-C; and, for a command with a `--threads` option, the torch thread count of the
whole command (`command_threads`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from raspicl import cli_programs
from raspicl._version import __version__
from raspicl.errors import RaspiclError


@contextmanager
def command_threads(threads: int | None) -> Iterator[int]:
    """The thread count of one command, chosen on purpose: `threads` if given, else
    RASPICL_THREADS, else raspicl.model.DEFAULT_THREADS (1). Inside, torch runs that many
    threads and RASPICL_THREADS says it (every compiled model's forward pass reads it); both
    are restored after, so that main() called in a Python session leaves it as it was. BLAS
    threads are fixed when numpy loads: OMP_NUM_THREADS and OPENBLAS_NUM_THREADS set them."""
    from raspicl.model import THREADS_ENV, threads_for, torch_threads

    try:
        n = threads_for(threads)
    except ValueError as exc:
        raise RaspiclError(str(exc)) from None
    old = os.environ.get(THREADS_ENV)
    os.environ[THREADS_ENV] = str(n)
    try:
        with torch_threads(n):
            yield n
    finally:
        if old is None:
            os.environ.pop(THREADS_ENV, None)
        else:
            os.environ[THREADS_ENV] = old


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raspicl",
        description="Compile in-context learning algorithms into explicit transformer weights "
                    "and verify them.",
        epilog="Run 'raspicl COMMAND --help' for a command's arguments (all of them are in "
               "docs/cli.md). Exit status: 0 success; 1 a check of 'raspicl verify' is not "
               "PASS; 2 an error raspicl reports (a bad program, parameter, file or command "
               "line, a prompt a model refuses); 130 interrupted (Ctrl-C).")
    parser.add_argument("--version", action="version", version=f"raspicl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    cli_programs.add_commands(sub)  # list, run, compile, verify, inspect

    # trained in-context learners and their comparison with algorithms (docs/experiments.md)
    from raspicl.icl import cli_analysis, cli_sweep, cli_train
    cli_train.add_commands(sub)
    cli_analysis.add_commands(sub)
    cli_sweep.add_commands(sub)
    from raspicl.benchmark import suite  # raspicl benchmark (docs/benchmark.md)
    suite.add_commands(sub)
    return parser


INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command Ctrl-C stopped


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """parser.parse_args, except that an option the command does not know is reported by the
    command's own parser (its usage, then `raspicl COMMAND: error: unrecognized arguments`),
    as every other mistake in a command's arguments is, rather than by raspicl's."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        command = _subparsers(parser).choices.get(getattr(args, "command", None))
        (command or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _close_progress_bars() -> None:
    """Close the tqdm bars a stopped command leaves open, so that the last line on stderr is
    raspicl's own."""
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return
    for bar in list(getattr(tqdm, "_instances", ())):
        try:
            bar.close()
        except Exception:  # noqa: BLE001 - a bar that cannot close must not hide the exit
            pass


def main(argv: list[str] | None = None) -> int:
    """The raspicl command: 0 success, 1 a verify check not PASS, 2 an error (one line on
    stderr, `raspicl: error: ...`; argparse's usage errors too), 130 Ctrl-C (one line,
    `raspicl: interrupted`, and whatever the command says it kept)."""
    try:
        parser = build_parser()
        args = parse_args(parser, argv)
        if hasattr(args, "threads"):  # the command's thread count, chosen on purpose
            with command_threads(args.threads):
                return args.func(args)
        return args.func(args)
    except RaspiclError as exc:
        _close_progress_bars()
        print(f"raspicl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        _close_progress_bars()
        detail = str(exc)
        print(f"raspicl: interrupted{': ' + detail if detail else ''}", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # e.g. `raspicl inspect DIR | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
