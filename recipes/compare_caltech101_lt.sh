#!/usr/bin/env bash
# Does DLSA help on Caltech-101-LT? `dlsa compare` on the shared features (seeds
# 0, 1, 2): the baselines (Balanced Softmax, logit-adjusted loss, post-hoc LA and
# tau-normalisation, cRT, LWS, NCM), the DLSA cascade with the settings of
# recipes/caltech101_lt.toml, its controls (random routes, the baseline's own
# tail mass as the route, fine-tuned classifiers without routing), the
# separation ceiling, and both protocols: every choice on validation (OUTDIR/cmp)
# and the authors' choices on test (OUTDIR/cmp/select-on-test, marked
# optimistic). About 10 minutes a seed on 2 CPU cores.
#
#   bash recipes/compare_caltech101_lt.sh OUTDIR [NPZ] [dlsa compare options]
#
# Writes OUTDIR/data (the feature files) and OUTDIR/cmp (compare.json, each
# seed's predictions, ceiling.png when matplotlib is installed). Running it
# again on the same OUTDIR continues an interrupted compare.
set -euo pipefail
[[ $# -ge 1 && ( $1 == -h || $1 == --help ) ]] && { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0; }
[[ $# -ge 1 ]] || { echo "usage: bash recipes/compare_caltech101_lt.sh OUTDIR [NPZ] [options]" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$1
shift
NPZ=$HERE/../../shared/data/caltech101_lite0.npz
if [[ $# -gt 0 && $1 != --* ]]; then NPZ=$1; shift; fi
[[ -f $NPZ ]] || { echo "compare_caltech101_lt.sh: $NPZ: no such file (pass the path of caltech101_lite0.npz)" >&2; exit 2; }
mkdir -p "$OUT"
[[ -f $OUT/data/train.safetensors ]] || dlsa make-dataset caltech101-lt --source "$NPZ" -o "$OUT/data"
bash "$HERE/compare.sh" "$OUT/data/train.safetensors" "$OUT/data/val.safetensors" "$OUT/data/test.safetensors" \
  "$OUT/cmp" --config "$HERE/caltech101_lt.toml" "$@"
