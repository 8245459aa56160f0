#!/usr/bin/env bash
# Quickstart: a real long-tailed data set from scikit-learn (its 1,797 scans of
# handwritten digits, 8x8 pixels as 64-dim features, made long-tailed: 112 down
# to 6 training images per class), then the whole DLSA chain against its
# baseline, printed side by side; then `dlsa compare` on the same files (one seed):
# DLSA beside the baselines a researcher would pick instead and its controls, and
# the separation ceiling, ending on how much room the head/tail split left and
# what DLSA did with it. A few minutes at most on 2 CPU cores.
#
#   bash recipes/quickstart.sh OUTDIR
#
# Needs: pip install '.[examples]' (scikit-learn). Writes OUTDIR/data (the
# feature files), OUTDIR/run (models, predictions, metrics.json) and
# OUTDIR/compare (compare.json).
set -euo pipefail
[[ $# -eq 1 ]] || { echo "usage: bash recipes/quickstart.sh OUTDIR" >&2; exit 2; }
OUT=$1
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"

dlsa make-dataset digits-lt -o "$OUT/data"

# Small data, small filters: 20 clusters, batches of 64, a gentler learning rate
# than the paper's 0.2 (64 pixel features, many always 0, make the flow unstable at 0.2).
bash "$HERE/dlsa.sh" "$OUT/data/train.safetensors" "$OUT/data/val.safetensors" "$OUT/data/test.safetensors" "$OUT/run" \
  --config "$HERE/quickstart.toml"

echo "== compare: the baselines, DLSA, its controls and the ceiling (seed 0) -> $OUT/compare" >&2
[[ -d $OUT/compare ]] && RESUME=(--resume) || RESUME=()
dlsa compare "$OUT/data/train.safetensors" --val "$OUT/data/val.safetensors" --test "$OUT/data/test.safetensors" \
  -o "$OUT/compare" --seeds 0 --ceiling --config "$HERE/quickstart.toml" --quiet ${RESUME[@]+"${RESUME[@]}"}
