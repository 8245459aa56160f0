#!/usr/bin/env bash
# DLSA vs its baseline on any feature files.
#
#   bash recipes/dlsa.sh TRAIN VAL TEST OUTDIR [options]
#
# TRAIN, VAL, TEST: feature files with labels (.safetensors, .npz, .h5, .pt,
# .parquet, ...); VAL chooses every epoch, TEST is only predicted and scored.
# VAL may be "-": each classifier then carves its validation from its own
# training file (20% of each class, stratified).
# It runs `dlsa fit-cascade` into OUTDIR, which fits
#   1. the baseline: one classifier on all of TRAIN;
#   2. the DLSA cascade with the same classifier settings: for each depth, a
#      flow filter on that depth's training samples, a split of train/val,
#      a cluster-aided classifier on the routed training samples (validated
#      on the routed validation samples), and the rest goes to the next depth;
#      after the last depth a regular classifier on what is left. Every branch
#      classifier starts from the baseline (all training data) and fine-tunes;
# then `dlsa predict` of both on TEST, `dlsa evaluate` side by side, and
#   OUTDIR/metrics.json = {"baseline": {...}, "dlsa": {...}} with overall,
#   many, medium, few, mcc, nmi (and routes) for each;
#   OUTDIR/baseline.parquet and OUTDIR/dlsa.parquet, the test predictions.
# Running it again on the same OUTDIR with the same options continues an
# interrupted run (fit-cascade --resume) and reuses every finished stage.
#
# Options (after OUTDIR):
#   --depth N            cascade depth (default 3)
#   --clusters K         mixture components per filter (default: fit-filter's, 500)
#   --share S            share of each depth's training samples routed (default 0.3)
#   --preset P           fit-filter preset: imagenet-lt, places-lt or inat18
#   --filter-epochs E    flow filter epochs (default: fit-filter's, 50)
#   --filter-batch B     flow filter batch size (default: fit-filter's, 1024)
#   --filter-lr LR       flow filter learning rate (default: fit-filter's, 0.2)
#   --filter-opts "..."  any other fit-filter options (under fit-filter's names)
#   --config FILE        a fit-cascade settings file (recipes/*.toml); the options above override it
#   --model M            linear or cosine (default linear)
#   --loss L             ce, bsm or la (default bsm)
#   --sampler S          uniform or balanced (default uniform)
#   --epochs E           classifier epochs (default 150)
#   --lr LR              baseline learning rate (default: fit-classifier's, 0.03)
#   --baseline-init HEAD start the baseline from a backbone's own head (weight (C, D), bias (C,),
#                        .safetensors or .pt) and fine-tune it with --lr, as the paper does for PaCo
#   --branch-lr LR       learning rate of branch classifiers (default: fit-classifier's, 3e-4)
#   --from-scratch       train branch classifiers from scratch on their subsets (the authors' way)
#   --input I            what FC_b of the cluster-aided classifier sees: features or latent
#   --clf-opts "..."     any other fit-classifier options, for every classifier
#   --seed S             seed of every step (default 0)
#   --device D           auto, cpu, cuda, cuda:N (default auto)
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-2}"; }
[[ $# -ge 1 && ( $1 == -h || $1 == --help ) ]] && usage 0
[[ $# -lt 4 ]] && { echo "usage: bash recipes/dlsa.sh TRAIN VAL TEST OUTDIR [options] (--help for more)" >&2; exit 2; }

TRAIN=$1 VAL=$2 TEST=$3 OUT=$4
shift 4
ARGS=()
# fit-cascade's naming rule: a filter setting --NAME of fit-filter is --filter-NAME there.
filter_opt() { case $1 in --*) echo "--filter-${1#--}" ;; *) echo "$1" ;; esac; }
while [[ $# -gt 0 ]]; do
  case $1 in
    --depth | --clusters | --share | --preset | --filter-epochs | --filter-lr | --model | --loss | --sampler | --epochs | \
      --lr | --baseline-init | --branch-lr | --input | --seed | --device | --config) ARGS+=("$1" "$2"); shift 2 ;;
    --filter-batch) ARGS+=(--filter-batch-size "$2"); shift 2 ;;
    --filter-opts) read -r -a extra <<<"$2"; for o in ${extra[@]+"${extra[@]}"}; do ARGS+=("$(filter_opt "$o")"); done; shift 2 ;;
    --clf-opts) read -r -a extra <<<"$2"; ARGS+=(${extra[@]+"${extra[@]}"}); shift 2 ;;
    --from-scratch) ARGS+=(--from-scratch); shift ;;
    *) echo "dlsa.sh: unknown option $1 (--help lists them)" >&2; exit 2 ;;
  esac
done
for f in "$TRAIN" "$VAL" "$TEST"; do
  [[ $f == - && $f == "$VAL" ]] && continue
  [[ -f $f ]] || { echo "dlsa.sh: $f: no such file" >&2; exit 2; }
done
VAL_OPT=()
[[ $VAL != - ]] && VAL_OPT=(--val "$VAL")
DEVICE=auto
for ((i = 0; i < ${#ARGS[@]}; i++)); do [[ ${ARGS[i]} == --device ]] && DEVICE=${ARGS[i + 1]}; done

echo "== fit-cascade: baseline, filters, branch classifiers, final classifier -> $OUT" >&2
dlsa fit-cascade "$TRAIN" ${VAL_OPT[@]+"${VAL_OPT[@]}"} -o "$OUT" --resume ${ARGS[@]+"${ARGS[@]}"} >&2

echo "== predict and evaluate on $(basename "$TEST")" >&2
dlsa predict "$OUT/baseline.safetensors" "$TEST" -o "$OUT/baseline.parquet" --device "$DEVICE" --quiet >&2
dlsa predict "$OUT" "$TEST" -o "$OUT/dlsa.parquet" --device "$DEVICE" --quiet >&2
dlsa evaluate "$OUT/baseline.parquet" "$OUT/dlsa.parquet" --train "$TRAIN"
dlsa evaluate "$OUT/baseline.parquet" "$OUT/dlsa.parquet" --train "$TRAIN" --json --quiet >"$OUT/evaluate.json"
"${PYTHON:-python3}" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
report = json.loads((out / "evaluate.json").read_text())
by_name = {Path(k).name: v for k, v in report.items()}
metrics = {"baseline": by_name["baseline.parquet"], "dlsa": by_name["dlsa.parquet"]}
tmp = out / ".metrics.json.tmp"
tmp.write_text(json.dumps(metrics, indent=2) + "\n")
tmp.replace(out / "metrics.json")
PY
echo "metrics -> $OUT/metrics.json" >&2
