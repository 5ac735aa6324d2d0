"""Training throughput of K models of one shape: one model per process (raspicl train's and a
sweep's default) against all K in one process as one stacked model (raspicl.icl.batched, the
sweep's trainer = "batched").

    python bench/sweep_throughput.py [--models 4] [--steps 200] [--layers 2] [--d-model 64]
                                     [--device cpu] [--parallel 1] [--repeats 3]

Per process: K fresh interpreters, each running raspicl.icl.train.train() on one seed
(--parallel P of them at once; P = 1 on a CPU with one core per job is the fair comparison
with one batched process on one core). Batched: one fresh interpreter running train_batched()
on the same K seeds. Both: the same model, batch, optimizer and schedule, S steps, no
checkpoints, a final evaluation on 64 prompts, 1 torch thread on CPU. Each child times its own
training (after its imports); the figure is samples/s = K x S x batch / time, where time is
the children's training time (summed when they ran one after another, the longest when in
parallel), and also with the processes' start-up (imports) included. The two alternate,
`repeats` times, so that the load of other processes on a shared machine falls on both; the
medians and their ratio are printed, and every pair's ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(args) -> None:
    """Run in a fresh interpreter: train one model (--seed) or the K batched, print JSON."""
    sys.path.insert(0, str(ROOT))
    import torch

    from raspicl.icl.batched import Member, train_batched
    from raspicl.icl.tasks import RegressionTask
    from raspicl.icl.train import TrainConfig, train
    from raspicl.icl.trained import ModelConfig

    torch.set_num_threads(1)
    model = ModelConfig(d=args.d, n_positions=args.n, layers=args.layers,
                        d_model=args.d_model, heads=args.heads)
    task = RegressionTask(args.d, args.n)

    def cfg(seed: int) -> TrainConfig:
        return TrainConfig(steps=args.steps, batch=args.batch, warmup=max(1, args.steps // 10),
                           seed=seed, eval_every=0, eval_prompts=64, checkpoint_every=0,
                           device=args.device)

    if args.device.startswith("cuda"):  # the context is start-up, not training
        torch.zeros(1, device=args.device)
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    if args.child == "single":
        r = train(model, task, cfg(args.seed), progress=False, log_every=args.steps)
        loss = [r.final_loss]
    else:
        rs = train_batched(model, [Member(task, cfg(s)) for s in range(args.models)],
                           log_every=args.steps)
        loss = [r.final_loss for r in rs]
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    print(json.dumps({"seconds": time.perf_counter() - t0, "loss": loss}))


def run_child(argv: list[str]) -> tuple[float, float]:
    """(training seconds the child measured, wall seconds including its start-up)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True,
                         env=env, check=True).stdout
    wall = time.perf_counter() - t0
    return json.loads(out.strip().splitlines()[-1])["seconds"], wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=int, default=4, help="K models (seeds 0..K-1)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--d", type=int, default=3)
    ap.add_argument("--n", type=int, default=9)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--parallel", type=int, default=1,
                    help="per-process runs at once (default 1: one after another)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", choices=["single", "batched"], help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    common = ["--steps", str(args.steps), "--d", str(args.d), "--n", str(args.n), "--layers",
              str(args.layers), "--d-model", str(args.d_model), "--heads", str(args.heads),
              "--batch", str(args.batch), "--device", args.device, "--models",
              str(args.models)]
    samples = args.models * args.steps * args.batch
    print(f"{args.models} models d={args.d} n={args.n} L={args.layers} H={args.d_model} "
          f"heads={args.heads}, batch {args.batch}, {args.steps} steps, {args.device}, 1 "
          f"thread per process; per process: {args.parallel} at once")
    single, single_wall, batched, batched_wall = [], [], [], []
    for rep in range(args.repeats):
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.parallel) as pool:
            runs = list(pool.map(lambda s: run_child([*common, "--child", "single", "--seed",
                                                      str(s)]), range(args.models)))
        span = time.perf_counter() - t0
        train_s = sum(r[0] for r in runs) if args.parallel == 1 else max(r[0] for r in runs)
        single.append(samples / train_s)
        single_wall.append(samples / span)
        secs, wall = run_child([*common, "--child", "batched"])
        batched.append(samples / secs)
        batched_wall.append(samples / wall)
        print(f"repeat {rep}: per process {single[-1]:8.0f} samples/s ({single_wall[-1]:7.0f} "
              f"with start-up), batched {batched[-1]:8.0f} ({batched_wall[-1]:7.0f}); ratio "
              f"{batched[-1] / single[-1]:.2f}", flush=True)
    ms, mb = statistics.median(single), statistics.median(batched)
    msw, mbw = statistics.median(single_wall), statistics.median(batched_wall)
    print(f"median samples/s: per process {ms:.0f}, batched {mb:.0f}; ratio batched / per "
          f"process {mb / ms:.2f} (with start-up: {msw:.0f} vs {mbw:.0f}, ratio "
          f"{mbw / msw:.2f})")


if __name__ == "__main__":
    main()
