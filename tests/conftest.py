"""Test-session settings: one thread for torch.

The tests run many small models. On a shared 2-core machine, torch at 2 threads ran them 15 to
900 times slower than at 1 (oversubscription), so the suite pins torch to one thread, and
every test module starts at one thread again (a test that changes the count and fails before
restoring it cannot slow the modules after it); the Makefile's `test` target pins the BLAS
libraries the same way (they read their variables at import).

SIGINT: `make test` runs the suite in two pytest-xdist workers, which start with SIGINT ignored;
a process started from one inherits that, so a test that interrupts a compile or a training run
would wait forever. Every test process takes Python's default handler back (KeyboardInterrupt in
the process itself, the default action in the processes it starts).
"""

from __future__ import annotations

import signal

import pytest
import torch

torch.set_num_threads(1)
signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """One torch thread for the module's tests, the count before it restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
