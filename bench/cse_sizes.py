"""Parameters before and after common-subexpression elimination (compiler/cse.py).

    python bench/cse_sizes.py              # every bundled program over its GRID, and the
                                           # momentum-SGD scan of issue 20
    python bench/cse_sizes.py --quick      # the momentum-SGD scan only

Each case is compiled twice in float64 with its program's DOMAIN, CompilerConfig(cse=False)
and the default (cse=True), unrolled and, for a program with a loop, shared; a row gives
blocks stored/run, heads, d_model, d_mlp and parameters of each, and the duplicates the pass
made aliases of. The momentum-SGD scan (`momentum` below, which tests/test_cse.py compiles
too: a step that uses v_new in two state entries, `w + v_new` and `v_new`) is compared with the
same step with its product bound once by hand (p.let), an independent construction of what the
pass should give.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raspicl import Program  # noqa: E402
from raspicl.compiler import CompilerConfig, compile_program  # noqa: E402
from raspicl.errors import ContractWarning  # noqa: E402
from raspicl.model import threads_for  # noqa: E402
from raspicl.registry import bundled_programs  # noqa: E402


def momentum(d: int = 2, n: int = 4, lr: float = 0.1, beta: float = 0.5,
             bind: bool = False) -> Program:
    """Online SGD with heavy-ball momentum as a scan: v' = beta v - lr x (x^T w - y),
    w' = w + v'. The step uses v' in both entries; bind=True binds its product x (x^T w - y)
    to a register by hand (p.let), so it is computed once whatever the compiler does."""
    p = Program("momentum_sgd", d=d, n=n, params={"d": d, "n": n, "lr": lr, "beta": beta,
                                                   "bind": bind})

    def step(s, x, y):
        g = x * (x @ s.w - y)
        if bind:
            g = p.let("g", g)
        v_new = beta * s.v - lr * g
        return {"w": s.w + v_new, "v": v_new}

    scan = p.scan(init={"w": np.zeros(d), "v": np.zeros(d)}, step=step,
                  predict=lambda s, x: s.w @ x, name="m")
    p.output(scan.prediction, roles=("x", "query"))
    return p


def sizes(program: Program, loops: str, domain=None, cse: bool = True) -> dict:
    """compile_program's summary (and the number of duplicates aliased) of one compile."""
    with warnings.catch_warnings():  # sizes only
        warnings.simplefilter("ignore", ContractWarning)
        cm = compile_program(program, CompilerConfig(cse=cse), loops=loops, domain=domain)
    return cm.summary() | {"common": len(cm.layout["depth"].get("common", []))}


def _size(s: dict) -> str:
    blocks = (f"{s['blocks']}" if s["blocks"] == s["blocks_run"]
              else f"{s['blocks']}/{s['blocks_run']}")
    return f"{blocks} · {s['heads']} · {s['d_model']} · {s['d_mlp']} · {s['params']}"


def rows(which: str = "all") -> list[tuple[str, str, str, dict, dict]]:
    """(program, size, loops, before, after) for every case (module doc) of `which`:
    "momentum" (the scan and its hand-bound form), "bundled" or "all"."""
    out = []
    cases = []
    if which in ("momentum", "all"):
        cases += [("momentum_sgd (scan)", momentum(), None),
                  ("momentum_sgd, bound by hand", momentum(bind=True), None)]
    if which in ("bundled", "all"):
        cases += [(pf.name, pf.build(**params), pf.domain) for pf in bundled_programs()
                  for params in pf.grid]
    for name, program, domain in cases:
        looped = any(op.loop is not None for op in program.ops)
        for loops in ["unroll"] + (["share"] if looped else []):
            out.append((name, json.dumps(program.params if name.startswith("momentum")
                                         else {k: program.params[k] for k in program.params
                                               if k in ("d", "n", "T")}, sort_keys=True),
                        loops, sizes(program, loops, domain, cse=False),
                        sizes(program, loops, domain, cse=True)))
    return out


def table(which: str = "all") -> str:
    """The rows as a markdown table: blocks · heads · d_model · d_mlp · parameters."""
    lines = ["| program | size | loops | without CSE | with CSE | duplicates | parameters |",
             "|---|---|---|---|---|---|---|"]
    for name, size, loops, before, after in rows(which):
        change = after["params"] - before["params"]
        pct = f"{100 * change / before['params']:+.1f}%" if change else "same"
        size = size.replace('"', "").replace("{", "").replace("}", "")
        if name.startswith("momentum"):
            size = ", ".join(part for part in size.split(", ")
                             if part.split(": ")[0] in ("d", "n"))
        lines.append(f"| {name} | {size} | {loops} | {_size(before)} | {_size(after)} | "
                     f"{after['common']} | {pct} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the momentum-SGD scan only")
    args = ap.parse_args()
    torch.set_num_threads(threads_for())
    print("blocks (stored/run) · heads · d_model · d_mlp · parameters, float64")
    print(table("momentum" if args.quick else "all"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
