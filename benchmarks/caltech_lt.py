"""Caltech-101-LT: every classifier alone and with DLSA (depth 1, 2, 3), ablations, design choices.

    python benchmarks/caltech_lt.py                       # everything, 5 seeds (tens of minutes on 2 cores)
    python benchmarks/caltech_lt.py --seeds 1 --classifiers bsm --ablations none --designs none   # a quick look

For each seed s the Caltech-101-LT split is drawn with seed s (the test part is
15 images per class, balanced; validation is carved from the long-tailed
training part) and every model is trained with seed s. Per seed, one flow
filter per depth is trained (depth d on the samples no earlier filter routed)
and shared by every classifier, as in the paper. For each classifier type:
  - the baseline: one classifier on all training data;
  - DLSA at depth k: the library loop `fit_cascade` (what `dlsa fit-cascade`
    runs) given the seed's filters 1..k: a cluster-aided classifier per depth on
    its routed training samples (validated on its routed validation samples,
    weighted so that the epoch maximises the whole validation set's balanced
    accuracy) and a final regular classifier on what is left, every branch
    starting from the baseline (the tool's default).
Printed: overall / many / medium / few (mean per-class accuracy of the group)
/ MCC / NMI on the TEST split as mean +- std over seeds, the head-tail
separation accuracy per depth, where routed and remaining test samples gain or
lose against the baseline, the paper's ablations (filters without each loss,
other K) on one classifier, and design choices of the branch classifiers
measured on VALIDATION (balanced accuracy), which is what chose the defaults.

With --nested-val, validation is halved (stratified): one half chooses every
epoch, the other half is what the 'val' columns report. Choosing among designs
on the same samples that chose the epochs favours designs that move more (they
over-fit the small routed validation parts), so design choices are compared on
the held-out half.

Library calls only (no subprocesses). Filters are cached under --cache, so a
second run with the same filter settings skips them; each cascade's run folder
(fit_cascade's RUNDIR) is written under --cache/seedS/runs/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pages import Page, add_markdown_option  # noqa: E402

from dlsa_cli.cascade import Cascade, CascadePlan, fit_cascade  # noqa: E402
from dlsa_cli.classify import Classifier, TrainConfig, fit_classifier  # noqa: E402
from dlsa_cli.datasets import caltech101_lt  # noqa: E402
from dlsa_cli.evaluation import evaluate_predictions  # noqa: E402
from dlsa_cli.flow import FilterConfig, FlowFilter, fit_filter  # noqa: E402
from dlsa_cli.io.features import FeatureSet, write_features  # noqa: E402

C = 101
METRICS = ("overall", "many", "medium", "few", "mcc", "nmi")

# The classifiers of the paper's Sec. 4.2 as the reference notes describe them.
CLASSIFIERS: dict[str, dict] = {
    "ce": dict(loss="ce"),
    "bsm": dict(loss="bsm"),
    "la": dict(loss="ce", posthoc="la"),  # logit adjustment (post-hoc, strength on validation)
    "cosine": dict(loss="ce", model="cosine"),
    "cbs": dict(loss="ce", sampler="balanced"),
    "ride": dict(loss="bsm", model="ride"),  # 2 experts, RIDE's defaults (see benchmarks/classifiers.py)
    "m2m": dict(loss="ce", sampler="m2m", m2m_every=100),  # one round; each branch warms up its own g
}

# The paper's ablations (Table 4) on the filter; K scaled to Caltech's 101 classes.
ABLATIONS: dict[str, dict] = {
    "no-mle": dict(lambda_lh=0.0),
    "no-bal": dict(lambda_bal=0.0),
    "no-pure": dict(lambda_pure=0.0),
    "k50": dict(clusters=50),
    "k200": dict(clusters=200),
}

# Branch-classifier design choices (BSM), each measured on validation.
DESIGNS: dict[str, dict] = {
    "default": dict(),
    "counts-subset": dict(branch=dict(loss_counts="subset")),
    "input-latent": dict(branch=dict(side_input="latent")),
    "prior-only": dict(branch=dict(side_input="none")),
    "prior-loo": dict(branch=dict(prior_train="loo")),
    "branch-lr-3e-3": dict(branch=dict(lr=3e-3)),
    "val-unweighted": dict(weighted=False),
    "honest-init": dict(branch=dict(lr=3e-2), honest=True),
    "honest-init-prior-only": dict(branch=dict(lr=3e-2, side_input="none"), honest=True),
    "scratch": dict(scratch=True),
    "scratch-counts-all": dict(scratch=True, branch=dict(loss_counts="all")),
    "scratch-counts-subset": dict(scratch=True, branch=dict(loss_counts="subset")),
    "scratch-latent": dict(scratch=True, branch=dict(loss_counts="subset", side_input="latent")),
}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def derived(fs: FeatureSet, idx: np.ndarray, counts: np.ndarray, part: str, depth: int) -> FeatureSet:
    """A routed/rest part carrying the original training counts, as `dlsa split` writes it."""
    out = fs.subset(idx)
    out.meta = {"num_classes": C, "train_counts": counts.tolist(), "part": part, "depth": depth}
    return out


class Seed:
    """One seed's data, filters (cached) and routed parts per depth."""

    def __init__(self, args, seed: int, filter_cfg: FilterConfig, tag: str, max_depth: int):
        self.seed = seed
        s = caltech101_lt(args.npz, seed=seed)
        self.train, self.val, self.test = s.train, s.val, s.test
        self.counts = np.bincount(self.train.labels, minlength=C)
        for fs in (self.train, self.val, self.test):
            fs.meta.update(num_classes=C)
        self.assess = self.val
        if args.nested_val:  # half of val chooses epochs, the other half judges designs
            from dlsa_cli.classify import carve_validation

            sel, assess = carve_validation(self.val.labels, 0.5, seed)
            self.val, self.assess = self.val.subset(sel), self.val.subset(assess)
        self.dir = Path(args.cache) / f"seed{seed}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.tag, self.filter_cfg = tag, replace(filter_cfg, seed=seed)
        self.train_path = self.dir / "train.safetensors"  # the files fit_cascade reads
        self.val_path = self.dir / ("val_nested.safetensors" if args.nested_val else "val.safetensors")
        write_features(self.train_path, self.train)
        write_features(self.val_path, self.val)
        self.filters: list[FlowFilter] = []
        self.filter_paths: list[Path] = []
        # rows of each split still unrouted before depth d (index into the full split)
        self.left = {n: [np.arange(getattr(self, n).n)] for n in ("train", "val", "test")}
        self.routed: dict[str, list[np.ndarray]] = {n: [] for n in ("train", "val", "test")}
        for d in range(1, max_depth + 1):
            path = self.dir / f"filter_{tag}_d{d}.safetensors"
            rows = self.left["train"][-1]
            if path.exists():
                flt = FlowFilter.load(path)
            else:
                t0 = time.perf_counter()
                part = derived(self.train, rows, self.counts, "rest" if d > 1 else "all", d - 1)
                flt = fit_filter(part, config=replace(filter_cfg, seed=seed), depth=d, allow_singletons=d > 1)
                flt.save(path)
                log(f"  seed {seed}: filter {tag} depth {d} on {len(rows)} samples ({time.perf_counter() - t0:.0f} s)")
            self.filters.append(flt)
            self.filter_paths.append(path)
            for n in ("train", "val", "test"):
                rows_n = self.left[n][-1]
                r = flt.score(getattr(self, n).features[rows_n]).routed
                self.routed[n].append(rows_n[r])
                self.left[n].append(rows_n[~r])

    def part(self, split: str, d: int, routed: bool) -> FeatureSet:
        """Depth d's routed part, or (routed=False) what is left after depth d."""
        rows = self.routed[split][d - 1] if routed else self.left[split][d]
        return derived(getattr(self, split), rows, self.counts, "routed" if routed else "rest", d)


def fit(train, val, cfg, **kw):
    clf, _ = fit_classifier(train, val, cfg, **kw)
    return clf


def out_of_fold_logits(sd: Seed, cfg: TrainConfig, folds: int = 5) -> np.ndarray:
    """Logits of each training sample from a baseline trained without it (k-fold)."""
    path = sd.dir / f"oof_{cfg.loss}_{cfg.sampler}_{cfg.model}_{cfg.epochs}.npy"
    if path.exists():
        return np.load(path)
    rng = np.random.default_rng(sd.seed)
    fold = rng.integers(0, folds, sd.train.n)
    oof = np.zeros((sd.train.n, C), dtype=np.float32)
    for k in range(folds):
        part = derived(sd.train, np.flatnonzero(fold != k), sd.counts, "all", 0)
        clf = fit(part, sd.val, replace(cfg, allow_missing_val_classes=True))
        oof[fold == k] = clf.logits(sd.train.features[fold == k], posthoc=False)
    np.save(path, oof)
    return oof


def build_cascades(sd: Seed, cfg: TrainConfig, depths: list[int], design_name: str, design: dict,
                   oof: np.ndarray | None) -> dict[int, Cascade]:
    """Cascades of depth k (k in depths) by the library loop, `fit_cascade`, on this seed's cached filters.

    Each depth k is its own run (its final classifier sits after depth k), so the
    lower depths' classifiers are fitted again: the same seed gives the same ones.
    """
    branch = replace(cfg, **{"lr": None, **design.get("branch", {})})
    if design.get("scratch"):
        branch = replace(branch, lr=branch.lr or 0.03)
        if "loss_counts" not in design.get("branch", {}):
            branch = replace(branch, loss_counts="subset")  # the authors' implementation
    out = {}
    for d in depths:
        run_dir = sd.dir / "runs" / f"{sd.tag}_{cfg.loss}_{cfg.sampler}_{cfg.model}_{cfg.posthoc}_{design_name}_d{d}"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        plan = CascadePlan(num_depths=d, seed=sd.seed, filter=sd.filter_cfg, baseline=cfg, branch=branch,
                           from_scratch=bool(design.get("scratch")), val_weights=design.get("weighted", True))
        filters = {i: sd.filter_paths[i - 1] for i in range(1, d + 1)}
        out[d] = fit_cascade(sd.train_path, run_dir, plan, val=sd.val_path, filters=filters, train_offset=oof).cascade
    return out


def metrics(labels: np.ndarray, logits: np.ndarray, counts: np.ndarray, route: np.ndarray | None = None) -> dict:
    routes = None if route is None else np.where(route > 0, np.char.add("cluster@", route.astype(str)), "regular")
    m = evaluate_predictions(labels, logits.argmax(1), counts, routes=routes).to_json()
    acc = (logits.argmax(1) == labels).astype(float)
    per = np.bincount(labels, weights=acc, minlength=C) / np.maximum(np.bincount(labels, minlength=C), 1)
    m["balanced"] = float(per[np.bincount(labels, minlength=C) > 0].mean())
    return m


def evaluate_model(sd: Seed, model, base_logits: dict | None = None) -> dict:
    """Test and validation metrics; for a cascade also the per-route gain against the baseline."""
    res = {}
    for split in ("test", "val"):
        fs = sd.test if split == "test" else sd.assess
        if isinstance(model, Cascade):
            lg, route = model.logits(fs.features)
        else:
            lg, route = model.logits(fs.features), None
        m = metrics(fs.labels, lg, sd.counts, route)
        if route is not None and base_logits is not None and split == "test":
            ok_b = base_logits[split].argmax(1) == fs.labels
            ok_d = lg.argmax(1) == fs.labels
            gains = {}
            for r in np.unique(route):
                sel = route == r
                name = f"cluster@{r}" if r > 0 else "regular"
                gains[name] = {"samples": int(sel.sum()), "baseline": float(ok_b[sel].mean()),
                               "dlsa": float(ok_d[sel].mean())}
            m["gains"] = gains
        res[split] = m
    return res


def mean_std(values: list[float | None]) -> tuple[float, float] | None:
    v = [x for x in values if x is not None]
    if not v:
        return None
    return float(np.mean(v)), float(np.std(v))


def fmt(ms: tuple[float, float] | None, scale: float = 100.0) -> str:
    if ms is None:
        return "n/a"
    return f"{ms[0] * scale:.2f} ± {ms[1] * scale:.2f}"


def table(title: str, rows: dict[str, list[dict]], split: str = "test", ref: str | None = None) -> str:
    """rows: name -> list over seeds of evaluate_model() results; a markdown table under its title."""
    lines = [f"**{title}**", "", "| model | " + " | ".join(METRICS) + " | Δoverall | Δfew | val bal. |",
             "|---|" + "---|" * (len(METRICS) + 3)]
    for name, runs in rows.items():
        cells = [fmt(mean_std([r[split][k] for r in runs])) for k in METRICS]
        base = rows.get(ref or "") if ref else None
        d_over = d_few = ""
        if base is not None and name != ref:
            overall = [a[split]["overall"] - b[split]["overall"] for a, b in zip(runs, base, strict=False)]
            d_over = f"{100 * np.mean(overall):+.2f}"
            fews = [a[split]["few"] - b[split]["few"] for a, b in zip(runs, base, strict=False)
                    if a[split]["few"] is not None]
            d_few = f"{100 * np.mean(fews):+.2f}" if fews else ""
        val = fmt(mean_std([r["val"]["balanced"] for r in runs]))
        lines.append(f"| {name} | " + " | ".join([*cells, d_over, d_few, val]) + " |")
    return "\n".join(lines)


def separation_table(sep: dict[int, list[dict]]) -> str:
    lines = ["| depth | separation | routed share, test | routed share, train |", "|---|---|---|---|"]
    for d, rs in sep.items():
        cells = [fmt(mean_std([r[k] for r in rs])) for k in ("separation", "routed_test", "routed_train")]
        lines.append(f"| {d} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def gains_table(gains: dict[str, list[dict]]) -> str:
    lines = ["| depth: route | samples | baseline | dlsa | Δ |", "|---|---|---|---|---|"]
    for k, rs in gains.items():
        b, dl = mean_std([r["baseline"] for r in rs]), mean_std([r["dlsa"] for r in rs])
        delta = f"{100 * (dl[0] - b[0]):+.2f}" if b and dl else "n/a"
        lines.append(f"| {k} | {np.mean([r['samples'] for r in rs]):.1f} | {fmt(b)} | {fmt(dl)} | {delta} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = Path(os.environ.get("DLSA_SHARED_DATA", REPO.parent / "shared" / "data"))
    ap.add_argument("--npz", default=str(shared / "caltech101_lite0.npz"))
    ap.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (split and model seed)")
    ap.add_argument("--classifiers", default=",".join(CLASSIFIERS), help="comma list of " + ",".join(CLASSIFIERS))
    ap.add_argument("--depths", default="1,2,3")
    ap.add_argument("--ablations", default=",".join(ABLATIONS),
                    help="comma list of " + ",".join(ABLATIONS) + ", or none")
    ap.add_argument("--ablation-classifier", default="bsm")
    ap.add_argument("--ablation-depth", type=int, default=1, help="cascade depth of the ablation runs")
    ap.add_argument("--designs", default=",".join(DESIGNS), help="comma list of " + ",".join(DESIGNS) + ", or none")
    ap.add_argument("--design-depths", default="1,3")
    ap.add_argument("--clusters", type=int, default=100)
    ap.add_argument("--filter-epochs", type=int, default=20)
    ap.add_argument("--filter-hidden", type=int, default=256)
    ap.add_argument("--filter-batch", type=int, default=512)
    ap.add_argument("--filter-select", default="last")
    ap.add_argument("--epochs", type=int, default=150, help="classifier epochs")
    ap.add_argument("--cache", default=str(REPO / "runs" / "bench_caltech_cache"))
    ap.add_argument("--json", default=None, help="also write every number here")
    ap.add_argument("--nested-val", action="store_true",
                    help="split validation in halves: one chooses epochs, the other reports 'val' (for "
                         "comparing designs)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 avoids contention on shared cores)")
    add_markdown_option(ap)
    args = ap.parse_args()
    page = Page(ap, args, "DLSA on Caltech-101-LT")
    torch.set_num_threads(args.threads)
    if not Path(args.npz).exists():
        sys.exit(f"{args.npz}: Caltech-101 features not found (pass --npz)")

    clfs = [c for c in args.classifiers.split(",") if c]
    depths = [int(d) for d in args.depths.split(",") if d]
    ablations = [] if args.ablations == "none" else [a for a in args.ablations.split(",") if a]
    designs = [] if args.designs == "none" else [d for d in args.designs.split(",") if d]
    design_depths = [int(d) for d in args.design_depths.split(",") if d]
    max_depth = max(depths + design_depths + ([args.ablation_depth] if ablations else []))
    base_cfg = FilterConfig(clusters=args.clusters, epochs=args.filter_epochs, hidden=args.filter_hidden,
                            batch_size=args.filter_batch, max_cluster_share=0.2, select=args.filter_select)
    tag = f"k{args.clusters}_e{args.filter_epochs}_h{args.filter_hidden}_b{args.filter_batch}_{args.filter_select}"
    main_rows: dict[str, list] = {}
    abl_rows: dict[str, list] = {}
    des_rows: dict[str, list] = {}
    sep: dict[int, list] = {}
    gains: dict[str, list] = {}
    t_start = time.perf_counter()
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        sd = Seed(args, seed, base_cfg, tag, max_depth)
        for d in range(1, max_depth + 1):
            r = sd.routed["test"][d - 1]
            sep.setdefault(d, []).append(
                {"separation": float((sd.counts[sd.test.labels[r]] <= 50).mean()) if len(r) else None,
                 "routed_test": len(r) / sd.test.n, "routed_train": len(sd.routed["train"][d - 1]) / sd.train.n}
            )
        for name in clfs:
            cfg = TrainConfig(epochs=args.epochs, seed=seed, **CLASSIFIERS[name])
            base_path = sd.dir / f"baseline_{name}_e{args.epochs}.safetensors"
            base = fit(sd.train, sd.val, cfg)
            base.save(base_path)
            base_logits = {s: base.logits(getattr(sd, s).features) for s in ("val", "test")}
            main_rows.setdefault(f"{name}", []).append(evaluate_model(sd, base))
            cascades = build_cascades(sd, cfg, depths, "default", {}, None)
            for d in depths:
                res = evaluate_model(sd, cascades[d], base_logits)
                main_rows.setdefault(f"{name} + DLSA depth {d}", []).append(res)
                if name == "bsm":
                    for route, g in res["test"]["gains"].items():
                        gains.setdefault(f"depth {d}: {route}", []).append(g)
            if name == "bsm" and designs:
                oof = None
                for dn in designs:
                    design = DESIGNS[dn]
                    if design.get("honest") and oof is None:
                        oof = out_of_fold_logits(sd, cfg)
                    cas = build_cascades(sd, cfg, design_depths, dn, design, oof if design.get("honest") else None)
                    des_rows.setdefault("bsm baseline", [])
                    if len(des_rows["bsm baseline"]) <= seed:
                        des_rows["bsm baseline"].append(main_rows["bsm"][-1])
                    for d in design_depths:
                        des_rows.setdefault(f"{dn} (depth {d})", []).append(evaluate_model(sd, cas[d]))
            log(f"  seed {seed}: {name} done ({time.perf_counter() - t0:.0f} s so far)")
        if ablations:
            name = args.ablation_classifier
            cfg = TrainConfig(epochs=args.epochs, seed=seed, **CLASSIFIERS[name])
            base_path = sd.dir / f"baseline_{name}_e{args.epochs}.safetensors"
            if not base_path.exists():
                fit(sd.train, sd.val, cfg).save(base_path)
            base = Classifier.load(base_path)
            abl_rows.setdefault(f"{name} baseline", []).append(evaluate_model(sd, base))
            full = [r for k, r in main_rows.items() if k == f"{name} + DLSA depth {args.ablation_depth}"]
            if full:
                abl_rows.setdefault(f"full model (depth {args.ablation_depth})", []).append(full[0][-1])
            for ab in ablations:
                cfg_f = replace(base_cfg, **ABLATIONS[ab])
                atag = tag + "_" + ab
                sa = Seed(args, seed, cfg_f, atag, args.ablation_depth)
                cas = build_cascades(sa, cfg, [args.ablation_depth], "default", {}, None)
                abl_rows.setdefault(ab, []).append(evaluate_model(sa, cas[args.ablation_depth]))
            log(f"  seed {seed}: ablations done ({time.perf_counter() - t0:.0f} s)")
        log(f"seed {seed} finished in {time.perf_counter() - t0:.0f} s")

    n = args.seeds
    page.print(f"Caltech-101-LT, {n} seed(s); test split (balanced, 15 per class); accuracies in %, mean ± std over "
               f"seeds. Filters: K={args.clusters}, {args.filter_epochs} epochs, hidden {args.filter_hidden}, batch "
               f"{args.filter_batch}, select {args.filter_select}; classifiers: {args.epochs} epochs; every branch "
               "starts from the baseline. Δ = minus the first row, points.")
    for name in clfs:
        sub = {k: v for k, v in main_rows.items() if k == name or k.startswith(name + " +")}
        page.print(table(f"[{name}]", sub, ref=name))
    page.print("**Head-tail separation per depth** (share of tail classes, <= 50 training samples, among routed test "
               "samples)")
    page.print(separation_table(sep))
    if gains:
        page.print("**Where BSM + DLSA gains and loses against the BSM baseline, per route** (test accuracy of the "
                   "same samples)")
        page.print(gains_table(gains))
    if abl_rows:
        page.print(table(f"ablations on {args.ablation_classifier} (filters changed; depth {args.ablation_depth})",
                         abl_rows, ref=f"{args.ablation_classifier} baseline"))
    if des_rows:
        page.print(table("branch-classifier designs on bsm, measured on VALIDATION (balanced accuracy; the "
                         "defaults follow it)", des_rows, split="val", ref="bsm baseline"))
        page.print("(columns: validation metrics; 'val bal.' = validation balanced accuracy; test numbers are in the "
                   "JSON)")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"main": main_rows, "ablations": abl_rows, "designs": des_rows,
                                               "separation": {str(k): v for k, v in sep.items()}, "gains": gains,
                                               "args": vars(args)}, indent=1, default=float))
    page.write()


if __name__ == "__main__":
    main()
