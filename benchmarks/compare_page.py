"""A `dlsa compare` run folder as a results page: the tables come from its compare.json, nothing typed by hand.

    python benchmarks/compare_page.py RUN --markdown docs/results/PAGE.md --title TITLE --command "COMMAND"

The page is headed by the command that produced the run, the commit it ran at (`--commit`, default: this
checkout's), the machine and the date compare.json was written; then mean ± sd over seeds of every run,
DLSA minus each run with its 95% interval, the verdict, the separation ceiling's placements and, for
`--select-on both`, the two protocols side by side.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path
from typing import Any

from pages import commit, header, script_command, write_page

METRICS = ("overall", "many", "medium", "few")


def _pct(cell: dict[str, Any] | None) -> str:
    if not cell or cell.get("mean") is None:
        return "n/a"
    sd = "" if cell.get("sd") is None else f" ± {100 * cell['sd']:.2f}"
    return f"{100 * cell['mean']:.2f}{sd}"


def _delta(d: dict[str, Any] | None) -> str:
    if not d or d.get("mean") is None:
        return "n/a"
    span = "" if d.get("low") is None else f" [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"
    return f"{100 * d['mean']:+.2f}{span}"


def runs_table(report: dict[str, Any]) -> list[str]:
    """Mean ± sd of every run on TEST (%), separation, and DLSA minus the run (points, 95% interval)."""
    lines = ["| run | " + " | ".join(METRICS) + " | separation | DLSA − run, overall | DLSA − run, few |",
             "|---|" + "---|" * (len(METRICS) + 3)]
    for name, s in report["summary"].items():
        d = report["differences"].get(name, {})
        best = " (best on val)" if name == report["best_baseline"] else ""
        cells = [_pct(s.get(m)) for m in METRICS] + [_pct(s.get("separation"))]
        diffs = ["", ""] if name == "dlsa" else [_delta(d.get("overall")), _delta(d.get("few"))]
        lines.append(f"| {name}{best} | " + " | ".join(cells + diffs) + " |")
    return lines


def ceiling_lines(ceiling: dict[str, Any] | None) -> list[str]:
    if not ceiling:
        return []
    test = ceiling["test"]
    top = next(p for p in test["points"] if p["group_accuracy"] == 1.0)
    lines = ["", f"**The separation ceiling** (seed {test['seed']}, TEST): the baseline's "
             f"{100 * test['baseline_overall']:.2f} becomes {100 * top['soft_overall']:.2f} when every sample goes to "
             "its true head/tail group with the group's prior added (the paper's Fig. 2, soft variant). Where each "
             "routing lands on that curve, beside the baseline's own tail mass at the same share:", "",
             "| routing / split | routed share | group accuracy | curve there | baseline's tail mass: group acc. | "
             "curve there |", "|---|---|---|---|---|---|"]
    for key, p in ceiling["placements"].items():
        lines.append(f"| {key} | {100 * p['routed_share']:.1f}% | {100 * p['group_accuracy']:.1f}% | "
                     f"{100 * p['soft_overall_at']:.2f} | {100 * p['baseline_group_accuracy']:.1f}% | "
                     f"{100 * p['baseline_soft_overall_at']:.2f} |")
    return lines


def protocol_lines(report: dict[str, Any]) -> list[str]:
    p = report.get("protocols")
    if not p:
        return []
    v, t = p["val"], p["test"]
    return ["", "**Both protocols**, DLSA minus its baseline (overall, mean over seeds): "
            f"{100 * v['dlsa_minus_baseline']:+.2f} with every choice on validation, "
            f"{100 * t['dlsa_minus_baseline']:+.2f} with every choice on the test set ({t['note']}); choosing on "
            f"the test set adds {100 * p['inflation']:+.2f} points. DLSA minus the best baseline: "
            f"{100 * v['dlsa_minus_best']:+.2f} ({v['best_baseline']}) and {100 * t['dlsa_minus_best']:+.2f} "
            f"({t['best_baseline']})."]


def optimistic_lines(report: dict[str, Any], other: dict[str, Any], folder: Path) -> list[str]:
    """A separate `--select-on test` compare beside this one, on the seeds both ran: each run's TEST
    overall chosen on validation and chosen on the test set, and what choosing on the test set adds."""
    seeds = [s for s in other["seeds"] if s in report["seeds"]]
    if not seeds:
        return []

    def mean(r: dict[str, Any], name: str) -> float:
        rows = [r["runs"][name][r["seeds"].index(s)]["overall"] for s in seeds]
        return 100 * sum(rows) / len(rows)

    lines = ["", f"**Both protocols** on seed(s) {', '.join(map(str, seeds))} (the test-chosen compare in "
             f"`{folder.name}`: {other.get('note') or 'selected on the test set'}), TEST overall in %:", "",
             "| run | chosen on val | chosen on test | test − val |", "|---|---|---|---|"]
    for name in report["runs"]:
        if name in other["runs"]:
            v, t = mean(report, name), mean(other, name)
            lines.append(f"| {name} | {v:.2f} | {t:.2f} | {t - v:+.2f} |")
    gain_v = mean(report, "dlsa") - mean(report, "baseline")
    gain_t = mean(other, "dlsa") - mean(other, "baseline")
    lines += ["", f"DLSA minus its baseline: {gain_v:+.2f} chosen on validation, {gain_t:+.2f} chosen on the test "
              f"set; choosing on the test set adds {gain_t - gain_v:+.2f} points."]
    return lines


def _method(report: dict[str, Any]) -> str:
    """How the overall intervals were made: a t-interval over seeds, or a paired bootstrap over test samples."""
    return next((d["overall"]["method"] for d in report["differences"].values() if "method" in d["overall"]),
                "t over seeds")


def page(run: Path, title: str, command: str, commit_id: str, optimistic: Path | None = None) -> str:
    path = run / "compare.json"
    report = json.loads(path.read_text())
    when = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.timezone.utc).strftime("%Y-%m-%d")
    seeds = ", ".join(map(str, report["seeds"]))
    note = (f"Seeds {seeds}; every choice on {report['selected_on']}; TEST accuracy in %, mean ± sd over the seeds; "
            f"DLSA − run in points with its 95% interval ({_method(report)}).")
    head = [f"# {title}", "", header(script_command(), source=command, commit_id=commit_id, when=when, note=note), ""]
    extra = [] if optimistic is None else optimistic_lines(
        report, json.loads((optimistic / "compare.json").read_text()), optimistic)
    return "\n".join([*head, *runs_table(report), "", report["verdict"], *ceiling_lines(report.get("ceiling")),
                      *protocol_lines(report), *extra, ""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a `dlsa compare` output folder")
    ap.add_argument("--markdown", type=Path, required=True, help="the page to write")
    ap.add_argument("--title", required=True)
    ap.add_argument("--command", required=True, help="the command that produced RUN, as the page shows it")
    ap.add_argument("--commit", default=None, help="the commit RUN was produced at (default: this checkout's)")
    ap.add_argument("--optimistic", type=Path, default=None,
                    help="a `--select-on test` compare folder run apart (e.g. on fewer seeds): both protocols side by "
                         "side on the seeds both ran")
    a = ap.parse_args()
    write_page(a.markdown, page(a.run, a.title, a.command, a.commit or commit(), a.optimistic))


if __name__ == "__main__":
    main()
