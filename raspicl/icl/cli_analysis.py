"""The `raspicl compare` and `raspicl probe` commands (docs/cli.md, docs/experiments.md).

    raspicl compare MODEL_DIR [--noise SIGMA] --out DIR    error, SPD, ILWD against references
    raspicl probe MODEL_DIR [--control DIR] --out DIR      probe R^2 by layer

MODEL_DIR is any model raspicl.icl.predictor.load_predictor reads: a compiled raspicl model
(layout.json) or a trained in-context learner (config.json).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from raspicl.cli_args import add_threads_arg, count_arg, scale_arg, seed_arg
from raspicl.errors import RaspiclError
from raspicl.icl.figures import compare_figure, probe_figure, save_figure

COMPARE_JSON = "compare.json"
COMPARE_PNG = "error.png"
PROBE_JSON = "probe.json"
PROBE_PNG = "probe.png"


# ------------------------------------------------------------------ shared helpers

def _out_dir(path: str) -> Path:
    """--out DIR: created if needed; an existing file there (or above it) is an error."""
    out = Path(path)
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                raise RaspiclError(f"--out {path}: {p} exists and is not a directory")
            break
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RaspiclError(f"--out {path}: cannot create the directory: {exc}") from exc
    return out


def json_safe(value):
    """NaN and infinities as null, numpy scalars and arrays as plain JSON values."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_json(path: Path, data: dict) -> None:
    try:
        path.write_text(json.dumps(json_safe(data), indent=1, allow_nan=False) + "\n")
    except OSError as exc:
        raise RaspiclError(f"{path}: cannot write: {exc}") from exc


def _add_check_arg(p) -> None:
    p.add_argument("--check", choices=["error", "warn"], default="error",
                   help="a compiled model's runtime contract: error (default) stops at a "
                        "prompt it cannot vouch for, naming it; warn runs every prompt and "
                        "reports how many it refused")


def _load(path: str, what: str, check: str = "error"):
    from raspicl.icl.predictor import load_predictor

    p = Path(path)
    if not p.is_dir():
        raise RaspiclError(f"{what} {path}: no such directory")
    return load_predictor(p, check)


def task_for(predictor, noise: float | None, w_scale: float = 1.0):
    """The RegressionTask to evaluate a model on: its d and n (a compiled model's prompt size;
    a trained model's training task, else its config's d and n_positions) with the noise
    given, else the training noise, else 0; and its kind: a trained model's training task's
    (with its sparsity), a compiled model's program's (controls.PROGRAM_TASKS), else linear."""
    from raspicl.icl.tasks import RegressionTask

    recorded = (getattr(predictor, "meta", None) or {}).get("task")
    kind, sparsity = "linear", None
    if hasattr(predictor, "d") and hasattr(predictor, "n"):
        d, n, trained_noise = predictor.d, predictor.n, 0.0
        kind = getattr(predictor, "task_kind", kind)
    elif recorded:
        d, n, trained_noise = recorded["d"], recorded["n"], recorded.get("noise", 0.0)
        w_scale = recorded.get("w_scale", w_scale) if noise is None else w_scale
        kind, sparsity = recorded.get("kind", kind), recorded.get("sparsity")
    elif hasattr(predictor, "config"):
        d, n, trained_noise = predictor.config.d, predictor.config.n_positions, 0.0
    else:
        raise RaspiclError(f"{predictor.name}: cannot tell its d and n")
    try:
        return RegressionTask(d, n, noise=trained_noise if noise is None else noise,
                              w_scale=w_scale, kind=kind, sparsity=sparsity)
    except ValueError as exc:
        raise RaspiclError(f"{predictor.name}: {exc}") from None


def _progress(desc: str, total: int, unit: str):
    """A progress bar on stderr (shown on a terminal only), gone when it closes."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None, leave=False)


def _refusal_note(model, what: str) -> str | None:
    """What to say of a compiled model's refusals over the prompts it ran (None: none)."""
    from raspicl.icl.controls import CompiledPredictor

    if not isinstance(model, CompiledPredictor) or not model.refused:
        return None
    return (f"note: the compiled model's runtime contract refused {model.refused} of "
            f"{model.checked} prompts it ran; {what}")


def _table(title: str, rows: dict[str, list[float]], ks: list[int]) -> str:
    width = max(len(r) for r in rows) if rows else 10
    head = f"{title:{width}s}" + "".join(f"  {'k=' + str(k):>9s}" for k in ks)
    lines = [head]
    for name, vals in rows.items():
        lines.append(f"{name:{width}s}" + "".join(
            f"  {v:9.2e}" if v is not None and math.isfinite(v) else f"  {'-':>9s}"
            for v in vals))
    return "\n".join(lines)


# ------------------------------------------------------------------ compare

def cmd_compare(args) -> int:
    from raspicl.icl import learners as L
    from raspicl.icl import metrics as M
    from raspicl.icl.controls import CompiledPredictor, merge_learners

    out = _out_dir(args.out)
    model = _load(args.model_dir, "MODEL_DIR", args.check)
    task = task_for(model, args.noise)
    refs = L.reference_learners(task)
    if isinstance(model, CompiledPredictor):
        refs = merge_learners(refs, model.program_learners())
    prompts = task.sample(args.prompts, args.seed)
    with _progress("compare", M.compare_steps(refs), "step") as bar:
        def tick(name: str) -> None:
            bar.set_postfix_str(name, refresh=False)
            bar.update(1)

        c = M.compare(model, refs, prompts, ilwd_prompts=min(args.ilwd_prompts, args.prompts),
                      seed=args.seed + 1, progress=tick, targets=task.targets(prompts))
    ks = list(range(task.n + 1))
    gd = {r.name: r.lrs for r in refs if isinstance(r, L.GradientDescent) and r.lrs}
    data = {
        "model": c.model, "model_dir": str(args.model_dir),
        "d": task.d, "n": task.n, "noise": task.noise, "w_scale": task.w_scale,
        "task": task.kind, "sparsity": task.sparsity,
        "ridge_lambda": task.ridge_lambda, "seed": args.seed, "prompts": args.prompts,
        "ilwd_contexts": c.ilwd_contexts, "probes_per_context": c.probes_per_context,
        "probe_seed": args.seed + 1, "intercept": c.intercept,
        "error_target": ("sigmoid(w^T x), the true probability, divided by d"
                         if task.kind == "logistic" else "noiseless w^T x, divided by d"),
        "references": [r.name for r in refs],
        "tuned_gd_lr": gd, "tune_prompts": L.TUNE_PROMPTS, "tune_seed": L.TUNE_SEED,
        "error": c.error, "spd": c.spd, "ilwd": c.ilwd, "mean_spd": c.mean_spd,
        "mspd": c.mspd, "best_match": c.best_match,
    }
    if isinstance(model, CompiledPredictor):
        data["refused"] = {"prompts": model.refused, "checked": model.checked,
                           "findings": model.findings}
    _write_json(out / COMPARE_JSON, data)
    save_figure(compare_figure(json_safe(data)), out / COMPARE_PNG)
    kind = task.kind + (f" (sparsity {task.sparsity})" if task.sparsity else "")
    print(f"{c.model}: {kind} task, d={task.d} n={task.n} noise={task.noise:g} "
          f"w_scale={task.w_scale:g}; "
          f"{args.prompts} prompts (seed {args.seed}), ILWD on {c.ilwd_contexts} contexts x "
          f"{c.probes_per_context} probes (intercept fitted)")
    print()
    print(_table("error (/d)", c.error, ks))
    print()
    print(_table("SPD", c.spd, ks))
    print()
    print(_table("ILWD", c.ilwd, ks))
    print()
    order = sorted(c.mean_spd, key=lambda k: (not math.isfinite(c.mean_spd[k]),
                                               c.mean_spd[k]))
    print("mean SPD over the predicted k: " + ", ".join(
        f"{k} {c.mean_spd[k]:.2e}" for k in order[:5]))
    print(f"best match: {c.best_match}")
    note = _refusal_note(model, "their predictions are kept in the figures above "
                                "(compare.json 'refused'; docs/experiments.md)")
    if note:
        print(note)
    print(f"wrote {out / COMPARE_JSON}, {out / COMPARE_PNG}")
    return 0


# ------------------------------------------------------------------ probe

def _targets(names: list[str] | None, model, task) -> tuple[dict, dict]:
    """The probe targets (name -> function) and, for the task's own targets with parameters,
    those parameters (name -> dict): the names given, else the task's defaults
    (probes.default_targets)."""
    from raspicl.icl import probes as P
    from raspicl.icl.controls import CompiledPredictor

    offered = P.task_targets(task)
    out, params = {}, {}
    for name in names or P.default_targets(task):
        if name == "program":
            if not isinstance(model, CompiledPredictor) or not model.program_learners():
                raise RaspiclError("--target program needs a compiled batch_gd, ridge or sgd "
                                   "model (the weights of its own algorithm)")
            learner = model.program_learners()[0]
            out[f"program:{learner.name}"] = P.learner_target(learner)
        elif name not in offered:
            why = (" (w_ridge's lam = sigma^2/tau^2 is 0 at noise 0: its limit is w_ols)"
                   if name == "w_ridge" and task.kind != "logistic" else "")
            raise RaspiclError(f"--target {name}: not a target of the model's {task.kind} "
                               f"task{why}; its targets are {', '.join(offered)}")
        else:
            out[name], p = offered[name]
            if p:
                params[name] = p
    return out, params


def _run_probes(model, prompts, targets: dict, kinds: list[str], seed: int, bar) -> list:
    """Every (target, kind) probe of one model; `bar` counts the probes fitted (its total
    grows by this model's count once its hidden states are known)."""
    from raspicl.icl import probes as P

    if not hasattr(model, "hidden_states"):
        raise RaspiclError(f"{model.name}: has no hidden states to probe")
    hidden = model.hidden_states(prompts)
    bar.total = (bar.total or 0) + len(hidden) * prompts.n * len(targets) * len(kinds)
    bar.refresh()
    out = []
    for tname, fn in targets.items():
        for kind in kinds:
            bar.set_postfix_str(f"{tname} {kind}", refresh=False)
            out.append(P.probe(model, prompts, fn, kind=kind, seed=seed, hidden=hidden,
                               progress=lambda: bar.update(1)).to_dict() | {"target": tname})
    return out


def cmd_probe(args) -> int:
    out = _out_dir(args.out)
    model = _load(args.model_dir, "MODEL_DIR", args.check)
    control = _load(args.control, "--control", args.check) if args.control else None
    task = task_for(model, args.noise)
    if control is not None:
        ctask = task_for(control, args.noise)
        if (ctask.d, ctask.n) != (task.d, task.n):
            raise RaspiclError(f"--control {args.control}: d={ctask.d}, n={ctask.n}; the model "
                               f"has d={task.d}, n={task.n} (they must see the same prompts)")
    kinds = ["linear", "mlp"] if args.kind == "both" else [args.kind]
    targets, params = _targets(args.target, model, task)
    prompts = task.sample(args.prompts, args.seed)
    with _progress("probe", 0, "probe") as bar:
        results = {"model": _run_probes(model, prompts, targets, kinds, args.seed, bar)}
        if control is not None:
            ctargets = {k: v for k, v in targets.items() if not k.startswith("program:")}
            results["control"] = _run_probes(control, prompts, ctargets, kinds, args.seed,
                                             bar)
    data = {"model": model.name, "model_dir": str(args.model_dir),
            "control": None if control is None else control.name,
            "control_dir": args.control, "d": task.d, "n": task.n, "noise": task.noise,
            "w_scale": task.w_scale, "seed": args.seed, "prompts": args.prompts,
            "train_fraction": 0.75, "positions": "token 2k for prefix k = 1..n (x_{k+1}; the "
            "query at k = n)", "results": results}
    if task.kind != "linear":  # a linear model's probe.json is as it always was
        data["task"], data["sparsity"], data["target_params"] = task.kind, task.sparsity, params
    notes = {}
    for who, m in (("model", model), ("control", control)):
        note = _refusal_note(m, "its hidden states are probed all the same (probe.json "
                                "'refused')") if m is not None else None
        if note:
            notes[who] = note
            data.setdefault("refused", {})[who] = {"prompts": m.refused, "checked": m.checked,
                                                   "findings": m.findings}
    _write_json(out / PROBE_JSON, data)
    save_figure(probe_figure(json_safe(data)), out / PROBE_PNG)
    for who, rows in results.items():
        for r in rows:
            q = " ".join(f"{v:6.3f}" if v is not None and math.isfinite(v) else "     -"
                         for v in r["at_query"])
            print(f"{who:7s} {r['target']:28s} {r['kind']:6s} R2 at the query by layer: {q}")
    for who, note in notes.items():
        print(f"{who}: {note}")
    print(f"wrote {out / PROBE_JSON}, {out / PROBE_PNG}")
    return 0


# ------------------------------------------------------------------ registration

def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register compare and probe on the raspicl command line."""
    model_help = ("a model directory: a compiled raspicl model (layout.json, from `raspicl "
                  "compile`) or a trained in-context learner (config.json, from `raspicl "
                  "train`)")
    p = sub.add_parser(
        "compare", help="compare a model with reference learning algorithms (SPD, ILWD)",
        description="Run MODEL_DIR and the reference learners (least squares, ridge over a "
                    "lambda grid with sigma^2/tau^2, GD with a tuned and a fixed step, SGD, "
                    "3-NN, averaging, zero; for a compiled batch_gd, ridge or sgd also its own "
                    "algorithm at its hyper-parameters) on the same random prompts of the "
                    "model's d and n, and report per number of examples k: the error against "
                    "the noiseless target (/d), SPD and ILWD to the model (Akyürek et al. 2023 "
                    "§4.1), and the best match (smallest mean SPD). Writes DIR/compare.json "
                    "and DIR/error.png (docs/experiments.md).")
    p.add_argument("model_dir", metavar="MODEL_DIR", help=model_help)
    p.add_argument("--noise", type=scale_arg, metavar="SIGMA",
                   help="label noise sigma of the prompts (default: the trained model's "
                        "training noise, 0 for a compiled model); w ~ N(0, I)")
    p.add_argument("--prompts", type=count_arg, default=1024,
                   help="random prompts the error and SPD are averaged over (default 1024)")
    p.add_argument("--ilwd-prompts", type=count_arg, default=128,
                   help="of those, the contexts ILWD fits implicit weights on, each with 4d "
                        "probe queries (default 128)")
    p.add_argument("--seed", type=seed_arg, default=0,
                   help="seed of the prompts (the probe queries use seed + 1), an integer "
                        ">= 0 (default 0)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output directory for compare.json and error.png (created if needed)")
    _add_check_arg(p)
    add_threads_arg(p)
    p.set_defaults(func=cmd_compare)

    from raspicl.icl.probes import TARGET_NAMES

    p = sub.add_parser(
        "probe", help="probe a model's hidden states for what a learner computes, by layer",
        description="Fit linear (ridge) and two-layer MLP probes from MODEL_DIR's residual "
                    "stream after the embedding and after every layer, at the x token after "
                    "each prefix of k examples and at the query, to the quantities those k "
                    "examples give (by the model's task: linear w_OLS and X^T y; sparse also "
                    "ridge and lasso; logistic the MAP logistic weights, one logistic GD step "
                    "from 0 and X^T y); report the test R^2 by layer, and the "
                    "same for the --control model on the same prompts. Writes DIR/probe.json "
                    "and DIR/probe.png (docs/experiments.md).")
    p.add_argument("model_dir", metavar="MODEL_DIR", help=model_help)
    p.add_argument("--control", metavar="CONTROL_DIR",
                   help="a second model probed on the same prompts, shown alongside (e.g. one "
                        "trained with a single fixed w: `raspicl train --fixed-w`)")
    p.add_argument("--target", action="append", choices=[*TARGET_NAMES, "program"],
                   help="what to probe for; repeatable (default, by the model's task: linear "
                        "w_ols and xty; sparse w_ols, w_ridge (noise > 0 only), w_lasso and "
                        "xty; logistic w_logreg, logistic_gd1 and xty). w_ridge and w_lasso: "
                        "linear and sparse tasks; w_logreg and logistic_gd1: logistic tasks. "
                        "program: the weights of a compiled batch_gd, ridge or sgd model's own "
                        "algorithm")
    p.add_argument("--kind", choices=["linear", "mlp", "both"], default="linear",
                   help="probe kind: ridge, a two-layer GeLU MLP (about a second per layer and "
                        "prefix on one CPU thread), or both (default linear)")
    p.add_argument("--noise", type=scale_arg, metavar="SIGMA",
                   help="label noise sigma of the prompts (default: the model's training "
                        "noise, 0 for a compiled model)")
    p.add_argument("--prompts", type=count_arg, default=2000,
                   help="random prompts; the first 3/4 train the probes, the rest test them "
                        "(default 2000)")
    p.add_argument("--seed", type=seed_arg, default=0,
                   help="seed of the prompts and the MLP probes' initialisation, an integer "
                        ">= 0 (default 0)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output directory for probe.json and probe.png (created if needed)")
    _add_check_arg(p)
    add_threads_arg(p)
    p.set_defaults(func=cmd_probe)
