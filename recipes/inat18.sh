#!/usr/bin/env bash
# iNaturalist-18 with the paper's configuration (PaCo features + Balanced
# Softmax), for users who bring the features (e.g. the DLSA authors' .h5 layout).
#
#   bash recipes/inat18.sh TRAIN VAL TEST OUTDIR [--head HEAD] [dlsa.sh options]
#
# iNaturalist-18's official validation set is what papers report as its test
# set: pass it as TEST, and give VAL as "-" to let every classifier carve its
# validation from its own training file (20% of each class with two or more
# samples), or pass a validation file you carved from the training set.
# Filters: the inat18 preset (30 epochs, batch 1024, lambdas 1 / 1 / 0.02, q 2,
# share 0.3, SGD lr 0.2), K 500, depth 3. Classifiers: SGD without momentum,
# lr 1e-4, batch 128, 150 epochs; every branch starts from the baseline.
# --head HEAD: the backbone's own linear head, fine-tuned as the baseline.
set -euo pipefail
[[ $# -ge 4 ]] || { echo "usage: bash recipes/inat18.sh TRAIN VAL|- TEST OUTDIR [--head HEAD] [options]" >&2; exit 2; }
TRAIN=$1 VAL=$2 TEST=$3 OUT=$4
shift 4
HEAD=()
if [[ $# -gt 1 && $1 == --head ]]; then HEAD=(--baseline-init "$2"); shift 2; fi

exec bash "$(dirname "$0")/dlsa.sh" "$TRAIN" "$VAL" "$TEST" "$OUT" --config "$(dirname "$0")/inat18.toml" ${HEAD[@]+"${HEAD[@]}"} "$@"
