"""The figures of `raspicl compare` (error.png) and `raspicl probe` (probe.png), drawn from the
same dictionaries the commands write as compare.json and probe.json.

    compare_figure(data)   three panels against k: each learner's error, and the SPD and ILWD
                           of each reference learner to the model (log scales: they span
                           decades); the best match drawn thick and named; the legend beside
                           the panels, ranked by mean SPD
    probe_figure(data)     two panels by hidden state: probe R² at the query, and over every
                           prefix k (mean, with the min-max band); the control dashed
    save_figure(fig, path) write a PNG (RaspiclError naming the path on failure)

The figures are matplotlib Figure objects, made without pyplot (no global state, no GUI).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from raspicl.errors import RaspiclError

_MODEL_STYLE = {"color": "k", "lw": 2.8, "zorder": 6}
_BEST_LW = 2.4


def _curve(values) -> np.ndarray:
    """A JSON curve (None for NaN) as floats; values <= 0 masked (they have no logarithm)."""
    v = np.array([np.nan if x is None else x for x in values], dtype=float)
    v[~(v > 0)] = np.nan
    return v


def _styles(names: list[str]) -> dict[str, dict]:
    """A colour and line style per learner, the same in every panel: len(_COLOURS) distinct
    colours, then the next line style."""
    dashes = ["-", "--", ":", "-."]
    m = len(_COLOURS)
    return {name: {"color": _COLOURS[i % m], "ls": dashes[(i // m) % 4], "lw": 1.2,
                   "marker": ".", "ms": 5}
            for i, name in enumerate(names)}


# matplotlib's tab10, then six more that none of them resembles
_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf", "#000080", "#808000", "#800000", "#00ced1",
            "#ff1493", "#32cd32")


def _fmt(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.1e}"


def compare_figure(data: dict):
    """error.png of `raspicl compare`, from its compare.json dictionary: error against k of the
    model (thick black) and of every reference learner; SPD and ILWD to the model of every
    reference learner, against k; the best match (smallest mean SPD) thick, with its name and
    mean SPD at the end of its SPD curve. The legend, outside the panels so that it hides no
    curve, lists the learners closest first with their mean SPD."""
    from matplotlib.figure import Figure

    model, best = data["model"], data["best_match"]
    refs = [r for r in data["references"] if r in data["error"]]
    mean_spd = data.get("mean_spd", {})
    ranked = sorted(refs, key=lambda r: (mean_spd.get(r) is None
                                         or not math.isfinite(mean_spd[r]),
                                         mean_spd.get(r) or 0.0))
    styles = _styles(refs)
    styles[best] = {**styles[best], "lw": _BEST_LW, "marker": "o", "ms": 4, "zorder": 5}
    n = len(next(iter(data["error"].values())))
    ks = np.arange(n)

    fig = Figure(figsize=(15.5, 5.2))
    axes = [fig.add_axes((0.05 + 0.245 * i, 0.12, 0.2, 0.72)) for i in range(3)]
    ax_err, ax_spd, ax_ilwd = axes
    lines = {}
    lines[model] = ax_err.plot(ks, _curve(data["error"][model]), label=model,
                               **_MODEL_STYLE)[0]
    for r in refs:
        lines[r] = ax_err.plot(ks, _curve(data["error"][r]), label=r, **styles[r])[0]
        for ax, key in ((ax_spd, "spd"), (ax_ilwd, "ilwd")):
            if r in data.get(key, {}):
                ax.plot(ks, _curve(data[key][r]), label=r, **styles[r])
    titles = ("error of each learner (/d, noiseless target)",
              "SPD to the model: mean squared prediction\ndifference (decides the best match)",
              "ILWD to the model: implicit linear\nweight difference")
    ylabels = ("squared error / d", "SPD", "ILWD")
    for ax, title, ylabel in zip(axes, titles, ylabels, strict=True):
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("examples seen k", fontsize=9)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(True, which="major", alpha=0.3)
    spd_best = _curve(data["spd"].get(best, []))
    if np.isfinite(spd_best).any():
        k = int(np.flatnonzero(np.isfinite(spd_best))[-1])
        ax_spd.annotate(f"best match: {best}\nmean SPD {_fmt(mean_spd.get(best))}",
                        xy=(k, spd_best[k]), xytext=(0.97, 0.5), textcoords="axes fraction",
                        ha="right", va="center", fontsize=8, color=styles[best]["color"],
                        fontweight="bold",
                        arrowprops={"arrowstyle": "->", "color": styles[best]["color"]},
                        bbox={"boxstyle": "round", "fc": "white", "ec": "0.7", "alpha": 0.9})
    handles = [lines[model]] + [lines[r] for r in ranked]
    labels = [f"{model} (the model)"] + [
        f"{r}  mean SPD {_fmt(mean_spd.get(r))}" + ("  <- best match" if r == best else "")
        for r in ranked]
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(0.79, 0.84), fontsize=8,
               frameon=False, title="learners, closest first", title_fontsize=8)
    noise = data.get("noise", 0)
    fig.suptitle(f"raspicl compare: {model}, d={data['d']} n={data['n']} noise={noise:g}, "
                 f"{data.get('prompts', '?')} prompts; best match {best} "
                 f"(smallest mean SPD)", fontsize=11, y=0.985)
    return fig


def probe_figure(data: dict):
    """probe.png of `raspicl probe`, from its probe.json dictionary: for every target and probe
    kind (the control's dashed), R² by hidden state at the query (left) and over every prefix
    k = 1..n (right: the mean, and a band from the worst to the best k). The legend gives each
    curve's best R² at the query and the first state within 0.001 of it."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 5.2))
    ax_q = fig.add_axes((0.055, 0.12, 0.29, 0.72))
    ax_k = fig.add_axes((0.4, 0.12, 0.29, 0.72), sharey=ax_q)
    colours: dict[tuple, str] = {}
    for who, style in (("model", "-"), ("control", "--")):
        for r in data["results"].get(who, []):
            key = (r["target"], r["kind"])
            colour = colours.setdefault(key, f"C{len(colours)}")
            marker = "o" if r["kind"] == "linear" else "s"
            q = np.array([np.nan if v is None else v for v in r["at_query"]], dtype=float)
            r2 = np.array([[np.nan if v is None else v for v in row] for row in r["r2"]],
                          dtype=float)
            states = np.arange(len(q))
            # the first state within 0.001 of the curve's best (later ones often tie)
            top = float(np.nanmax(q)) if np.isfinite(q).any() else None
            first = None if top is None else int(np.flatnonzero(q >= top - 1e-3)[0])
            at = "" if top is None else f": max {top:.3f} from state {first}"
            label = f"{'' if who == 'model' else 'control: '}{r['target']} ({r['kind']}){at}"
            ax_q.plot(states, q, style, color=colour, marker=marker, ms=3, label=label)
            with np.errstate(all="ignore"):
                finite = np.isfinite(r2).any(axis=1)
                lo = np.where(finite, np.nanmin(np.where(np.isfinite(r2), r2, np.inf), 1),
                              np.nan)
                hi = np.where(finite, np.nanmax(np.where(np.isfinite(r2), r2, -np.inf), 1),
                              np.nan)
                mean = np.where(finite, np.nanmean(r2, axis=1), np.nan)
            ax_k.plot(states, mean, style, color=colour, marker=marker, ms=3, label=label)
            ax_k.fill_between(states, lo, hi, color=colour, alpha=0.15, lw=0)
    n = data.get("n")
    ax_q.set_title(f"R² at the query (k = n = {n})", fontsize=10)
    ax_k.set_title(f"R² over every prefix k = 1..{n}: mean, band min-max", fontsize=10)
    for ax in (ax_q, ax_k):
        ax.xaxis.get_major_locator().set_params(integer=True)  # hidden states: whole layers
        ax.set_xlabel("hidden state (0 = embedding, l = after layer l)", fontsize=9)
        ax.axhline(1.0, color="0.6", lw=0.8, ls=":")
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=8)
    ax_q.set_ylabel("probe R² (test prompts)", fontsize=9)
    ax_q.set_ylim(-0.1, 1.05)
    handles, labels = ax_q.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(0.71, 0.84), fontsize=8,
               frameon=False, title="target (probe kind): best R² at the query\n(control "
                                    "dashed)" if "control" in data["results"] else
                                    "target (probe kind): best R² at the query",
               title_fontsize=8)
    control = f" vs control {data['control']} (dashed)" if data.get("control") else ""
    train = data.get("train_fraction")
    split = f" ({train:.0%} train, the rest test)" if train else ""
    fig.suptitle(f"raspicl probe: {data['model']}{control}; d={data['d']} n={n} "
                 f"noise={data.get('noise', 0):g}, {data.get('prompts', '?')} prompts{split}",
                 fontsize=11, y=0.985)
    return fig


def save_figure(fig, path: Path, dpi: int = 110) -> None:
    """Write `fig` as a PNG; a RaspiclError naming `path` if it cannot be written."""
    try:
        fig.savefig(path, dpi=dpi)
    except OSError as exc:
        raise RaspiclError(f"{path}: cannot write: {exc}") from exc
