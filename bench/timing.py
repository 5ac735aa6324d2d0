"""Timing shared by the bench scripts (imported from the bench/ folder they run in)."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of `repeats` timed calls of fn, in seconds, after one untimed warm-up (the
    minimum is the least disturbed by other work on a shared machine)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)
