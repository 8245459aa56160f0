"""What `compare` reports: every run's per-seed metrics, their mean and sd, DLSA minus every other run, a verdict.

`build_report` turns the recorded runs into a `CompareReport` (compare.json is its
`to_json()`); `plot_ceiling` draws the separation ceiling with the routings on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlsa_cli.compare.config import BASELINES, OPTIMISTIC, RUNS, CompareConfig
from dlsa_cli.compare.stats import paired_bootstrap, paired_difference

__all__ = ["METRICS", "CompareReport", "build_report", "plot_ceiling", "verdict"]

METRICS = ("overall", "many", "medium", "few", "mcc", "nmi", "separation")
DIFFERENCES = ("overall", "few")  # DLSA minus each other run, per seed


@dataclass
class CompareReport:
    """compare.json: `runs` {run: [per-seed metrics in `seeds` order]}, summaries, differences and the verdict."""

    out_dir: str
    seeds: list[int]
    selected_on: str
    note: str | None  # "selected on the test set: optimistic" under --select-on test
    tail_at_most: int
    runs: dict[str, list[dict[str, Any]]]
    summary: dict[str, dict[str, dict[str, float | None]]]  # run -> metric -> mean, sd
    differences: dict[str, dict[str, dict[str, Any]]]  # run -> metric -> DLSA minus it
    best_baseline: str
    verdict: str
    ceiling: dict[str, Any] | None
    settings: dict[str, Any]
    protocols: dict[str, Any] | None = None  # --select-on both: DLSA's gain chosen on val beside chosen on test

    def to_json(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def build_report(recorded: Mapping[str, Mapping[str, dict[str, Any]]], seeds: tuple[int, ...], config: CompareConfig,
                 out: Path, correct: Mapping[str, np.ndarray] | None, ceiling: dict[str, Any] | None, *,
                 settings: dict[str, Any]) -> CompareReport:
    """The report of the runs `recorded` ({seed: {run: metrics}}) for `seeds`, in that order.

    `correct` ({run: per-sample TEST correctness}) is given with one seed: the overall
    difference then gets a paired bootstrap interval over test samples.
    """
    runs = {name: [dict(recorded[str(s)][name]) for s in seeds] for name in RUNS}
    summary = {name: {m: _mean_sd([r.get(m) for r in rows]) for m in (*METRICS, "select_balanced")
                      if any(m in r for r in rows)} for name, rows in runs.items()}
    differences = {name: _differences(runs, name, correct, config, seeds) for name in RUNS if name != "dlsa"}
    best = max(BASELINES, key=lambda n: summary[n]["select_balanced"]["mean"] or 0.0)
    return CompareReport(
        out_dir=str(out), seeds=list(seeds), selected_on=config.select_on,
        note=OPTIMISTIC if config.optimistic else None, tail_at_most=config.tail_at_most, runs=runs,
        summary=summary, differences=differences, best_baseline=best,
        verdict=verdict(best, differences[best]["overall"], config), ceiling=ceiling, settings=settings)


def _mean_sd(values: list[Any]) -> dict[str, float | None]:
    v = [x for x in values if x is not None]
    if not v:
        return {"mean": None, "sd": None}
    return {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else None}


def _differences(runs: dict[str, list[dict[str, Any]]], other: str, correct: Mapping[str, np.ndarray] | None,
                 config: CompareConfig, seeds: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for m in DIFFERENCES:
        a, b = [r[m] for r in runs["dlsa"]], [r[m] for r in runs[other]]
        if any(v is None for v in (*a, *b)):
            continue
        if correct is not None and m == "overall":
            boot = paired_bootstrap(correct["dlsa"], correct[other], resamples=config.resamples, seed=seeds[0])
            out[m] = boot.to_json() | {"method": "paired bootstrap over test samples"}
        else:
            out[m] = paired_difference(a, b).to_json() | {"method": "paired t over seeds"}
    return out


def verdict(best: str, diff: Mapping[str, Any], config: CompareConfig) -> str:
    """One plain sentence: is DLSA's overall gain over the best baseline distinguishable from zero?"""
    chosen = f"chosen on {config.select_on}"
    gain = f"{100 * diff['mean']:+.2f} points overall"
    if diff.get("low") is None:
        text = (f"DLSA minus the best baseline ({best}, {chosen}) is {gain}; one seed without an interval cannot "
                "tell it from zero.")
    else:
        span = f"95% interval {100 * diff['low']:+.2f} to {100 * diff['high']:+.2f}"
        if not diff["excludes_zero"]:
            said = "not distinguishable from zero"
        else:
            said = "a gain distinguishable from zero" if diff["mean"] > 0 else "a loss distinguishable from zero"
        text = f"DLSA minus the best baseline ({best}, {chosen}) is {gain} ({span}): {said}."
    return f"{text} ({OPTIMISTIC})" if config.optimistic else text


def plot_ceiling(path: str | Path, ceiling: Mapping[str, Any], *, optimistic: bool = False) -> None:
    """Overall accuracy against group accuracy (soft and hard; VAL and TEST), the routings placed on each."""
    from dlsa_cli.evaluation.plot import check_plot_target
    from dlsa_cli.io.files import atomic_path

    check_plot_target(path)  # a one-line error without matplotlib
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), squeeze=False)
    for ax, split in zip(axes[0], ("val", "test"), strict=True):
        curve = ceiling[split]
        xs = [p["group_accuracy"] for p in curve["points"]]
        for key, style in (("soft_overall", "-o"), ("hard_overall", "--s")):
            ax.plot(xs, [100 * p[key] for p in curve["points"]], style, label=key.split("_")[0])
        ax.axhline(100 * curve["baseline_overall"], color="grey", lw=0.8, label="baseline")
        place = ceiling["placements"].get(f"dlsa/{split}")
        if place is not None:
            ax.plot(place["group_accuracy"], 100 * place["soft_overall_at"], "r*", ms=12, label="DLSA routing")
            ax.plot(place["baseline_group_accuracy"], 100 * place["baseline_soft_overall_at"], "kD",
                    label="baseline's tail mass")
        ax.set(title=f"{split.upper()} ({'for the report' if split == 'test' else 'for decisions'})",
               xlabel="separation (group) accuracy", ylabel="overall accuracy (%)")
        ax.legend(fontsize=8)
    if optimistic:
        fig.suptitle(OPTIMISTIC, color="red")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".").lower() or "png", dpi=120)
    plt.close(fig)
