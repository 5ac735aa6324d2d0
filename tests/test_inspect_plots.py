"""raspicl.inspect's heatmaps, checked on the matplotlib figure objects (block_figure), on
sherman_morrison d = 2: its block 1 head clears four rows, its block 0 MLP has 50 hidden units
(wider than a panel), its MLPs span eight orders of magnitude. Expected contents come from the
model's weights and the layout's records, not from the plotting code."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from raspicl.compiler import compile_program  # noqa: E402
from raspicl.inspect import plots  # noqa: E402
from raspicl.inspect.plots import SignedLogNorm, block_figure, embed_figure, short  # noqa: E402
from raspicl.layout_records import HeadWriteKind, head_writes  # noqa: E402
from raspicl.registry import find_program  # noqa: E402

VALUE = re.compile(r"^-?\d+(\.\d+)?(e-?\d+)?$")


@pytest.fixture(scope="module")
def sm():
    return compile_program(find_program("sherman_morrison").build(d=2))


@pytest.fixture(scope="module")
def figures(sm):
    return {b: block_figure(sm, b) for b in (0, 1)}


def _axes(fig, title: str):
    found = [ax for ax in fig.axes if ax.get_title() == title]
    assert len(found) == 1, [ax.get_title() for ax in fig.axes]
    return found[0]


def _values(ax) -> list:
    return [t for t in ax.texts if VALUE.match(t.get_text())]


def _cell_labels(ax, text) -> tuple[str, str]:
    """The row and column tick labels of the cell a text sits in."""
    x, y = text.get_position()
    return (ax.get_yticklabels()[int(y)].get_text(), ax.get_xticklabels()[int(x)].get_text())


def test_a_clear_is_drawn_as_a_clear_in_the_row_it_clears(sm, figures):
    head = next(h for h in sm.layout["blocks"][1]["heads"] if h["head"] == 0)
    cleared = {r: a.value for a in head_writes(head) if a.kind is HeadWriteKind.CLEAR
               for r in a.rows}
    assert len(cleared) == 4  # y, x_prev[0], x_prev[1], denom
    ax = _axes(figures[1], f"head 0 ({head['place']}): W_V·W_O")
    marks = [t for t in ax.texts if t.get_text() == "clear"]
    assert len(marks) == len(cleared)
    for t in marks:
        row, col = _cell_labels(ax, t)
        r = int(row.split()[0])
        assert r in cleared and int(col.split()[0]) == r  # the row onto itself
        assert row.split()[1].startswith(cleared[r])  # labelled by the value it clears
    # not drawn as a -1 of the colour scale: no value text and no colour in those cells
    assert not [t for t in _values(ax) if float(t.get_text()) == -1.0]
    mesh = next(c for c in ax.collections if isinstance(c.norm, SignedLogNorm))
    colour = np.ma.getmaskarray(mesh.get_array()).reshape(-1)
    assert colour.sum() >= len(cleared)
    assert "clear" in figures[1]._suptitle.get_text()


def test_every_nonzero_weight_carries_its_value(sm, figures):
    W_out = sm.model.blocks[1].mlp.W_out.detach().double().numpy()
    ax = _axes(figures[1], "MLP: W_out^T")
    texts = _values(ax)
    assert len(texts) == np.count_nonzero(W_out)
    for t in texts:
        row, col = _cell_labels(ax, t)
        want = W_out[int(col.removeprefix("u")), int(row.split()[0])]
        assert float(t.get_text()) == pytest.approx(want, rel=0.05)
    W_in = sm.model.blocks[1].mlp.W_in.detach().double().numpy()
    title = next(a.get_title() for a in figures[1].axes if a.get_title().endswith("W_in"))
    assert len(_values(_axes(figures[1], title))) == np.count_nonzero(W_in)


def test_a_wide_mlp_wraps_onto_panels_holding_every_unit(sm, figures):
    W_in = sm.model.blocks[0].mlp.W_in.detach().double().numpy()
    units = {f"u{u}" for u in np.flatnonzero(np.abs(W_in).sum(0))}
    assert len(units) > plots.MAX_COLS
    panels = [ax for ax in figures[0].axes if re.search(r"W_in \(\d of \d\)$", ax.get_title())]
    assert len(panels) == math.ceil(len(units) / plots.MAX_COLS)
    shown = [t.get_text() for ax in panels for t in ax.get_xticklabels()]
    assert sorted(shown) == sorted(units)  # each unit once
    assert all(len(ax.get_xticklabels()) <= plots.MAX_COLS for ax in panels)
    assert sum(len(_values(ax)) for ax in panels) == np.count_nonzero(W_in)


def test_small_magnitudes_keep_a_clear_tint(figures):
    """Every coloured cell is at least 30 % of the way from white to its full colour, whatever
    the panel's range (block 0's W_in spans several decades)."""
    spans = []
    for fig in figures.values():
        for ax in fig.axes:
            if not ax.get_title():  # a colour bar: its gradient passes through white
                continue
            for mesh in ax.collections:
                if not isinstance(mesh.norm, SignedLogNorm):
                    continue
                v = np.ma.compressed(mesh.get_array())
                v = v[v != 0]
                spans.append(np.abs(v).max() / np.abs(v).min())
                tint = 2 * np.abs(np.asarray(mesh.norm(v)) - 0.5)
                assert tint.min() >= 0.3, ax.get_title()
    assert max(spans) >= 1e3  # a panel spanning decades was among them


def test_colour_bars_are_legible(figures):
    bars = [ax for fig in figures.values() for ax in fig.axes if not ax.get_title()]
    assert bars
    for cax in bars:
        labels = cax.get_yticklabels()
        assert labels and all(t.get_fontsize() >= 8 for t in labels)
        assert "0" in [t.get_text() for t in labels]


def test_embed_figure_names_its_panels(sm):
    fig = embed_figure(sm)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["W_E^T: token component -> row", "W_pos^T: position -> row",
                      "W_U: row -> readout"]


@pytest.mark.parametrize("value, text", [
    (1.0, "1"), (-0.2, "-0.2"), (0.5, "0.5"), (2700.0, "2.7e3"), (-1.8e7, "-1.8e7"),
    (3e-5, "3e-5"), (2.6e11, "2.6e11"), (123.4, "120"), (-670.0, "-670"), (0.011, "0.011"),
])
def test_short(value, text):
    assert short(value) == text


def test_signed_log_norm():
    n = SignedLogNorm(1e3, 1e7)
    assert float(n(1e7)) == pytest.approx(1.0) and float(n(-1e7)) == pytest.approx(0.0)
    assert float(n(0.0)) == 0.5
    assert float(n(1e3)) == pytest.approx(0.5 + plots.FLOOR / 2)
    assert float(n(1e5)) == pytest.approx(0.5 + (plots.FLOOR + (1 - plots.FLOOR) / 2) / 2)
    v = np.array([-1e7, -1e5, -1e3, -10.0, 0.0, 10.0, 1e3, 3e4, 1e7])
    u = np.asarray(n(v))
    assert np.all(np.diff(u) > 0)
    assert np.allclose(n.inverse(u), v, rtol=1e-12)
    ticks = n.ticks()
    assert ticks[0] == -1e7 and ticks[-1] == 1e7 and 0.0 in ticks and 1e3 in ticks
    one = SignedLogNorm(2.0, 2.0)  # one magnitude: full colour
    assert float(one(2.0)) == pytest.approx(1.0) and one.ticks() == [-2.0, 0.0, 2.0]
