"""The compiler: Program -> validate -> lower -> common subexpressions -> fuse -> schedule ->
liveness -> lay out -> gadgets -> model.

Each stage is a function of the last; `compile_program` runs them all and records, in the
layout, everything a reader needs to interpret the weights.

Layer 7, compiler (docs/index.md, "The source, in layers"): it sits above the runtime, the
contract and the compiled model (feasibility runs the model under its contract) and imports
nothing above them: not storage, interop, analysis or the command line.
"""

from __future__ import annotations

from dataclasses import replace

from raspicl.arch import Architecture, get_arch
from raspicl.compiled import CompiledModel
from raspicl.compiler.assemble import Tuning, assemble, build_blocks
from raspicl.compiler.calibrate import Domain
from raspicl.compiler.config import CompilerConfig
from raspicl.compiler.cse import eliminate_common
from raspicl.compiler.describe import describe
from raspicl.compiler.feasibility import (
    Feasibility,
    measure,
    require_acceptance,
    retune,
    tighten,
)
from raspicl.compiler.fusion import fuse, prefer_fused
from raspicl.compiler.ir import copy_lowered
from raspicl.compiler.layout import Layout, lay_out, with_ln_anchors
from raspicl.compiler.liveness import liveness
from raspicl.compiler.loops import link_iterations
from raspicl.compiler.lower import Lowered, lower
from raspicl.compiler.schedule import Schedule, schedule
from raspicl.errors import CompileError
from raspicl.lang.program import Program
from raspicl.sparse_weights import SparseWeights

__all__ = ["CompilerConfig", "compile_program"]


def _place_and_lay_out(low: Lowered, share: bool,
                       arch: Architecture) -> tuple[Lowered, Schedule, Layout]:
    sched = schedule(low, share_loops=share, arch=arch)
    return low, sched, lay_out(low, sched, liveness(low, sched, share_loops=share))


def fuse_and_lay_out(low: Lowered, config: CompilerConfig, share: bool,
                     arch: Architecture) -> list[tuple[Lowered, Schedule, Layout]]:
    """The layouts to compile, best first: the program fused (fusion.py) when
    fusion.prefer_fused keeps it (fewer blocks, or as many in a narrower stream), then the
    program as written, which compile_program falls back to if the fused one fails.

    The fusion pass runs once per candidate, before it is scheduled: on the program as
    written with fusion off (it records the critical path and cse.py's aliases), on the
    program to fuse with config's. Scheduling and layout read its result on Lowered."""
    if not config.fusion:
        fuse(low, config, share_loops=share)  # fuses nothing: records the critical path only
        return [_place_and_lay_out(low, share, arch)]
    as_written = copy_lowered(low)
    fuse(as_written, replace(config, fusion=False), share_loops=share)
    plain = _place_and_lay_out(as_written, share, arch)
    fuse(low, config, share_loops=share)
    n_fused = len(low.fusion.fused)
    as_written.fusion.rejected = n_fused
    if not n_fused:
        return [plain]
    fused = _place_and_lay_out(low, share, arch)
    if prefer_fused(fused[1].n_blocks, fused[2].d_model, plain[1].n_blocks, plain[2].d_model,
                    config):
        return [fused, plain]
    return [plain]


def compile_program(program: Program, config: CompilerConfig | None = None,
                    loops: str = "unroll", domain: Domain | None = None,
                    arch: str | Architecture = "paper") -> CompiledModel:
    """Compile a program into a float64 transformer and its layout.

    loops: 'unroll' gives every iteration of a `p.loop` its own blocks; 'share' compiles the
    body once into a group of blocks that the forward pass runs once per iteration (a looped
    transformer with shared weights, recorded in the layout's block_order and loops).
    domain: the prompts the model must serve, a raspicl.prompts.PromptDistribution (default:
    PromptDistribution(), x scale up to 1.5 and noise up to 1) or a Prompts batch of the
    user's own. Calibration runs on it, and the finished model runs on the calibration prompts
    under its runtime contract (raspicl.monitor), which re-tunes per-block constants
    (feasibility.py): a gadget whose precondition still fails on more than
    1 - config.min_acceptance of them is a CompileError naming it; a model whose error bound
    exceeds the tolerance that often is returned with a ContractWarning.
    arch: the target, 'paper' (default) or 'gpt2' (HuggingFace's GPT2Model: raspicl.arch), or
    an Architecture such as raspicl.arch.get_arch('gpt2', ln_eps=1e-6, act_fn='gelu'). gpt2
    compiles loops unrolled only (loops='share' is a CompileError).
    """
    arch = get_arch(arch)
    if loops not in ("unroll", "share"):
        raise ValueError(f"loops must be 'unroll' or 'share', got {loops!r}")
    config = config or CompilerConfig()
    if arch.reads_through_layernorm and config.ln_division_anchor is not None:
        config = replace(config, division_anchor=config.ln_division_anchor)
    share = loops == "share"
    low = lower(program, config, domain)
    if config.cse:
        eliminate_common(low, share_loops=share)
    link_iterations(low, share_rows=share)
    candidates = fuse_and_lay_out(low, config, share, arch)
    for k, (low, sched, layout) in enumerate(candidates):
        if arch.reads_through_layernorm:
            layout = with_ln_anchors(layout)
        try:
            return _build(program, low, sched, layout, config)
        except CompileError as exc:  # the fused layout failed: compile the program as written
            if k == len(candidates) - 1 or config.fusion_always:
                raise
            candidates[k + 1][0].fusion.note = f"fused compile failed, compiled as written: {exc}"
    raise AssertionError("no layout to compile")


def _build(program: Program, low: Lowered, sched: Schedule, layout: Layout,
           config: CompilerConfig) -> CompiledModel:
    """Gadgets, weights and feasibility tuning of one layout (compile_program's doc)."""
    tuning = Tuning()
    for passes in range(1, config.feasibility_passes + 2):
        blocks = build_blocks(low, sched, layout, config, tuning)
        model, order = assemble(low, sched, layout, blocks, config)
        record = describe(low, sched, layout, blocks, order, config, model.cfg)
        # the float64 plan of sparse weights is the returned model's: made once, handed on
        plan = model.plan() if isinstance(model, SparseWeights) \
            and config.target_dtype == "float64" else None
        report = measure(model, record, low.calibration.prompts, config.target_dtype,
                         plan=plan)
        new = retune(report, low, sched, tuning, config) if passes <= config.feasibility_passes \
            else None
        if new is None:
            break
        tuning = new
    report = tighten(report, model, record, low.calibration.prompts, config.target_dtype, plan)
    feas = Feasibility(report, passes)
    record["monitor"]["calibration"] = {"prompts": int(len(report.accepted)),
                                        "accepted": feas.acceptance, "tuning_passes": passes}
    require_acceptance(feas, program.name, config)
    return CompiledModel(model, record, plan=plan)
