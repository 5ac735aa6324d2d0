"""Throughput: the compiled model against the interpreter and the numpy solver.

    python bench/throughput.py              # the table in docs/compiler.md, best of 3 repeats
    python bench/throughput.py --repeats 5
    python bench/throughput.py --batches 1024 --repeats 9 --root /path/to/old/checkout

For gd_step d=4, sherman_morrison d=4 and ridge d=2 n=4 (each program's DOMAIN and contract
tolerance, compiled in float64, run in float64 and float32) it times, at batch 1, 1024 and
8192 (prompts x, w ~ N(0, I)):

- interp: raspicl.interpret (the float64 interpreter, every op on the whole batch);
- solver: the program file's reference() (numpy, raspicl.solvers);
- dense: cm.predict(prompts, check="ignore") on the dense weights (CompiledModel.compact off);
- compact: the same through the compact execution plan (raspicl.compact), the default (with
  check="ignore" it runs the plan's transposed pass, raspicl.transposed);

each the best of --repeats runs after one warm-up (time.perf_counter, or with --clock cpu
time.process_time), the four timed in turn within every repeat (`interleaved`), and prints the
ratios to the interpreter, all measured in one run, and the torch thread count the forward
passes ran under. Quote the ratios, not the times: those depend on the machine and its load.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

# --root CHECKOUT (read before the imports below) times another checkout's raspicl with this
# script, for a before/after table measured the same way
_ROOT = (sys.argv[sys.argv.index("--root") + 1] if "--root" in sys.argv
         else str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, _ROOT)

import torch  # noqa: E402

from raspicl.interpret import interpret  # noqa: E402
from raspicl.model import threads_for  # noqa: E402
from raspicl.prompts import random_prompts  # noqa: E402
from raspicl.registry import find_program  # noqa: E402
from raspicl.verify import compile_checked  # noqa: E402

torch.set_num_threads(1)

CASES = [("gd_step", {"d": 4}), ("sherman_morrison", {"d": 4}), ("ridge", {"d": 2, "n": 4})]
BATCHES = (1, 1024, 8192)
DTYPES = (torch.float64, torch.float32)


def interleaved(fns: list[Callable[[], object]], repeats: int,
                clock: Callable[[], float]) -> list[float]:
    """Each fn's fastest of `repeats` timed calls, in seconds, after one untimed warm-up each,
    the fns timed in turn within every repeat: load that comes and goes on a shared machine
    then slows them alike, and their ratios stay put (bench/timing.py's best_of times one fn
    after another)."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times, strict=True):
            t0 = clock()
            fn()
            ts.append(clock() - t0)
    return [min(ts) for ts in times]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="repeats per timing (best is kept)")
    ap.add_argument("--batches", type=int, nargs="+", default=list(BATCHES),
                    help=f"batch sizes (default {' '.join(map(str, BATCHES))})")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="time.perf_counter (wall) or time.process_time (this process's CPU "
                         "time: steadier on a loaded machine)")
    ap.add_argument("--root", metavar="CHECKOUT", default=_ROOT,
                    help="import raspicl and the programs from this checkout (default: this one)")
    args = ap.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    head = (f"{'program':16s} {'params':10s} {'dtype':7s} {'batch':>5s} {'interp ms':>10s} "
            f"{'solver ms':>10s} {'dense ms':>10s} {'compact ms':>10s} {'dense/int':>9s} "
            f"{'compact/int':>11s} {'compact/solver':>14s}")
    print(head)
    print("-" * len(head))
    for name, params in CASES:
        pf = find_program(name)
        program = pf.build(**params)
        cm64 = compile_checked(pf, program, "float64")
        shown = " ".join(f"{k}={v}" for k, v in params.items())
        for dtype in DTYPES:
            cm = cm64 if dtype == torch.float64 else cm64.to(dtype)
            dense = cm.to()
            dense.compact = False
            for batch in args.batches:
                prompts = random_prompts(batch, program.d, program.n, seed=batch)
                t_int, t_sol, t_dense, t_comp = interleaved(
                    [lambda p=prompts, g=program: interpret(g, p),
                     lambda p=prompts, f=pf, k=params: f.reference(p, **k),
                     lambda p=prompts, m=dense: m.predict(p, check="ignore"),
                     lambda p=prompts, m=cm: m.predict(p, check="ignore")], args.repeats, clock)
                print(f"{name:16s} {shown:10s} {str(dtype)[6:]:7s} {batch:5d} "
                      f"{1e3 * t_int:10.2f} {1e3 * t_sol:10.2f} {1e3 * t_dense:10.2f} "
                      f"{1e3 * t_comp:10.2f} {t_dense / t_int:9.1f} {t_comp / t_int:11.1f} "
                      f"{t_comp / t_sol:14.1f}", flush=True)
    print(f"\nbest of {args.repeats} interleaved repeats ({args.clock} clock); torch threads per "
          f"forward "
          f"pass {threads_for()} "
          f"(raspicl.model.threads_for); numpy (interp, solver) at OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS')}; quote the ratios, not the times")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
