"""The `raspicl train` and `raspicl predict` commands."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register train and predict on the raspicl command line."""
