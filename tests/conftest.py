"""Test-session settings: one thread for torch.

The tests run many small models. On a shared 2-core machine, torch at 2 threads ran them 15 to
900 times slower than at 1 (oversubscription), so the suite pins torch to one thread; the
Makefile's `test` target pins the BLAS libraries the same way (they read their variables at
import).
"""

from __future__ import annotations

import torch

torch.set_num_threads(1)
