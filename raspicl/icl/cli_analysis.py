"""The `raspicl compare` and `raspicl probe` commands."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register compare and probe on the raspicl command line."""
