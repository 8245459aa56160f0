#!/usr/bin/env bash
# Does DLSA help on Tiny-ImageNet-LT? `dlsa compare` on the shared features
# (seeds 0, 1, 2) with the settings of recipes/tinyimagenet_lt.toml: the
# baselines, the DLSA cascade, its controls, the separation ceiling, and both
# protocols (choices on validation in OUTDIR, the authors' on test in
# OUTDIR/select-on-test, marked optimistic). About 30 minutes a seed on 2 CPU
# cores.
#
#   bash recipes/compare_tinyimagenet_lt.sh TRAIN VAL TEST OUTDIR [dlsa compare options]
#
# e.g. D=../shared/data/tinyimagenet-lt; bash recipes/compare_tinyimagenet_lt.sh
#      $D/train.safetensors $D/val.safetensors $D/test.safetensors runs/compare-tiny
# Running it again on the same OUTDIR continues an interrupted compare.
set -euo pipefail
[[ $# -ge 1 && ( $1 == -h || $1 == --help ) ]] && { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0; }
[[ $# -ge 4 ]] || { echo "usage: bash recipes/compare_tinyimagenet_lt.sh TRAIN VAL TEST OUTDIR [options]" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
bash "$HERE/compare.sh" "$1" "$2" "$3" "$4" --config "$HERE/tinyimagenet_lt.toml" "${@:5}"
