"""A digest of every bundled program's compiled weights and layout, to compare two versions.

    python bench/weights_digest.py > after.json           # every program over its GRID
    python bench/weights_digest.py --compare before.json after.json

For each bundled program, each GRID size, each dtype (float64, float32: the configs
`raspicl verify` compiles) and each loop mode (unroll; also share for a program with a loop) it
compiles the program with the program's DOMAIN and records the SHA-256 of every weight tensor's
bytes and of the layout (JSON with sorted keys, floats written exactly, less the fields that
layout format 3 added: NEW_FIELDS, so that a layout of format 2 compares with one of format 3).
Two versions of the compiler that produce the same digests produce bitwise-identical weights
and identical layouts (bounds, rows, heads, monitor constants). `--compare` prints the cases
that differ and exits 1 if any does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raspicl.compiler import CompilerConfig, compile_program  # noqa: E402
from raspicl.errors import ContractWarning  # noqa: E402
from raspicl.registry import bundled_programs  # noqa: E402

# Fields added by layout format 3 (typed records); an older layout has none of them.
NEW_FIELDS = frozenset({"format_version", "label", "written_slot", "cleared_slot",
                        "overwritten_slot", "where", "actions", "divisor", "sublayers",
                        "for_op", "operand",
                        # the fusion pass (compiler/fusion.py): its config and depth record
                        "fusion", "fusion_max_readers", "fusion_width_slack", "fusion_always",
                        "depth", "absorbed_by",
                        # common-subexpression elimination (compiler/cse.py): its switch
                        "cse",
                        # the elementwise gadget's config (compiler/gadgets/elementwise.py)
                        "apply_epsilon", "apply_kink_epsilon", "apply_sharpness",
                        "apply_max_units", "apply_ghost_units"})


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in NEW_FIELDS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def digest_model(cm) -> dict:
    """SHA-256 per weight tensor and of the layout."""
    out = {name: hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()
           for name, t in cm.model.state_dict().items()}
    layout = json.dumps(_strip(cm.layout), sort_keys=True, default=repr, allow_nan=True)
    out["layout.json"] = hashlib.sha256(layout.encode()).hexdigest()
    return out


def cases():
    """(key, program file, program, dtype, loops) for every bundled program, GRID size,
    dtype and loop mode (unroll; also share for a program with a loop)."""
    for pf in bundled_programs():
        for params in pf.grid:
            program = pf.build(**params)
            modes = ["unroll"] + (["share"] if any(op.loop is not None for op in program.ops)
                                  else [])
            for dtype in ("float64", "float32"):
                for loops in modes:
                    key = f"{pf.name} {json.dumps(params, sort_keys=True)} {dtype} {loops}"
                    yield key, pf, program, dtype, loops


def digests() -> dict:
    result = {}
    for key, pf, program, dtype, loops in cases():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ContractWarning)
            try:
                cm = compile_program(program, CompilerConfig.for_dtype(dtype),
                                     loops=loops, domain=pf.domain)
            except Exception as exc:  # noqa: BLE001 - a refusal is a result too
                result[key] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
        result[key] = digest_model(cm)
        print(key, file=sys.stderr, flush=True)
    return result


def compare(a: dict, b: dict) -> list[str]:
    diffs = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            da, db = a.get(key, {}), b.get(key, {})
            names = sorted(n for n in set(da) | set(db) if da.get(n) != db.get(n))
            diffs.append(f"{key}: {', '.join(names)}")
    return diffs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"))
    a = ap.parse_args()
    if a.compare:
        before, after = (json.loads(Path(p).read_text()) for p in a.compare)
        diffs = compare(before, after)
        print(f"{len(before)} cases before, {len(after)} after, {len(diffs)} differ")
        for d in diffs:
            print("  " + d)
        return 1 if diffs else 0
    torch.set_num_threads(1)
    print(json.dumps(digests(), indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
