"""Residual rows named by register: what a compiled model's layout.json says each row holds at
each residual, so that a residual (a TransformerLens cache entry, raspicl's residual list, a
GPT2Model hidden state) reads as registers.

Residual index k is the residual stream entering slot k (docs/architecture.md §5): 0 after the
embedding, 2r + 1 after run r's attention, 2r + 2 after its MLP. Rows are reused over time, so
a row's name depends on k; raspicl.timeline.Rows knows who holds which row when, from
the layout's typed records (raspicl.layout_records).
"""

from __future__ import annotations

from raspicl.errors import RaspiclError
from raspicl.timeline import Rows

EMPTY = "(empty)"  # a row no value holds at that residual


class RegisterNames:
    """Names of a layout's residual rows at every residual index, and register reads."""

    def __init__(self, layout: dict) -> None:
        self.layout = layout
        self.rows = Rows(layout)
        self.d_model = int(layout["architecture"]["d_model"])
        self.n_residuals = 1 + 2 * len(layout["architecture"]["block_order"])
        self._labels: dict[int, list[str]] = {}

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.n_residuals:
            raise RaspiclError(
                f"residual index {index}: the model has residuals 0 .. {self.n_residuals - 1}"
            )

    def labels(self, index: int) -> list[str]:
        """One name per row of residual `index`: 'w@2[1]' (entry 1 of version 2 of w), 'one'
        (a fixed row), or '(empty)'."""
        self._check_index(index)
        if index not in self._labels:
            out = []
            for row in range(self.d_model):
                o = self.rows.live(row, index)
                out.append(o.elem(row) if o is not None else EMPTY)
            self._labels[index] = out
        return self._labels[index]

    def named(self, resid, index: int) -> dict[str, object]:
        """Residual `index` ([..., d_model]) as {row name: [...]} for the rows that hold a
        value."""
        return {
            name: resid[..., row] for row, name in enumerate(self.labels(index)) if name != EMPTY
        }

    def version(self, label: str) -> tuple[dict, dict]:
        """The layout entries (register, version) of the register version called `label`
        ('w@2', or a register's name for its last version)."""
        regs = self.layout["registers"]
        for reg in regs.values():
            for v in reg["versions"]:
                if v["label"] == label:
                    return reg, v
        if label in regs:
            return regs[label], regs[label]["versions"][-1]
        known = [v["label"] for r in regs.values() for v in r["versions"]]
        raise RaspiclError(
            f"no register version '{label}' in the layout; versions are {', '.join(known)}"
        )

    def read(self, residuals, label: str):
        """A register version from a residual list (raspicl's order), read right after the
        sublayer that wrote it: [B, T, *shape]."""
        reg, v = self.version(label)
        if not v["rows"]:  # fused away (compiler/fusion.py): its readers compute it
            ops = ", ".join(str(i) for i in v.get("absorbed_by", ()))
            raise RaspiclError(
                f"register version '{v['label']}' has no rows: the fusion pass folded it into "
                f"op(s) {ops or '?'}, which compute it from its reads (compile with "
                f"CompilerConfig(fusion=False) to keep it in the residual stream)"
            )
        k = int(v["written_after"])
        self._check_index(k)
        value = residuals[k][..., list(v["rows"])]
        return value.reshape(*value.shape[:-1], *reg["shape"])
