"""PNG heatmaps of a compiled model's weights, with axes named by the layout.

    plot_blocks(cm, dir)  per block W_V·W_O and W_Q·W_K^T of every head in use and the MLP's
                          W_in and W_out^T; the embedding and readout in embed.png
    block_figure(cm, b), embed_figure(cm)
                          the same figures as matplotlib Figure objects (not saved)

A residual row's label is the value it holds at that sublayer (timeline.Rows, from the layout's
typed records). Every nonzero cell carries its value; its colour gives the sign (red +, blue -)
and, in shade, the order of magnitude within the panel (`SignedLogNorm`: the smallest magnitude
still clearly tinted, so that a panel spanning 1e3 to 1e7 is not washed pale). A head's clears
(the head zeroing a value that dies there, W_V·W_O = -1 from a row onto itself) are grey cells
marked "clear", not a -1 in the colour scale, since the column they sit in is named after the
row's new value. Wide matrices (MLPs) wrap onto several panels of at most MAX_COLS columns.
Figures are laid out by hand (no layout engine: fast and predictable).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from raspicl.compiled import CompiledModel
from raspicl.inspect.checks import _arr
from raspicl.layout_records import HeadWriteKind, head_writes
from raspicl.slots import EMBEDDING, attn_slot, mlp_slot
from raspicl.timeline import Rows

_CELL_W, _CELL_H = 0.34, 0.26  # inches per shown matrix cell (its value widens it)
_CHAR = 0.056  # inches per character of a 7-point tick label
_VALUE_CHAR = 0.048  # inches per character of a 6-point cell value
_TOP, _CBAR = 0.35, 1.25  # title band; colour bar with its tick labels
MAX_COLS = 32  # columns per panel: a wider matrix wraps onto further panels
MAX_VALUES = 1500  # nonzero cells a panel annotates with their values (more: colour only)
CLEAR_LABEL = "clear"
FLOOR = 0.35  # the colour intensity of a panel's smallest magnitude (1: its largest)


def short(v: float) -> str:
    """A value to two significant digits in at most ~6 characters: '1', '-0.2', '670',
    '2.7e3', '-1.8e7', '3e-5'."""
    if v == 0:
        return "0"
    a = abs(v)
    if 1e-2 <= a < 1e3:
        s = f"{v:.2g}"
        if "e" in s:  # 100 <= |v| < 1000: '6.7e+02' as '670'
            s = f"{float(s):.0f}"
    else:
        m, e = f"{v:.1e}".split("e")
        m = m.rstrip("0").rstrip(".")
        s = f"{m}e{int(e)}"
    return s


def _normalize():
    from matplotlib.colors import Normalize

    return Normalize


class SignedLogNorm(_normalize()):
    """Colour for a signed value: 0.5 + sign(v)·(FLOOR + (1 - FLOOR)·t)/2, where t places
    log10|v| between the panel's smallest (t = 0) and largest (t = 1) nonzero magnitude. Zero
    maps to 0.5 (white; zeros are masked anyway) and |v| below the smallest magnitude fades
    linearly to it. A matplotlib norm (callable, `inverse`, vmin/vmax) for pcolormesh and the
    colour bar."""

    def __init__(self, lo: float, hi: float):
        if not (0 < lo <= hi and math.isfinite(hi)):
            raise ValueError(f"SignedLogNorm needs 0 < lo <= hi, got {lo}, {hi}")
        super().__init__(vmin=-hi, vmax=hi, clip=False)
        self.single = lo == hi  # one magnitude: full colour, a decade of colour bar below it
        self.lo, self.hi = (hi / 10 if self.single else lo), hi
        self._span = math.log10(self.hi / self.lo)

    def _t(self, a: np.ndarray) -> np.ndarray:
        if self._span == 0:
            return np.ones_like(a)
        return np.clip(np.log10(np.maximum(a, self.lo) / self.lo) / self._span, 0, 1)

    def __call__(self, value, clip=None):
        v = np.ma.asarray(value, dtype=float)
        a = np.abs(v.filled(0.0))
        inner = FLOOR * a / self.lo  # below the smallest magnitude: linear to 0
        outer = FLOOR + (1 - FLOOR) * self._t(a)
        u = 0.5 + 0.5 * np.sign(v.filled(0.0)) * np.where(a < self.lo, inner, outer)
        return np.ma.array(u, mask=np.ma.getmaskarray(v))

    def inverse(self, value):
        u = np.asarray(value, dtype=float)
        s = 2 * (u - 0.5)
        a = np.abs(s)
        inner = a / FLOOR * self.lo
        t = np.clip((a - FLOOR) / (1 - FLOOR), 0, 1)
        outer = self.lo * 10 ** (t * self._span)
        return np.sign(s) * np.where(a < FLOOR, inner, outer)

    def ticks(self, gap: float = 0.07) -> list[float]:
        """Colour bar ticks: ±the extremes, ±whole decades between them (at most 3 a side),
        and 0; none closer than `gap` (in colour units, 0 to 1) to the one below it."""
        if self.single:
            return [-self.hi, 0.0, self.hi]
        lo_e, hi_e = math.ceil(math.log10(self.lo)), math.floor(math.log10(self.hi))
        decades = [10.0 ** e for e in range(lo_e, hi_e + 1)]
        if len(decades) > 3:
            step = math.ceil(len(decades) / 3)
            decades = decades[::-step][::-1]
        mags = sorted({self.lo, self.hi, *decades})
        keep = [mags[0]]
        for m in mags[1:]:  # drop a tick too close to the one below it (overlapping labels)
            if float(self(m)) - float(self(keep[-1])) >= gap:
                keep.append(m)
            elif m == self.hi:
                keep[-1] = m
        return [-m for m in reversed(keep)] + [0.0] + keep


@dataclass
class _Panel:
    """One heatmap: M on the rows `ri` and columns `ci` (nonzero ones), labelled; `norm_range`
    the (smallest, largest) nonzero magnitude its colours span (the whole matrix's, when it is
    one of several panels of a wide matrix); `clears` the (row, column) cells of M that are a
    head's clears."""

    M: np.ndarray
    row_labels: list[str]
    col_labels: list[str]
    title: str
    xlabel: str
    ylabel: str
    ri: np.ndarray
    ci: np.ndarray
    norm_range: tuple[float, float] | None
    clears: set[tuple[int, int]] = field(default_factory=set)

    def __post_init__(self):
        longest_row = max((len(self.row_labels[i]) for i in self.ri), default=8)
        longest_col = max((len(self.col_labels[j]) for j in self.ci), default=4)
        self.left = 0.45 + _CHAR * longest_row
        self.bottom = 0.45 + _CHAR * longest_col
        S = self.M[np.ix_(self.ri, self.ci)]
        self.annotate = int(np.count_nonzero(S)) <= MAX_VALUES
        longest_value = max((len(short(v)) for v in S[S != 0]), default=1)
        if self.clears:
            longest_value = max(longest_value, len(CLEAR_LABEL))
        cell_w = max(_CELL_W, _VALUE_CHAR * longest_value + 0.08) if self.annotate else _CELL_W
        self.cells_w = cell_w * max(len(self.ci), 2)
        self.cells_h = _CELL_H * max(len(self.ri), 2)
        title_w = 0.075 * len(self.title)  # a 9-point title must fit over the cells
        self.cells_w = max(self.cells_w, title_w - self.left / 2)
        ylabel_h = 0.062 * len(self.ylabel)  # and an 8-point axis label beside them
        self.cells_h = max(self.cells_h, ylabel_h - 2 * _TOP)

    @property
    def width(self) -> float:
        return self.left + self.cells_w + _CBAR

    @property
    def height(self) -> float:
        return _TOP + self.cells_h + self.bottom


def _panels(M: np.ndarray, row_labels: list[str], col_labels: list[str], title: str,
            xlabel: str, ylabel: str, clears: set[tuple[int, int]] = frozenset()) \
        -> list[_Panel]:
    """M as one panel, or, if it has more than MAX_COLS nonzero columns, as several panels of
    at most MAX_COLS columns each ('(2 of 3)' in their titles, each on the rows its columns
    use) on one colour scale."""
    ri = np.flatnonzero(np.abs(M).sum(1))
    ci = np.flatnonzero(np.abs(M).sum(0))
    coloured = [abs(float(M[i, j])) for i, j in zip(*np.nonzero(M), strict=True)
                if (i, j) not in clears]
    norm_range = (min(coloured), max(coloured)) if coloured else None
    chunks = [ci[k:k + MAX_COLS] for k in range(0, len(ci), MAX_COLS)] or [ci]
    out = []
    for k, cols in enumerate(chunks):
        t = title if len(chunks) == 1 else f"{title} ({k + 1} of {len(chunks)})"
        rows = ri if len(chunks) == 1 else np.flatnonzero(np.abs(M[:, cols]).sum(1))
        out.append(_Panel(M, row_labels, col_labels, t, xlabel, ylabel, rows, cols, norm_range,
                          set(clears)))
    return out


def _draw(fig, panel: _Panel, x0: float, y0: float, W: float, H: float) -> None:
    """Draw one panel with its lower-left corner at (x0, y0) inches in a W x H figure."""
    ax = fig.add_axes(((x0 + panel.left) / W, (y0 + panel.bottom) / H,
                       panel.cells_w / W, panel.cells_h / H))
    ax.set_title(panel.title, fontsize=9)
    ri, ci = panel.ri, panel.ci
    if ri.size == 0:
        ax.text(0.5, 0.5, "all zero", ha="center", va="center", transform=ax.transAxes,
                fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    S = panel.M[np.ix_(ri, ci)]
    clear = np.zeros(S.shape, dtype=bool)
    for i, j in panel.clears:
        ii, jj = np.flatnonzero(ri == i), np.flatnonzero(ci == j)
        if ii.size and jj.size:
            clear[ii[0], jj[0]] = True
    ax.set_xlim(0, len(ci))
    ax.set_ylim(len(ri), 0)
    ax.set_yticks(np.arange(len(ri)) + 0.5, [panel.row_labels[i] for i in ri], fontsize=7)
    ax.set_xticks(np.arange(len(ci)) + 0.5, [panel.col_labels[j] for j in ci], fontsize=7,
                  rotation=90)
    ax.set_xlabel(panel.xlabel, fontsize=8)
    ax.set_ylabel(panel.ylabel, fontsize=8)
    if clear.any():
        ax.pcolormesh(np.ma.masked_where(~clear, np.ones(S.shape)), cmap=_grey(), vmin=0,
                      vmax=1, edgecolors="0.88", linewidth=0.4)
        for i, j in zip(*np.nonzero(clear), strict=True):
            ax.text(j + 0.5, i + 0.5, CLEAR_LABEL, ha="center", va="center", fontsize=6,
                    color="0.25", style="italic")
    if panel.norm_range is None:  # nothing but clears
        return
    norm = SignedLogNorm(*panel.norm_range)
    shown = np.ma.masked_where((S == 0) | clear, S)
    im = ax.pcolormesh(shown, cmap=_cmap(), norm=norm, edgecolors="0.88", linewidth=0.4)
    if panel.annotate:
        for i, j in zip(*np.nonzero(~np.ma.getmaskarray(shown)), strict=True):
            strong = abs(float(norm(S[i, j])) - 0.5) > 0.32
            ax.text(j + 0.5, i + 0.5, short(float(S[i, j])), ha="center", va="center",
                    fontsize=6, color="white" if strong else "black")
    # the colour bar is top-aligned with the cells, at least an inch tall (into the band of
    # the column labels below short panels), its tick labels at least 0.14 inch apart
    cb_h = min(max(panel.cells_h, 1.0), panel.cells_h + panel.bottom - 0.25)
    cax = fig.add_axes(((x0 + panel.left + panel.cells_w + 0.12) / W,
                        (y0 + panel.bottom + panel.cells_h - cb_h) / H, 0.14 / W, cb_h / H))
    ticks = norm.ticks(gap=0.14 / cb_h)
    cb = fig.colorbar(im, cax=cax, ticks=ticks)
    cb.ax.set_yticklabels([short(t) for t in ticks])
    cb.ax.tick_params(labelsize=8)
    cb.ax.minorticks_off()


def _cmap():
    import matplotlib

    return matplotlib.colormaps["RdBu_r"].with_extremes(bad="white")


def _grey():
    from matplotlib.colors import ListedColormap

    return ListedColormap(["0.82"]).with_extremes(bad=(0, 0, 0, 0))


def _figure(panel_rows: list[list[_Panel]], title: str):
    """One figure, laid out by hand (no layout engine: fast and predictable): each inner list
    a row of panels, each panel sized by the cells it shows."""
    from matplotlib.figure import Figure

    W = max(sum(p.width for p in row) for row in panel_rows) + 0.2
    heights = [max(p.height for p in row) for row in panel_rows]
    H = sum(heights) + 0.6
    longest = max(len(line) for line in title.split("\n"))
    W = max(W, 0.07 * longest + 0.4)  # the 10-point title must fit
    fig = Figure(figsize=(W, H))
    y = H - 0.6
    for row, h in zip(panel_rows, heights, strict=True):
        y -= h
        x = 0.1
        for p in row:
            _draw(fig, p, x, y + (h - p.height), W, H)
            x += p.width
    fig.suptitle(title, fontsize=10, y=1 - 0.1 / H, va="top")
    return fig


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    return path


def _clears(head: dict | None) -> set[tuple[int, int]]:
    """The (row, row) cells of a head's W_V·W_O that clear a value (layout actions 'clear')."""
    if head is None:
        return set()
    return {(r, r) for a in head_writes(head) if a.kind is HeadWriteKind.CLEAR for r in a.rows}


def block_figure(cm: CompiledModel, b: int, rows: Rows | None = None):
    """Block b's heatmaps as a matplotlib Figure (not saved): per head in use W_V·W_O and
    W_Q·W_K^T, then the MLP's W_in and W_out^T (wrapped at MAX_COLS units a panel)."""
    L = cm.layout
    rows = rows or Rows(L)
    D = len(rows.names)
    blk = next(x for x in L["blocks"] if x["block"] == b)
    runs = list(blk["runs"])
    attn = cm.model.blocks[b].attn
    mlp = cm.model.blocks[b].mlp
    s_attn, s_mlp = attn_slot(runs[0]), mlp_slot(runs[0])
    read_a = [rows.label_read(r, s_attn) for r in range(D)]
    write_a = [rows.label_write(r, s_attn) for r in range(D)]
    read_m = [rows.label_read(r, s_mlp) for r in range(D)]
    write_m = [rows.label_write(r, s_mlp) for r in range(D)]
    panel_rows: list[list[_Panel]] = []
    heads = {h["head"]: h for h in blk["heads"]}
    any_clear = False
    for h in range(attn.W_Q.shape[0]):
        WQ, WK = _arr(attn.W_Q[h]), _arr(attn.W_K[h])
        WV, WO = _arr(attn.W_V[h]), _arr(attn.W_O[h])
        if h not in heads and not (WQ.any() or WK.any() or WV.any() or WO.any()):
            continue
        place = heads[h]["place"] if h in heads else "not in the layout"
        OV = WV @ WO
        clears = {c for c in _clears(heads.get(h)) if OV[c] < 0}
        any_clear |= bool(clears)
        panel_rows.append([
            *_panels(OV, read_a, write_a, f"head {h} ({place}): W_V·W_O",
                     "row written (value after this attention)", "row read (value before it)",
                     clears),
            *_panels(WQ @ WK.T, read_a, read_a, f"head {h} ({place}): W_Q·W_K^T", "key row",
                     "query row"),
        ])
    W_in, W_out = _arr(mlp.W_in), _arr(mlp.W_out)
    units = [f"u{u}" for u in range(W_in.shape[1])]
    mlp_in = _panels(W_in, read_m, units, f"MLP ({blk['mlp']['mode']}): W_in", "hidden unit",
                     "row read (through LayerNorm)")
    mlp_out = _panels(W_out.T, write_m, units, "MLP: W_out^T", "hidden unit", "row written")
    if len(mlp_in) == 1 and len(mlp_in[0].ci) <= 12:
        panel_rows.append(mlp_in + mlp_out)
    else:
        panel_rows += [[p] for p in mlp_in + mlp_out]
    when = "" if runs == [b] else (
        f", run {runs[0]}" if len(runs) == 1 else
        f", runs {', '.join(map(str, runs))} (rows named as in run {runs[0]})")
    legend = "cells: value; colour: sign, and shade: order of magnitude in the panel; blank = 0"
    if any_clear:
        legend += "; grey 'clear': the head zeroes the row's old value"
    return _figure(panel_rows, f"{L['program']['name']}: block {b}{when}\n{legend}")


def embed_figure(cm: CompiledModel, rows: Rows | None = None):
    """The embedding (W_E, W_pos) and readout (W_U) heatmaps as a matplotlib Figure."""
    L = cm.layout
    rows = rows or Rows(L)
    D = len(rows.names)
    prompt = L["prompt"]
    comps = [""] * prompt["d_token"]
    for name, idx in prompt["token_components"].items():
        for k, c in enumerate(idx):
            comps[c] = name if len(idx) == 1 else f"{name}[{k}]"
    W_E = _arr(cm.model.embed.W_E)
    W_pos = _arr(cm.model.pos_embed.W_pos)
    W_U = _arr(cm.model.unembed.W_U)
    emb_labels = [rows.label_write(r, EMBEDDING) for r in range(D)]
    end_labels = [rows.label_read(r, rows.end) for r in range(D)]
    roles = prompt["roles"]
    pos_labels = [f"t={t} ({roles[t]})" if t < len(roles) else f"t={t}"
                  for t in range(W_pos.shape[0])]
    out_reg = L["output"]["register"]
    d_out = W_U.shape[1]
    out_labels = [out_reg if d_out == 1 else f"{out_reg}[{k}]" for k in range(d_out)]
    panels = [*_panels(W_E.T, emb_labels, comps, "W_E^T: token component -> row",
                       "token component", "row (after the embedding)"),
              *_panels(W_pos.T, emb_labels, pos_labels, "W_pos^T: position -> row", "position",
                       "row (after the embedding)"),
              *_panels(W_U, end_labels, out_labels, "W_U: row -> readout", "output",
                       "row (after the last block)")]
    return _figure([panels], f"{L['program']['name']}: embedding and readout\ncells: value; "
                             f"colour: sign, and shade: order of magnitude; blank = 0")


def plot_blocks(cm: CompiledModel, outdir: str | Path) -> list[Path]:
    """PNG heatmaps of every block (blockNN.png: W_V·W_O and W_Q·W_K^T per head in use, the MLP's
    W_in and W_out^T) and of the embedding and readout (embed.png). Returns the paths.

    Axes name the residual rows by the value each holds at that sublayer ('12 x_prev[0]': row
    12, read before this attention; for a block run several times, as in its first run) and show
    only rows and columns that are not all zero. Every nonzero cell shows its value; a head's
    clears are grey cells marked 'clear'."""
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    rows = Rows(cm.layout)
    paths: list[Path] = []
    for blk in cm.layout["blocks"]:
        b = blk["block"]
        paths.append(_save(block_figure(cm, b, rows), out / f"block{b:02d}.png"))
    paths.append(_save(embed_figure(cm, rows), out / "embed.png"))
    return paths
