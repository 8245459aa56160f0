"""Every command's report as tables and sentences on stdout: each renderer reads one report dataclass.

`--json` prints the same report's `to_json()` instead (`common.emit_json`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.table import Table

from dlsa_cli.cli.common import stdout

if TYPE_CHECKING:
    from dlsa_cli.cascade.predict_stream import PredictReport
    from dlsa_cli.cascade.summary import CascadeReport, ClassifierFit
    from dlsa_cli.classify.summary import ClassifierFitReport
    from dlsa_cli.compare.report import CompareReport
    from dlsa_cli.evaluation.report import EvaluationReport
    from dlsa_cli.evaluation.tally import TableMetrics
    from dlsa_cli.flow.summary import FilterFitReport, SplitFileReport, SplitReport

__all__ = [
    "render_cascade",
    "render_classifier_fit",
    "render_compare",
    "render_evaluation",
    "render_filter_fit",
    "render_predict",
    "render_split",
]


def _num(v: float | None) -> str:
    return "n/a" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def _pct(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None else f"{100 * v:.{digits}f}%"


# ----------------------------------------------------------------------------- fit-filter and split


def render_filter_fit(r: FilterFitReport) -> None:
    """The kept epoch's clusters, the route's threshold and separation, and the time per epoch."""
    st, cfg = r.stats, r.config
    t = Table(title=f"flow filter -> {r.filter}", show_header=False, title_justify="left")
    t.add_column("", style="bold")
    t.add_column("")
    t.add_row("training samples", f"{st.train_samples} ({r.train}), depth {r.depth}")
    t.add_row("chosen epoch",
              f"{r.chosen_epoch} of {len(r.history)}"
              + ("" if st.chosen_epoch_eligible else " (no epoch met --max-cluster-share)"))
    t.add_row("cluster sizes",
              f"min {st.size_min}  q1 {_num(st.size_q1)}  median {_num(st.size_median)}  q3 {_num(st.size_q3)}  "
              f"max {st.size_max}  empty {st.empty}")
    t.add_row("purity", f"> 0.9: {st.purity_above_0_9}  > 0.7: {st.purity_above_0_7}  > 0.5: {st.purity_above_0_5}")
    t.add_row("good clusters",
              f"{st.good_clusters} of {cfg['clusters']} (purity > {cfg['purity_threshold']:g}, size > "
              f"{cfg['min_cluster_size']})")
    t.add_row("threshold", f"{_score_name(r.config.get('routing'))} >= {r.threshold:.6g} routes {st.routed} "
              f"training samples ({r.share:g})")
    t.add_row("tail share (<= 50)", f"routed {_num(st.separation)}, all training samples {_num(st.tail_share)}")
    kept = r.kept
    if kept is not None and kept.has_val:
        t.add_row("validation (kept epoch)",
                  f"routed tail share {_num(kept.val_separation)} vs {_num(kept.val_tail_share)} "
                  f"of all; routed {_num(kept.val_routed_share)}; mean log p(x) {_num(kept.val_mean_log_likelihood)}")
    t.add_row("time", f"{st.seconds_per_epoch or 0.0:.3g} s per epoch on {st.device}")
    stdout.print(t)


def _score_name(routing: str | None) -> str:
    """How a routing score reads in a table (flow/routing.py)."""
    return {None: "log p(x)", "likelihood": "log p(x)", "ratio": "log p(x) - log p_ref(x)",
            "cluster-tail": "P(tail | cluster)", "knn-tail": "the neighbours' tail share",
            "posterior": "the classifier's tail mass"}.get(routing, str(routing))


def render_split(report: SplitReport) -> None:
    """Per input: the routed, rest and whole file's counts, make-up and mean log p(x); the separation."""
    for name, r in report.files.items():
        _render_split_file(name, r)


def _render_split_file(name: str, r: SplitFileReport) -> None:
    def ll(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1f}"

    title = f"{name}: depth {r.depth}, routed when {_score_name(r.routing)} >= {r.threshold:.6g}"
    if r.has_labels:
        title += f"; tail = at most {r.tail_at_most} training samples"
    t = Table(title=title, title_justify="left")
    cols = ["part", "n", "share"]
    if r.has_labels:
        cols += ["many", "med", "few", "head", "tail", "tail %"]
    cols += ["mean log p"]
    for c in cols:
        t.add_column(c, justify="left" if c == "part" else "right")
    for part, mean_ll in r.mean_log_likelihood.items():
        n = {"routed": r.routed, "rest": r.rest, "all": r.samples}[part]
        row = [part, str(n), _pct(n / r.samples if r.samples else None)]
        if r.groups is not None and r.head_tail is not None and r.tail_share is not None:
            g, ht, ts = getattr(r.groups, part), getattr(r.head_tail, part), getattr(r.tail_share, part)
            row += [str(g.many), str(g.medium), str(g.few), str(ht.head), str(ht.tail), _pct(ts)]
        row.append(ll(mean_ll))
        t.add_row(*row)
    stdout.print(t)
    if r.tail_share is not None:
        stdout.print(
            f"head-tail separation accuracy (tail share of routed): [bold]{_pct(r.separation)}[/]"
            f" vs {_pct(r.tail_share.all)} in the whole file"
        )
    stdout.print("")


# ----------------------------------------------------------------------------- fit-classifier and predict


def render_classifier_fit(r: ClassifierFitReport) -> None:
    """One sentence: the classifier written, the epoch chosen and its validation scores."""
    ph = r.posthoc
    ph_text = "" if ph.kind == "none" else f", post-hoc {ph.kind} tau {ph.tau:g}"
    m2m_text = "" if r.m2m_acceptance is None else f", M2M acceptance {r.m2m_acceptance:.3f}"
    if r.router is not None:
        m2m_text += f", router skips {100 * r.router.saving:.1f}% of expert evaluations"
    what = "share of the whole validation set's balanced acc" if r.val_weighted else "balanced acc"
    kind = r.model if r.experts is None else f"{r.model} ({r.experts} experts)"
    stdout.print(
        f"{kind} classifier -> {r.output}: epoch {r.epoch}/{r.epochs} chosen on {r.val_samples} validation samples, "
        f"{what} {r.val_balanced_accuracy:.4f}, acc {r.val_accuracy:.4f}{ph_text}{m2m_text} ({r.seconds:.1f} s)"
    )


def render_predict(r: PredictReport) -> None:
    """One sentence: how many predictions, by which model, their accuracy and routes when known."""
    acc = "" if r.accuracy is None else f", accuracy {r.accuracy:.4f}"
    routes = "" if r.routes is None else ", routes " + " ".join(f"{k}={v}" for k, v in r.routes.items())
    stdout.print(f"{r.samples} predictions ({r.model}) -> {r.output}{acc}{routes}")


# ----------------------------------------------------------------------------- fit-cascade


def _kept(c: ClassifierFit) -> str:
    return f"{c.epoch}/{c.epochs}" + (" kept" if c.kept_start else "")


def _secs(seconds: float, reused: bool) -> str:
    return f"{seconds:.1f}" + (" reused" if reused else "")


def render_cascade(r: CascadeReport) -> None:
    """The per-depth table of a fit-cascade report, and a sentence on what DLSA changed."""
    t = Table(title=f"DLSA cascade -> {r.out_dir}", title_justify="left")
    for col in ("stage", "train routed", "val routed", "separation", "filter epoch", "epoch", "val bal.", "s"):
        t.add_column(col, justify="left" if col == "stage" else "right")
    b = r.baseline.classifier
    t.add_row("baseline", "", "", "", "", _kept(b), f"{b.val_balanced_accuracy:.4f}",
              _secs(b.seconds, r.baseline.reused))
    for d in r.depths:
        tr, va, fl, cl = d.train, d.val, d.filter, d.classifier
        fe = "given" if fl.given else f"{fl.chosen_epoch}/{fl.epochs}"
        val_cell = "no val" if va is None else f"{va.routed}/{va.samples}"
        sep = "n/a" if va is None else f"{_pct(va.separation)} vs {_pct(va.tail_share)}"
        train_cell = "" if tr is None else f"{tr.routed}/{tr.samples}"
        t.add_row(f"depth {d.depth}", train_cell, val_cell, sep, fe, _kept(cl), f"{cl.val_balanced_accuracy:.4f}",
                  _secs(d.seconds, d.reused))
    f = r.final.classifier
    t.add_row("final", f"{f.train_samples} left", "", "", "", _kept(f), f"{f.val_balanced_accuracy:.4f}",
              _secs(f.seconds, r.final.reused))
    stdout.print(t)
    stdout.print("separation: tail share (classes with <= 50 training samples) of the routed validation samples vs "
                 "of all of them; epoch: the chosen classifier epoch ('kept': epoch 0, its starting point); "
                 "val bal.: a branch's share of the whole validation set's balanced accuracy")
    if r.combine:
        c = r.combine
        if c.get("memory"):
            ws = ", ".join(f"{w:g}" for w in c["weights"])
            fs = ", ".join(f"{f:g}" for f in c.get("floors", []))
            stdout.print(f"memory: the vote of the {c['k']} nearest training samples, weight per branch (depths, "
                         f"then final) chosen on VAL: {ws}; floor: {fs}")
        if c.get("temperatures"):
            stdout.print("soft routing: temperature per depth chosen on VAL (0: the hard route): "
                         + ", ".join(f"{t:.3g}" for t in c["temperatures"]))
    if r.unchanged:
        stdout.print("[bold]DLSA changed nothing[/]: every branch kept its starting point (epoch 0, the baseline), "
                     "so the cascade predicts exactly as the baseline does.")
    stdout.print(f"cascade -> {r.out_dir}/cascade.json (run it: dlsa predict {r.out_dir} TEST -o PRED.parquet); "
                 f"report -> {r.out_dir}/report.json; {r.seconds:.1f} s")


# ----------------------------------------------------------------------------- evaluate


def _acc(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def _score(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _diff(a: float | None, b: float | None, scale: float) -> str:
    if a is None or b is None:
        return "n/a"
    d = scale * (b - a)
    text = f"{d:+.2f}" if scale == 100 else f"{d:+.4f}"
    return f"[green]{text}[/]" if d > 0 else f"[red]{text}[/]" if d < 0 else text


def render_evaluation(report: EvaluationReport) -> None:
    """The metrics side by side, each table's routes, the per-class table when asked."""
    names = list(report.tables)
    res = [report.tables[n] for n in names]
    _render_metrics(names, res, report)
    _render_routes(names, res)
    if res[0].per_class is not None:
        _render_per_class(names, res)
    stdout.print(
        f"[dim]Group accuracy = mean per-class accuracy; many > {report.many_above}, few < {report.few_below} "
        "training samples; "
        "n/a = no class of the group among the evaluated samples.[/]"
    )


def _render_metrics(names: list[str], res: list[TableMetrics], report: EvaluationReport) -> None:
    first = res[0]
    short = [Path(n).name for n in names]
    if len(set(short)) < len(short):
        short = names
    t = Table(title="Long-tail metrics (accuracies in %)", title_justify="left")
    t.add_column("metric", no_wrap=True)
    for n in short:
        t.add_column(n, justify="right", overflow="fold")
    for n in short[1:]:
        t.add_column(f"Δ {n}", justify="right", overflow="fold")
    cls = first.classes
    rows = [
        ("samples", "samples", None, lambda v: str(v)),
        ("overall top-1", "overall", 100, _acc),
        (f"many  (>{report.many_above}: {cls.many} cl.)", "many", 100, _acc),
        (f"medium ({cls.medium} cl.)", "medium", 100, _acc),
        (f"few   (<{report.few_below}: {cls.few} cl.)", "few", 100, _acc),
        ("MCC", "mcc", 1, _score),
        ("NMI", "nmi", 1, _score),
    ]
    if any(r.separation is not None for r in res):
        rows.append((f"separation (tail <={report.tail_at_most})", "separation", 100, _acc))
    for label, attr, scale, fmt in rows:
        cells = [fmt(getattr(r, attr)) for r in res]
        diffs = ["" if scale is None else _diff(getattr(first, attr), getattr(r, attr), scale) for r in res[1:]]
        t.add_row(label, *cells, *diffs)
    stdout.print(t)


def _render_routes(names: list[str], res: list[TableMetrics]) -> None:
    for n, r in zip(names, res, strict=True):
        if not r.routes:
            continue
        rt = Table(title=f"Routes of {n} (in %; sep. = share of tail classes among the routed)", title_justify="left")
        for col in ("route", "depth", "n", "share", "all", "many", "med.", "few", "sep."):
            rt.add_column(col, justify="left" if col == "route" else "right", no_wrap=True)
        for name, e in r.routes.items():
            rt.add_row(
                name, "" if e.depth is None else str(e.depth), str(e.samples), _acc(e.share), _acc(e.overall),
                _acc(e.many), _acc(e.medium), _acc(e.few), "" if e.separation is None else _acc(e.separation),
            )
        stdout.print(rt)


def _render_per_class(names: list[str], res: list[TableMetrics]) -> None:
    first = res[0].per_class or []
    pt = Table(title="Per-class accuracy (%), classes by training count", title_justify="left")
    for col in ("class", "train", "group", "samples"):
        pt.add_column(col, justify="right")
    for n in names:
        pt.add_column(n, justify="right")
    for k in sorted(range(len(first)), key=lambda k: (-first[k].train_count, k)):
        e = first[k]
        pt.add_row(str(k), str(e.train_count), e.group, str(e.samples),
                   *[_acc((r.per_class or [])[k].accuracy) for r in res])
    stdout.print(pt)


# ----------------------------------------------------------------------------- compare


def _mean_sd(cell: dict[str, float | None] | None, scale: float) -> str:
    if cell is None or cell["mean"] is None:
        return "n/a"
    sd = "" if cell["sd"] is None else f" ± {scale * cell['sd']:.2f}"
    return f"{scale * cell['mean']:.2f}{sd}"


def _interval(d: dict | None) -> str:
    if d is None:
        return "n/a"
    span = "" if d.get("low") is None else f" [{100 * d['low']:+.2f}, {100 * d['high']:+.2f}]"
    return f"{100 * d['mean']:+.2f}{span}"


def render_compare(r: CompareReport) -> None:
    """Mean ± sd over seeds of every run, DLSA minus each run with its interval, and the verdict."""
    note = f" [bold red]({r.note})[/]" if r.note else ""
    seeds = ",".join(map(str, r.seeds))
    t = Table(title=f"compare -> {r.out_dir}: TEST, %, mean ± sd over seeds {seeds}; chosen on {r.selected_on}{note}",
              title_justify="left")
    for col in ("run", "overall", "many", "medium", "few", "MCC", "NMI", "sep.", "Δ overall", "Δ few"):
        t.add_column(col, justify="left" if col == "run" else "right", no_wrap=col == "run")
    for name, s in r.summary.items():
        diff = r.differences.get(name, {})
        cells = [_mean_sd(s.get(m), 100) for m in ("overall", "many", "medium", "few")]
        cells += [_mean_sd(s.get(m), 1) for m in ("mcc", "nmi")] + [_mean_sd(s.get("separation"), 100)]
        best = " (best)" if name == r.best_baseline else ""
        t.add_row(name + best, *cells, *(("", "") if name == "dlsa" else (_interval(diff.get("overall")),
                                                                          _interval(diff.get("few")))))
    stdout.print(t)
    stdout.print("[dim]Δ: DLSA minus the run, paired, in points, with its 95% interval (t over seeds; a paired "
                 "bootstrap over test samples with one seed); best: the best baseline on "
                 f"{r.selected_on}; sep.: tail share of the routed samples; MCC and NMI unscaled.[/]")
    stdout.print(r.verdict)
    if r.ceiling is not None:
        for key, p in r.ceiling["placements"].items():
            stdout.print(f"ceiling {key}: routing at group accuracy {p['group_accuracy']:.3f} (curve: "
                         f"{_acc(p['soft_overall_at'])}), the baseline's tail mass at the same share "
                         f"{p['baseline_group_accuracy']:.3f} (curve: {_acc(p['baseline_soft_overall_at'])})")
        room = _room(r)
        if room:
            stdout.print(room)
    if r.protocols is not None:
        v, t = r.protocols["val"], r.protocols["test"]
        stdout.print(f"Protocols: DLSA minus its baseline is {100 * v['dlsa_minus_baseline']:+.2f} chosen on val, "
                     f"{100 * t['dlsa_minus_baseline']:+.2f} chosen on test ({t['note']}, "
                     f"{r.protocols['folder']}): choosing on the test set adds "
                     f"{100 * r.protocols['inflation']:+.2f} points.")
    stdout.print(f"compare.json -> {r.out_dir}/compare.json")


def _room(r: CompareReport) -> str | None:
    """How much room the head/tail split leaves on TEST (the ceiling at perfect routing), how much of it
    DLSA's own routing could reach (the curve at its group accuracy), and what DLSA gained over its baseline."""
    assert r.ceiling is not None
    test, place = r.ceiling.get("test"), r.ceiling["placements"].get("dlsa/test")
    gain = (r.differences.get("baseline") or {}).get("overall")
    if not test or place is None or gain is None:
        return None
    base = test["baseline_overall"]
    top = max((pt for pt in test["points"] if pt["group_accuracy"] == 1.0), key=lambda pt: pt["soft_overall"],
              default=None)
    if top is None:
        return None
    return (f"Room: sent to its true head/tail group every time, a group prior would lift the baseline from "
            f"{_acc(base)} to {_acc(top['soft_overall'])} ({100 * (top['soft_overall'] - base):+.2f} points) on "
            f"TEST; DLSA's routes reach group accuracy {100 * place['group_accuracy']:.1f}%, where that curve "
            f"gives {100 * (place['soft_overall_at'] - base):+.2f}; DLSA gained {100 * gain['mean']:+.2f} over "
            f"its baseline (seed {r.seeds[0]}'s curve).")
