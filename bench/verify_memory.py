"""verify's peak memory, split into compiling and verifying.

    /usr/bin/time -v python bench/verify_memory.py ridge d=8 n=16 --problems 1000

Runs what `raspicl verify PROGRAM --set ... --dtype float64` runs (raspicl.verify.verify_program)
and prints the peak resident set size twice: once when the compile has finished, and once for
the verification alone (compare register versions, monitor, readout, solver), measured from
the end of the compile: there the compile's freed heap is handed back to the OS (malloc_trim)
and Linux's peak counter (VmHWM) is reset through /proc/self/clear_refs. That reset also
lowers the counter /usr/bin/time -v reads, so its "Maximum resident set size" is then the
verification's peak too; the whole run's peak is the larger of the two printed (or run
`/usr/bin/time -v raspicl verify ...` itself).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import ctypes  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import raspicl.verify as verify  # noqa: E402
from raspicl.cli_args import parse_sets  # noqa: E402
from raspicl.model import threads_for  # noqa: E402
from raspicl.registry import find_program  # noqa: E402

torch.set_num_threads(1)


def status(key: str) -> float:
    """A /proc/self/status entry in GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024 / 1e9
    raise KeyError(key)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("program")
    ap.add_argument("params", nargs="*", help="NAME=VALUE")
    ap.add_argument("--problems", type=int, default=1000)
    args = ap.parse_args()
    pf = find_program(args.program)
    params = parse_sets(args.params)
    compile_program = verify.compile_program

    def compiled(*a, **k):
        cm = compile_program(*a, **k)
        print(f"compile: peak {status('VmHWM'):.2f} GB, now {status('VmRSS'):.2f} GB",
              flush=True)
        # hand the compile's freed heap back to the OS (glibc keeps it otherwise), then reset
        # VmHWM to the current RSS: what follows is the verification's own peak
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        print(f"after the compile, freed memory returned: {status('VmRSS'):.2f} GB", flush=True)
        Path("/proc/self/clear_refs").write_text("5")
        return cm

    verify.compile_program = compiled
    r = verify.verify_program(pf, params, "float64", problems=args.problems)
    print(f"verification ({args.problems} problems, {verify.CHUNK} per pass): peak "
          f"{status('VmHWM'):.2f} GB")
    print(verify.format_table([r]))
    print(f"torch threads per forward pass {threads_for()}")
    return 0 if r.passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
