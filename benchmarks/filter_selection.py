"""Choosing a flow filter's epoch on validation, and regularising its density: depth-1 separation.

    OMP_NUM_THREADS=1 python benchmarks/filter_selection.py                       # tiny and caltech, seeds 0 1
    OMP_NUM_THREADS=1 python benchmarks/filter_selection.py --data tiny --seeds 0 --noise 0 0.2 --weight-decay 0
    OMP_NUM_THREADS=1 python benchmarks/filter_selection.py --data tiny --noise 0 --weight-decay 0 --filter-epochs 20
    python benchmarks/filter_selection.py --print-only --noise 0 0.2 --weight-decay 0 0.001     # the cached tables

Per data set, seed and regularisation (input noise x weight decay), one filter
is trained for --filter-epochs with the validation split given (fit_filter's
`val`), so every epoch's record holds its validation separation under both
per-epoch routing scores (likelihood, cluster-tail), its mean validation
log p(x) and its count of good training clusters. Each selection rule then
picks its epoch from those records exactly as `fit_filter(select=...)` does:
  - good-clusters:  the paper's (most pure training clusters);
  - last:           the last epoch;
  - val-separation: the highest tail share among the routed VALIDATION samples;
  - val-likelihood: the highest mean VALIDATION log p(x) (early stopping).
The weights of an earlier epoch are those of the same run stopped there
(training does not depend on the number of epochs; the script checks that the
shorter run's records equal the longer one's). For each rule and routing
score: separation (tail share of routed samples, tail = <= 50 training images)
on val and on test, beside the split's own tail share. Test numbers are
reported, never used to choose. Everything is cached under --cache.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from pages import Page, add_markdown_option  # noqa: E402
from tinyimagenet_lt import FILTERS, SHARED, load, log, ms  # noqa: E402

from dlsa_cli.flow import FilterConfig, FlowFilter, fit_filter  # noqa: E402
from dlsa_cli.flow.config import SELECTS  # noqa: E402
from dlsa_cli.flow.routing import separation, set_routing  # noqa: E402
from dlsa_cli.flow.train import select_key  # noqa: E402
from dlsa_cli.io.files import write_json  # noqa: E402

ROUTINGS = ("likelihood", "cluster-tail")


def chosen_epoch(history: list[dict], cfg: FilterConfig) -> int:
    """The epoch `fit_filter(select=cfg.select, routing=cfg.routing)` keeps, from its records (ties: the later)."""
    own = "cluster-tail" if cfg.routing == "cluster-tail" else "likelihood"
    best, best_key = 0, None
    for h in history:
        key = select_key({**h, "val_separation": h["val_separation_by"][own]}, cfg)
        if best_key is None or key >= best_key:
            best, best_key = h["epoch"], key
    return best


def filter_at(out: Path, ds: dict, cfg: FilterConfig, epoch: int, full: list[dict]) -> FlowFilter:
    """The filter of `cfg`'s run stopped after `epoch` (select last), cached; its records must match the full run's."""
    path = out / f"e{epoch}.safetensors"
    if path.exists():
        return FlowFilter.load(path)
    t0 = time.perf_counter()
    f = fit_filter(ds["train"], val=ds["val"], config=replace(cfg, epochs=epoch, select="last"), depth=1)
    for a, b in zip(f.history, full, strict=False):
        assert a["val_separation_by"] == b["val_separation_by"] and a["good_clusters"] == b["good_clusters"], (a, b)
    f.save(path)
    log(f"  {path}: {time.perf_counter() - t0:.0f} s")
    return f


def run_setting(data: str, seed: int, noise: float, wd: float, args) -> dict:
    """The epoch records, each rule's epoch, and val/test separation per (rule, routing); cached as JSON."""
    out = Path(args.cache) / data / f"seed{seed}" / f"noise{noise:g}_wd{wd:g}_e{args.filter_epochs}"
    res_path = out / "results.json"
    if res_path.exists():
        return json.loads(res_path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    ds = load(data, seed, Path(args.data_root))
    cfg = FilterConfig(**{**FILTERS[data], "epochs": args.filter_epochs, "seed": seed, "input_noise": noise,
                          "weight_decay": wd})
    full_path = out / f"e{cfg.epochs}.safetensors"
    if full_path.exists():
        full = FlowFilter.load(full_path)
    else:
        t0 = time.perf_counter()
        full = fit_filter(ds["train"], val=ds["val"], config=replace(cfg, select="last"), depth=1)
        full.save(full_path)
        log(f"  {full_path}: {time.perf_counter() - t0:.0f} s")
    hist = full.history
    res: dict = {"data": data, "seed": seed, "input_noise": noise, "weight_decay": wd, "history": hist, "rules": {}}
    x, y = ds["train"].features, ds["train"].labels
    for routing in ROUTINGS:
        for rule in SELECTS:
            e = chosen_epoch(hist, replace(cfg, select=rule, routing=routing))
            f = copy.copy(full if e == cfg.epochs else filter_at(out, ds, cfg, e, hist))
            set_routing(f, x, y, routing=routing)
            sep = {s: separation(f.score(ds[s].features).routed, ds[s].labels, ds["counts"]) for s in ("val", "test")}
            res["rules"][f"{rule}/{routing}"] = {"epoch": e, **sep}
    write_json(res_path, res)  # atomic: an interrupted run leaves no half cache
    return res


def pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def table(data: str, runs: list[dict]) -> str:
    """One row per (regularisation, routing, rule): epochs per seed, val and test separation (mean ± std over seeds)."""
    seeds = sorted({r["seed"] for r in runs})
    per = [f"{part} s{s}" for s in seeds for part in ("val", "test")]
    lines = [f"**{data}: depth-1 separation** (% tail among routed; tail = <= 50 training images), seeds {seeds}", "",
             "| noise | wd | routing | select | epochs | val | test | " + " | ".join(per) + " |",
             "|---|" + "---|" * (6 + len(per))]
    for (noise, wd) in sorted({(r["input_noise"], r["weight_decay"]) for r in runs}):
        rs = sorted([r for r in runs if (r["input_noise"], r["weight_decay"]) == (noise, wd)], key=lambda r: r["seed"])
        for routing in ROUTINGS:
            for rule in SELECTS:
                cells = [r["rules"][f"{rule}/{routing}"] for r in rs]
                by_seed = {r["seed"]: c for r, c in zip(rs, cells, strict=True)}
                per_seed = [pct(by_seed[s][part]["separation"]) if s in by_seed else "-"
                            for s in seeds for part in ("val", "test")]
                row = [f"{noise:g}", f"{wd:g}", routing, rule, ",".join(str(c["epoch"]) for c in cells),
                       ms([c["val"]["separation"] for c in cells]), ms([c["test"]["separation"] for c in cells])]
                lines.append("| " + " | ".join(row + per_seed) + " |")
    chance = [ms([r["rules"]["last/likelihood"][s]["chance"] for r in runs]) for s in ("val", "test")]
    lines.append("| chance (the split's tail share) | | | | | " + " | ".join(chance) + " |" + " |" * len(per))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["tiny", "caltech"], choices=["tiny", "caltech"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--noise", nargs="+", type=float, default=[0.0, 0.2], help="input_noise values")
    ap.add_argument("--weight-decay", nargs="+", type=float, default=[0.0, 1e-3], help="weight_decay values")
    ap.add_argument("--filter-epochs", type=int, default=10)
    ap.add_argument("--data-root", default=str(SHARED))
    ap.add_argument("--cache", default="/tmp/dlsa-bench/selection", help="filters and per-setting results")
    ap.add_argument("--json", default=None, help="also write every result here")
    ap.add_argument("--print-only", action="store_true", help="print the cached results, train nothing")
    add_markdown_option(ap)
    args = ap.parse_args()
    page = Page(ap, args, "Choosing and regularising the flow filter")
    every = {}
    for data in args.data:
        runs = []
        for seed in args.seeds:
            for noise in args.noise:
                for wd in args.weight_decay:
                    run_dir = f"noise{noise:g}_wd{wd:g}_e{args.filter_epochs}"
                    res_path = Path(args.cache) / data / f"seed{seed}" / run_dir / "results.json"
                    if args.print_only and not res_path.exists():
                        continue
                    runs.append(run_setting(data, seed, noise, wd, args))
                    log(f"{data} seed {seed} noise {noise:g} wd {wd:g}: done")
        every[data] = runs
        if runs:
            page.print(table(data, runs))
    if args.json:
        Path(args.json).write_text(json.dumps(every, indent=1))
    page.write()


if __name__ == "__main__":
    main()
