"""Timing shared by the bench scripts (imported from the bench/ folder they run in)."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_of(fn: Callable[[], object], repeats: int,
            clock: Callable[[], float] = time.perf_counter) -> float:
    """The fastest of `repeats` timed calls of fn, in seconds, after one untimed warm-up (the
    minimum is the least disturbed by other work on a shared machine). clock: wall time by
    default; time.process_time counts this process's CPU time only, which other processes on
    a loaded machine disturb far less."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return min(times)
