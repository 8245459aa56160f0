#!/usr/bin/env bash
# bench_scale at iNaturalist-2018's shape (437,513 x 2048) on a GPU machine: 1 process, then one per GPU.
# Writes the rows to bench_scale_gpu.json beside this script and prints the table.
set -euo pipefail
cd "$(dirname "$0")/.."
gpus=$(python -c "import torch; print(torch.cuda.device_count())")
procs="1"
[ "$gpus" -gt 1 ] && procs="1 $gpus"
python benchmarks/bench_scale.py --sizes 50000 437513 --dim 2048 --device cuda --procs $procs \
    --threads 4 --work "${WORK:-/tmp/dlsa-bench-scale-gpu}" --json benchmarks/bench_scale_gpu.json
