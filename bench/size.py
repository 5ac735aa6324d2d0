"""Model size as a function of d, n and T for every learning program, checked against theory.

    python bench/size.py            # prints the table and the order checks; exit 1 if one fails

For each program and each swept parameter it compiles the program (float64, unrolled; sgd also
looped) and prints blocks (stored), blocks run, heads, the critical-path depth (crit: the fewest
blocks any schedule of the program's op kinds can run, compiler/fusion.critical_path_depth,
beside `run`, the depth achieved), d_model, d_mlp and parameters. Then it
fits the growth the theory predicts and checks it:
  - blocks O(n) for sgd and ridge: blocks(n) is affine in n (constant increments), at most
    MAX_PER_EXAMPLE blocks per example (issue 10's targets: 2 for sgd, 3 for ridge);
  - blocks O(T) for batch_gd and newton: affine in T;
  - width O(d^2) for ridge and newton: d_model(d) / d^2 stays bounded (the d = 8 ratio is no
    more than the d = 4 ratio times 1.25, so the growth is not faster than quadratic) — and
    O(d) for sgd and batch_gd in the same sense with d in place of d^2;
  - compiled with loops="share", every program stores a number of blocks independent of n (or
    T): one shared body, run once per iteration, so its parameters do not grow either.
Compile times are not measured here; this is about sizes.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raspicl.compiler import compile_program  # noqa: E402
from raspicl.errors import ContractWarning  # noqa: E402
from raspicl.model import threads_for  # noqa: E402
from raspicl.registry import find_program  # noqa: E402

SWEEPS = {
    "sgd": [("n", [1, 2, 4, 8, 16], {"d": 2}), ("d", [1, 2, 4, 8], {"n": 4})],
    "ridge": [("n", [1, 2, 4, 8, 16], {"d": 2}), ("d", [1, 2, 4, 8], {"n": 4})],
    "batch_gd": [("T", [1, 2, 4, 8, 16], {"d": 2, "n": 4}), ("d", [1, 2, 4, 8], {"n": 4, "T": 2})],
    "newton": [("T", [1, 2, 4, 8, 16], {"d": 2, "n": 4}), ("d", [1, 2, 4, 8], {"n": 4, "T": 2})],
}
LOOPED = {
    "sgd": [("n", [1, 2, 4, 8, 16], {"d": 2})],
    "ridge": [("n", [1, 2, 4, 8, 16], {"d": 2})],
    "batch_gd": [("T", [1, 2, 4, 8, 16], {"d": 2, "n": 4})],
    "newton": [("T", [1, 2, 4, 8, 16], {"d": 2, "n": 4})],
}
BLOCK_ORDER = {"sgd": "n", "ridge": "n", "batch_gd": "T", "newton": "T"}
# Blocks per example (the slope of blocks(n), unrolled) at most: sgd as the textbook update
# (e = x^T w - y, g = x e: two MLP steps), ridge (u = A x; u u^T and 1 + x^T u; the division).
MAX_PER_EXAMPLE = {"sgd": 2, "ridge": 3}
WIDTH_POWER = {"sgd": 1, "batch_gd": 2, "ridge": 2, "newton": 2}


def measure(name: str, params: dict, loops: str = "unroll") -> dict:
    with warnings.catch_warnings():  # sizes only: bench/contract.py measures the contract
        warnings.simplefilter("ignore", ContractWarning)
        cm = compile_program(find_program(name).build(**params), loops=loops)
    return cm.summary() | {"critical": cm.layout["depth"]["critical_path"]}


def slope(xs: list[int], ys: list[int]) -> float | None:
    """The amount ys grows by per unit of xs when that is the same everywhere and positive
    (exactly: sizes are integers), else None."""
    slopes = {(ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i]) for i in range(len(xs) - 1)}
    return next(iter(slopes)) if len(slopes) == 1 and next(iter(slopes)) > 0 else None


def affine(xs: list[int], ys: list[int]) -> bool:
    """ys grows by the same amount per unit of xs."""
    return slope(xs, ys) is not None


def main() -> int:
    rows, checks = [], []
    for name, sweeps in SWEEPS.items():
        for loops, table in (("unroll", sweeps), ("share", LOOPED.get(name, []))):
            for var, values, fixed in table:
                sizes = []
                for v in values:
                    params = {**fixed, var: v}
                    s = measure(name, params, loops)
                    sizes.append(s)
                    rows.append((name, loops, " ".join(f"{k}={params[k]}" for k in sorted(params)),
                                 s))
                blocks = [s["blocks"] for s in sizes]
                run = [s["blocks_run"] for s in sizes]
                width = [s["d_model"] for s in sizes]
                if loops == "share":
                    ok = len(set(blocks[1:])) == 1 and affine(values, run)  # (1 iteration: no
                    # sharing to do, the body may be scheduled tighter)
                    checks.append((f"{name} looped: stored blocks constant in {var}, runs O({var})",
                                   ok, f"stored {blocks}, run {run}"))
                elif var == BLOCK_ORDER[name]:
                    ok = affine(values, blocks)
                    checks.append((f"{name}: blocks O({var})", ok, f"{blocks}"))
                    if name in MAX_PER_EXAMPLE:
                        per = slope(values, blocks)
                        most = MAX_PER_EXAMPLE[name]
                        checks.append((f"{name}: at most {most} blocks per example",
                                       per is not None and per <= most,
                                       f"{per if per is None else int(per)} per example"))
                elif var == "d":
                    p = WIDTH_POWER[name]
                    ratios = [w / d**p for w, d in zip(width, values, strict=True)]
                    ok = ratios[-1] <= ratios[-2] * 1.25
                    shown = ", ".join(f"{r:.2f}" for r in ratios)
                    checks.append((f"{name}: d_model O(d^{p})", ok, f"d_model/d^{p} = {shown}"))
    head = f"{'program':9s} {'mode':7s} {'params':16s} {'blocks':>6s} {'run':>5s} {'heads':>5s} " \
           f"{'crit':>5s} {'d_head':>6s} {'d_model':>7s} {'d_mlp':>6s} {'params':>10s}"
    print(head)
    print("-" * len(head))
    for name, loops, params, s in rows:
        print(f"{name:9s} {loops:7s} {params:16s} {s['blocks']:6d} {s['blocks_run']:5d} "
              f"{s['heads']:5d} {s['critical']:5d} {s['d_head']:6d} {s['d_model']:7d} "
              f"{s['d_mlp']:6d} "
              f"{s['params']:10d}")
    print()
    failed = 0
    for what, ok, detail in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {what}: {detail}")
        failed += not ok
    print(f"torch threads per forward pass {threads_for()} (raspicl.model.threads_for)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
