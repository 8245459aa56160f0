#!/usr/bin/env bash
# Places-LT with the paper's configurations, for users who bring the features
# (e.g. the DLSA authors' .h5 layout: datasets `features` and `labels`).
#
#   bash recipes/places_lt.sh TRAIN VAL TEST OUTDIR [CONFIG] [--head HEAD] [dlsa.sh options]
#
# CONFIG (recipes/places_lt.CONFIG.toml; default ce-bsm), from the authors' config files (reference notes):
#   ce-bsm       ImageNet-pretrained ResNet-152 (CE) features + Balanced Softmax   depth 1, lr 1e-2
#   ce-cosine    the same features + cosine classifier (CE)                       depth 1, lr 1e-2
#   paco-bsm     PaCo features + Balanced Softmax                                 depth 1, lr 1e-4
# Filters: the places-lt preset (60 epochs, batch 512, lambdas 1 / 2 / 0.03,
# q 2, share 0.3, SGD lr 0.2), K 500. Classifiers: SGD without momentum, batch
# 128, 150 epochs; every branch starts from the baseline. --head HEAD: the
# backbone's own linear head, fine-tuned as the baseline.
set -euo pipefail
[[ $# -ge 4 ]] || { echo "usage: bash recipes/places_lt.sh TRAIN VAL TEST OUTDIR [CONFIG] [--head HEAD] [options]" >&2; exit 2; }
TRAIN=$1 VAL=$2 TEST=$3 OUT=$4
shift 4
CONFIG=ce-bsm
if [[ $# -gt 0 && $1 != --* ]]; then CONFIG=$1; shift; fi
HEAD=()
if [[ $# -gt 1 && $1 == --head ]]; then HEAD=(--baseline-init "$2"); shift 2; fi

HERE=$(cd "$(dirname "$0")" && pwd)
SETTINGS=$HERE/places_lt.$CONFIG.toml
[[ -f $SETTINGS ]] || { echo "places_lt.sh: unknown config $CONFIG (ce-bsm, ce-cosine, paco-bsm)" >&2; exit 2; }

exec bash "$HERE/dlsa.sh" "$TRAIN" "$VAL" "$TEST" "$OUT" --config "$SETTINGS" ${HEAD[@]+"${HEAD[@]}"} "$@"
