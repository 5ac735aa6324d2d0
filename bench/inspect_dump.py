"""Write `inspect_text` of a few bundled programs (unrolled and looped) into a folder, to diff
the report before and after a change of the layout records.

    python bench/inspect_dump.py OUTDIR
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from raspicl.compiler import compile_program  # noqa: E402
from raspicl.inspect import inspect_text  # noqa: E402
from raspicl.registry import find_program  # noqa: E402

CASES = [("gd_step", {"d": 2}, "unroll"), ("sgd", {"d": 2, "n": 4}, "unroll"),
         ("sgd", {"d": 2, "n": 4}, "share"), ("ridge", {"d": 2, "n": 2}, "share"),
         ("ridge", {"d": 2, "n": 2}, "unroll"), ("newton", {"d": 2, "n": 2, "T": 2}, "share"),
         ("batch_gd", {"d": 2, "n": 2, "T": 2}, "share"), ("sherman_morrison", {"d": 2}, "unroll")]


def main() -> int:
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, params, mode in CASES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cm = compile_program(find_program(name).build(**params), loops=mode)
        tag = "_".join([name, *(f"{k}{v}" for k, v in params.items()), mode])
        (out / f"{tag}.txt").write_text(inspect_text(cm))
    return 0


if __name__ == "__main__":
    sys.exit(main())
