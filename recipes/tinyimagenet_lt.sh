#!/usr/bin/env bash
# Tiny-ImageNet-LT (200 classes, 21,199 training images, 490 down to 5 per
# class; efficientnet-lite0 features; ../shared/data/README.md): the baseline
# and DLSA with the routing found best on VALIDATION by
# benchmarks/tinyimagenet_lt.py (README section "routing").
#
#   bash recipes/tinyimagenet_lt.sh TRAIN VAL TEST OUTDIR [dlsa.sh options]
#
# e.g. D=../shared/data/tinyimagenet-lt; bash recipes/tinyimagenet_lt.sh
#      $D/train.safetensors $D/val.safetensors $D/test.safetensors runs/tiny
#
# The configuration (recipes/tinyimagenet_lt.toml): depth 1; a CPU-sized filter (K = 200, hidden 256, 10
# epochs of batches of 512, the paper's epoch rule) that routes by the routing
# score that separated head from tail best on VALIDATION on both
# Tiny-ImageNet-LT and Caltech-101-LT: "knn-tail" = the tail share of the
# sample's 30 nearest training samples in the flow's latent space (k = 30
# chosen on validation among 10, 30, 100). ROUTING=cluster-tail, ratio or
# likelihood (the paper's) in the environment runs the others. On validation
# accuracy no routing beats another by more than noise (README, "Routing
# scores"), so separation decides. Balanced Softmax classifiers, 150 epochs,
# branches fine-tuned from the baseline, with memory (each branch adds a weight,
# chosen on VAL, times the log of the class-balanced vote of the sample's 50
# nearest training samples) and soft routing: the setting best on VALIDATION in
# benchmarks/memory_study.py (docs/results/memory-tinyimagenet-lt.md). Needs VAL.
# Writes OUTDIR/metrics.json
# ({"baseline", "dlsa"}), OUTDIR/dlsa.parquet (label, prediction, route, depth,
# ...) and keeps the baseline classifier (OUTDIR/baseline.safetensors), as
# dlsa.sh does. Options after OUTDIR go to dlsa.sh and override these (e.g.
# --seed 1, --depth 3).
set -euo pipefail
[[ $# -ge 1 && ( $1 == -h || $1 == --help ) ]] && { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0; }
[[ $# -ge 4 ]] || { echo "usage: bash recipes/tinyimagenet_lt.sh TRAIN VAL TEST OUTDIR [dlsa.sh options]" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
ROUTE=()
[[ -n ${ROUTING:-} ]] && ROUTE=(--filter-opts "--routing $ROUTING")

bash "$HERE/dlsa.sh" "$1" "$2" "$3" "$4" --config "$HERE/tinyimagenet_lt.toml" ${ROUTE[@]+"${ROUTE[@]}"} "${@:5}"
