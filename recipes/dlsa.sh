#!/usr/bin/env bash
# DLSA vs its baseline on any feature files.
#
#   bash recipes/dlsa.sh TRAIN VAL TEST OUTDIR [options]
#
# TRAIN, VAL, TEST: feature files with labels (.safetensors, .npz, .h5, .pt,
# .parquet, ...); VAL chooses every epoch, TEST is only predicted and scored.
# VAL may be "-": each classifier then carves its validation from its own
# training file (20% of each class, stratified).
# It fits
#   1. the baseline: one classifier on all of TRAIN;
#   2. the DLSA cascade with the same classifier settings: for each depth, a
#      flow filter on that depth's training samples, a split of train/val/test,
#      a cluster-aided classifier on the routed training samples (validated
#      on the routed validation samples), and the rest goes to the next depth;
#      after the last depth a regular classifier on what is left. Every branch
#      classifier starts from the baseline (all training data) and fine-tunes;
#   3. predictions of both on TEST, `dlsa evaluate` side by side, and
#      OUTDIR/metrics.json = {"baseline": {...}, "dlsa": {...}} with overall,
#      many, medium, few, mcc, nmi (and routes) for each.
#
# Options (after OUTDIR):
#   --depth N            cascade depth (default 3)
#   --clusters K         mixture components per filter (default: fit-filter's, 500)
#   --share S            share of each depth's training samples routed (default 0.3)
#   --preset P           fit-filter preset: imagenet-lt, places-lt or inat18
#   --filter-epochs E    flow filter epochs (default: fit-filter's, 50)
#   --filter-batch B     flow filter batch size (default: fit-filter's, 1024)
#   --filter-lr LR       flow filter learning rate (default: fit-filter's, 0.2)
#   --filter-opts "..."  any other fit-filter options, passed as they are
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

TRAIN=$1 VAL=$2 TEST=$3 OUT=$4 TEST_NAME=$(basename "$3")
shift 4
DEPTH=3 SEED=0 DEVICE=auto
FILTER=() CLF=() BRANCH=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --depth) DEPTH=$2; shift 2 ;;
    --clusters) FILTER+=(--clusters "$2"); shift 2 ;;
    --share) FILTER+=(--share "$2"); shift 2 ;;
    --preset) FILTER+=(--preset "$2"); shift 2 ;;
    --filter-epochs) FILTER+=(--epochs "$2"); shift 2 ;;
    --filter-batch) FILTER+=(--batch-size "$2"); shift 2 ;;
    --filter-lr) FILTER+=(--lr "$2"); shift 2 ;;
    --filter-opts) read -r -a extra <<<"$2"; FILTER+=("${extra[@]}"); shift 2 ;;
    --model) CLF+=(--model "$2"); shift 2 ;;
    --loss) CLF+=(--loss "$2"); shift 2 ;;
    --sampler) CLF+=(--sampler "$2"); shift 2 ;;
    --epochs) CLF+=(--epochs "$2"); shift 2 ;;
    --lr) BASE_LR=(--lr "$2"); shift 2 ;;
    --baseline-init) BASE_INIT=(--init "$2"); shift 2 ;;
    --branch-lr) BRANCH+=(--lr "$2"); shift 2 ;;
    --from-scratch) SCRATCH=1; shift ;;
    --input) BRANCH+=(--input "$2"); shift 2 ;;
    --clf-opts) read -r -a extra <<<"$2"; CLF+=("${extra[@]}"); shift 2 ;;
    --seed) SEED=$2; shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    *) echo "dlsa.sh: unknown option $1 (--help lists them)" >&2; exit 2 ;;
  esac
done
[[ $DEPTH =~ ^[1-9][0-9]*$ ]] || { echo "dlsa.sh: --depth must be a positive integer, got $DEPTH" >&2; exit 2; }
for f in "$TRAIN" "$VAL" "$TEST"; do
  [[ $f == - && $f == "$VAL" ]] && continue
  [[ -f $f ]] || { echo "dlsa.sh: $f: no such file" >&2; exit 2; }
done

COMMON=(--seed "$SEED" --device "$DEVICE" --quiet)
mkdir -p "$OUT/inputs"
# Link the inputs under fixed names so that `dlsa split` names its outputs train.*, val.*, test.*.
link() { ln -sf "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")" "$OUT/inputs/$2.${1##*.}"; echo "$OUT/inputs/$2.${1##*.}"; }
TRAIN=$(link "$TRAIN" train) TEST=$(link "$TEST" test)
WHOLE_VAL=
if [[ $VAL != - ]]; then VAL=$(link "$VAL" val) WHOLE_VAL=$VAL; fi
step() { echo "== $*" >&2; }
# No validation file (VAL "-", or a depth whose validation part is empty): the classifier carves one from its training file.
# A branch sees part of the validation set; --val-weights-from (the whole VAL) makes its epoch the
# one that maximises the WHOLE validation set's balanced accuracy, so its rare classes do not weigh more.
val_opt() {
  VAL_OPT=()
  if [[ -f $1 ]]; then VAL_OPT=(--val "$1"); fi
  if [[ -f $1 && -n ${2:-} ]]; then VAL_OPT+=(--val-weights-from "$2"); fi
}

step "baseline: one classifier on all training data"
val_opt "$VAL"
dlsa fit-classifier "$TRAIN" ${VAL_OPT[@]+"${VAL_OPT[@]}"} -o "$OUT/baseline.safetensors" ${CLF[@]+"${CLF[@]}"} ${BASE_LR+"${BASE_LR[@]}"} ${BASE_INIT+"${BASE_INIT[@]}"} "${COMMON[@]}" >&2

if [[ -n ${SCRATCH:-} ]]; then START=(--from-scratch); else START=(--init "$OUT/baseline.safetensors"); fi
BRANCH_ARGS=(${CLF[@]+"${CLF[@]}"} "${START[@]}" ${BRANCH[@]+"${BRANCH[@]}"} --allow-missing-val-classes "${COMMON[@]}")

# `dlsa split` names its outputs after its inputs: NAME.routed.safetensors and NAME.rest.safetensors.
stem() { local b; b=$(basename "$1"); echo "${b%.*}"; }
cur_train=$TRAIN cur_val=$VAL cur_test=$TEST
depths=()
for ((d = 1; d <= DEPTH; d++)); do
  dir="$OUT/depth$d"
  mkdir -p "$dir"
  step "depth $d: flow filter on $(basename "$cur_train")"
  dlsa fit-filter "$cur_train" -o "$dir/filter.safetensors" --depth "$d" ${FILTER[@]+"${FILTER[@]}"} "${COMMON[@]}" >"$dir/filter.txt"
  parts=("$cur_train")
  [[ -f $cur_val ]] && parts+=("$cur_val")
  [[ -f $cur_test ]] && parts+=("$cur_test")
  dlsa split "$dir/filter.safetensors" "${parts[@]}" -o "$dir" --device "$DEVICE" --quiet >"$dir/split.txt"
  step "depth $d: cluster-aided classifier on the routed training samples"
  tr=$(stem "$cur_train") va=$(stem "$cur_val") te=$(stem "$cur_test")
  val_opt "$dir/$va.routed.safetensors" "$WHOLE_VAL"
  dlsa fit-classifier "$dir/$tr.routed.safetensors" ${VAL_OPT[@]+"${VAL_OPT[@]}"} \
    --filter "$dir/filter.safetensors" -o "$dir/cluster.safetensors" "${BRANCH_ARGS[@]}" >&2
  depths+=("$d")
  cur_train="$dir/$tr.rest.safetensors" cur_val="$dir/$va.rest.safetensors" cur_test="$dir/$te.rest.safetensors"
done

step "final regular classifier on the samples no filter routed"
val_opt "$cur_val" "$WHOLE_VAL"
dlsa fit-classifier "$cur_train" ${VAL_OPT[@]+"${VAL_OPT[@]}"} -o "$OUT/final.safetensors" "${BRANCH_ARGS[@]}" >&2

{
  echo '{"dlsa_kind": "cascade", "depths": ['
  for d in "${depths[@]}"; do
    sep=$([[ $d == "${depths[-1]}" ]] && echo "" || echo ",")
    echo "  {\"filter\": \"depth$d/filter.safetensors\", \"classifier\": \"depth$d/cluster.safetensors\"}$sep"
  done
  echo '], "final": "final.safetensors"}'
} >"$OUT/cascade.json"

step "predict and evaluate on $TEST_NAME"
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
