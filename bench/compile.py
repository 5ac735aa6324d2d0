"""Compile time and memory per program and size.

    python bench/compile.py                          # the default cases, one subprocess each
    python bench/compile.py ridge d=2 n=32 --loops share   # one case
    python bench/compile.py --sweep-share            # ridge and sgd, loops="share", over n
    python bench/compile.py --before /path/to/old/checkout   # each case old, then new

Each case runs in a fresh subprocess, so that its peak resident memory is its own. For each
case it prints the wall time of `compile_program` and its CPU time (time.process_time: the
figure to compare on a loaded machine, where other processes stretch the wall time), the CPU
time of building the program before it (`build_s`: `find_program(name).build(**params)`, which
a user waits for too), the subprocess's peak RSS (getrusage
ru_maxrss: the high-water mark of the whole process, torch and raspicl included), the RSS right
before compiling (the baseline of importing raspicl and torch and building the program), the
difference (what compiling added at its peak), and the number of torch and BLAS threads it
used, and the feasibility passes the compile ran (`passes`: each one runs the model on the
calibration prompts; a pass whose findings re-tune a constant is followed by another). The
garbage collector runs once right before the timed compile: otherwise whether one full
collection over every object of the process (torch's and the imports', about 0.1 s) falls
inside a small compile depends on how many objects came before it (gd_step d = 4: 0.06 s, or
0.17 s with one). Threads
are pinned to 1 (torch.set_num_threads and the OMP/OPENBLAS/MKL variables) unless
--threads says otherwise: on a small shared machine more threads make these small matmuls
slower, not faster.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_CASES = [
    ("gd_step", {"d": 4}, "unroll"),
    ("sherman_morrison", {"d": 8}, "unroll"),
    ("sherman_morrison", {"d": 32}, "unroll"),
    ("ridge", {"d": 2, "n": 32}, "unroll"),
    ("ridge", {"d": 2, "n": 32}, "share"),
    ("ridge", {"d": 8, "n": 16}, "unroll"),
    ("sgd", {"d": 2, "n": 32}, "share"),
    ("newton", {"d": 8, "n": 8}, "unroll"),
]
SHARE_SWEEP = [("ridge", {"d": 2}, [4, 8, 16, 32]), ("sgd", {"d": 2}, [4, 8, 16, 32])]


def _rss_kib() -> int:
    """The current resident set size of this process, in KiB (Linux /proc)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _floor(cm, program) -> dict:
    """CPU seconds of what a compile cannot do without, on the finished model and its
    calibration prompts (the default domain, as run_one compiles): one bare forward pass of
    the compact plan (`forward_cpu_s`) and one feasibility pass, the forward pass and the
    monitor's walk (`pass_cpu_s`)."""
    import time

    from raspicl.compiler.calibrate import calibration_prompts
    from raspicl.compiler.config import CompilerConfig
    from raspicl.compiler.feasibility import measure

    prompts, _ = calibration_prompts(program, CompilerConfig(), None)
    c0 = time.process_time()
    cm.predict(prompts, check="ignore")
    c1 = time.process_time()
    measure(cm.runner(), cm.layout, prompts, "float64", plan=cm.plan())  # the model's plan
    c2 = time.process_time()
    return {"forward_cpu_s": c1 - c0, "pass_cpu_s": c2 - c1}


def run_one(name: str, params: dict, loops: str, threads: int, root: Path = ROOT,
            floor: bool = False) -> dict:
    """Compile one case in this process and return its figures (call in a fresh process)."""
    import gc
    import resource
    import time
    import warnings

    import torch

    torch.set_num_threads(threads)
    sys.path.insert(0, str(root))
    from raspicl.compiler import compile_program
    from raspicl.errors import ContractWarning
    from raspicl.registry import find_program

    b0 = time.process_time()
    program = find_program(name).build(**params)
    build_cpu = time.process_time() - b0
    base = _rss_kib()
    gc.collect()  # the imports' garbage is collected here, not by a full collection inside
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ContractWarning)
        cm = compile_program(program, loops=loops)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    floor = _floor(cm, program) if floor else {}
    return {"program": name, "params": params, "loops": loops, "seconds": seconds,
            "cpu_seconds": cpu, "build_cpu_seconds": build_cpu, **floor,
            "peak_mb": peak / 1024, "base_mb": base / 1024, "added_mb": (peak - base) / 1024,
            "parameters": cm.summary()["params"], "torch_threads": torch.get_num_threads(),
            "passes": cm.layout["monitor"]["calibration"]["tuning_passes"],
            "env_threads": os.environ.get("OMP_NUM_THREADS")}


def spawn(name: str, params: dict, loops: str, threads: int, root: Path = ROOT,
          floor: bool = False) -> dict:
    """run_one in a fresh interpreter (raspicl imported from `root`, programs read from
    root/programs), so that peak RSS is the case's own."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads))
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    args = [sys.executable, str(Path(__file__).resolve()), "--child", name,
            *(f"{k}={v}" for k, v in params.items()), "--loops", loops, "--threads",
            str(threads), "--root", str(root), *(["--floor"] if floor else [])]
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=False, cwd=root)
    if out.returncode != 0:
        raise RuntimeError(f"{name} {params} {loops}: {out.stderr.strip()[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _row(r: dict, tag: str = "") -> str:
    size = " ".join(f"{k}={v}" for k, v in r["params"].items())
    return (f"{tag + r['program']:<24} {size:<10} {r['loops']:<6} {r['seconds']:>8.2f} "
            f"{r.get('cpu_seconds', float('nan')):>7.2f} "
            f"{r.get('build_cpu_seconds', float('nan')):>7.2f} "
            f"{r['peak_mb']:>9.0f} {r['base_mb']:>8.0f} {r['added_mb']:>9.0f} "
            f"{r['parameters']:>10} {r['torch_threads']:>3} {r.get('passes', '?'):>6}"
            + (f" {r['forward_cpu_s']:>8.2f} {r['pass_cpu_s']:>7.2f} "
               f"{r['cpu_seconds'] / r['pass_cpu_s']:>9.1f}" if "pass_cpu_s" in r else ""))


HEADER = (f"{'program':<24} {'size':<10} {'loops':<6} {'time_s':>8} {'cpu_s':>7} {'build_s':>7} "
          f"{'peak_MB':>9} {'base_MB':>8} {'added_MB':>9} {'params':>10} {'thr':>3} "
          f"{'passes':>6}")
FLOOR_HEADER = f" {'fwd_cpu_s':>8} {'pass_cpu':>7} {'cpu/pass':>9}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("program", nargs="?")
    ap.add_argument("sets", nargs="*", help="k=v sizes")
    ap.add_argument("--loops", default="unroll", choices=("unroll", "share"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sweep-share", action="store_true",
                    help="ridge and sgd with loops='share' over n")
    ap.add_argument("--before", type=Path, metavar="CHECKOUT",
                    help="also run each case, just before, with raspicl and programs/ from "
                         "this other checkout (rows tagged before:/after:)")
    ap.add_argument("--floor", action="store_true",
                    help="also time one bare forward pass and one feasibility pass (forward "
                         "and monitor walk) of the finished model on its calibration prompts")
    ap.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    params = {k: int(v) for k, v in (s.split("=", 1) for s in a.sets)}
    if a.child:
        print(json.dumps(run_one(a.program, params, a.loops, a.threads, a.root, a.floor)))
        return 0
    if a.program:
        cases = [(a.program, params, a.loops)]
    elif a.sweep_share:
        cases = [(name, {**fixed, "n": n}, "share") for name, fixed, ns in SHARE_SWEEP
                 for n in ns]
    else:
        cases = DEFAULT_CASES
    print(f"threads: torch {a.threads}, OMP/OPENBLAS/MKL {a.threads}; peak_MB is the "
          f"process's ru_maxrss, base_MB its RSS before compile_program, added_MB the "
          f"difference")
    print(HEADER + (FLOOR_HEADER if a.floor else ""))
    for name, p, loops in cases:
        if a.before is not None:
            print(_row(spawn(name, p, loops, a.threads, a.before.resolve(), a.floor), "before:"),
                  flush=True)
            print(_row(spawn(name, p, loops, a.threads, floor=a.floor), "after:"), flush=True)
        else:
            print(_row(spawn(name, p, loops, a.threads, floor=a.floor)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
