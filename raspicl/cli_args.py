"""The command line's argument types and shared options: what every `raspicl` command's parser
uses (raspicl.cli, raspicl.cli_programs, the commands of raspicl.icl and raspicl.benchmark,
and raspicl.disguise's options).

Only argparse, the standard library and raspicl.errors: a command module imports this, never
raspicl.cli, which assembles the commands into the `raspicl` parser and so imports them all.
"""

from __future__ import annotations

import argparse
import ast
import math
from pathlib import Path

from raspicl.errors import RaspiclError

NON_FINITE = {"nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity",
              "-infinity"}


def parse_sets(items: list[str] | None) -> dict:
    """--set k=v pairs; values are Python literals where they parse (4, 0.1, [1, 2]), nan, inf
    and -inf are floats, anything else is a string."""
    params = {}
    for item in items or []:
        if "=" not in item:
            raise RaspiclError(f"--set expects NAME=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise RaspiclError(f"--set expects NAME=VALUE, got {item!r} (no NAME)")
        if raw.strip().lower() in NON_FINITE:
            value = float(raw)
        else:
            try:
                value = ast.literal_eval(raw)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                value = raw
        params[key] = value
    return params


def seed_arg(text: str) -> int:
    """argparse type: an integer >= 0 (numpy's seeds are non-negative)."""
    value = _int_arg(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {value}")
    return value


def count_arg(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = _int_arg(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def scale_arg(text: str) -> float:
    """argparse type: a finite float >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def positive_arg(text: str) -> float:
    """argparse type: a finite float > 0 (an error bound, a learning rate)."""
    value = scale_arg(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value



def percent_arg(text: str) -> float:
    """argparse type: a percentage in [0, 100], returned as a fraction in [0, 1]."""
    value = scale_arg(text.removesuffix("%"))
    if value > 100:
        raise argparse.ArgumentTypeError(f"must be a percentage in [0, 100], got {text}")
    return value / 100


def _int_arg(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None


def check_out_dir(path: str, option: str) -> None:
    """An output directory may exist, but not as something other than a directory."""
    out = Path(path)
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise RaspiclError(f"{option} {path}: {p} exists and is not a directory")
            break


def device_arg(text: str) -> str:
    """argparse type: cpu, cuda or cuda:N."""
    if text in ("cpu", "cuda") or (text.startswith("cuda:") and text[5:].isdigit()):
        return text
    raise argparse.ArgumentTypeError(f"must be cpu, cuda or cuda:N, got {text!r}")


# ------------------------------------------------------------------ threads

THREADS_HELP = ("torch threads on the CPU (default: the RASPICL_THREADS environment variable if "
                "set, else 1: these models are small, and on a shared 2-core machine a second "
                "thread made them up to 15x slower)")


def add_threads_arg(p: argparse.ArgumentParser) -> None:
    """--threads T (default None: raspicl.model.threads_for decides, RASPICL_THREADS or 1)."""
    p.add_argument("--threads", type=count_arg, metavar="T", help=THREADS_HELP)
