"""The paper's classifier learners alone, in the form of its tables: CE, BSM, CBS, cosine, LA, RIDE, M2M.

    OMP_NUM_THREADS=1 python benchmarks/classifiers.py                    # both data sets, 3 seeds
    OMP_NUM_THREADS=1 python benchmarks/classifiers.py --data caltech --seeds 1 --epochs 10   # a quick look

Data: Tiny-ImageNet-LT (`tinyimagenet-lt/{train,val,test}.safetensors`: one fixed split,
the seed changes the training only) and Caltech-101-LT (`caltech101_lite0.npz`: the
split is drawn with the seed too). Every classifier is linear on the frozen features,
trained with SGD for --epochs epochs, the epoch chosen on validation balanced accuracy:

  ce      cross-entropy                     bsm     Balanced Softmax
  cbs     CE, class-balanced sampling       cosine  cosine classifier, CE
  la      CE + post-hoc logit adjustment (strength on validation)
  ride    --model ride --experts 2, BSM per expert; the diversity weight is chosen on
          the first data set's seed-0 validation from --ride-grid
  m2m     CE, --sampler m2m, g = the seed's CE classifier; the schedule is chosen on
          the first data set's seed-0 validation from --m2m-schedules (start:every pairs)

(Choices are made once, on the first data set, to keep the whole run within CPU minutes:
an M2M round on Tiny-ImageNet-LT translates about 77,000 samples.)

Printed: test overall / many / medium / few (mean per-class accuracy in the group; many
> 100 training images, few < 20) / MCC / NMI as mean +- std over seeds, validation
balanced accuracy, seconds per fit, and M2M's acceptance rate. --out writes the raw results.
The "with DLSA" rows of the paper are not run here (see the README).
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

from pages import Page, add_markdown_option  # noqa: E402

from dlsa_cli.classify import TrainConfig, fit_classifier  # noqa: E402
from dlsa_cli.datasets import caltech101_lt  # noqa: E402
from dlsa_cli.evaluation import evaluate_predictions  # noqa: E402
from dlsa_cli.io.features import read_features  # noqa: E402

DATA = Path(os.environ.get("DLSA_SHARED_DATA", REPO.parent / "shared" / "data"))
METRICS = ("overall", "many", "medium", "few", "mcc", "nmi")
ROWS: dict[str, dict] = {
    "ce": dict(loss="ce"),
    "bsm": dict(loss="bsm"),
    "cbs": dict(loss="ce", sampler="balanced"),
    "cosine": dict(loss="ce", model="cosine"),
    "la": dict(loss="ce", posthoc="la"),
    "ride": dict(loss="bsm", model="ride", experts=2),
    "m2m": dict(loss="ce", sampler="m2m"),
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load(name: str, seed: int):
    """(train, val, test) FeatureSets with num_classes in their metadata."""
    if name == "tiny":
        d = DATA / "tinyimagenet-lt"
        return tuple(read_features(d / f"{s}.safetensors", require_labels=True) for s in ("train", "val", "test"))
    s = caltech101_lt(DATA / "caltech101_lite0.npz", seed=seed)
    for fs in (s.train, s.val, s.test):
        fs.meta.update(num_classes=101)
    return s.train, s.val, s.test


def run(train, val, test, cfg: TrainConfig, **kw) -> dict:
    t0 = time.perf_counter()
    clf, rep = fit_classifier(train, val, cfg, **kw)
    seconds = time.perf_counter() - t0
    counts = np.bincount(train.labels, minlength=clf.num_classes)
    m = evaluate_predictions(test.labels, clf.logits(test.features).argmax(1), counts).to_json()
    val = max([rep.val_balanced, *rep.posthoc.get("val_balanced", [])])  # after post-hoc adjustment, if any
    out = {k: m[k] for k in METRICS} | {"val_balanced": val, "epoch": rep.epoch, "seconds": seconds}
    if rep.m2m is not None:
        out["m2m_acceptance"] = rep.m2m["acceptance"]
        out["m2m_rounds"] = len(rep.m2m["rounds"])
    return out | {"_clf": clf}


def choose(label: str, trials: dict[str, dict]) -> str:
    """The trial with the best validation balanced accuracy (the first among ties)."""
    best = max(trials, key=lambda k: trials[k]["val_balanced"])
    log(f"  {label}: " + ", ".join(f"{k} val {v['val_balanced']:.4f}" for k, v in trials.items()) + f" -> {best}")
    return best


def one_seed(args, name: str, seed: int, chosen: dict) -> dict[str, dict]:
    train, val, test = load(name, seed)
    base = TrainConfig(epochs=args.epochs, seed=seed)
    res: dict[str, dict] = {}
    for row in ("ce", "bsm", "cbs", "cosine", "la"):
        res[row] = run(train, val, test, replace(base, **ROWS[row]))
        log(f"  {name} seed {seed} {row}: overall {res[row]['overall']:.4f} ({res[row]['seconds']:.0f} s)")
    g_path = Path(args.work) / f"{name}_ce_seed{seed}.safetensors"
    res["ce"]["_clf"].save(g_path)
    ride = replace(base, **ROWS["ride"])
    if "ride" not in chosen:  # the diversity weight, on seed 0's validation
        trials = {w: run(train, val, test, replace(ride, ride_diversity=float(w))) for w in args.ride_grid.split(",")}
        chosen["ride"] = choose(f"{name} ride diversity", trials)
        res["ride"] = trials[chosen["ride"]]
        res["_ride_trials"] = {k: _plain(v) for k, v in trials.items()}
    else:
        res["ride"] = run(train, val, test, replace(ride, ride_diversity=float(chosen["ride"])))
    m2m = replace(base, **ROWS["m2m"], m2m_from=str(g_path))
    grid, extra = args.m2m_schedules.split(","), [s for s in args.m2m_measure.split(",") if s]
    schedules = {s: dict(zip(("m2m_start", "m2m_every"), map(int, s.split(":")), strict=False)) for s in grid + extra}
    if "m2m" not in chosen:  # the schedule, on seed 0's validation; `extra` ones measured, not chosen
        trials = {s: run(train, val, test, replace(m2m, **kw)) for s, kw in schedules.items()}
        chosen["m2m"] = choose(f"{name} m2m schedule (start:every)", {s: trials[s] for s in grid})
        log("  measured too: " + ", ".join(f"{s} val {trials[s]['val_balanced']:.4f} ({trials[s]['seconds']:.0f} s)"
                                            for s in trials))
        res["m2m"] = trials[chosen["m2m"]]
        res["_m2m_trials"] = {k: _plain(v) for k, v in trials.items()}
    else:
        res["m2m"] = run(train, val, test, replace(m2m, **schedules[chosen["m2m"]]))
    log(f"  {name} seed {seed} ride/m2m: {res['ride']['overall']:.4f} / {res['m2m']['overall']:.4f}")
    return {k: _plain(v) for k, v in res.items()}


def _plain(r: dict) -> dict:
    return {k: v for k, v in r.items() if k != "_clf"}


def schedule_table(trials: dict[str, dict]) -> str:
    lines = ["| M2M schedule (start:every) | rounds | acceptance | val bal. | test overall | test few | seconds |",
             "|---|---|---|---|---|---|---|"]
    for s, r in trials.items():
        lines.append(f"| {s} | {r['m2m_rounds']} | {100 * r['m2m_acceptance']:.1f}% | {100 * r['val_balanced']:.2f} | "
                     f"{100 * r['overall']:.2f} | {100 * r['few']:.2f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def table(name: str, runs: list[dict], chosen: dict) -> str:
    head = f"| {name} | " + " | ".join(METRICS) + " | val bal. | s/fit |"
    lines = [head, "|" + "---|" * (len(METRICS) + 3)]
    for row in ROWS:
        rs = [r[row] for r in runs]
        cells = [f"{100 * np.mean([r[k] for r in rs]):.2f} ± {100 * np.std([r[k] for r in rs]):.2f}" for k in METRICS]
        label = row
        if row == "ride":
            label = f"ride (2 experts, diversity {chosen['ride']})"
        if row == "m2m":
            acc = np.mean([r["m2m_acceptance"] for r in rs])
            label = f"m2m (schedule {chosen['m2m']}, acceptance {100 * acc:.1f}%)"
        val = f"{100 * np.mean([r['val_balanced'] for r in rs]):.2f}"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {val} | {np.mean([r['seconds'] for r in rs]):.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="caltech,tiny",
                    help="comma list of caltech, tiny; choices made on the first one's seed-0 validation serve "
                         "the rest")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--ride-grid", default="0,0.05,0.2", help="RIDE diversity weights tried on seed 0's validation")
    ap.add_argument("--m2m-schedules", default="1:100,6:100",
                    help="M2M start:every pairs chosen from on seed 0's validation")
    ap.add_argument("--m2m-measure", default="1:5,1:2",
                    help="further start:every pairs measured beside them (not chosen from: each round costs "
                         "minutes on Tiny)")
    ap.add_argument("--work", default="/tmp/dlsa-bench-classifiers")
    ap.add_argument("--out", default=None, help="write the raw results as JSON here")
    add_markdown_option(ap)
    args = ap.parse_args()
    page = Page(ap, args, "Classifier learners alone")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    results, t0 = {}, time.perf_counter()
    chosen: dict = {}
    for name in args.data.split(","):
        runs = [one_seed(args, name, s, chosen) for s in range(args.seeds)]
        results[name] = {"runs": runs, "chosen": dict(chosen)}
        page.print(f"**{name}**: {args.seeds} seed(s), {args.epochs} epochs, test split, % (mean ± std over seeds)")
        page.print(table(name, runs, chosen))
        for key, title in (("_ride_trials", "RIDE diversity weight"), ("_m2m_trials", "M2M schedule")):
            if key in runs[0]:
                page.print(f"{name} seed 0, {title} (chosen on val: {chosen[key.split('_')[1]]})")
                if key == "_m2m_trials":
                    page.print(schedule_table(runs[0][key]))
                else:
                    page.print("\n".join(f"- {k}: val bal. {100 * r['val_balanced']:.2f}, test overall "
                                          f"{100 * r['overall']:.2f}, "
                                          f"few {100 * r['few']:.2f}" for k, r in runs[0][key].items()))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    page.write()


if __name__ == "__main__":
    main()
