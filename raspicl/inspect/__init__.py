"""Reading a compiled model: its residual layout, what each block does, and its weights as plots.

Everything here works from a CompiledModel's `layout` dict (the content of layout.json) and its
weights, so a model loaded with raspicl.export.load, which has no Program, reads the same as a
freshly compiled one.

    layout_table(cm)      the residual stream: fixed rows, and every register version's rows,
                          the sublayer that writes it and the one that clears it
    block_report(cm)      per block: each head's place and its writes grouped into register
                          statements (x_prev <- x (offset 1 back), clear uu), the MLP's mode,
                          LayerNorm eps, units and ops, each traced to its source line
    inspect_text(cm)      both
    plot_blocks(cm, dir)  PNG heatmaps: per block W_V·W_O and W_Q·W_K^T of every head in use and
                          the MLP's W_in and W_out^T; the embedding and readout in embed.png

Rows are reused over time (layout.py), so a row's meaning depends on the sublayer. Sublayers are
numbered as slots over the forward pass: run r's attention is slot 2r, its MLP slot 2r + 1, the
embedding slot -1 (run r executes stored block block_order[r]; a looped model runs a shared
block several times). A sublayer reads the value live in a row before it and writes the value
whose `written` names it; statements and axis labels name the value a row holds at that slot,
not the row's whole history. A block that runs more than once is described run by run.

Heads' biases (aff biases and folded constants, in b_O) are not in the layout; they are read from
the weights. Each head's W_V·W_O is checked against the writes the layout records for it.

Modules: report.py (the text; who holds which row when comes from raspicl.timeline, which
interop reads too), checks.py (the weights against the layout),
plots.py (the heatmaps), text.py (formatting). Nothing here parses the layout's prose glosses.

Layer 10, analysis and commands (docs/index.md, "The source, in layers"): it may import
every layer below, never raspicl.cli.
"""

from __future__ import annotations

from raspicl.inspect.plots import plot_blocks
from raspicl.inspect.report import block_report, inspect_text, layout_table

__all__ = ["block_report", "inspect_text", "layout_table", "plot_blocks"]
