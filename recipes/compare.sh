#!/usr/bin/env bash
# `dlsa compare` as the compare recipes run it, on any labelled feature files:
# seeds 0, 1, 2, the separation ceiling (drawn to OUTDIR/ceiling.png when
# matplotlib is installed) and both protocols; an OUTDIR that holds a compare
# is continued (--resume).
#
#   bash recipes/compare.sh TRAIN VAL TEST OUTDIR [dlsa compare options]
set -euo pipefail
[[ $# -ge 1 && ( $1 == -h || $1 == --help ) ]] && { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0; }
[[ $# -ge 4 ]] || { echo "usage: bash recipes/compare.sh TRAIN VAL TEST OUTDIR [options]" >&2; exit 2; }
TRAIN=$1 VAL=$2 TEST=$3 OUT=$4
shift 4
EXTRA=()
[[ -f $OUT/progress.json ]] && EXTRA+=(--resume)
"${PYTHON:-python3}" -c "import matplotlib" 2>/dev/null && EXTRA+=(--plot "$OUT/ceiling.png")
dlsa compare "$TRAIN" --val "$VAL" --test "$TEST" -o "$OUT" --seeds 0,1,2 --ceiling --select-on both \
  ${EXTRA[@]+"${EXTRA[@]}"} "$@"
