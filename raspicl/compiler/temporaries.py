"""Temporaries: rows an MLP instruction's remote operands are moved into by its own block's
attention (the paper's RAW: attention read + MLP arithmetic in one block).

Runs after placement. Sets `Instr.temps` (read index -> temporary Value) on every 'attn+mlp'
instruction (a fused factor, fusion.py, gets one when some of its reads are at another token:
the heads compute the factor into it) and returns the temporaries, each written at its run's
attention slot and last read at its MLP slot. In a shared loop a later iteration's temporary
gets `template` (its iteration-0 twin), so that layout gives both the same rows. Whether a
fused factor reads elsewhere it asks the fusion pass's result, `Lowered.fused_defs` (ir.py).
"""

from __future__ import annotations

from raspicl.compiler.lower import Lowered, Value
from raspicl.slots import attn_slot, mlp_slot


def make_temporaries(low: Lowered) -> list[Value]:
    """One temporary per remote read of every 'attn+mlp' instruction (see the module doc)."""
    temps: list[Value] = []
    by_dst = {ins.dst: ins for ins in low.instrs}
    for ins in low.instrs:
        if ins.stage != "attn+mlp":
            continue
        for i, (v, at) in enumerate(ins.reads):
            if not low.fused_defs.needs_temp(v, at):  # a fused factor: if it reads elsewhere
                continue
            t = Value(f"{v.label}@{type(at).__name__}", 0, v.width, "temp", v.bound,
                      write_slot=attn_slot(ins.block), last_read=mlp_slot(ins.block))
            if ins.dst.template is not None:
                t.template = by_dst[ins.dst.template].temps[i]
            ins.temps[i] = t
            temps.append(t)
    return temps
