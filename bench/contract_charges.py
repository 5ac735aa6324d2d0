"""Which local charges make up a compiled model's adjoint error bound.

    python bench/contract_charges.py sgd d=8 n=16
    python bench/contract_charges.py ridge d=4 n=4 --arch gpt2 --dtype float32

The model is compiled as `raspicl verify` compiles it (the program file's tolerance and
DOMAIN). On `--problems` prompts (x ~ N(0, I), noise 0.5, seed 7) the monitor walks one
forward pass with its tape (raspicl.monitor.walk_with_tape); for the last output position of
each prompt the reverse pass gives every node's adjoint g, and each local charge's share
sum |g| beta of the adjoint bound is attributed to the kind of charge that made it: an MLP's
parts by name (rounding, product gadget, product remainder, gate, leak), every other node by
the walk's step that made it (a read's LayerNorm or leak, a landing, a division, an input's
rounding). Printed: each kind's median share of the bound, and the median bound / actual error.
One torch thread (this machine's 2 shared cores).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import sys  # noqa: E402
import warnings  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import raspicl.contract.forward as monitor  # noqa: E402
from raspicl import interpret  # noqa: E402
from raspicl.compiler import CompilerConfig, compile_program  # noqa: E402
from raspicl.contract.adjoint import PlaceEdge, Tape  # noqa: E402
from raspicl.prompts import PromptDistribution  # noqa: E402
from raspicl.registry import find_program  # noqa: E402
from raspicl.verify import contract_tolerance_for  # noqa: E402

torch.set_num_threads(1)


def _value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("program")
    ap.add_argument("params", nargs="*", help="NAME=VALUE")
    ap.add_argument("--arch", default="paper", choices=["paper", "gpt2"])
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--problems", type=int, default=20)
    args = ap.parse_args()
    params = {k: _value(v) for k, v in (p.split("=", 1) for p in args.params)}
    pf = find_program(args.program)
    program = pf.build(**params)
    config = CompilerConfig.for_dtype(args.dtype, tolerance=contract_tolerance_for(pf, args.dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = compile_program(program, config, domain=pf.domain, arch=args.arch)
    if args.dtype == "float32":
        cm = cm.to(torch.float32)
    prompts = PromptDistribution(1.0, 1.0, 0.5).sample(args.problems, program.d, program.n, 7)
    res = cm.residuals(prompts, check="ignore")

    made: list[str] = []  # per node, the walk's step that made it
    node = Tape.node

    def traced(self, width, beta=None, edges=()):
        made.append(sys._getframe(1).f_code.co_name)
        return node(self, width, beta, edges)

    Tape.node = traced
    parts: list = []
    original = monitor._Walk.__init__

    def init(self, *a, **k):
        original(self, *a, **k)
        self.parts = parts

    monitor._Walk.__init__ = init
    report, tape, log = monitor.walk_with_tape(cm.layout, res, cm.dtype_name)
    Tape.node, monitor._Walk.__init__ = node, original
    out = len(tape.nodes) - 1 if args.arch == "gpt2" else log[cm.layout["monitor"]["output"]][1]
    pos = int(cm.layout["output"]["positions"][-1])
    got = cm.readout(res[-1])[:, -1, 0]
    want = np.asarray(interpret(program, prompts).output()).reshape(len(got), -1)[:, -1]
    by_part = defaultdict(list)
    mlp_parts: dict[int, list] = defaultdict(list)
    for nid, label, beta in parts:
        mlp_parts[nid].append((label, beta))
    ratios = []
    for b in range(args.problems):
        g = tape.adjoints(out, pos, 0, b)
        share: dict[str, float] = defaultdict(float)
        for nid, n in enumerate(tape.nodes):
            gn = g.get(nid)
            if gn is None:
                continue
            pieces = mlp_parts.get(nid) or ([(made[nid], n.beta)] if n.beta is not None else [])
            for label, beta in pieces:
                bb = np.broadcast_to(beta, (tape.B, tape.T, n.width))[b]
                share[label] += float((np.abs(gn) * np.where(np.isfinite(bb), bb, 0)).sum())
            for e in n.edges:
                if isinstance(e, PlaceEdge) and e.beta_pre is not None:
                    pre = e.beta_pre[b]
                    src = np.zeros_like(pre)
                    src[...] = np.where(np.isfinite(pre), pre, 0)
                    # the read's charge at its source's tokens, weighted by the read's adjoint
                    # where the place is 'here' (its only use under gpt2 and the MLP reads)
                    if e.place["kind"] == "here":
                        share[made[nid] + " (at the value's token)"] += float(
                            (np.abs(gn) * src).sum())
        total = sum(share.values())
        for k, v in share.items():
            by_part[k].append(v / total if total else 0.0)
        err = abs(got[b] - want[b])
        if err > 0:
            ratios.append(total / err)
    print(f"{args.program} {params} {args.arch} {args.dtype}: {args.problems} prompts, last "
          f"output (token {pos}); median adjoint bound / actual error "
          f"{np.median(ratios) if ratios else float('nan'):.3g}")
    for k, v in sorted(by_part.items(), key=lambda kv: -np.median(kv[1])):
        print(f"  {k:40s} median share {np.median(v):6.1%}   max {np.max(v):6.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
