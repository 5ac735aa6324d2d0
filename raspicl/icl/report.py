"""`raspicl report DIR`: a sweep's results aggregated over seeds into report.md, report.json
and PNG figures (docs/experiments.md, "Reports").

A **cell** is a grid point without its seed; its seeds are aggregated as a mean and a 95%
Student-t confidence interval, mean ± t(0.975, n−1) · s / √n with s the sample standard
deviation (n − 1 in the denominator); a cell of one seed has no interval. Every number comes
from the jobs' own files (compare.json, probe.json, train_log.jsonl, status.json), never from
recomputation, so the report says what the sweep measured.

    phase table      per cell: the learner with the smallest mean SPD (the mean over seeds of
                     each seed's mean SPD over k, `raspicl compare`'s "mean_spd") and how many
                     seeds chose it alone; that SPD and the model's error at the query, with
                     intervals; the SPD to each main reference learner
    MSPD table       per shape trained at several noise levels: MSPD (SPD over 1 <= k < d) of
                     least squares and ridge(λ) (rows) against the trained noise σ (columns);
                     the diagonal λ = σ²/τ² (least squares at σ = 0) is marked, as is each
                     column's minimum
    probes           R² at the query by hidden state, per cell, target and probe kind
    error against k  the models' error curves with bands, beside the reference learners'
    controls         compiled controls (kind "control") as rows beside the trained cells
    tasks            the phase table, its figure and the MSPD tables are linear regression's
                     (least squares, ridge at λ = σ²/τ², gd): cells of another task (a sweep's
                     `task = "sparse"` or `"logistic"`) are left out of them, with a note, and
                     listed in a table of their own, each against its own task's reference
                     learners; error curves are drawn per task and noise level
    time             per cell: training time (from the log's steps/s), analyses' time
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from raspicl.errors import RaspiclError
from raspicl.icl.sweep import read_json, write_json

# Two-sided 95% Student-t quantiles t(0.975, df) for df = 1..30 (standard tables); beyond
# 30 the Cornish-Fisher expansion around z = 1.959964 (error < 1e-4 there).
T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
        2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
        2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
# reference learners shown in the phase table (all are in report.json)
MAIN = ("least_squares", "gd(T=1)", "sgd", "averaging", "3nn")
# the task whose learners the phase and MSPD tables name (raspicl.icl.tasks.DEFAULT_KIND)
LINEAR = "linear"


def task_label(task: str, sparsity: int | None = None) -> str:
    """'linear', 'logistic', 'sparse(k=3)'."""
    return f"{task}(k={sparsity})" if sparsity is not None else task


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with df degrees of freedom."""
    if df < 1:
        raise ValueError("a t interval needs at least two values")
    if df <= len(T975):
        return T975[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def mean_ci(values) -> dict:
    """{"mean", "ci" (the 95% t half-width, None for one value), "n", "values"} over the
    finite values given (NaN and None are left out and counted in "missing")."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    missing = len(list(values)) - len(vals)
    if not vals:
        return {"mean": None, "ci": None, "n": 0, "values": [], "missing": missing}
    arr = np.asarray(vals)
    ci = None
    if len(arr) > 1:
        ci = float(t975(len(arr) - 1) * arr.std(ddof=1) / math.sqrt(len(arr)))
    return {"mean": float(arr.mean()), "ci": ci, "n": len(arr), "values": vals,
            "missing": missing}


def curve_ci(curves: list[list]) -> dict:
    """mean_ci column by column over equally long curves: {"mean": [...], "ci": [...]}."""
    if not curves:
        return {"mean": [], "ci": [], "n": 0}
    width = min(len(c) for c in curves)
    cols = [mean_ci([c[i] for c in curves]) for i in range(width)]
    return {"mean": [c["mean"] for c in cols], "ci": [c["ci"] for c in cols],
            "n": len(curves)}


def fmt(stat: dict | None, digits: int = 2) -> str:
    """'2.1e-01 ± 3.0e-02' (mean ± 95% half-width), '2.1e-01' for one seed, '-' for none."""
    if not stat or stat.get("mean") is None:
        return "-"
    text = f"{stat['mean']:.{digits - 1}e}"
    if stat.get("ci") is not None:
        text += f" ± {stat['ci']:.{digits - 1}e}"
    return text


def fmt_r2(mean: float | None, ci: float | None) -> str:
    """An R² as '0.23 ± 0.05' (two decimals; R² lies in (-inf, 1])."""
    if mean is None:
        return "-"
    return f"{mean:.2f}" + (f" ± {ci:.2f}" if ci is not None else "")


def ridge_lambda(name: str) -> float | None:
    """λ of a learner named ridge(λ), None otherwise."""
    m = re.fullmatch(r"ridge\(([0-9.eE+-]+)\)", name)
    return float(m.group(1)) if m else None


# --------------------------------------------------------------------------- loading


@dataclass
class Cell:
    """The seeds of one grid point (or one compiled control) and what they measured."""

    name: str
    kind: str
    params: dict
    jobs: list[str]
    seeds: list[int]
    compare: list[dict] = field(default_factory=list)
    probe: list[dict] = field(default_factory=list)
    train_seconds: list[float] = field(default_factory=list)
    stage_seconds: dict[str, list[float]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        p = self.params
        if self.kind == "control":
            sets = ", ".join(f"{k}={v}" for k, v in sorted(p["set"].items()))
            return f"compiled {p['program']}({sets}) σ={p['noise']:g}"
        text = f"L={p['layers']} H={p['d_model']} σ={p['noise']:g}"
        if p.get("fixed_w"):
            text += " fixed-w"
        return text


def _train_seconds(log: Path) -> float | None:
    """Training time from train_log.jsonl: the sum over intervals of steps / (steps/s)."""
    if not log.is_file():
        return None
    total, prev = 0.0, 0
    for line in log.read_text().splitlines():
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("steps_per_s"):
            total += (e["step"] - prev) / e["steps_per_s"]
        prev = e["step"]
    return total


def load_cells(sweep: Path) -> tuple[dict, list[Cell]]:
    """The sweep's sweep.json and its jobs grouped into cells (seeds aggregated), with every
    finished job's compare.json and probe.json."""
    meta = read_json(sweep / "sweep.json")
    if meta is None or not isinstance(meta.get("jobs"), list):
        raise RaspiclError(f"{sweep / 'sweep.json'}: missing or not a sweep's file")
    cells: dict[str, Cell] = {}
    for job in meta["jobs"]:
        name, kind, params = job["name"], job["kind"], job["params"]
        cname = job.get("cell", name)
        cell_params = {k: v for k, v in params.items() if k != "seed"}
        cell = cells.setdefault(cname, Cell(cname, kind, cell_params, [], []))
        jdir = sweep / "jobs" / name
        status = read_json(jdir / "status.json") or {}
        compare = read_json(jdir / "compare" / "compare.json")
        probe = read_json(jdir / "probe" / "probe.json")
        stages = status.get("stages", {})
        if status.get("state") != "done" or (meta["analyses"].get("compare") and not compare):
            cell.missing.append(name)
            continue
        cell.jobs.append(name)
        cell.seeds.append(params.get("seed", 0))
        if compare:
            cell.compare.append(compare)
        if probe:
            cell.probe.append(probe)
        if kind == "train":
            secs = _train_seconds(jdir / "model" / "train_log.jsonl")
            if secs is not None:
                cell.train_seconds.append(secs)
        for stage, info in stages.items():
            cell.stage_seconds.setdefault(stage, []).append(info.get("seconds"))
    return meta, list(cells.values())


# --------------------------------------------------------------------------- aggregation


def _order(name: str) -> tuple:
    lam = ridge_lambda(name)
    if name == "least_squares":
        return (0, 0.0, name)
    if lam is not None:
        return (1, lam, name)
    return (2, MAIN.index(name) if name in MAIN else len(MAIN), name)


def aggregate_cell(cell: Cell) -> dict:
    """Everything the report says about one cell, as plain values (report.json)."""
    if cell.kind == "train":  # a linear job's params name no task (sweep_spec.TASK_KEYS)
        task, sparsity = cell.params.get("task", LINEAR), cell.params.get("sparsity")
    else:  # a compiled control: the task `raspicl compare` measured it on
        first = cell.compare[0] if cell.compare else {}
        task, sparsity = first.get("task", LINEAR), first.get("sparsity")
    out: dict = {"cell": cell.name, "kind": cell.kind, "label": cell.label,
                 "task": task_label(task, sparsity), "linear": task == LINEAR,
                 "params": cell.params, "seeds": cell.seeds, "jobs": cell.jobs,
                 "missing": cell.missing}
    if cell.compare:
        learners = sorted({k for c in cell.compare for k in c["mean_spd"]}, key=_order)
        spd = {k: mean_ci([c["mean_spd"].get(k) for c in cell.compare]) for k in learners}
        mspd = {k: mean_ci([c["mspd"].get(k) for c in cell.compare]) for k in learners}
        finite = {k: v["mean"] for k, v in spd.items() if v["mean"] is not None}
        best = min(finite, key=finite.get) if finite else None
        picks = [c["best_match"] for c in cell.compare]
        model_curves = [c["error"][c["model"]] for c in cell.compare]
        refs = {k: curve_ci([c["error"][k] for c in cell.compare if k in c["error"]])
                for k in learners}
        out.update({
            "noise": cell.compare[0]["noise"], "w_scale": cell.compare[0]["w_scale"],
            "d": cell.compare[0]["d"], "n": cell.compare[0]["n"],
            "mean_spd": spd, "mspd": mspd,
            "best_match": {"learner": best, "spd": spd.get(best),
                           "seeds_agreeing": sum(p == best for p in picks),
                           "per_seed": picks},
            "query_error": mean_ci([m[-1] for m in model_curves]),
            "error_by_k": {"model": curve_ci(model_curves), "references": refs}})
    if cell.probe:
        rows = {}
        for p in cell.probe:
            for r in p["results"]["model"]:
                rows.setdefault((r["target"], r["kind"]), []).append(r["at_query"])
        out["probe"] = [{"target": t, "kind": k, "at_query": curve_ci(v)}
                        for (t, k), v in sorted(rows.items())]
    out["seconds"] = {"train": mean_ci(cell.train_seconds),
                      **{s: mean_ci(v) for s, v in sorted(cell.stage_seconds.items())
                         if s != "train"}}
    return out


def mspd_tables(cells: list[dict]) -> list[dict]:
    """One table per shape trained at two or more noise levels: rows least squares and
    ridge(λ), columns the noise levels, MSPD mean ± CI, the diagonal and column minima."""
    shapes: dict[tuple, list[dict]] = {}
    for c in cells:
        if c["kind"] != "train" or "mspd" not in c or c["params"].get("fixed_w") \
                or not c["linear"]:
            continue
        key = tuple(sorted((k, repr(v)) for k, v in c["params"].items() if k != "noise"))
        shapes.setdefault(key, []).append(c)
    tables = []
    for group in shapes.values():
        if len({c["noise"] for c in group}) < 2:
            continue
        group.sort(key=lambda c: c["noise"])
        rows = sorted({k for c in group for k in c["mspd"]
                       if k == "least_squares" or ridge_lambda(k) is not None}, key=_order)
        columns = []
        for c in group:
            lam = c["noise"] ** 2 / c["w_scale"] ** 2 if c["w_scale"] > 0 else math.inf
            diag = "least_squares" if lam == 0 else next(
                (r for r in rows if ridge_lambda(r) is not None
                 and math.isclose(ridge_lambda(r), lam, rel_tol=1e-5)), None)
            vals = {r: c["mspd"].get(r) for r in rows}
            finite = {r: v["mean"] for r, v in vals.items() if v and v["mean"] is not None}
            columns.append({"cell": c["cell"], "noise": c["noise"], "lambda": lam,
                            "diagonal": diag, "minimum": min(finite, key=finite.get)
                            if finite else None, "values": vals})
        p = group[0]["params"]
        controls = [{"cell": c["cell"], "label": c["label"], "noise": c["noise"],
                     "values": {r: c["mspd"].get(r) for r in rows}}
                    for c in cells if c["kind"] == "control" and "mspd" in c
                    and c["linear"] and (c["d"], c["n"]) == (group[0]["d"], group[0]["n"])]
        tables.append({"shape": {k: v for k, v in p.items() if k != "noise"},
                       "controls": controls,
                       "title": f"d={p['d']} n={p['n']} L={p['layers']} H={p['d_model']} "
                                f"steps={p['steps']}",
                       "rows": rows, "columns": columns})
    return tables


# --------------------------------------------------------------------------- figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    try:
        fig.savefig(path, dpi=120)
    except OSError as exc:
        raise RaspiclError(f"{path}: cannot write: {exc}") from exc
    finally:
        _plt().close(fig)


def _arr(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def plot_mspd(table: dict, path: Path) -> None:
    """The MSPD table as a heatmap of log10 MSPD: rows learners, columns trained noise; the
    diagonal λ = σ²/τ² boxed, each column's minimum starred, every value written in."""
    plt = _plt()
    rows, cols = table["rows"], table["columns"]
    M = np.array([[(c["values"].get(r) or {}).get("mean") or np.nan for c in cols]
                  for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(1.8 + 1.5 * len(cols), 1.2 + 0.55 * len(rows)))
    with np.errstate(divide="ignore", invalid="ignore"):
        L = np.log10(M)
    im = ax.imshow(L, cmap="viridis_r", aspect="auto")
    fig.colorbar(im, ax=ax, label="log10 MSPD (mean over seeds)")
    for j, c in enumerate(cols):
        for i, r in enumerate(rows):
            if np.isfinite(M[i, j]):
                star = " *" if c["minimum"] == r else ""
                ax.text(j, i, f"{M[i, j]:.1e}{star}", ha="center", va="center", fontsize=8,
                        color="white" if L[i, j] > np.nanmean(L) else "black")
            if c["diagonal"] == r:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2.5,
                                           ec="red"))
    ax.set_xticks(range(len(cols)),
                  [f"σ={c['noise']:g}\n(σ²/τ²={c['lambda']:.3g})" for c in cols])
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("trained (and evaluated) noise σ")
    ax.set_ylabel("reference learner")
    ax.set_title(f"MSPD (k < d), {table['title']}\nred box: λ = σ²/τ²; *: column minimum",
                 fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_phase(cells: list[dict], path: Path) -> bool:
    """Mean SPD (over k) to least squares, the best ridge and gd(T=1) against depth, one
    line per width and learner, 95% bands over seeds (noiseless trained cells)."""
    rows = [c for c in cells if c["kind"] == "train" and "mean_spd" in c and c["linear"]
            and c["noise"] == 0 and not c["params"].get("fixed_w")]
    if not rows:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    widths = sorted({c["params"]["d_model"] for c in rows})
    styles = ["-", "--", ":", "-."]
    def best_ridge(c: dict) -> dict:
        ridges = {k: v for k, v in c["mean_spd"].items()
                  if ridge_lambda(k) is not None and v.get("mean") is not None}
        return ridges[min(ridges, key=lambda k: ridges[k]["mean"])] if ridges else {}

    learners = {"least_squares": lambda c: c["mean_spd"].get("least_squares") or {},
                "best ridge(λ)": best_ridge,
                "gd(T=1)": lambda c: c["mean_spd"].get("gd(T=1)") or {}}
    all_L = sorted({c["params"]["layers"] for c in rows})
    lows: list[float] = []
    highs: list[float] = []
    for wi, width in enumerate(widths):
        group = sorted((c for c in rows if c["params"]["d_model"] == width),
                       key=lambda c: c["params"]["layers"])
        Ls = [c["params"]["layers"] for c in group]
        for li, (name, get) in enumerate(learners.items()):
            stats = [get(c) for c in group]
            m = _arr([s.get("mean") for s in stats])
            if not np.any(np.isfinite(m)):
                continue
            h = _arr([s.get("ci") for s in stats])
            colour = f"C{li}"
            ax.plot(Ls, m, styles[wi % 4], color=colour, marker="o",
                    label=f"{name}, H={width}")
            lows.append(np.nanmin(m))
            highs.append(np.nanmax(m + np.nan_to_num(h)))
            if np.any(np.isfinite(h)):  # a band reaching 0 runs off the log axis below
                ax.fill_between(Ls, np.maximum(m - np.nan_to_num(h), 1e-300),
                                m + np.nan_to_num(h), color=colour, alpha=0.15)
    ax.set_xscale("log", base=2)
    ax.set_xticks(all_L, [str(v) for v in all_L])
    ax.minorticks_off()
    ax.set_yscale("log")
    if lows:  # the means decide the range, not a band reaching down to 0
        ax.set_ylim(max(min(lows), 1e-300) / 5, max(highs) * 1.5)
    ax.set_xlabel("layers L")
    ax.set_ylabel("mean SPD over k to the learner (/d)")
    ax.set_title("which learner does a trained model match? (noiseless; bands: 95% CI "
                 "over seeds)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_errors(cells: list[dict], noise: float, path: Path, task: str = LINEAR) -> bool:
    """Error against k at one noise level of one task: each trained cell's mean curve with its
    95% band, compiled controls dotted, and the reference learners' curves dashed."""
    rows = [c for c in cells if "error_by_k" in c and c["noise"] == noise
            and c["task"] == task]
    if not rows:
        return False
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    first = rows[0]
    ks = np.arange(len(first["error_by_k"]["model"]["mean"]))
    lam = first["noise"] ** 2 / first["w_scale"] ** 2 if first["w_scale"] else 0
    refs = ["least_squares", f"ridge({lam:g})" if lam else None, "gd(T=1)", "averaging",
            f"logreg({1 / first['w_scale'] ** 2:g})" if first["w_scale"] else None,
            "logistic_gd(T=1)", "constant(0.5)"]
    for i, name in enumerate(r for r in refs if r and r in first["error_by_k"]["references"]):
        curve = first["error_by_k"]["references"][name]["mean"]
        ax.plot(ks[:len(curve)], _arr(curve), "--", color="0.4", lw=1,
                marker=["x", "+", "1", "2"][i % 4], ms=5, label=f"{name} (reference)")
    colour = 0
    for c in rows:
        m = _arr(c["error_by_k"]["model"]["mean"])
        h = _arr(c["error_by_k"]["model"]["ci"])
        if c["kind"] == "control":
            ax.plot(ks[:len(m)], m, ":", color="k", lw=2, label=c["label"])
            continue
        col = f"C{colour % 10}"
        colour += 1
        ax.plot(ks[:len(m)], m, "-", color=col, lw=2, marker="o", ms=3,
                label=f"{c['label']} ({len(c['seeds'])} seeds)")
        if np.any(np.isfinite(h)):
            ax.fill_between(ks[:len(m)], np.maximum(m - np.nan_to_num(h), 0),
                            m + np.nan_to_num(h), color=col, alpha=0.2)
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("examples seen k (k = n: the query)")
    ax.set_ylabel("squared error / d (" + ("target σ(wᵀx)" if task == "logistic"
                                          else "noiseless target") + ")")
    ax.set_title(f"error against k, {task} task, d={first['d']} n={first['n']} σ={noise:g} "
                 f"(bands: 95% CI over seeds; symlog below 1e-4)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    return True


def plot_probes(cells: list[dict], target: str, kind: str, path: Path) -> bool:
    """Probe R² at the query by hidden state, one line per trained cell with a 95% band;
    fixed-w cells (the probes' control) dashed."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    for i, c in enumerate(c for c in cells if c["kind"] == "train" and c.get("probe")):
        for r in c["probe"]:
            if (r["target"], r["kind"]) != (target, kind):
                continue
            m, h = _arr(r["at_query"]["mean"]), _arr(r["at_query"]["ci"])
            x = np.arange(len(m))
            col = f"C{i % 10}"
            ax.plot(x, m, "--" if c["params"].get("fixed_w") else "-", color=col, marker="o",
                    ms=3, label=f"{c['label']} ({len(c['seeds'])} seeds)")
            if np.any(np.isfinite(h)):
                ax.fill_between(x, m - np.nan_to_num(h), m + np.nan_to_num(h), color=col,
                                alpha=0.15)
            drawn += 1
    if not drawn:
        _plt().close(fig)
        return False
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("hidden state (0 = embedding, l = after layer l)")
    ax.set_ylabel(f"{kind} probe R² for {target} at the query (test prompts)")
    ax.set_ylim(-0.1, 1.05)
    ax.set_title(f"probe R² by layer, {target} ({kind}); bands: 95% CI over seeds; "
                 f"dashed: fixed-w control", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    return True


# --------------------------------------------------------------------------- the report


@dataclass
class Report:
    """What build_report wrote: report.json's content, the figures' files, report.md."""

    data: dict
    figures: list[str]
    markdown: str

    def summary(self) -> str:
        lines = []
        for row in self.data["phase_table"] + self.data["task_table"]:
            lines.append(f"{row['label']:40s} seeds {len(row['seeds'])}  best match "
                         f"{row['best']} ({row['agree']})  mean SPD {row['spd']}")
        if self.data["task_table"]:
            other = self.data["task_table"]
            lines.append(f"note: {len(other)} cell(s) of other tasks than linear "
                         f"({', '.join(sorted({r['task'] for r in other}))})"
                         f" are left out of the phase and MSPD tables, which are linear "
                         f"regression's; report.md lists them under 'Other tasks'")
        missing = self.data["missing"]
        if missing:
            lines.append(f"{len(missing)} job(s) not finished yet, left out: "
                         f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        return "\n".join(lines) if lines else "no finished job with compare.json yet"


def _phase_rows(cells: list[dict], linear: bool = True) -> list[dict]:
    """The phase table's rows (linear-task cells), or with linear=False the other tasks'."""
    rows = []
    for c in cells:
        if "mean_spd" not in c or c["linear"] != linear:
            continue
        b = c["best_match"]
        rows.append({"cell": c["cell"], "kind": c["kind"], "label": c["label"],
                     "task": c["task"],
                     "seeds": c["seeds"], "best": b["learner"],
                     "agree": f"{b['seeds_agreeing']}/{len(b['per_seed'])}",
                     "spd": fmt(b["spd"]), "query_error": fmt(c["query_error"], 3),
                     "learners": {k: fmt(v) for k, v in c["mean_spd"].items()}})
    return rows


# how a trained cell is labelled where its key varies across the sweep (L, H and σ always)
LABEL_KEYS = (("d", "d={}"), ("n", "n={}"), ("layers", "L={}"), ("d_model", "H={}"),
              ("heads", "heads={}"), ("noise", "σ={:g}"), ("w_scale", "τ={:g}"),
              ("steps", "steps={}"), ("curriculum", "curriculum={}"), ("batch", "batch={}"),
              ("lr", "lr={:g}"), ("warmup", "warmup={}"))


def _label(cells: list[dict]) -> None:
    """Label each trained cell by the keys that tell it apart (L, H and σ always; the task
    first where the sweep has more than one)."""
    trained = [c for c in cells if c["kind"] == "train"]
    tasks = len({c["task"] for c in trained}) > 1
    for c in trained:
        parts = [c["task"]] if tasks else []
        parts += [f.format(c["params"][k]) for k, f in LABEL_KEYS
                  if k in ("layers", "d_model", "noise")
                  or len({repr(o["params"].get(k)) for o in trained}) > 1]
        c["label"] = " ".join(parts) + (" fixed-w" if c["params"].get("fixed_w") else "")


def _sort_key(c: dict) -> tuple:
    p = c["params"]
    if c["kind"] == "control":
        return (1, p["d"], p["n"], p["noise"], p["program"], 0, 0, 0, False, c["task"])
    return (0, p["d"], p["n"], p["noise"], bool(p.get("fixed_w")), p["d_model"], p["layers"],
            p["steps"], c["task"] != LINEAR, c["task"])


def build_report(sweep: str | Path, out: str | Path) -> Report:
    """Aggregate the sweep in `sweep` and write report.md, report.json and figures to `out`."""
    sweep, out = Path(sweep), Path(out)
    meta, raw = load_cells(sweep)
    cells = sorted((aggregate_cell(c) for c in raw), key=_sort_key)
    _label(cells)
    out.mkdir(parents=True, exist_ok=True)
    tables = mspd_tables(cells)
    figures = []
    if plot_phase(cells, out / "phase.png"):
        figures.append("phase.png")
    for i, t in enumerate(tables):
        name = f"mspd_{i}.png"
        plot_mspd(t, out / name)
        t["figure"] = name
        figures.append(name)
    # one figure per task and noise level (the linear task's first, named as before)
    for _, task, noise in sorted({(c["task"] != LINEAR, c["task"], c["noise"])
                                  for c in cells if "noise" in c}):
        tag = "" if task == LINEAR else re.sub(r"[^A-Za-z0-9]+", "", task) + "_"
        name = f"error_{tag}noise{noise:g}.png"
        if plot_errors(cells, noise, out / name, task):
            figures.append(name)
    probes = sorted({(r["target"], r["kind"]) for c in cells for r in c.get("probe", [])})
    for target, kind in probes:
        name = f"probe_{target}_{kind}.png"
        if plot_probes(cells, target, kind, out / name):
            figures.append(name)
    missing = [j for c in raw for j in c.missing]
    data = {"format": "raspicl.report/1", "sweep": str(sweep), "name": meta.get("name", ""),
            "interval": "95% Student-t over seeds: mean ± t(0.975, n-1) s/sqrt(n)",
            "cells": cells, "phase_table": _phase_rows(cells),
            "task_table": _phase_rows(cells, linear=False), "mspd_tables": tables,
            "figures": figures, "missing": missing}
    from raspicl.icl.cli_analysis import json_safe

    write_json(out / "report.json", json_safe(data))
    md = markdown(data)
    (out / "report.md").write_text(md)
    return Report(data, figures, md)


def _md_table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(r) + " |" for r in rows)]


def markdown(data: dict) -> str:
    """report.md: the tables (values: mean ± 95% half-width over seeds) and the figures."""
    cells = data["cells"]
    lines = [f"# Sweep report{': ' + data['name'] if data['name'] else ''}", "",
             f"From `{data['sweep']}`. Values are the mean over seeds ± the half-width of a "
             f"95% Student-t interval (no interval for one seed). SPD and errors are divided "
             f"by d; the error's target is the noiseless wᵀx"
             + (" (σ(wᵀx), the probability that y = 1, for the logistic task)"
                if any(c.get("task") == "logistic" for c in cells) else "") + ".", ""]
    if data["missing"]:
        lines += [f"**Not finished, left out:** {len(data['missing'])} job(s): "
                  + ", ".join(f"`{m}`" for m in data["missing"][:10])
                  + (" ..." if len(data["missing"]) > 10 else ""), ""]
    phase = data["phase_table"]
    if phase:
        learners = sorted({k for r in phase for k in r["learners"]
                           if k in MAIN or ridge_lambda(k) is not None}, key=_order)
        lines += ["## Phase table: the best-matching learner", "",
                  "Best match: the learner with the smallest mean SPD (over seeds of the mean "
                  "over k); 'seeds' says how many seeds' own best match it is. The other "
                  "columns: mean SPD to that learner.", ""]
        head = ["model", "seeds", "best match", "its SPD", "error at the query", *learners]
        rows = [[r["label"], r["agree"], f"`{r['best']}`", r["spd"], r["query_error"],
                 *(r["learners"].get(k, "-") for k in learners)] for r in phase]
        lines += _md_table(head, rows) + [""]
        if "phase.png" in data["figures"]:
            lines += ["![mean SPD against depth](phase.png)", ""]
    for t in data["mspd_tables"]:
        lines += [f"## MSPD over noise levels, {t['title']}", "",
                  "MSPD: SPD averaged over 1 ≤ k < d. Bold: each column's minimum; †: the "
                  "diagonal λ = σ²/τ² (least squares at σ = 0), where the paper finds the "
                  "minimum. Compiled controls of the same d and n, whose algorithm is known, "
                  "in the last columns (not in the heatmap, whose colours they would flatten).",
                  ""]
        head = ["learner", *(f"σ = {c['noise']:g} (σ²/τ² = {c['lambda']:.4g})"
                             for c in t["columns"]),
                *(f"control: {c['label']}" for c in t["controls"])]
        rows = []
        for r in t["rows"]:
            row = [f"`{r}`"]
            for c in t["columns"]:
                text = fmt(c["values"].get(r))
                if c["minimum"] == r:
                    text = f"**{text}**"
                if c["diagonal"] == r:
                    text += " †"
                row.append(text)
            row += [fmt(c["values"].get(r)) for c in t["controls"]]
            rows.append(row)
        lines += _md_table(head, rows) + ["", f"![MSPD heatmap]({t['figure']})", ""]
    other = data.get("task_table") or []
    if other:
        lines += ["## Other tasks: the best-matching learner", "",
                  "The phase table, its figure and the MSPD tables above are linear "
                  "regression's (least squares, ridge at λ = σ²/τ², gd), so cells trained on "
                  f"another task ({', '.join(sorted({r['task'] for r in other}))}) are left "
                  "out of them and listed here instead, each against its own task's reference "
                  "learners (`raspicl compare`: sparse adds `lasso(α)`; logistic has "
                  "`logreg(λ)`, `logistic_gd`, `3nn`, `constant(0.5)`).", ""]
        head = ["model", "task", "seeds", "best match", "its SPD", "error at the query"]
        rows = [[r["label"], r["task"], r["agree"], f"`{r['best']}`", r["spd"],
                 r["query_error"]] for r in other]
        lines += _md_table(head, rows) + [""]
    errs = [f for f in data["figures"] if f.startswith("error_")]
    if errs:
        lines += ["## Error against k", ""] + [f"![error against k]({f})" for f in errs] + [""]
    probe_cells = [c for c in cells if c.get("probe")]
    if probe_cells:
        depth = max(len(r["at_query"]["mean"]) for c in probe_cells if c["kind"] == "train"
                    for r in c["probe"]) if any(c["kind"] == "train" for c in probe_cells) \
            else 0
        lines += ["## Probes: R² at the query by hidden state", "",
                  "State 0 is the embedding, l the residual after layer l. Compiled controls "
                  "(many blocks) show their largest R² over states and where it is.", ""]
        head = ["model", "target", "probe", *(f"state {i}" for i in range(depth))]
        rows = []
        for c in probe_cells:
            for r in c["probe"]:
                m, h = r["at_query"]["mean"], r["at_query"]["ci"]
                if c["kind"] == "control":
                    finite = [(v, i) for i, v in enumerate(m) if v is not None]
                    best = max(finite) if finite else (None, None)
                    cells_ = [f"max {best[0]:.3f} at state {best[1]}" if best[0] is not None
                              else "-"] + [""] * (depth - 1)
                else:
                    cells_ = [fmt_r2(m[i], h[i]) if i < len(m) else "" for i in range(depth)]
                rows.append([c["label"], r["target"], r["kind"], *cells_])
        lines += _md_table(head, rows) + [""]
        lines += [f"![probe R²]({f})" for f in data["figures"] if f.startswith("probe_")] + [""]
    lines += ["## Time per cell", "",
              "Training: the sum over the log's intervals of steps / (steps/s) (excludes "
              "start-up and evaluation); the analyses: their wall time. Mean over seeds.", ""]
    head = ["model", "seeds", "train (s)", "compile (s)", "compare (s)", "probe (s)"]
    rows = []
    for c in cells:
        s = c["seconds"]

        def sec(key: str, s=s) -> str:
            v = s.get(key) or {}
            return "-" if v.get("mean") is None else f"{v['mean']:.0f}"

        rows.append([c["label"], str(len(c["seeds"])), sec("train"), sec("compile"),
                     sec("compare"), sec("probe")])
    lines += _md_table(head, rows) + [""]
    return "\n".join(lines)
