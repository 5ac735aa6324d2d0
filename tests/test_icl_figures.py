"""The figures of `raspicl compare` and `raspicl probe` (raspicl.icl.figures), drawn from
compare.json / probe.json dictionaries built here by hand, checked on the matplotlib objects:
the panels and their titles, one line per learner, log scales where the values span decades,
the best match drawn thick and named, the legend outside every panel (it hides no curve), the
probe figure's title, its prefix panel and the control dashed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from raspicl.icl.figures import compare_figure, probe_figure, save_figure  # noqa: E402

N = 4
REFS = ["least_squares", "ridge(0.5)", "gd(T=1)", "zero"]
MEAN_SPD = {"least_squares": 3.0, "ridge(0.5)": 2e-21, "gd(T=1)": 0.1, "zero": 0.6}


def _compare_data() -> dict:
    # errors over six decades; ridge(0.5) is the model's algorithm (SPD ~1e-21); a None and a
    # zero (no logarithm) must not break the drawing
    error = {"m": [1.0, 0.3, 1e-2, 1e-4, 1e-6]}
    error.update({r: [1.0, 0.5 + i, 0.4, 0.3, 0.2] for i, r in enumerate(REFS)})
    error["ridge(0.5)"] = [1.0, 0.3, 1e-2, 1e-4, 1e-6]
    error["zero"] = [1.0, 1.0, None, 1.0, 1.0]
    spd = {r: [0.0, 1e-1 * (i + 1), 1e-1, 1e-1, 1e-1] for i, r in enumerate(REFS)}
    spd["ridge(0.5)"] = [0.0, 1e-21, 3e-21, 2e-21, 2e-21]
    ilwd = {r: [v * 0.5 for v in vals] for r, vals in spd.items()}
    return {"model": "m", "d": 2, "n": N, "noise": 0.0, "prompts": 64, "references": REFS,
            "error": error, "spd": spd, "ilwd": ilwd, "mean_spd": MEAN_SPD,
            "best_match": "ridge(0.5)"}


def _drawn_lines(ax) -> list:
    return [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]


def _render(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def test_compare_figure_has_error_spd_and_ilwd_panels_on_log_scales():
    fig = compare_figure(_compare_data())
    axes = fig.axes
    assert len(axes) == 3
    titles = [ax.get_title() for ax in axes]
    assert "error" in titles[0] and "SPD" in titles[1] and "ILWD" in titles[2]
    assert "best match" in titles[1]  # the panel that decides it says so
    for ax in axes:
        assert ax.get_yscale() == "log"
        assert ax.get_xlabel() == "examples seen k"
    # the model and every learner in the error panel; every learner in SPD and ILWD
    assert [ln.get_label() for ln in _drawn_lines(axes[0])] == ["m", *REFS]
    for ax in axes[1:]:
        assert [ln.get_label() for ln in _drawn_lines(ax)] == REFS
        for ln in _drawn_lines(ax):
            assert len(ln.get_xdata()) == N + 1


def test_compare_figure_draws_the_best_match_thick_and_names_it():
    fig = compare_figure(_compare_data())
    spd = fig.axes[1]
    widths = {ln.get_label(): ln.get_linewidth() for ln in _drawn_lines(spd)}
    assert widths["ridge(0.5)"] > max(w for r, w in widths.items() if r != "ridge(0.5)")
    notes = [t.get_text() for t in spd.texts]
    assert any("best match: ridge(0.5)" in t and "2.0e-21" in t for t in notes), notes
    assert "best match ridge(0.5)" in fig._suptitle.get_text()
    # the model's error curve is the thickest line of the error panel, in black
    model = _drawn_lines(fig.axes[0])[0]
    assert model.get_label() == "m" and model.get_color() == "k"
    assert model.get_linewidth() > max(ln.get_linewidth() for ln in _drawn_lines(fig.axes[0])[1:])


def test_compare_legend_ranks_the_learners_and_hides_no_curve():
    fig = compare_figure(_compare_data())
    assert all(ax.get_legend() is None for ax in fig.axes)  # no legend over a panel
    (legend,) = fig.legends
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels[0].startswith("m ")
    ranked = sorted(REFS, key=MEAN_SPD.get)
    assert [lab.split()[0] for lab in labels[1:]] == ranked
    assert "best match" in labels[1] and "2.0e-21" in labels[1]
    renderer = _render(fig)
    box = legend.get_window_extent(renderer)
    assert all(box.x0 >= ax.get_window_extent(renderer).x1 for ax in fig.axes)
    # the least-squares curve, which the old legend covered, is drawn in full
    ls = next(ln for ln in _drawn_lines(fig.axes[0]) if ln.get_label() == "least_squares")
    assert np.all(np.isfinite(ls.get_ydata()))


def test_compare_figure_masks_values_without_a_logarithm():
    fig = compare_figure(_compare_data())
    zero = next(ln for ln in _drawn_lines(fig.axes[0]) if ln.get_label() == "zero")
    assert np.isnan(np.asarray(zero.get_ydata(), dtype=float)[2])  # None
    spd = next(ln for ln in _drawn_lines(fig.axes[1]) if ln.get_label() == "zero")
    assert np.isnan(np.asarray(spd.get_ydata(), dtype=float)[0])  # 0.0


def _probe_row(target: str, kind: str, layers: int, rise: int) -> dict:
    """R^2 0 before hidden state `rise`, then 1 at the query and 0.5..1 over the prefixes."""
    r2 = [[0.0] * N if s < rise else [0.5, 0.75, 0.9, 1.0] for s in range(layers)]
    return {"target": target, "kind": kind, "ks": list(range(1, N + 1)), "r2": r2,
            "at_query": [row[-1] for row in r2],
            "mean_over_prefixes": [float(np.mean(row)) for row in r2]}


def _probe_data(control: bool) -> dict:
    results = {"model": [_probe_row("w_ols", "linear", 4, 2), _probe_row("xty", "linear", 4, 1)]}
    if control:
        results["control"] = [_probe_row("xty", "linear", 4, 3)]
    return {"model": "trained L2", "control": "fixed-w" if control else None, "d": 2, "n": N,
            "noise": 0.0, "prompts": 100, "train_fraction": 0.75, "results": results}


@pytest.mark.parametrize("control", [False, True])
def test_probe_figure_has_a_title_and_shows_every_prefix(control):
    data = _probe_data(control)
    # a later state a hair better than the first that reaches 1.000 does not hide it
    data["results"]["model"][0]["at_query"][2] = 0.9996
    fig = probe_figure(data)
    title = fig._suptitle.get_text()
    assert "trained L2" in title and f"n={N}" in title and "100 prompts" in title
    assert ("fixed-w" in title) == control
    ax_q, ax_k = fig.axes
    assert "query" in ax_q.get_title()
    assert "prefix" in ax_k.get_title()
    curves = len(data["results"]["model"]) + len(data["results"].get("control", []))
    for ax in (ax_q, ax_k):
        assert len(_drawn_lines(ax)) == curves
    assert len(ax_k.collections) == curves  # a min-max band over the prefixes per curve
    # the prefix panel's mean is the mean over k, not the query's value
    w_ols = _drawn_lines(ax_k)[0]
    assert np.asarray(w_ols.get_ydata())[3] == pytest.approx((0.5 + 0.75 + 0.9 + 1.0) / 4)
    styles = [ln.get_linestyle() for ln in _drawn_lines(ax_q)]
    assert styles == ["-", "-"] + (["--"] if control else [])
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[0] == "w_ols (linear): max 1.000 from state 2"
    assert labels[1] == "xty (linear): max 1.000 from state 1"
    if control:
        assert labels[2] == "control: xty (linear): max 1.000 from state 3"


def test_save_figure_names_the_path_it_cannot_write(tmp_path):
    from raspicl.errors import RaspiclError

    fig = probe_figure(_probe_data(False))
    path = tmp_path / "missing-dir" / "probe.png"
    with pytest.raises(RaspiclError, match=f"{path}: cannot write"):
        save_figure(fig, path)
    save_figure(fig, tmp_path / "probe.png")
    assert (tmp_path / "probe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_json_round_trip_draws_the_same():
    """The figure is drawn from compare.json's dictionary: NaN written as null draws too."""
    data = _compare_data()
    data["mean_spd"] = {**MEAN_SPD, "zero": math.nan}
    from raspicl.icl.cli_analysis import json_safe

    fig = compare_figure(json.loads(json.dumps(json_safe(data))))
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[-1].startswith("zero") and "mean SPD -" in labels[-1]  # unknown: last
