"""Routing scores on Tiny-ImageNet-LT and Caltech-101-LT: separation and accuracy beside two controls.

    OMP_NUM_THREADS=1 python benchmarks/tinyimagenet_lt.py                  # both data sets, seeds 0 1 2
    OMP_NUM_THREADS=1 python benchmarks/tinyimagenet_lt.py --data tiny --seeds 0 --json out.json

Per data set and seed, one depth-1 flow filter with the class-weighted
likelihood (q = 2) and one unweighted reference (q = 0) are trained (cached
under --cache) and give the routes of:
  - likelihood:   the paper's rule, log p(x) >= the training 70% quantile;
  - ratio:        log p(x) - log p_ref(x) (flow/routing.py);
  - cluster-tail: P(tail | cluster(x)) of the training samples (ties by log p(x));
  - knn-tail:     the tail share of the k = 30 nearest training samples in the
                  flow's latent space (cosine, the sample itself left out);
                  separation only also for k = 10 and 100 (knn-tail@K), and for
                  the same neighbours in feature space (knn-x: what the flow adds),
                  and by Euclidean distance in the latent space (knn-euclid);
  - posterior:    control, the baseline classifier's sum_y p(y|x) w_y (same q);
  - random:       control, a route that ignores the sample (a hash of its row).
Every route threshold is the training share (0.3) quantile of its score.
For each: head-tail separation (tail share of the routed samples, tail = <= 50
training images) on train / val / test beside the split's own tail share, and
the depth-1 cascade (a cluster-aided classifier on the routed training samples,
a regular one on the rest, both fine-tuned from the baseline and validated on
their validation parts weighted to the whole validation set, as recipes/dlsa.sh
does), with and without a post-hoc logit adjustment whose strength each branch
chooses on its own validation part ("+la"). The baseline is shown plain and +la.
Printed: separation table and accuracy table (mean ± std over seeds), val and test.

Tiny-ImageNet-LT is fixed (seed only changes training); Caltech-101-LT is drawn
anew per seed. Results per (data, seed) are cached as JSON, so a rerun only
prints.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from controls import RoutedBy, expected_class_weight, random_score  # noqa: E402
from pages import Page, add_markdown_option  # noqa: E402

from dlsa_cli.cascade import Cascade  # noqa: E402
from dlsa_cli.classify import Classifier, TrainConfig, fit_classifier  # noqa: E402
from dlsa_cli.datasets import caltech101_lt  # noqa: E402
from dlsa_cli.evaluation import evaluate_predictions  # noqa: E402
from dlsa_cli.evaluation.metrics import tail_classes  # noqa: E402
from dlsa_cli.flow import FilterConfig, FlowFilter, fit_filter  # noqa: E402
from dlsa_cli.flow.neighbours import NeighbourBank  # noqa: E402
from dlsa_cli.flow.routing import quantile_threshold, separation, set_routing  # noqa: E402
from dlsa_cli.io.features import read_features  # noqa: E402
from dlsa_cli.io.files import write_json  # noqa: E402

SHARED = Path(os.environ.get("DLSA_SHARED_DATA", REPO.parent / "shared" / "data"))
FILTERS = {  # CPU-sized filters (reference notes: the paper's settings separate no better on Tiny)
    "tiny": dict(clusters=200, epochs=10, batch_size=512, hidden=256),
    "caltech": dict(clusters=50, epochs=10, batch_size=256, hidden=256),
}
ROUTES = ("likelihood", "ratio", "cluster-tail", "knn-tail", "posterior", "random")
SEPARATION_ONLY = ("knn-tail@10", "knn-tail@100", "knn-x",
                   "knn-euclid")  # choosing k and the metric; latent vs raw features
SPLITS = ("train", "val", "test")
METRICS = ("overall", "many", "medium", "few", "balanced")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load(data: str, seed: int, root: Path) -> dict:
    """train / val / test FeatureSets with num_classes and train_counts in their metadata."""
    if data == "tiny":
        d = root / "tinyimagenet-lt"
        sets = {s: read_features(d / f"{s}.safetensors", require_labels=True) for s in SPLITS}
    else:
        lt = caltech101_lt(root / "caltech101_lite0.npz", seed=seed)
        sets = {"train": lt.train, "val": lt.val, "test": lt.test}
    c = int(max(fs.labels.max() for fs in sets.values())) + 1
    counts = np.bincount(sets["train"].labels, minlength=c)
    for fs in sets.values():
        fs.meta.update(num_classes=c, train_counts=counts.tolist())
    return {**sets, "counts": counts, "c": c}


def cached_filter(path: Path, train, cfg: FilterConfig) -> FlowFilter:
    if path.exists():
        return FlowFilter.load(path)
    t0 = time.perf_counter()
    f = fit_filter(train, config=cfg, depth=1)
    f.save(path)
    log(f"  {path.name}: {time.perf_counter() - t0:.0f} s")
    return f


def routers(ds: dict, main: FlowFilter, ref: FlowFilter, base, seed: int, out: Path) -> dict:
    """Every route of ROUTES as a filter-like object, with a file for the classifiers' provenance."""
    x, y = ds["train"].features, ds["train"].labels
    rs: dict = {"likelihood": main}
    for name in ("ratio", "cluster-tail", "knn-tail"):
        f = copy.copy(main)
        f.reference = ref.flow if name == "ratio" else None
        set_routing(f, x, y, routing=name)
        f.save(out / f"filter_{name}.safetensors")
        rs[name] = f
    for k in (10, 100):
        f = copy.copy(main)
        f.config = replace(main.config, neighbours=k)
        set_routing(f, x, y, routing="knn-tail")
        rs[f"knn-tail@{k}"] = f
    tail = tail_classes(ds["counts"])
    bank = NeighbourBank.build(x, tail[y], main.config.neighbours)
    def knn_x(xx):
        return bank.tail_share(torch.as_tensor(np.asarray(xx))).numpy() + 1e-9 * random_score(xx, seed)
    z_train = torch.from_numpy(main.score(x, latent=True).latent)
    def knn_euclid(xx):
        return euclid_tail_share(z_train, tail[y], torch.from_numpy(main.score(xx, latent=True).latent),
                                 main.config.neighbours) + 1e-9 * random_score(xx, seed)
    def post(xx):
        return expected_class_weight(base.logits(xx), ds["counts"], main.config.q)
    def rand(xx):
        return random_score(xx, seed)
    for name, fn in (("posterior", post), ("random", rand), ("knn-x", knn_x), ("knn-euclid", knn_euclid)):
        rs[name] = RoutedBy(main, fn, quantile_threshold(fn(x), main.share))
    return rs


def euclid_tail_share(bank: torch.Tensor, tail: np.ndarray, z: torch.Tensor, k: int) -> np.ndarray:
    """Tail share of the k nearest bank rows by Euclidean distance, a row at (relative) distance < 1e-4
    left out as itself."""
    flags = torch.as_tensor(tail)
    out = []
    for s in range(0, len(z), 1024):
        q = z[s : s + 1024]
        d = torch.cdist(q, bank)  # (B, N)
        d[d < 1e-4 * q.norm(dim=1, keepdim=True)] = float("inf")
        out.append(flags[d.topk(k, dim=1, largest=False).indices].double().mean(1))
    return torch.cat(out).numpy()


def fit(train, val, cfg, **kw):
    return fit_classifier(train, val, cfg, **kw)[0]


def cascade(ds: dict, flt, base_path: Path, filter_path: Path, cfg: TrainConfig) -> Cascade:
    """Depth-1 cascade: cluster-aided on the routed training samples, regular on the rest."""
    routed = {s: flt.score(ds[s].features).routed for s in ("train", "val")}
    part = {(s, r): ds[s].subset(np.flatnonzero(routed[s] == r)) for s in ("train", "val") for r in (True, False)}
    for fs in part.values():
        fs.meta.update(num_classes=ds["c"], train_counts=ds["counts"].tolist())
    vcc = np.bincount(ds["val"].labels, minlength=ds["c"])
    branch = replace(cfg, allow_missing_val_classes=True)
    clu = fit(part["train", True], part["val", True], branch, init=base_path, flt=flt, filter_path=filter_path,
              val_class_counts=vcc)
    final = fit(part["train", False], part["val", False], branch, init=base_path, val_class_counts=vcc)
    return Cascade(None, [flt], [clu], final)


def scores(ds: dict, model, split: str, posthoc: bool) -> dict:
    fs = ds[split]
    if isinstance(model, Cascade):
        saved = [dict(m.meta) for m in (*model.classifiers, model.final)]
        if not posthoc:
            for m in (*model.classifiers, model.final):
                m.meta["posthoc"] = {"kind": "none", "tau": 0.0}
        lg, route = model.logits(fs.features)
        for m, s in zip((*model.classifiers, model.final), saved, strict=True):
            m.meta = s
    else:
        lg, route = model.logits(fs.features, posthoc=posthoc), None
    pred = lg.argmax(1)
    m = evaluate_predictions(fs.labels, pred, ds["counts"]).to_json()
    right = np.bincount(fs.labels, weights=(pred == fs.labels), minlength=ds["c"])
    per = right / np.maximum(np.bincount(fs.labels, minlength=ds["c"]), 1)
    m["balanced"] = float(per[np.bincount(fs.labels, minlength=ds["c"]) > 0].mean())
    if route is not None:
        m["routed_share"] = float((route > 0).mean())
    return {k: m.get(k) for k in (*METRICS, "routed_share")}


def run_seed(data: str, seed: int, args) -> dict:
    """Separation and accuracy of every route for one (data set, seed); cached as JSON, missing routes added."""
    out = Path(args.cache) / data / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    res_path = out / "results.json"
    res: dict = {"separation": {}, "accuracy": {}}
    for cached in (res_path, out / "separation.json") if args.separation_only else (res_path,):
        if cached.exists():
            res = json.loads(cached.read_text())
            break
    if all(n in res["separation"] for n in (*ROUTES, *SEPARATION_ONLY)):
        return res
    ds = load(data, seed, Path(args.data_root))
    fcfg = FilterConfig(**{**FILTERS[data], "seed": seed})
    main = cached_filter(out / "filter_q2.safetensors", ds["train"], fcfg)
    ref = cached_filter(out / "filter_q0.safetensors", ds["train"], replace(fcfg, q=0.0))
    cfg = TrainConfig(seed=seed, posthoc="la", epochs=args.epochs)
    t0 = time.perf_counter()
    base_path = out / "baseline.safetensors"
    if res["accuracy"] and base_path.exists():  # the routes measured before were measured against this one
        base = Classifier.load(base_path)
    else:
        base = fit(ds["train"], ds["val"], cfg)
        base.save(base_path)
    for split in ("val", "test"):
        res["accuracy"].setdefault("baseline", {})[split] = scores(ds, base, split, False)
        res["accuracy"].setdefault("baseline+la", {})[split] = scores(ds, base, split, True)
    for name, flt in routers(ds, main, ref, base, seed, out).items():
        if name in res["separation"] and (args.separation_only or name in res["accuracy"] or name in SEPARATION_ONLY):
            continue
        res["separation"][name] = {s: separation(flt.score(ds[s].features).routed, ds[s].labels, ds["counts"])
                                   for s in SPLITS}
        if args.separation_only or name in SEPARATION_ONLY:
            continue
        shared_filter = name in ("likelihood", "posterior", "random")
        fpath = out / ("filter_q2.safetensors" if shared_filter else f"filter_{name}.safetensors")
        casc = cascade(ds, flt, base_path, fpath, cfg)
        for split in ("val", "test"):
            res["accuracy"].setdefault(name, {})[split] = scores(ds, casc, split, False)
            res["accuracy"].setdefault(f"{name}+la", {})[split] = scores(ds, casc, split, True)
        log(f"  {data} seed {seed}: {name} done ({time.perf_counter() - t0:.0f} s)")
    if args.separation_only:
        res["accuracy"] = {}
        res_path = out / "separation.json"
    write_json(res_path, res)  # atomic: an interrupted run leaves no half cache
    return res


def ms(values: list) -> str:
    v = [x for x in values if x is not None]
    return "n/a" if not v else f"{100 * np.mean(v):.1f} ± {100 * np.std(v):.1f}"


def separation_table(data: str, runs: list[dict]) -> str:
    lines = [f"**{data}: head-tail separation at depth 1** (tail share of routed samples, %; routed share in "
             "brackets)", "", "| route | " + " | ".join(SPLITS) + " |", "|---|" + "---|" * len(SPLITS)]
    for name in (*ROUTES, *SEPARATION_ONLY):
        cells = []
        for s in SPLITS:
            sep = ms([r["separation"][name][s]["separation"] for r in runs])
            share = np.mean([r["separation"][name][s]["routed_share"] for r in runs])
            cells.append(f"{sep} [{100 * share:.1f}%]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    chance = [ms([r["separation"]["likelihood"][s]["chance"] for r in runs]) for s in SPLITS]
    lines.append("| chance | " + " | ".join(chance) + " |")
    return "\n".join(lines)


def accuracy_table(data: str, runs: list[dict], split: str) -> str:
    runs = [r for r in runs if r["accuracy"]]  # separation-only seeds have none
    if not runs:
        return ""
    lines = [f"**{data}: depth-1 cascade accuracy on {split}** (%, mean ± std over {len(runs)} seed(s); Δ against "
             "the baseline, or baseline+la for +la rows, points)", "",
             "| model | " + " | ".join(METRICS) + " | Δoverall | Δfew |", "|---|" + "---|" * (len(METRICS) + 2)]
    for name in runs[0]["accuracy"]:
        rows = [r["accuracy"][name][split] for r in runs]
        ref = "baseline+la" if name.endswith("+la") else "baseline"
        d_o = np.mean([a["overall"] - r["accuracy"][ref][split]["overall"] for a, r in zip(rows, runs, strict=True)])
        d_f = np.mean([a["few"] - r["accuracy"][ref][split]["few"] for a, r in zip(rows, runs, strict=True)])
        lines.append(f"| {name} | " + " | ".join(ms([a[k] for a in rows]) for k in METRICS)
                     + f" | {100 * d_o:+.2f} | {100 * d_f:+.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["tiny", "caltech"], choices=["tiny", "caltech"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=150, help="classifier epochs (every fit)")
    ap.add_argument("--data-root", default=str(SHARED))
    ap.add_argument("--cache", default="/tmp/dlsa-bench/routing", help="filters and per-seed results")
    ap.add_argument("--json", default=None, help="also write every result here")
    ap.add_argument("--separation-only", action="store_true",
                    help="routes and separation only, no classifiers but the baseline")
    add_markdown_option(ap)
    args = ap.parse_args()
    page = Page(ap, args, "Routing scores: separation and depth-1 accuracy")
    every = {}
    for data in args.data:
        runs = [run_seed(data, s, args) for s in args.seeds]
        every[data] = runs
        page.print(separation_table(data, runs))
        for split in ("val", "test"):
            page.print(accuracy_table(data, runs, split))
    if args.json:
        Path(args.json).write_text(json.dumps(every, indent=1))
    page.write()


if __name__ == "__main__":
    main()
