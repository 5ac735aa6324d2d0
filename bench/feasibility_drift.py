"""How far the weights move when feasibility measures the compact pass instead of the dense one.

    python bench/feasibility_drift.py

For every bundled program over its GRID, in float64 and float32, unrolled and (with a loop)
shared, it compiles twice with the program's DOMAIN: once with feasibility measuring the dense
forward pass (`measure(..., compact=False)`, what the compiler did before) and once measuring
the compact plan (the default). The two passes differ only in the order of floating-point
sums, so the needs the monitor measures differ in their last digits, and the constants re-tuned
from them (division anchors, gate floors; eps is a power of 4) move by as much. It prints, per
case, the largest relative change of any weight tensor (max |a - b| / max |a|), the calibration
acceptance of each and the tuning passes, then the largest change over all cases.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from weights_digest import cases  # noqa: E402 (bench/weights_digest.py)

import raspicl.compiler as compiler  # noqa: E402
from raspicl.compiler import CompilerConfig, compile_program  # noqa: E402
from raspicl.compiler.feasibility import measure  # noqa: E402
from raspicl.errors import ContractWarning  # noqa: E402


def _compile(program, dtype: str, loops: str, domain, compact: bool):
    compiler.measure = lambda *a, **k: measure(*a, compact=compact, **k)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ContractWarning)
            return compile_program(program, CompilerConfig.for_dtype(dtype), loops=loops,
                                   domain=domain)
    finally:
        compiler.measure = measure


def _drift(a, b) -> float:
    worst = 0.0
    sb = b.model.state_dict()
    for name, t in a.model.state_dict().items():
        u = sb[name]
        if t.shape != u.shape:
            return float("inf")
        scale = float(t.abs().max()) if t.numel() else 0.0
        diff = float((t - u).abs().max()) if t.numel() else 0.0
        if diff:
            worst = max(worst, diff / scale if scale else float("inf"))
    return worst


def main() -> int:
    torch.set_num_threads(1)
    print(f"{'case':48s} {'rel. weight change':>18s} {'accepted dense':>14s} "
          f"{'accepted compact':>16s} {'passes':>7s}")
    overall = 0.0
    for key, pf, program, dtype, loops in cases():
        try:
            a = _compile(program, dtype, loops, pf.domain, compact=False)
            b = _compile(program, dtype, loops, pf.domain, compact=True)
        except Exception as exc:  # noqa: BLE001 - a refusal is a result too
            print(f"{key:48s} refused: {type(exc).__name__}")
            continue
        drift = _drift(a, b)
        overall = max(overall, drift)
        ca, cb = (m.layout["monitor"]["calibration"] for m in (a, b))
        print(f"{key:48s} {drift:18.2e} {ca['accepted']:14.4f} {cb['accepted']:16.4f} "
              f"{ca['tuning_passes']:>3d}/{cb['tuning_passes']:<3d}", flush=True)
    print(f"largest relative weight change: {overall:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
