"""CLI for `evaluate`: long-tail metrics of predictions tables, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from dlsa_cli.cli.common import JsonOpt, QuietOpt, Reporter, command, emit_json, stdout
from dlsa_cli.evaluation import evaluate_files
from dlsa_cli.evaluation.metrics import FEW_BELOW, MANY_ABOVE, TAIL_AT_MOST


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}"


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _diff(a: float | None, b: float | None, scale: float) -> str:
    if a is None or b is None:
        return "n/a"
    d = scale * (b - a)
    text = f"{d:+.2f}" if scale == 100 else f"{d:+.4f}"
    return f"[green]{text}[/]" if d > 0 else f"[red]{text}[/]" if d < 0 else text


@command("evaluate")
def evaluate_cmd(
    predictions: Annotated[list[str], typer.Argument(help="Predictions tables (.parquet with label and prediction); the first is the reference for the differences.", show_default=False)],
    train: Annotated[Optional[str], typer.Option("--train", help="Training labels: a feature file, or a JSON list of per-class training counts. Default: the first table's recorded train_counts.")] = None,
    labels: Annotated[Optional[str], typer.Option("--labels", help="A feature file with ids and labels, joined on each table's 'id' (for tables without a 'label' column; used in place of one).")] = None,
    many_above: Annotated[int, typer.Option("--many-above", help="Many-shot: more than this many training samples.")] = MANY_ABOVE,
    few_below: Annotated[int, typer.Option("--few-below", help="Few-shot: fewer than this many training samples (a class absent from training is few-shot).")] = FEW_BELOW,
    tail_at_most: Annotated[int, typer.Option("--tail-at-most", help="Tail class for head-tail separation accuracy: at most this many training samples.")] = TAIL_AT_MOST,
    per_class: Annotated[bool, typer.Option("--per-class", help="Also report the accuracy of every class.")] = False,
    plot: Annotated[Optional[str], typer.Option("--plot", help="Write the paper's Fig. 1 view (mistakes, classes by frequency, binned) to this .png/.pdf/.svg.")] = None,
    bins: Annotated[int, typer.Option("--bins", help="Bins of classes in --plot.")] = 20,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Long-tail metrics of predictions tables: overall, many/medium/few, MCC, NMI, per route.

    Several tables are shown side by side, with their differences from the
    first (e.g. baseline then DLSA). Group accuracy is the mean per-class
    accuracy of many-shot (> 100 training samples), medium and few-shot (< 20)
    classes; an empty group is n/a (null in JSON). With routes (a cascade's
    predictions) each route is reported too, with head-tail separation
    accuracy for each cluster-aided depth.

    Example: [bold]dlsa evaluate baseline.parquet dlsa.parquet --train train.safetensors --plot confusion.png[/]
    """
    rep = Reporter(quiet)
    results = evaluate_files(
        predictions,
        train,
        labels=labels,
        many_above=many_above,
        few_below=few_below,
        tail_at_most=tail_at_most,
        per_class=per_class,
        plot=plot,
        bins=bins,
    )
    if plot is not None:
        rep.note(f"plot -> {plot}")
    if json_out:
        emit_json(results)
        return
    _render(results, many_above, few_below, tail_at_most)


def _render(results: dict[str, dict[str, Any]], many_above: int, few_below: int, tail_at_most: int) -> None:
    """The metrics side by side, each table's routes, the per-class table when asked."""
    names = list(results)
    _render_metrics(names, [results[n] for n in names], many_above, few_below, tail_at_most)
    _render_routes(names, [results[n] for n in names])
    if "per_class" in results[names[0]]:
        _render_per_class(names, [results[n] for n in names])
    stdout.print(
        f"[dim]Group accuracy = mean per-class accuracy; many > {many_above}, few < {few_below} training samples; "
        "n/a = no class of the group among the evaluated samples.[/]"
    )


def _render_metrics(names: list[str], res: list[dict[str, Any]], many_above: int, few_below: int, tail_at_most: int) -> None:
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
    cls = first["classes"]
    rows = [
        ("samples", "samples", None, lambda v: str(v)),
        ("overall top-1", "overall", 100, _pct),
        (f"many  (>{many_above}: {cls['many']} cl.)", "many", 100, _pct),
        (f"medium ({cls['medium']} cl.)", "medium", 100, _pct),
        (f"few   (<{few_below}: {cls['few']} cl.)", "few", 100, _pct),
        ("MCC", "mcc", 1, _num),
        ("NMI", "nmi", 1, _num),
    ]
    if any(r["separation"] is not None for r in res):
        rows.append((f"separation (tail <={tail_at_most})", "separation", 100, _pct))
    for label, key, scale, fmt in rows:
        cells = [fmt(r[key]) for r in res]
        diffs = ["" if scale is None else _diff(first[key], r[key], scale) for r in res[1:]]
        t.add_row(label, *cells, *diffs)
    stdout.print(t)


def _render_routes(names: list[str], res: list[dict[str, Any]]) -> None:
    for n, r in zip(names, res):
        if not r["routes"]:
            continue
        rt = Table(title=f"Routes of {n} (in %; sep. = share of tail classes among the routed)", title_justify="left")
        for col in ("route", "depth", "n", "share", "all", "many", "med.", "few", "sep."):
            rt.add_column(col, justify="left" if col == "route" else "right", no_wrap=True)
        for name, e in r["routes"].items():
            rt.add_row(
                name,
                "" if e["depth"] is None else str(e["depth"]),
                str(e["samples"]),
                _pct(e["share"]),
                _pct(e["overall"]),
                _pct(e["many"]),
                _pct(e["medium"]),
                _pct(e["few"]),
                "" if e["separation"] is None else _pct(e["separation"]),
            )
        stdout.print(rt)


def _render_per_class(names: list[str], res: list[dict[str, Any]]) -> None:
    first = res[0]
    pt = Table(title="Per-class accuracy (%), classes by training count", title_justify="left")
    for col in ("class", "train", "group", "samples"):
        pt.add_column(col, justify="right")
    for n in names:
        pt.add_column(n, justify="right")
    order = sorted(range(len(first["per_class"])), key=lambda k: (-first["per_class"][k]["train_count"], k))
    for k in order:
        e = first["per_class"][k]
        pt.add_row(
            str(k), str(e["train_count"]), e["group"], str(e["samples"]),
            *[_pct(r["per_class"][k]["accuracy"]) for r in res],
        )
    stdout.print(pt)
