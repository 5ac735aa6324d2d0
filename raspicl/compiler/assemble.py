"""Assembly: gadgets for every scheduled instruction, filled into a Transformer's weights.

A fused value (fusion.py) is computed inside the ops that absorb it: assembly reads its
definition from the fusion pass's result, `Lowered.fused_defs` (ir.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from raspicl.arch import anchor_levels
from raspicl.compiler.config import CompilerConfig
from raspicl.compiler.gadgets.attention import (
    HeadSpec,
    pattern_entries,
    pattern_weights,
    place_key,
)
from raspicl.compiler.gadgets.elementwise import (
    ElementwiseGadget,
    build_gadget,
    elementwise_units,
)
from raspicl.compiler.gadgets.layernorm import (
    division_read,
    ln_anchor_biases,
    ln_anchor_embedding,
    ln_read_scale,
    neutral_read,
    restore_ln_anchors,
    through_layernorm,
)
from raspicl.compiler.gadgets.mlp import (
    UnitSpec,
    affine_units,
    gadget_bound,
    gate_units,
    product_form_units,
    product_params,
    product_units,
)
from raspicl.compiler.ir import FusedDefinitions
from raspicl.compiler.layout import Layout
from raspicl.compiler.loops import describe_row_mismatch
from raspicl.compiler.lower import Instr, Lowered, Value
from raspicl.compiler.schedule import Schedule
from raspicl.contract import ProductPair
from raspicl.errors import CompileError
from raspicl.lang.reads import Here, compose
from raspicl.model import LayerNorm, ModelConfig, Transformer
from raspicl.sparse_weights import SparseArray, SparseWeights


@dataclass
class Tuning:
    """Per-run constants that compile-time feasibility (feasibility.py) raises above the
    config's defaults where the values a block holds need it: the neutral LayerNorm's eps and
    the division anchor N. Runs of one shared block always get equal constants."""

    neutral_eps: dict[int, float] = field(default_factory=dict)
    anchor: dict[int, float] = field(default_factory=dict)

    def eps_of(self, run: int, config: CompilerConfig) -> float:
        return self.neutral_eps.get(run, config.neutral_ln_eps)

    def anchor_of(self, run: int, config: CompilerConfig) -> float:
        return self.anchor.get(run, config.division_anchor)


@dataclass
class Gadgets:
    """The constants of one instruction's MLP gadgets, for the runtime monitor: its product
    pairs (operands as (read, component)), for a select each output's gate bound, for an
    apply its elementwise gadget."""

    pairs: list[ProductPair] = field(default_factory=list)
    gate_bound: list[float] = field(default_factory=list)
    elementwise: ElementwiseGadget | None = None  # an apply's gadget


@dataclass
class BlockSpec:
    """What one block does: its heads, attention bias, MLP mode and MLP units."""

    heads: dict[tuple, HeadSpec] = field(default_factory=dict)
    b_O: dict[int, float] = field(default_factory=dict)
    divisor: Value | None = None
    units: list[UnitSpec] = field(default_factory=list)
    mlp_ops: list[str] = field(default_factory=list)
    ln_eps: float = 0.0
    anchor: float = 0.0
    gadgets: dict[int, Gadgets] = field(default_factory=dict)  # op index -> its gadgets

    def head(self, place) -> HeadSpec:
        key = place_key(place)
        if key not in self.heads:
            self.heads[key] = HeadSpec(place)
        return self.heads[key]


def build_blocks(low: Lowered, sched: Schedule, layout: Layout, config: CompilerConfig,
                 tuning: Tuning | None = None) -> list[BlockSpec]:
    tuning = tuning or Tuning()
    shared = sched.arch.shared_eps  # one eps for every LayerNorm (gpt2), else per block
    blocks = [BlockSpec(ln_eps=shared if shared is not None else tuning.eps_of(b, config),
                        anchor=tuning.anchor_of(b, config))
              for b in range(sched.n_blocks)]
    for b, mode in sched.mlp_mode.items():
        if isinstance(mode, Value):
            blocks[b].divisor = mode
            if shared is None:
                blocks[b].ln_eps = config.division_ln_eps
    defs = low.fused_defs
    for ins in sched.instrs:
        _emit(ins, blocks[ins.block], layout, config, defs, sched.arch.approximate)
    fixed = layout.fixed
    for b, divisor in sched.anchors.items():
        _anchors(blocks[b], divisor, fixed, defs)
        after = [b + 1]
        for lp in sched.loops:  # in a shared loop, every iteration's first block clears them
            if len(lp.starts) > 1 and (b + 1) in lp.starts:  # (zeros, in the iterations that
                after += lp.starts                             # do not follow a division)
        for nb in after:
            if nb < sched.n_blocks:
                nxt = blocks[nb].head(Here())
                for name in ("anchor_pos", "anchor_neg"):
                    nxt.clear(fixed[name])
                nxt.note("clear the anchors")
    clears: dict[int, list[Value]] = {}
    for v in layout.values:
        for b in layout.liveness.cleared_by(v):
            if b < sched.n_blocks:
                clears.setdefault(b, []).append(v)
    _align_loop_clears(clears, sched)
    for b, values in clears.items():
        head = blocks[b].head(Here())
        for v in values:
            for r in v.rows:
                head.clear(r)
            head.note(f"clear {v.label}")
    return blocks


def _align_loop_clears(clears: dict[int, list[Value]], sched: Schedule) -> None:
    """In a shared loop, a later iteration's block clears the same rows as iteration 0's but
    may reach them in another order (values sorted by write slot: iteration 0 clears what
    came before the loop, iteration k what iteration k - 1 wrote), which would split its
    self-head into different heads. Reorder such a block's clears (stably) by where iteration
    0's block clears each value's first row; a block whose clears already come in iteration
    0's order is left as it is."""
    for loop in sched.loops:
        for start in loop.starts[1:]:
            for j in range(loop.length):
                a, b = loop.starts[0] + j, start + j
                ref = [r for v in clears.get(a, []) for r in v.rows]
                if b not in clears or [r for v in clears[b] for r in v.rows] == ref:
                    continue
                pos: dict[int, int] = {}
                for i, r in enumerate(ref):
                    pos.setdefault(r, i)
                clears[b].sort(key=lambda v: pos.get(v.rows[0], len(ref)))


def _anchors(block: BlockSpec, divisor: Value, fixed: dict[str, int],
             defs: FusedDefinitions) -> None:
    """The division anchors +-N s: copied from the divisor's row by the self-head, or, for a
    fused divisor (fusion.py), computed from its reads (heads at their places, N times its
    bias in b_O)."""
    N = block.anchor
    if not divisor.fused:
        head = block.head(Here())
        head.copy(divisor.rows[0], fixed["anchor_pos"], N)
        head.copy(divisor.rows[0], fixed["anchor_neg"], -N)
        head.note(f"anchors +-N {divisor.label} for the division")
        return
    f = defs.definition(divisor)
    for _, c, r, k in f.linear:
        src, place = f.reads[r]
        head = block.head(place)
        head.copy(src.rows[k], fixed["anchor_pos"], N * c)
        head.copy(src.rows[k], fixed["anchor_neg"], -N * c)
        head.note(f"anchors +-N {divisor.label} (fused) for the division")
    b = float(f.bias[0])
    if b != 0.0:
        for name, sign in (("anchor_pos", 1.0), ("anchor_neg", -1.0)):
            block.b_O[fixed[name]] = block.b_O.get(fixed[name], 0.0) + sign * N * b


def split_heads(blocks: list[BlockSpec], span: int | None = None) -> int:
    """Split wide heads into heads of at most d_head value columns, d_head chosen to make
    n_heads * d_head (the padded attention size of every block) within 25% of its smallest,
    and as large as that allows (fewer heads read more easily). Returns d_head.
    span: a target whose n_heads * d_head must equal d_model (gpt2), d_model at least span:
    d_head then makes that padded width smallest (the largest d_head among the ties).

    Every head is padded to the model's d_head, so one head that clears a d x d matrix (d^2
    columns) would otherwise set d_head for all heads of all blocks.
    """
    widths = [[len(h.columns) for h in b.heads.values()] for b in blocks]
    widest = max([2] + [w for ws in widths for w in ws])

    def heads_needed(dh: int) -> int:
        return max([1] + [sum(-(-w // dh) for w in ws) for ws in widths])

    if span is not None:
        width = {dh: max(heads_needed(dh), -(-span // dh)) * dh
                 for dh in range(2, max(widest, span) + 1)}
        d_head = min(width, key=lambda dh: (width[dh], -dh))
    else:
        size = {dh: heads_needed(dh) * dh for dh in range(2, widest + 1)}
        # the widest heads within 25% of the smallest size: fewer, more readable heads
        d_head = max(dh for dh, n in size.items() if n <= 1.25 * min(size.values()))
    for block in blocks:
        split: dict[tuple, HeadSpec] = {}
        for key, head in block.heads.items():
            parts = -(-len(head.columns) // d_head) or 1
            for part in range(parts):
                cols = head.columns[part * d_head:(part + 1) * d_head]
                piece = HeadSpec(head.place, list(cols), [], list(head.purposes))
                for col, dst, coef in head.writes:
                    if part * d_head <= col < (part + 1) * d_head:
                        piece.writes.append((col - part * d_head, dst, coef))
                split[key + (part,)] = piece
        block.heads = split
    return d_head


def _emit(ins: Instr, block: BlockSpec, layout: Layout, config: CompilerConfig,
          defs: FusedDefinitions, form: str = "none") -> None:
    """One scheduled instruction's heads (attention) or MLP units, added to its block (form:
    the target's GeLU, 'none' or 'tanh', which an apply's gadget is certified for)."""
    dst = ins.dst
    what = f"{dst.label} = {ins.op.kind} (op {ins.op.index}, {ins.op.source})"
    if ins.fused:  # computed inside the ops that absorb it (fusion.py)
        return
    if ins.stage == "attn":
        _emit_attention(ins, block, what)
        return
    facts = block.gadgets.setdefault(ins.op.index, Gadgets())
    operand_rows = _operand_rows(ins, block, defs)
    forms = _factor_forms(ins, defs)
    bounds = [ins.temps[i].bound if i in ins.temps else v.bound
              for i, (v, _) in enumerate(ins.reads)]
    if ins.function is not None:
        block.units += _apply_part(ins, operand_rows, facts, config, form)
        block.mlp_ops.append(what)
        return
    block.units += _affine_part(ins, operand_rows)
    if ins.mask is not None:
        block.units += _gated_part(ins, operand_rows, bounds, facts, config)
    block.units += _product_part(ins, operand_rows, bounds, facts, config, forms)
    block.mlp_ops.append(what)


def _emit_attention(ins: Instr, block: BlockSpec, what: str) -> None:
    """A linear op placed in attention: one head per place, the bias in b_O."""
    dst = ins.dst
    for o, c, ri, ci in ins.linear:
        v, at = ins.reads[ri]
        head = block.head(at)
        head.copy(v.rows[ci], dst.rows[o], c)
        head.note(what)
    for o, b in enumerate(ins.bias):
        if b != 0.0:
            block.b_O[dst.rows[o]] = block.b_O.get(dst.rows[o], 0.0) + float(b)


def _operand_rows(ins: Instr, block: BlockSpec, defs: FusedDefinitions) -> list[list[int]]:
    """Per read, the rows the MLP reads it from: its own, or the temporary a head of this
    block moves a remote read into (the head is added here; a fused factor's temporary gets
    the factor itself, from heads at its reads' composed places and its bias in b_O). A
    fused factor read without a temporary has no rows ([]): _factor_forms gives its form."""
    operand_rows = []
    for i, (v, at) in enumerate(ins.reads):
        if i in ins.temps and v.fused:
            t, f = ins.temps[i], defs.definition(v)
            for o, c, r, k in f.linear:
                src, place = f.reads[r]
                head = block.head(compose(at, place))
                head.copy(src.rows[k], t.rows[o], c)
                head.note(f"compute {v.label} ({at.describe()}, fused) for {ins.dst.label}")
            for o, b in enumerate(f.bias):
                if b != 0.0:
                    block.b_O[t.rows[o]] = block.b_O.get(t.rows[o], 0.0) + float(b)
            operand_rows.append(t.rows)
        elif i in ins.temps:
            t = ins.temps[i]
            head = block.head(at)
            for k in range(v.width):
                head.copy(v.rows[k], t.rows[k])
            head.note(f"read {v.label} ({at.describe()}) for {ins.dst.label}")
            operand_rows.append(t.rows)
        else:
            operand_rows.append(v.rows)
    return operand_rows


def _factor_forms(ins: Instr, defs: FusedDefinitions
                  ) -> dict[int, list[tuple[dict[int, float], float]]]:
    """read index -> per component, the affine form of rows ({row: coef}, bias) of a fused
    factor that the MLP computes in its own pre-activation (its reads all at this token)."""
    forms = {}
    for i, (v, _) in enumerate(ins.reads):
        if v.fused and i not in ins.temps:
            f = defs.definition(v)
            comps: list[tuple[dict[int, float], float]] = [({}, float(b)) for b in f.bias]
            for o, c, r, k in f.linear:
                row = f.reads[r][0].rows[k]
                comps[o][0][row] = comps[o][0].get(row, 0.0) + c
            forms[i] = comps
    return forms


def _argument_forms(ins: Instr, operand_rows: list[list[int]]) -> dict[int, dict[int, float]]:
    """Per output component, its linear terms as {row: coefficient}."""
    per_row: dict[int, dict[int, float]] = {}
    for o, c, ri, ci in ins.linear:
        row = operand_rows[ri][ci]
        per_row.setdefault(o, {})
        per_row[o][row] = per_row[o].get(row, 0.0) + c
    return per_row


def _affine_part(ins: Instr, operand_rows: list[list[int]], linear: bool = True
                 ) -> list[UnitSpec]:
    """Exact affine units for the linear terms and bias (minus the old value, for a write
    that overwrites its predecessor in place); linear=False: the old value's part alone (an
    apply, whose linear terms are its function's argument)."""
    dst = ins.dst
    per_row = _argument_forms(ins, operand_rows) if linear else {}
    old = dst.replaces
    if old is not None and old.overwritten_at == dst.write_slot:  # in-place: minus the old value
        for o, row in enumerate(old.rows):
            per_row.setdefault(o, {})
            per_row[o][row] = per_row[o].get(row, 0.0) - 1.0
    units = []
    for o in range(dst.width):
        bias = float(ins.bias[o]) if linear else 0.0
        if o in per_row or bias != 0.0:
            units += affine_units(dst.rows[o], per_row.get(o, {}), bias)
    return units


def _apply_part(ins: Instr, operand_rows: list[list[int]], facts: Gadgets,
                config: CompilerConfig, form: str) -> list[UnitSpec]:
    """An apply's units: per component, f^ of its argument (compiler/gadgets/elementwise.py,
    certified within config.apply_epsilon for the target's GeLU), the gadget recorded in
    `facts` for the monitor. CompileError, naming the op, where no gadget of at most
    config.apply_max_units units reaches that epsilon."""
    fn = ins.function
    epsilon = config.apply_kink_epsilon if fn.kinks else config.apply_epsilon
    gadget = build_gadget(fn, form, float(epsilon), float(config.apply_sharpness),
                          int(config.apply_max_units), int(config.apply_ghost_units))
    if not isinstance(gadget, ElementwiseGadget):
        raise CompileError(f"{ins.op.where()}: {fn.describe()} needs more than "
                           f"{config.apply_max_units} GeLU units for apply_epsilon = "
                           f"{epsilon:g} (the best certified error was "
                           f"{gadget:.3g}); raise apply_max_units or apply_epsilon, or narrow "
                           f"the range")
    facts.elementwise = gadget
    forms = _argument_forms(ins, operand_rows)
    units = _affine_part(ins, operand_rows, linear=False)
    for o in range(ins.dst.width):
        terms, bias = forms.get(o, {}), float(ins.bias[o])
        units += elementwise_units(ins.dst.rows[o], terms, bias, gadget)
    return units


def _gated_part(ins: Instr, operand_rows: list[list[int]], bounds: list[float],
                facts: Gadgets, config: CompilerConfig) -> list[UnitSpec]:
    """A select's gate units, each output's gate bound recorded in `facts`."""
    dst = ins.dst
    gated: dict[int, dict[int, float]] = {}
    for o, c, ri, ci in ins.gated:
        row = operand_rows[ri][ci]
        gated.setdefault(o, {})
        gated[o][row] = gated[o].get(row, 0.0) + c
    facts.gate_bound = [0.0] * dst.width
    units = []
    for o in range(dst.width):
        terms = gated.get(o, {})
        b = float(ins.gated_bias[o])
        if terms or b != 0.0:
            bound = abs(b) + sum(abs(c) * _row_bound(ins, operand_rows, bounds, r)
                                 for r, c in terms.items())
            bound = gadget_bound(max(bound, ins.gate_floor))  # built and recorded alike
            units += gate_units(dst.rows[o], terms, b, ins.mask.rows[0], bound,
                                config.select_sharpness)
            facts.gate_bound[o] = bound
    return units


def _product_part(ins: Instr, operand_rows: list[list[int]], bounds: list[float],
                  facts: Gadgets, config: CompilerConfig,
                  forms: dict[int, list[tuple[dict[int, float], float]]]) -> list[UnitSpec]:
    """Product units, one gadget per pair of operands (its outputs summed), each pair's
    constants recorded in `facts` for the monitor; the scale is config.product_scale times the
    instruction's product_gain (feasibility.py). An operand is a row, (0, row), or a fused
    factor's component computed in the pre-activation, (1, read, component)."""

    def key(r: int, k: int) -> tuple:
        return (1, r, k) if r in forms else (0, operand_rows[r][k])

    def form(q: tuple) -> tuple[dict[int, float], float]:
        return forms[q[1]][q[2]] if q[0] == 1 else ({q[1]: 1.0}, 0.0)

    pairs: dict[tuple[tuple, tuple], dict[int, float]] = {}
    row_bound: dict[tuple, float] = {}
    operand_of: dict[tuple, tuple[int, int]] = {}  # operand -> (read, component)
    for o, c, ra, ca, rb, cb in ins.products:
        a, b = key(ra, ca), key(rb, cb)
        row_bound[a], row_bound[b] = bounds[ra], bounds[rb]
        operand_of.setdefault(a, (ra, ca))
        operand_of.setdefault(b, (rb, cb))
        outs = pairs.setdefault((min(a, b), max(a, b)), {})
        outs[o] = outs.get(o, 0.0) + c
    units = []
    z = config.product_scale * ins.product_gain
    for (a, b), outs in pairs.items():
        out_rows = {ins.dst.rows[o]: c for o, c in outs.items()}
        if a[0] == b[0] == 0:
            units += product_units(a[1], b[1], row_bound[a], row_bound[b], out_rows, z,
                                   config.richardson)
        else:
            units += product_form_units(form(a), form(b), a == b, row_bound[a], row_bound[b],
                                        out_rows, z, config.richardson)
        k, e = product_params(a == b, row_bound[a], row_bound[b], z)
        facts.pairs.append(ProductPair(operand_of[a], operand_of[b], k, e, config.richardson,
                                       dict(outs)))
    return units


def _row_bound(ins: Instr, operand_rows: list[list[int]], bounds: list[float], row: int) -> float:
    for rows, bound in zip(operand_rows, bounds, strict=True):
        if row in rows:
            return bound
    raise AssertionError(f"row {row} is not an operand of {ins.op.where()}")


def assemble(low: Lowered, sched: Schedule, layout: Layout, blocks: list[BlockSpec],
             config: CompilerConfig) -> tuple[Transformer | SparseWeights, list[int]]:
    """The blocks' float64 weights: a paper model's by their entries (raspicl.sparse_weights:
    its compact plan is made from them, and its dense tensors only when asked for), a gpt2
    model's as a dense Transformer.

    Returns the weights and, for every block run (the schedule's blocks, in order), the
    stored block it runs: identical iterations of a shared loop are stored once.
    """
    fmt = low.program.format
    D = layout.d_model
    arch = sched.arch
    d_head = split_heads(blocks, D if arch.heads_span_model else None)
    n_heads = max([len(b.heads) for b in blocks] + [1])
    d_mlp = max([len(b.units) for b in blocks] + [1])
    if arch.heads_span_model:  # n_heads * d_head == d_model: pad with zero heads and rows
        n_heads = max(n_heads, -(-D // d_head))
        D = n_heads * d_head
    rows = layout.fixed
    levels = anchor_levels([b.divisor is not None for b in blocks], config.ln_anchor,
                           config.ln_restore_anchor or config.ln_anchor) \
        if arch.reads_through_layernorm else None
    runs = [_block_tensors(b, rows, D, n_heads, d_head, d_mlp, fmt.n_tokens, config,
                           levels[2 * r:2 * r + 3] if levels else None)
            for r, b in enumerate(blocks)]
    stored, order = _share(runs, sched, layout)
    for run, index in enumerate(order):  # feasibility gives a shared block's runs one eps
        if blocks[run].ln_eps != blocks[stored[index]].ln_eps:
            raise AssertionError(f"run {run} needs LayerNorm eps {blocks[run].ln_eps}, the "
                                 f"block it shares {blocks[stored[index]].ln_eps}")
    eps = tuple(blocks[b].ln_eps for b in stored)
    cfg = ModelConfig(d_model=D, n_layers=len(stored), n_heads=n_heads, d_head=d_head,
                      d_mlp=d_mlp, n_ctx=fmt.n_tokens, d_token=fmt.d_token,
                      d_out=low.output.width, ln_eps=eps,
                      block_order=tuple(order) if len(stored) < len(runs) else (), arch=arch)
    W_E = np.zeros((fmt.d_token, D))
    W_E[0, low.inputs["y"].rows[0]] = 1.0
    for j, r in enumerate(low.inputs["x"].rows):
        W_E[1 + j, r] = 1.0
    W_pos = np.zeros((fmt.n_tokens, D))
    for t in range(fmt.n_tokens):
        W_pos[t, rows["one"]] = 1.0
        W_pos[t, rows["pos"]] = t / fmt.n_tokens
        W_pos[t, rows["pos_sq"]] = (t / fmt.n_tokens) ** 2
        W_pos[t, rows[f"is_{fmt.role(t)}"]] = 1.0
    for name, v in low.consts.items():
        W_pos[:, v.rows] = low.program.constants[name]
    for v, mask in low.masks.values():
        W_pos[:, v.rows[0]] = mask
    W_U = np.zeros((D, low.output.width))
    for k, r in enumerate(low.output.rows):
        W_U[r, k] = 1.0
    sd = {"embed.W_E": W_E, "pos_embed.W_pos": W_pos, "unembed.W_U": W_U}
    for layer, b in enumerate(stored):
        sd |= {f"blocks.{layer}.{name}": arr for name, arr in runs[b].items()}
    if arch.reads_through_layernorm:  # gpt2: every read through a LayerNorm of weight c
        ln_anchor_embedding(W_pos, rows, config.ln_anchor)
        sd["unembed.W_U"] = through_layernorm(W_U, rows["zero"])
        for layer, b in enumerate(stored):  # a dividing ln2 reads as paper's (weight 1)
            ln2 = ln_read_scale(levels[2 * b + 1], D) if blocks[b].divisor is None else 1.0
            sd |= {f"blocks.{layer}.ln1.w": np.full(D, ln_read_scale(levels[2 * b], D)),
                   f"blocks.{layer}.ln2.w": np.full(D, ln2)}
        sd["ln_final.w"] = np.full(D, ln_read_scale(levels[-1], D))
    if arch.reads_through_layernorm:  # no compact plan runs gpt2: its weights stay dense
        return model_from_arrays(cfg, sd), order
    return SparseWeights.of(cfg, sd), order


def model_from_arrays(cfg: ModelConfig, arrays: dict[str, np.ndarray]) -> Transformer:
    """A Transformer whose parameters are `arrays` themselves (float64, shared with numpy, not
    copied); a parameter not in `arrays` is a LayerNorm weight of ones or else zeros, the
    values the gadgets assume. The model is built on the meta device first, so no zero-filled
    weights are allocated and then overwritten."""
    with torch.device("meta"):
        model = Transformer(cfg)
    layer_norm_weights = {f"{name}.w" for name, m in model.named_modules()
                          if isinstance(m, LayerNorm)}
    state = {}
    for name, meta in model.state_dict().items():
        arr = arrays.get(name)
        if arr is None:
            fill = torch.ones if name in layer_norm_weights else torch.zeros
            state[name] = fill(meta.shape, dtype=torch.float64)
            continue
        if tuple(meta.shape) != arr.shape:
            raise AssertionError(f"{name}: built {arr.shape}, model has {tuple(meta.shape)}")
        state[name] = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64))
    unknown = set(arrays) - set(state)
    if unknown:
        raise AssertionError(f"built weights the model does not have: {sorted(unknown)}")
    model.load_state_dict(state, assign=True)
    model.requires_grad_(False)
    return model


def _block_tensors(block: BlockSpec, rows: dict[str, int], D: int, n_heads: int, d_head: int,
                   d_mlp: int, n_ctx: int, config: CompilerConfig,
                   levels: list[float] | None = None) -> dict[str, np.ndarray | SparseArray]:
    """One block's weights (its matrices by entries, SparseArray, unless read through
    LayerNorms). Heads are ordered by place and a head's value columns by source
    row, so that the same work always gives the same matrices (shared loops rely on it).
    levels (gpt2: attention and MLP read through LayerNorms, layernorm.py): the constant
    anchors' size entering the block, after its attention and after its MLP."""
    through_ln = levels is not None
    zeros = np.zeros if through_ln else SparseArray  # gpt2 transforms them whole (dense)
    WQ, WK, WV = (zeros((n_heads, D, d_head)) for _ in range(3))
    WO = zeros((n_heads, d_head, D))
    heads = sorted(block.heads.items(), key=lambda kv: kv[0])
    for h, (_, head) in enumerate(heads):
        if through_ln:
            WQ[h], WK[h] = pattern_weights(head.place, rows, D, d_head, n_ctx,
                                           config.attention_margin)
        else:
            wq, wk = pattern_entries(head.place, rows, d_head, config.attention_margin, n_ctx)
            WQ.set_entries((h,), wq)
            WK.set_entries((h,), wk)
        order = sorted(range(len(head.columns)), key=lambda c: head.columns[c])
        new_col = {old: new for new, old in enumerate(order)}
        for old, src in enumerate(head.columns):
            WV[h, src, new_col[old]] = 1.0
        for col, dst, coef in head.writes:
            WO[h, new_col[col], dst] += coef
    bO = np.zeros(D)
    for r, b in block.b_O.items():
        bO[r] += b
    if block.divisor is not None:  # allocated at d_mlp units: the padding is zeros
        W_in, b_in = division_read(block.units, rows, D, block.anchor, d_mlp, zeros)
    else:  # gpt2's ln2 (weight c) passes values at scale 1: the read of eps = 1
        W_in, b_in = neutral_read(block.units, rows, D, 1.0 if through_ln else block.ln_eps,
                                  d_mlp, zeros)
    out: dict[str, np.ndarray] = {}
    if through_ln:
        WQ, WK, WV = (through_layernorm(W, rows["zero"]) for W in (WQ, WK, WV))
        ln_anchor_biases(bO, rows, levels[0], levels[1])
        if block.divisor is not None:  # the division anchors alone in ln2 (layernorm.py)
            out["mlp.b_out"] = restore_ln_anchors(D, rows, levels[2])
    W_out = zeros((d_mlp, D))
    out_terms = (((u, r), w) for u, unit in enumerate(block.units) for r, w in unit.w_out.items())
    if through_ln:
        for index, w in out_terms:
            W_out[index] += w
    else:
        W_out.add_terms(out_terms)  # the same `+=`, by entries
    return {
        "attn.W_Q": WQ, "attn.W_K": WK, "attn.W_V": WV, "attn.W_O": WO, "attn.b_O": bO,
        "mlp.W_in": W_in, "mlp.b_in": b_in, "mlp.W_out": W_out, **out,
    }


# the axis of each block tensor that runs over the residual stream's rows (mlp.b_in has none)
_ROW_AXIS = {"attn.W_Q": 1, "attn.W_K": 1, "attn.W_V": 1, "attn.W_O": 2, "attn.b_O": 0,
             "mlp.W_in": 0, "mlp.W_out": 1, "mlp.b_out": 0}


def _share(runs: list[dict[str, np.ndarray]], sched: Schedule,
           layout: Layout) -> tuple[list[int], list[int]]:
    """The blocks to store and, per run, which stored block it is. Runs of a shared loop's
    later iterations map to the first iteration's blocks, after checking they are equal; if
    they are not, the CompileError names the registers in the rows that differ
    (loops.describe_row_mismatch)."""
    twin: dict[int, int] = {}
    for loop in sched.loops:
        for k, start in enumerate(loop.starts[1:], 1):
            for j in range(loop.length):
                a, b = loop.starts[0] + j, start + j
                for name, arr in runs[a].items():
                    if not _equal(arr, runs[b][name]):
                        detail = describe_row_mismatch(
                            layout, (a, b), k,
                            _differing_rows(_dense(arr), _dense(runs[b][name]), name))
                        raise CompileError(
                            f"loop iteration {k} compiles to different weights than iteration "
                            f"0 (block {j} of the body, {name}){detail}; compile it unrolled")
                twin[b] = a
    stored: list[int] = []
    index: dict[int, int] = {}
    order = []
    for b in range(len(runs)):
        if b in twin:
            order.append(index[twin[b]])
        else:
            index[b] = len(stored)
            stored.append(b)
            order.append(index[b])
    return stored, order


def _equal(a: np.ndarray | SparseArray, b: np.ndarray | SparseArray) -> bool:
    """Whether two runs' tensors hold the same numbers (np.array_equal: -0.0 equals 0.0)."""
    if isinstance(a, SparseArray) and isinstance(b, SparseArray):
        return a.shape == b.shape and a.nonzero() == b.nonzero()
    return np.array_equal(_dense(a), _dense(b))


def _dense(a: np.ndarray | SparseArray) -> np.ndarray:
    return a.dense() if isinstance(a, SparseArray) else a


def _differing_rows(a: np.ndarray, b: np.ndarray, name: str) -> list[int]:
    """The residual rows on which two runs' tensor `name` differ ([] for mlp.b_in)."""
    axis = _ROW_AXIS.get(name)
    if axis is None:
        return []
    other = tuple(i for i in range(a.ndim) if i != axis)
    return [int(r) for r in np.flatnonzero(np.any(a != b, axis=other))]
