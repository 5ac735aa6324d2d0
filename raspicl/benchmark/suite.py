"""`raspicl benchmark`: the suite of compiled models, the reference methods on each, and the
leaderboard (markdown and JSON).

The suite: every bundled program at two sizes (its GRID's first, and its first with d >= 2),
for both targets (paper, gpt2), plain and disguised (raspicl.disguise, seed DISGUISE_SEED, pad
DISGUISE_PAD). `--quick` (the tests) takes gd_step and ridge at their first size, with fewer
prompts, variables and DAS steps. Each model is compiled in float64 with the default
configuration, its ground truth derived from its layout (raspicl.groundtruth), its task drawn
(raspicl.benchmark.tasks), and every reference method (raspicl.benchmark.methods) scored
(raspicl.benchmark.score).

The leaderboard averages each metric over the models of a setting (target x plain/disguised)
and their studied variables, ignoring NaN (a metric a method does not produce, a node AUROC
with one class only); a second table restricts the variable metrics to the FOCUS quantities
(w, A^-1, X^T y).
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raspicl.benchmark.methods import DAS_STEPS, METHODS, run_methods
from raspicl.benchmark.score import Scores, score_task
from raspicl.benchmark.subject import RaspiclSubject
from raspicl.benchmark.tasks import FOCUS, focus_role, make_task

DISGUISE_SEED = 1
DISGUISE_PAD = 2
METRICS = ("precision", "recall", "f1", "node_auroc", "edge_auroc", "subspace_cos2",
           "faithfulness")


@dataclass(frozen=True)
class Config:
    """How big a run is."""

    programs: tuple[str, ...] | None  # None: every bundled program
    sizes: int  # 1: each program's first GRID size; 2: also its first with d >= 2
    n_fit: int
    n_test: int
    max_variables: int
    das_steps: int


FULL = Config(None, 2, 24, 16, 3, DAS_STEPS // 2)
QUICK = Config(("gd_step", "ridge"), 1, 16, 8, 2, 10)


def suite(config: Config) -> list[tuple[str, dict]]:
    """(program, params) of the suite's models (before target and disguise)."""
    from raspicl.registry import bundled_programs, find_program

    names = config.programs or tuple(pf.name for pf in bundled_programs())
    out = []
    for name in names:
        grid = find_program(name).grid
        sizes = [grid[0]]
        wider = [g for g in grid if g.get("d", 1) >= 2 and g != grid[0]]
        if config.sizes > 1 and (wider or len(grid) > 1):
            sizes.append(wider[0] if wider else grid[1])
        out += [(name, dict(s)) for s in sizes]
    return out


def run_benchmark(config: Config = FULL, progress=None) -> dict:
    """Run the suite; the result (every model's scores, the aggregates, timing) as JSON-ready
    data. progress: called with a line of text per model."""
    from raspicl.compiler import compile_program
    from raspicl.disguise import disguise
    from raspicl.groundtruth import derive
    from raspicl.registry import find_program

    start = time.perf_counter()
    models = []
    for name, params in suite(config):
        pf = find_program(name)
        program = pf.build(**params)
        for arch in ("paper", "gpt2"):
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                plain = compile_program(program, domain=pf.domain, arch=arch)
            for disguised in (False, True):
                t1 = time.perf_counter()
                cm = disguise(plain, DISGUISE_SEED, DISGUISE_PAD) if disguised else plain
                gt = derive(cm.layout)
                task = make_task(gt, program, cm.layout, config.n_fit, config.n_test,
                                 max_variables=config.max_variables)
                with np.errstate(all="ignore"):
                    outs = run_methods(RaspiclSubject(cm), task, METHODS, config.das_steps)
                scores = [score_task(task, o) for o in outs]
                seconds = time.perf_counter() - t1 + (0 if disguised else t1 - t0)
                models.append({
                    "program": name, "params": params, "arch": arch, "disguised": disguised,
                    "d_model": gt.d_model, "variables": [
                        {"name": vt.name, "register": vt.var.register,
                         "focus": focus_role(vt.var.register), "width": vt.var.width,
                         "tokens": list(vt.tokens), "true_sites": len(vt.truth)}
                        for vt in task.variables],
                    "scores": [s.to_json() for s in scores], "seconds": round(seconds, 2)})
                if progress is not None:
                    progress(f"{name} {params} {arch} {'disguised' if disguised else 'plain'}"
                             f": {len(task.variables)} variables, {seconds:.1f} s")
    return {"config": config.__dict__, "methods": list(METHODS), "models": models,
            "leaderboard": aggregate(models), "focus": aggregate(models, focus=True),
            "seconds": round(time.perf_counter() - start, 1)}


def _mean(values: list[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def aggregate(models: list[dict], focus: bool = False) -> list[dict]:
    """One row per (method, target, disguised): each metric's mean (module doc). focus: the
    variable metrics over FOCUS variables only, per role."""
    rows = []
    for method in METHODS:
        for arch in ("paper", "gpt2"):
            for disguised in (False, True):
                ms = [m for m in models if m["arch"] == arch and m["disguised"] == disguised]
                scores: list[Scores] = [next(s for s in m["scores"] if s["method"] == method)
                                        for m in ms]
                roles = [None] if not focus else list(FOCUS)
                for role in roles:
                    row = {"method": method, "arch": arch, "disguised": disguised}
                    if role is not None:
                        row["focus"] = role
                    vs = [v for m, s in zip(ms, scores, strict=True) for v in s["variables"]
                          if role is None or focus_role(v["register"]) == role]
                    row["variables"] = len(vs)
                    for k in ("precision", "recall", "f1", "subspace_cos2", "faithfulness"):
                        row[k] = _mean([v[k] for v in vs])
                    if not focus:
                        row["node_auroc"] = _mean([s["node_auroc"] for s in scores])
                        row["edge_auroc"] = _mean([s["edge_auroc"] for s in scores])
                    rows.append(row)
    return rows


def _cell(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def markdown(result: dict) -> str:
    """The leaderboard as markdown: the main table, then the FOCUS table."""
    lines = ["| method | target | basis | loc. precision | loc. recall | node AUROC | "
             "edge AUROC | subspace cos² | faithfulness |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["leaderboard"]:
        lines.append(f"| {r['method']} | {r['arch']} | "
                     f"{'disguised' if r['disguised'] else 'plain'} | "
                     + " | ".join(_cell(r[k]) for k in ("precision", "recall", "node_auroc",
                                                          "edge_auroc", "subspace_cos2",
                                                          "faithfulness")) + " |")
    lines += ["", "Focus variables (w, A⁻¹, Xᵀy), both targets pooled: subspace cos² / "
                  "faithfulness (variables scored)", "",
              "| method | basis | " + " | ".join(FOCUS) + " |",
              "|---|---|" + "---|" * len(FOCUS)]
    for method in METHODS:
        for disguised in (False, True):
            cells = []
            for role in FOCUS:
                rs = [r for r in result["focus"] if r["method"] == method
                      and r["disguised"] == disguised and r["focus"] == role]
                n = sum(r["variables"] for r in rs)
                cos2 = _mean([r["subspace_cos2"] for r in rs for _ in range(r["variables"])])
                faith = _mean([r["faithfulness"] for r in rs for _ in range(r["variables"])])
                cells.append(f"{_cell(cos2)} / {_cell(faith)} ({n})")
            lines.append(f"| {method} | {'disguised' if disguised else 'plain'} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(result: dict, out: Path) -> tuple[Path, Path]:
    """out/leaderboard.md and out/leaderboard.json (NaN written as null)."""
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / "leaderboard.md", out / "leaderboard.json"
    md.write_text(markdown(result))
    js.write_text(json.dumps(_null_nan(result), indent=1, allow_nan=False) + "\n")
    return md, js


def _null_nan(x):
    """The result with NaN (a metric not produced) as null, so that the JSON is standard."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _null_nan(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_null_nan(v) for v in x]
    return x


# ---------------------------------------------------------------------------------- command


def add_commands(sub) -> None:
    """Register `raspicl benchmark` on the CLI's subparsers."""
    p = sub.add_parser(
        "benchmark", help="score interpretability methods on compiled models (ground truth)",
        description="Compile the suite (every bundled program at two sizes, paper and gpt2, "
                    "plain and disguised), run the reference methods (linear and sparse "
                    "probes, activation patching, attribution patching, DAS) against each "
                    "model's ground truth and exact counterfactuals, and write the "
                    "leaderboard (docs/benchmark.md).")
    p.add_argument("--quick", action="store_true",
                   help="a small suite (gd_step and ridge, first size; fewer prompts), for "
                        "tests")
    p.add_argument("--out", metavar="DIR", default="benchmark",
                   help="where leaderboard.md and leaderboard.json go (default: benchmark)")
    p.set_defaults(func=cmd_benchmark)


def cmd_benchmark(args) -> int:
    import sys

    import torch

    torch.set_num_threads(1)
    config = QUICK if args.quick else FULL
    result = run_benchmark(config, progress=lambda line: print(line, file=sys.stderr))
    md, js = write(result, Path(args.out))
    print(markdown(result))
    print(f"{len(result['models'])} models in {result['seconds']:.0f} s -> {md}, {js}")
    return 0
