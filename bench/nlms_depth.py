"""Blocks per example of NLMS in its written forms, against sgd (issue 20, item 6).

    python bench/nlms_depth.py

Each form is compiled (float64, unrolled) at d = 2 and n = 6 and n = 7; a row gives the
blocks, the critical-path depth (compiler/fusion.critical_path_depth: the fewest blocks any
schedule of its op kinds needs), the blocks per example (the difference between n = 7 and
n = 6) and the parameters at n = 6. The forms:

- sgd: the bundled program (the dot with the error, then the product by the error);
- nlms: the bundled scan, mu (x / (eps + x^T x)) (y - x^T w): the quotient reads only the
  example and is computed once, before the loop;
- nlms, division last: the scan with the textbook formula mu x (y - x^T w) / (eps + x^T x),
  whose division reads the state, so it stays in the loop, after the product;
- textbook loop: `textbook_loop(form="select")`, the loop written op by op: a select for w_0,
  the dot, the error, the product by the normalised x (computed before the loop) and the
  update;
- textbook loop, clamped: the same with the select replaced by a clamped read (x gated to the
  y tokens once, as the scan's clamped form does), and once more with
  CompilerConfig(fusion_always=True), the fused layout the width rule turns down.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raspicl import Offset, Program, Read  # noqa: E402
from raspicl.compiler import CompilerConfig, compile_program  # noqa: E402
from raspicl.errors import ContractWarning  # noqa: E402
from raspicl.model import threads_for  # noqa: E402
from raspicl.registry import find_program  # noqa: E402

D, N = 2, 6


def division_last(d: int = D, n: int = N, mu: float = 0.5, eps: float = 1.0) -> Program:
    """NLMS as a scan with the division last: the quotient reads the state."""
    p = Program("nlms_division_last", d=d, n=n)
    scan = p.scan(init={"w": 0.5 * (-1.0) ** np.arange(d)}, name="nlms",
                  step=lambda s, x, y: {"w": s.w + mu * x * (y - x @ s.w) / (eps + x @ x)},
                  predict=lambda s, x: s.w @ x)
    p.output(scan.prediction, roles=("x", "query"))
    return p


def textbook_loop(d: int = D, n: int = N, mu: float = 0.5, eps: float = 1.0,
                  form: str = "select") -> Program:
    """NLMS written op by op as the textbook loop (module doc); form "select" or "clamped"."""
    w0 = 0.5 * (-1.0) ** np.arange(d)
    p = Program(f"nlms_textbook_{form}", d=d, n=n)
    if form == "select":
        x_prev = p.mov("x_prev", Read(p.x, Offset(1)))
    else:  # x_i at y token i, 0 elsewhere: token 0 sees no example and keeps w_0
        x_read = p.mov("x_read", Read(p.x, Offset(1, clamp=True)))
        x_prev = p.select("x_prev", "y", x_read, p.const("zero", np.zeros(d)))
    den = p.raw("den", x_prev, here=x_prev, op="*", W=np.ones((1, d)), bias=eps)
    xn = p.div("xn", x_prev, den)  # x_i / (eps + |x_i|^2), once
    w_init = p.const("w_init", w0)
    w = p.var("w", d, init=w0)
    wp, s, e, g = p.var("wp", d), p.var("s", ()), p.var("e", ()), p.var("g", d)
    for _ in p.loop(n):
        if form == "select":
            p.select(wp, [0, 1], w_init, Read(w, Offset(2)))
        else:
            p.mov(wp, Read(w, Offset(2, clamp=True)))
        p.dot(s, wp, x_prev)
        p.aff(e, p.y, s, W1=1.0, W2=-1.0)
        p.mul(g, xn, e)
        p.aff(w, wp, g, W1=1.0, W2=mu)
    if form == "select":
        w_query = p.select("w_query", [0], w_init, Read(w, Offset(1)))
    else:
        w_query = p.mov("w_query", Read(w, Offset(1, clamp=True)))
    p.output(p.dot("pred", w_query, p.x), roles=("x", "query"))
    return p


def _compile(program: Program, config: CompilerConfig | None = None, domain=None):
    with warnings.catch_warnings():  # sizes only
        warnings.simplefilter("ignore", ContractWarning)
        return compile_program(program, config, domain=domain)


def rows() -> list[tuple[str, dict]]:
    """(form, {blocks, critical, per_example, heads, d_model, params}) per form."""
    sgd, nlms = find_program("sgd"), find_program("nlms")
    forms = [
        ("sgd", lambda n: sgd.build(d=D, n=n), None, sgd.domain),
        ("nlms", lambda n: nlms.build(d=D, n=n), None, None),
        ("nlms, division last", lambda n: division_last(n=n), None, None),
        ("textbook loop (select)", lambda n: textbook_loop(n=n), None, None),
        ("textbook loop, clamped", lambda n: textbook_loop(n=n, form="clamped"), None, None),
        ("textbook loop, clamped, fusion_always",
         lambda n: textbook_loop(n=n, form="clamped"), CompilerConfig(fusion_always=True),
         None),
    ]
    out = []
    for name, build, config, domain in forms:
        cm = _compile(build(N), config, domain)
        more = _compile(build(N + 1), config, domain)
        s = cm.summary()
        out.append((name, {"blocks": s["blocks"], "critical": cm.layout["depth"]["critical_path"],
                           "per_example": more.summary()["blocks"] - s["blocks"],
                           "heads": s["heads"], "d_model": s["d_model"],
                           "params": s["params"]}))
    return out


def table() -> str:
    lines = [f"form (d = {D}, n = {N}, unrolled)            blocks  crit  per example  heads  "
             "d_model   params"]
    for name, r in rows():
        lines.append(f"{name:<42}{r['blocks']:>6}{r['critical']:>6}{r['per_example']:>13}"
                     f"{r['heads']:>7}{r['d_model']:>9}{r['params']:>9}")
    return "\n".join(lines)


def main() -> int:
    torch.set_num_threads(threads_for())
    print(table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
