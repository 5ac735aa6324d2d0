"""What the runtime monitor costs: cm.predict with and without the contract.

    python bench/monitor.py                 # the table below, best of 5 repeats
    python bench/monitor.py --repeats 9

For gd_step d=4, sherman_morrison d=4 and ridge d=2 n=4 (float64, each program's DOMAIN, its
contract tolerance) it times cm.predict(prompts, check="ignore") (the forward pass and the
readout only) against cm.predict(prompts, check="warn") (the same pass, then the monitor's walk
over every instruction at every token; its DomainWarnings are suppressed) at batch 1 and batch
1024, each the best of --repeats runs (time.perf_counter), and prints both times and their
ratio, all measured in one run.

Quote the ratios, not the absolute times: those depend on the machine and its load (here two
shared cores, torch and numpy at one thread on purpose: torch at 2 threads is far slower on
this machine). The monitor is numpy over the float64 residual stream, so its share grows with
the number of instructions, tokens and the model's width, not with torch's speed.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/timing.py, also when imported

import torch  # noqa: E402
from timing import best_of  # noqa: E402 (bench/timing.py)

from raspicl.errors import DomainWarning  # noqa: E402
from raspicl.model import threads_for  # noqa: E402
from raspicl.prompts import random_prompts  # noqa: E402
from raspicl.registry import find_program  # noqa: E402
from raspicl.verify import compile_checked  # noqa: E402

torch.set_num_threads(1)

CASES = [("gd_step", {"d": 4}), ("sherman_morrison", {"d": 4}), ("ridge", {"d": 2, "n": 4})]
BATCHES = (1, 1024)


def table(repeats: int = 5) -> str:
    """The table (one row per case and batch, both times and their ratio measured in one run)
    and a closing line with the range of the ratios at each batch size."""
    head = (f"{'program':16s} {'params':10s} {'batch':>5s} {'ignore (ms)':>12s} "
            f"{'warn (ms)':>10s} {'ratio':>6s}")
    lines = [head, "-" * len(head)]
    ratios: dict[int, list[float]] = {b: [] for b in BATCHES}
    for name, params in CASES:
        pf = find_program(name)
        program = pf.build(**params)
        cm = compile_checked(pf, program, "float64")
        for batch in BATCHES:
            prompts = random_prompts(batch, program.d, program.n, seed=0)

            def plain(cm=cm, prompts=prompts):
                return cm.predict(prompts, check="ignore")

            def monitored(cm=cm, prompts=prompts):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DomainWarning)
                    return cm.predict(prompts, check="warn")

            t_plain = best_of(plain, repeats)
            t_mon = best_of(monitored, repeats)
            ratios[batch].append(t_mon / t_plain)
            shown = " ".join(f"{k}={v}" for k, v in params.items())
            lines.append(f"{name:16s} {shown:10s} {batch:5d} {1e3 * t_plain:12.2f} "
                         f"{1e3 * t_mon:10.2f} {t_mon / t_plain:6.1f}")
    lines.append("")
    lines.append(f"best of {repeats} repeats, torch threads per forward pass {threads_for()} "
                 f"(raspicl.model.threads_for); quote the ratios, not the times")
    lines.append("monitored / unmonitored: " + ", ".join(
        f"{min(r):.1f}-{max(r):.1f}x at batch {b}" for b, r in ratios.items()))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="repeats per timing (best is kept)")
    args = ap.parse_args()
    print(table(args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
