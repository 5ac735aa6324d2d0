"""Where a compile's time goes, stage by stage, as a loop's length n grows.

    python bench/compile_stages.py              # ridge and sgd d=2, loops="share", n = 4..32
    python bench/compile_stages.py ridge d=2 --ns 4 8 16 --loops unroll

Compiles each case in this process (after one small warm-up compile, so that imports and the
first sympy call are not counted) and prints the CPU seconds (time.process_time) of each stage
of compile_program:

- calibrate: the float64 interpreter on the calibration prompts (compiler/calibrate.py);
- structure: the rest of lowering, linking the iterations, fusion, scheduling, liveness and
  layout: the passes that read the program, not the prompts;
- build: gadgets, assembly and describe, summed over the tuning passes;
- forward and walk: feasibility, summed over its tuning passes: the compiled model's forward
  pass over the calibration prompts, and the runtime monitor fed its residuals
  (ContractStream: keeping what it reads, walking every instruction, the report);
- passes: how many feasibility passes the compile ran.

The stages are timed by wrapping the functions compile_program calls (this script's own
instrumentation: nothing in raspicl records timings). Threads are pinned to 1. The machine is
shared: compare the columns of one run, not absolute times between runs.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import gc  # noqa: E402
import importlib  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import raspicl.compiler as compiler  # noqa: E402
import raspicl.contract as monitor  # noqa: E402
from raspicl.errors import ContractWarning  # noqa: E402
from raspicl.registry import find_program  # noqa: E402

lower_module = importlib.import_module("raspicl.compiler.lower")  # (the package re-exports
# the function `lower` under the module's name)

SPENT: dict[str, float] = defaultdict(float)


def _timed(owner, name: str, stage: str) -> None:
    """Replace owner.name by a wrapper that adds its CPU seconds to SPENT[stage]."""
    inner = getattr(owner, name)

    def wrapper(*args, **kwargs):
        c0 = time.process_time()
        try:
            return inner(*args, **kwargs)
        finally:
            SPENT[stage] += time.process_time() - c0

    setattr(owner, name, wrapper)


def instrument() -> None:
    _timed(lower_module, "calibrate", "calibrate")
    _timed(compiler, "lower", "lower")
    for name in ("link_iterations", "fuse_and_lay_out"):
        _timed(compiler, name, "structure")
    for name in ("build_blocks", "assemble", "describe"):
        _timed(compiler, name, "build")
    _timed(compiler, "measure", "feasibility")
    for name in ("feed", "report"):
        _timed(monitor.ContractStream, name, "walk")


COLUMNS = ("calibrate", "structure", "build", "forward", "walk")


def run(name: str, params: dict, loops: str) -> dict[str, float]:
    """One compile's stages (CPU seconds) and its passes."""
    SPENT.clear()
    program = find_program(name).build(**params)
    gc.collect()  # as bench/compile.py: no full collection of earlier garbage inside
    c0 = time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ContractWarning)
        cm = compiler.compile_program(program, loops=loops)
    total = time.process_time() - c0
    out = {"total": total, "calibrate": SPENT["calibrate"],
           "structure": SPENT["structure"] + SPENT["lower"] - SPENT["calibrate"],
           "build": SPENT["build"], "forward": SPENT["feasibility"] - SPENT["walk"],
           "walk": SPENT["walk"],
           "passes": cm.layout["monitor"]["calibration"]["tuning_passes"]}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("program", nargs="?", help="one program (default: ridge and sgd, d=2)")
    ap.add_argument("sets", nargs="*", help="k=v sizes other than n")
    ap.add_argument("--ns", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--loops", default="share", choices=("unroll", "share"))
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    fixed = {k: int(v) for k, v in (s.split("=", 1) for s in a.sets)}
    cases = [(a.program, fixed)] if a.program else [("ridge", {"d": 2}), ("sgd", {"d": 2})]
    instrument()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ContractWarning)
        compiler.compile_program(find_program("ridge").build(d=1, n=1), loops=a.loops)
    print(f"CPU seconds per stage, loops={a.loops!r}, torch threads {torch.get_num_threads()}")
    head = f"{'program':<10} {'size':<12} {'total':>7} " + " ".join(f"{c:>9}" for c in COLUMNS)
    print(head + f" {'passes':>6} {'fwd+walk %':>10}")
    print("-" * (len(head) + 18))
    for name, params in cases:
        for n in a.ns:
            r = run(name, {**params, "n": n}, a.loops)
            size = " ".join(f"{k}={v}" for k, v in {**params, "n": n}.items())
            share = 100 * (r["forward"] + r["walk"]) / r["total"]
            print(f"{name:<10} {size:<12} {r['total']:>7.2f} "
                  + " ".join(f"{r[c]:>9.2f}" for c in COLUMNS)
                  + f" {r['passes']:>6} {share:>9.0f}%", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
