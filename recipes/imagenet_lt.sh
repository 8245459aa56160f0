#!/usr/bin/env bash
# ImageNet-LT with the paper's configurations, for users who bring the features
# (e.g. the DLSA authors' .h5 layout: datasets `features` and `labels`).
#
#   bash recipes/imagenet_lt.sh TRAIN VAL TEST OUTDIR [CONFIG] [--head HEAD] [dlsa.sh options]
#
# CONFIG (recipes/imagenet_lt.CONFIG.toml; default paco-bsm), from the authors' config files (reference notes):
#   paco-bsm     PaCo features + Balanced Softmax   depth 3, K 500, classifier lr 1e-4
#   paco-cbs     PaCo features + class-balanced sampler (CE)   depth 3, lr 1e-4
#   paco-cosine  PaCo features + cosine classifier (CE)        depth 1, lr 1e-4
#   ce-bsm       CE-trained features + Balanced Softmax        depth 1, lr 1e-2
#   cbs-bsm      CBS-trained features + Balanced Softmax       depth 1, lr 1e-2
# Filters: the imagenet-lt preset (50 epochs, batch 1024, lambdas 2 / 1 / 0.02,
# q 2, share 0.3, SGD lr 0.2). Classifiers: SGD without momentum, batch 128,
# 150 epochs, as the authors train them; every branch starts from the baseline.
# --head HEAD: the backbone's own linear head (weight (C, D), bias (C,); .pt or
# .safetensors); the baseline then fine-tunes it (the paper's PaCo runs do).
# A GPU is the intended home of this scale (one filter epoch at D = 2048 is
# about a second on an H100 and minutes on a laptop CPU).
set -euo pipefail
[[ $# -ge 4 ]] || { echo "usage: bash recipes/imagenet_lt.sh TRAIN VAL TEST OUTDIR [CONFIG] [--head HEAD] [options]" >&2; exit 2; }
TRAIN=$1 VAL=$2 TEST=$3 OUT=$4
shift 4
CONFIG=paco-bsm
if [[ $# -gt 0 && $1 != --* ]]; then CONFIG=$1; shift; fi
HEAD=()
if [[ $# -gt 1 && $1 == --head ]]; then HEAD=(--baseline-init "$2"); shift 2; fi

HERE=$(cd "$(dirname "$0")" && pwd)
SETTINGS=$HERE/imagenet_lt.$CONFIG.toml
[[ -f $SETTINGS ]] || { echo "imagenet_lt.sh: unknown config $CONFIG (paco-bsm, paco-cbs, paco-cosine, ce-bsm, cbs-bsm)" >&2; exit 2; }

exec bash "$HERE/dlsa.sh" "$TRAIN" "$VAL" "$TEST" "$OUT" --config "$SETTINGS" ${HEAD[@]+"${HEAD[@]}"} "$@"
