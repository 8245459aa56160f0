"""CLI for `evaluate`: long-tail metrics of predictions tables, side by side."""

from __future__ import annotations

from typing import Annotated

import typer

from dlsa_cli.cli.common import JsonOpt, QuietOpt, Reporter, command, emit_json
from dlsa_cli.cli.derive import Given, Section
from dlsa_cli.cli.render import render_evaluation
from dlsa_cli.evaluation import evaluate_files
from dlsa_cli.evaluation.config import EvaluateConfig


@command("evaluate", sections=(Section("", EvaluateConfig),))
def evaluate_cmd(
    predictions: Annotated[list[str],
                           typer.Argument(help="Predictions tables (.parquet with label and prediction); the first is "
                                               "the reference for the differences.", show_default=False)],
    train: Annotated[str | None,
                     typer.Option("--train",
                                  help="Training labels: a feature file, or a JSON list of per-class training counts. "
                                       "Default: the first table's recorded train_counts.")] = None,
    labels: Annotated[str | None,
                      typer.Option("--labels",
                                   help="A feature file with ids and labels, joined on each table's 'id' (for tables "
                                        "without a 'label' column; used in place of one).")] = None,
    settings: Given = None,  # type: ignore[assignment]
    plot: Annotated[str | None,
                    typer.Option("--plot",
                                 help="Write the paper's Fig. 1 view (mistakes, classes by frequency, binned) to this "
                                      ".png/.pdf/.svg.")] = None,
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
    from dlsa_cli.settings import resolve

    rep = Reporter(quiet)
    cfg = resolve(EvaluateConfig, *settings.layers(""))
    report = evaluate_files(predictions, train, labels=labels, many_above=cfg.many_above, few_below=cfg.few_below,
                            tail_at_most=cfg.tail_at_most, per_class=cfg.per_class, plot=plot, bins=cfg.bins)
    if plot is not None:
        rep.note(f"plot -> {plot}")
    if json_out:
        emit_json(report.to_json())
        return
    render_evaluation(report)
