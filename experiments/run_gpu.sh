#!/usr/bin/env bash
# The GPU checks of issue 21 as one prepared script, for a machine with a CUDA build of torch
# and raspicl installed (NOT RUN YET: no GPU was lent to the work that wrote it).
#
#   bash experiments/run_gpu.sh            # OUT=runs/paper_d8 by default
#
# 1. the batched trainer against one model per process on the GPU (the CPU figure is in
#    docs/experiments.md), at the d = 8 study's L = 4 shape, 6 models as its L = 4 group;
# 2. the d = 8 study itself, timed (sized by estimate for about 10 minutes on one H100);
# 3. its report (report.md, report.json, figures) for docs/experiments.md.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/paper_d8}
PY=${PY:-python}
nvidia-smi --query-gpu=name,memory.total --format=csv
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA torch'; print(torch.__version__)"
"$PY" bench/sweep_throughput.py --device cuda --d 8 --n 16 --layers 4 --d-model 128 \
    --models 6 --steps 300 --repeats 2
time "$PY" -m raspicl sweep experiments/paper_d8.toml --out "$OUT"
"$PY" -m raspicl report "$OUT"
