"""Digests of every bundled program's compiled weights and layout, to show a refactor of the
compiler changes neither.

    python bench/weights_digest.py OUT.json              # write the digests
    python bench/weights_digest.py OUT.json --compare BEFORE.json  # exit 1 on a change

For every program in programs/ and every parameter set of its GRID it compiles the program
(float64, loops="unroll", and loops="share" where the program has a p.loop) and records:
- `weights`: SHA-256 over every tensor's name, shape, dtype and raw bytes, in name order, so
  "equal" means bitwise identical weights;
- `layout`: SHA-256 over the canonical JSON of the layout with the fields listed in NEW_FIELDS
  removed wherever they occur (fields a layout format adds, which an older layout lacks), and
  without `format_version`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from raspicl.compiler import compile_program  # noqa: E402
from raspicl.registry import bundled_programs  # noqa: E402

# Fields added by layout format 3 (typed records); an older layout has none of them.
NEW_FIELDS = frozenset({"format_version", "label", "written_slot", "cleared_slot",
                        "overwritten_slot", "where", "actions", "divisor", "sublayers",
                        "for_op", "operand"})


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in NEW_FIELDS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().contiguous().cpu()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def layout_digest(layout: dict) -> str:
    data = json.dumps(_strip(layout), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(data.encode()).hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--compare")
    args = ap.parse_args()
    torch.set_num_threads(1)
    result: dict[str, dict] = {}
    for pf in bundled_programs():
        for params in pf.grid:
            prog = pf.build(**params)
            modes = ["unroll"] + (["share"] if any(op.loop is not None for op in prog.ops)
                                  else [])
            for mode in modes:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    cm = compile_program(pf.build(**params), loops=mode)
                key = f"{pf.name} {json.dumps(params, sort_keys=True)} {mode}"
                result[key] = {"weights": weights_digest(cm.model),
                               "layout": layout_digest(cm.layout)}
                print(key, result[key]["weights"][:16], result[key]["layout"][:16], flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    if not args.compare:
        return 0
    before = json.loads(Path(args.compare).read_text())
    bad = 0
    for key in sorted(set(before) | set(result)):
        a, b = before.get(key), result.get(key)
        for field in ("weights", "layout"):
            if a is None or b is None or a[field] != b[field]:
                print(f"CHANGED {field}: {key}")
                bad += 1
    print(f"{len(result)} compiles, {bad} changes")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
