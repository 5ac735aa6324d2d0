"""PNG heatmaps of a compiled model's weights, with axes named by the layout.

    plot_blocks(cm, dir)  per block W_V·W_O and W_Q·W_K^T of every head in use and the MLP's
                          W_in and W_out^T; the embedding and readout in embed.png

A residual row's label is the value it holds at that sublayer (timeline.Rows, from the layout's
typed records). Figures are laid out by hand (no layout engine: fast and predictable).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from raspicl.compiled import CompiledModel
from raspicl.inspect.checks import _arr
from raspicl.inspect.timeline import Rows
from raspicl.slots import EMBEDDING, attn_slot, mlp_slot

_CELL_W, _CELL_H = 0.34, 0.26  # inches per shown matrix cell
_CHAR = 0.056  # inches per character of a 7-point tick label
_TOP, _CBAR = 0.35, 0.95  # title band; colour bar with its tick labels


@dataclass
class _Panel:
    """One heatmap: M shown on its nonzero rows and columns, with labels for all of them."""

    M: np.ndarray
    row_labels: list[str]
    col_labels: list[str]
    title: str
    xlabel: str
    ylabel: str

    def __post_init__(self):
        self.ri = np.flatnonzero(np.abs(self.M).sum(1))
        self.ci = np.flatnonzero(np.abs(self.M).sum(0))
        longest_row = max((len(self.row_labels[i]) for i in self.ri), default=8)
        longest_col = max((len(self.col_labels[j]) for j in self.ci), default=4)
        self.left = 0.45 + _CHAR * longest_row
        self.bottom = 0.45 + _CHAR * longest_col
        S = self.M[np.ix_(self.ri, self.ci)]
        # small matrices carry their values in the cells, which are widened to hold them
        self.annotate = S.size <= 120 and S.shape[1] <= 12
        longest_value = max((len(f"{v:.2g}") for v in S[S != 0]), default=1)
        cell_w = max(_CELL_W, 0.05 * longest_value + 0.06) if self.annotate else _CELL_W
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


def _draw(fig, panel: _Panel, x0: float, y0: float, W: float, H: float) -> None:
    """Draw one panel with its lower-left corner at (x0, y0) inches in a W x H figure."""
    from matplotlib.colors import SymLogNorm

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
    nz = np.abs(S[S != 0])
    vmax = float(nz.max())
    linthresh = float(nz.min())
    if linthresh >= vmax:
        linthresh = vmax / 10
    norm = SymLogNorm(linthresh=linthresh, linscale=0.5, vmin=-vmax, vmax=vmax, base=10)
    im = ax.pcolormesh(np.ma.masked_where(S == 0, S), cmap=_cmap(), norm=norm,
                       edgecolors="0.88", linewidth=0.4)
    ax.set_xlim(0, len(ci))
    ax.set_ylim(len(ri), 0)
    ax.set_yticks(np.arange(len(ri)) + 0.5, [panel.row_labels[i] for i in ri], fontsize=7)
    ax.set_xticks(np.arange(len(ci)) + 0.5, [panel.col_labels[j] for j in ci], fontsize=7,
                  rotation=90)
    ax.set_xlabel(panel.xlabel, fontsize=8)
    ax.set_ylabel(panel.ylabel, fontsize=8)
    if panel.annotate:
        for i, j in zip(*np.nonzero(S), strict=True):
            strong = abs(float(norm(S[i, j])) - 0.5) > 0.3
            ax.text(j + 0.5, i + 0.5, f"{S[i, j]:.2g}", ha="center", va="center", fontsize=6,
                    color="white" if strong else "black")
    ticks = [-vmax, -linthresh, 0.0, linthresh, vmax]
    if float(norm(linthresh)) - 0.5 < 0.06:  # the linear band is too thin to label
        ticks = [-vmax, 0.0, vmax]
    ticks = sorted(set(ticks))
    cax = fig.add_axes(((x0 + panel.left + panel.cells_w + 0.1) / W,
                        (y0 + panel.bottom) / H, 0.12 / W, panel.cells_h / H))
    cb = fig.colorbar(im, cax=cax, ticks=ticks)
    cb.ax.set_yticklabels([f"{t:.2g}" for t in ticks])
    cb.ax.tick_params(labelsize=6)


def _cmap():
    import matplotlib

    return matplotlib.colormaps["RdBu_r"].with_extremes(bad="white")


def _figure(plt, panel_rows: list[list[_Panel]], title: str, path: Path) -> Path:
    """One figure, laid out by hand (no layout engine: fast and predictable): each inner list
    a row of panels, each panel sized by the cells it shows."""
    W = max(sum(p.width for p in row) for row in panel_rows) + 0.2
    heights = [max(p.height for p in row) for row in panel_rows]
    H = sum(heights) + 0.45
    fig = plt.figure(figsize=(W, H))
    y = H - 0.45
    for row, h in zip(panel_rows, heights, strict=True):
        y -= h
        x = 0.1
        for p in row:
            _draw(fig, p, x, y + (h - p.height), W, H)
            x += p.width
    fig.suptitle(title, fontsize=10, y=1 - 0.12 / H, va="top")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_blocks(cm: CompiledModel, outdir: str | Path) -> list[Path]:
    """PNG heatmaps of every block (blockNN.png: W_V·W_O and W_Q·W_K^T per head in use, the MLP's
    W_in and W_out^T) and of the embedding and readout (embed.png). Returns the paths.

    Axes name the residual rows by the value each holds at that sublayer ('12 x_prev[0]': row
    12, read before this attention; for a block run several times, as in its first run) and show
    only rows and columns that are not all zero."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    L = cm.layout
    rows = Rows(L)
    D = len(rows.names)
    name = L["program"]["name"]
    paths: list[Path] = []
    for blk in L["blocks"]:
        b = blk["block"]
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
        for h in range(attn.W_Q.shape[0]):
            WQ, WK = _arr(attn.W_Q[h]), _arr(attn.W_K[h])
            WV, WO = _arr(attn.W_V[h]), _arr(attn.W_O[h])
            if h not in heads and not (WQ.any() or WK.any() or WV.any() or WO.any()):
                continue
            place = heads[h]["place"] if h in heads else "not in the layout"
            panel_rows.append([
                _Panel(WV @ WO, read_a, write_a, f"head {h} ({place}): W_V·W_O",
                       "row written (value after this attention)",
                       "row read (value before it)"),
                _Panel(WQ @ WK.T, read_a, read_a, f"head {h} ({place}): W_Q·W_K^T",
                       "key row", "query row"),
            ])
        W_in, W_out = _arr(mlp.W_in), _arr(mlp.W_out)
        units = [f"u{u}" for u in range(W_in.shape[1])]
        mlp_panels = [
            _Panel(W_in, read_m, units, f"MLP ({blk['mlp']['mode']}): W_in", "hidden unit",
                   "row read (through LayerNorm)"),
            _Panel(W_out.T, write_m, units, "MLP: W_out^T", "hidden unit", "row written"),
        ]
        if blk["mlp"]["units"] > 12:
            panel_rows += [[p] for p in mlp_panels]
        else:
            panel_rows.append(mlp_panels)
        when = "" if runs == [b] else (
            f", run {runs[0]}" if len(runs) == 1 else
            f", runs {', '.join(map(str, runs))} (rows named as in run {runs[0]})")
        paths.append(_figure(plt, panel_rows, f"{name}: block {b}{when} (symmetric log colour "
                                              f"scale; blank = 0)", out / f"block{b:02d}.png"))
    paths.append(_plot_embed(cm, rows, out, plt))
    return paths


def _plot_embed(cm: CompiledModel, rows: Rows, out: Path, plt) -> Path:
    L = cm.layout
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
    panels = [_Panel(W_E.T, emb_labels, comps, "W_E^T: token component -> row",
                     "token component", "row (after the embedding)"),
              _Panel(W_pos.T, emb_labels, pos_labels, "W_pos^T: position -> row", "position",
                     "row (after the embedding)"),
              _Panel(W_U, end_labels, out_labels, "W_U: row -> readout", "output",
                     "row (after the last block)")]
    return _figure(plt, [panels], f"{L['program']['name']}: embedding and readout",
                   out / "embed.png")
