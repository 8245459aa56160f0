"""The paper's classifier learners alone and with DLSA, on Tiny-ImageNet-LT, through `fit_cascade`.

    OMP_NUM_THREADS=1 python benchmarks/classifiers_dlsa.py --seeds 2 --epochs 10

For each seed one depth-1 flow filter is fitted on the training set (the
configuration of `recipes/tinyimagenet_lt.sh`: K 200, hidden 256, 10 epochs,
batch 512, cluster-tail routing) and shared by every classifier learner: each
row is one `fit_cascade` run with that filter given, so its baseline (the
learner alone, on all of TRAIN) and its cascade (the same learner as the
cluster-aided and final classifiers, fine-tuned from that baseline) are fitted
in the same run with the same settings. Every epoch is chosen on validation
(`val.safetensors`); the test split is only predicted.

Learners: ce, bsm, cbs (CE, class-balanced sampling), cosine (CE), la (CE +
post-hoc logit adjustment chosen on validation), ride (2 experts, BSM, the
diversity weight chosen on validation), m2m (CE, --sampler m2m, a CE warm-up
as g). Printed: test overall / many / medium / few / MCC / NMI, alone and with
DLSA, mean +- std over seeds, and the difference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from classifiers import ROWS as ALONE_ROWS  # noqa: E402
from pages import Page, add_markdown_option  # noqa: E402

from dlsa_cli.cascade import Cascade, CascadePlan, fit_cascade, predict  # noqa: E402
from dlsa_cli.classify import Classifier, TrainConfig  # noqa: E402
from dlsa_cli.evaluation import evaluate_predictions  # noqa: E402
from dlsa_cli.flow import FilterConfig  # noqa: E402
from dlsa_cli.io.features import read_features  # noqa: E402

DATA = Path(os.environ.get("DLSA_SHARED_DATA", REPO.parent / "shared" / "data")) / "tinyimagenet-lt"
METRICS = ("overall", "many", "medium", "few", "mcc", "nmi")
# the learners of benchmarks/classifiers.py; M2M's g warms up for 10 epochs, as long as the learners train
ROWS: dict[str, dict] = {**ALONE_ROWS, "m2m": {**ALONE_ROWS["m2m"], "m2m_warmup": 10}}
FILTER = FilterConfig(clusters=200, hidden=256, epochs=10, batch_size=512, routing="cluster-tail")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def scores(model, test, counts: np.ndarray) -> dict[str, float]:
    pred = predict(model, test)
    m = evaluate_predictions(test.labels, pred.logits.argmax(1), counts).to_json()
    return {k: m[k] for k in METRICS}


def one_row(row: str, seed: int, args, filt: Path | None, test, counts) -> tuple[dict, Path]:
    """Fit the learner alone and with DLSA in one fit_cascade run; (scores, the run's filter)."""
    cfg = replace(TrainConfig(epochs=args.epochs), **ROWS[row])
    plan = CascadePlan(num_depths=1, seed=seed, filter=FILTER, baseline=cfg)
    out = Path(args.work) / f"seed{seed}" / row
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    run = fit_cascade(DATA / "train.safetensors", out, plan, val=DATA / "val.safetensors",
                      filters=None if filt is None else {1: filt}, resume=out.exists())
    res = {"alone": scores(Classifier.load(out / "baseline.safetensors"), test, counts),
           "dlsa": scores(Cascade.load(out), test, counts), "unchanged": run.report.unchanged,
           "seconds": time.perf_counter() - t0}
    log(f"  seed {seed} {row}: alone {res['alone']['overall']:.4f} dlsa {res['dlsa']['overall']:.4f} "
        f"({res['seconds']:.0f} s)")
    return res, out / "depth1" / "filter.safetensors"


def table(results: list[dict[str, dict]]) -> str:
    """Alone and + DLSA per learner (mean ± std over seeds, %), and DLSA's mean difference (points)."""
    def cell(vals: list[float]) -> str:
        return f"{100 * np.mean(vals):.2f} ± {100 * np.std(vals):.2f}"

    lines = ["| learner | " + " | ".join(METRICS) + " | Δoverall | Δfew |", "|---|" + "---|" * (len(METRICS) + 2)]
    for row in ROWS:
        if not all(row in r for r in results):
            continue
        for kind in ("alone", "dlsa"):
            cells = [cell([r[row][kind][m] for r in results]) for m in METRICS]
            delta = ["", ""]
            if kind == "dlsa":
                delta = [f"{100 * np.mean([r[row]['dlsa'][m] - r[row]['alone'][m] for r in results]):+.2f}"
                         for m in ("overall", "few")]
            label = row + (" + DLSA" if kind == "dlsa" else "")
            lines.append(f"| {label} | " + " | ".join(cells + delta) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--work", default="/tmp/dlsa-bench-classifiers-dlsa")
    ap.add_argument("--out", default=None, help="write the raw results as JSON here")
    add_markdown_option(ap)
    args = ap.parse_args()
    page = Page(ap, args, "Classifier learners with DLSA")
    train, test = read_features(DATA / "train.safetensors"), read_features(DATA / "test.safetensors")
    counts = np.bincount(train.labels, minlength=200)
    results = []
    for seed in range(args.seeds):
        filt, res = None, {}
        for row in args.rows.split(","):
            res[row], path = one_row(row, seed, args, filt, test, counts)
            filt = filt or path  # the first run's filter serves every other learner of this seed
        results.append(res)
    page.print(f"Tiny-ImageNet-LT test, depth-1 DLSA (cluster-tail routing), {args.epochs} classifier epochs, "
               f"{args.seeds} seed(s): mean ± std, %; Δ = DLSA minus the learner alone, points.")
    page.print(table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    page.write()


if __name__ == "__main__":
    main()
