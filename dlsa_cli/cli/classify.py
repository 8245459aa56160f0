"""CLI for `fit-classifier` and `predict`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dlsa_cli.cascade.config import PredictConfig
from dlsa_cli.classify.config import TrainConfig
from dlsa_cli.cli.common import (
    DeviceOpt,
    JsonOpt,
    QuietOpt,
    Reporter,
    command,
    emit_json,
)
from dlsa_cli.cli.derive import Given, Section
from dlsa_cli.cli.render import render_classifier_fit, render_predict


@command("fit-classifier", sections=(Section("", TrainConfig),))
def fit_classifier_cmd(
    train: Annotated[Path,
                     typer.Argument(help="Training feature file with labels (for a branch: its routed or rest part).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Classifier file to write (.safetensors).")],
    settings: Given,
    val: Annotated[
        Path | None,
        typer.Option("--val",
                     help="Validation feature file that chooses the epoch (default: a stratified 20% "
                          "carved from TRAIN)."),
    ] = None,
    init: Annotated[
        Path | None,
        typer.Option(
            "--init",
            help="Start from a classifier trained on ALL training data (a classifier file, or a backbone head "
            "with weight (C, D) and bias (C,) as .safetensors / .pt). Required for branch classifiers unless "
            "--from-scratch.",
        ),
    ] = None,
    from_scratch: Annotated[
        bool,
        typer.Option("--from-scratch",
                     help="Train a branch classifier from scratch on its subset (the authors' way; loses few-shot).")
    ] = False,
    filter_path: Annotated[
        Path | None, typer.Option("--filter", help="The depth's filter: makes the classifier cluster-aided.")
    ] = None,
    val_weights_from: Annotated[
        Path | None,
        typer.Option(
            "--val-weights-from",
            help="Branch classifiers: the whole validation file that --val was split from; each validation sample "
            "then weighs 1 / its class's count there, so the epoch maximises the whole file's balanced accuracy.",
        ),
    ] = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a regular (linear / cosine / RIDE) or cluster-aided classifier.

    The epoch is chosen by balanced accuracy on --val (or on a stratified split
    carved from TRAIN: 20% of each class with two or more samples; a class with
    a single sample stays in training). The test set is never an input.

    With --filter the classifier is cluster-aided: logits = FC_a(x) + FC_b(\\[x or z, P(y | cluster)]).
    A branch classifier (cluster-aided, or regular on a "rest" file) starts from
    --init, the classifier trained on all training data, with a small learning rate.

    Example: [bold]dlsa fit-classifier train.safetensors --val val.safetensors -o baseline.safetensors[/]
    """
    from dlsa_cli.classify.stage import fit_classifier_file
    from dlsa_cli.runtime import distributed as dist
    from dlsa_cli.settings import resolve

    cfg = resolve(TrainConfig, *settings.layers(""))
    rep = Reporter(quiet)
    _, dev = dist.setup(device)  # under torchrun: DDP over the ranks, one device each
    with rep.progress("fit-classifier", total=cfg.epochs) as update:
        fit = fit_classifier_file(
            train, out, cfg, val=val, init=init, filter_path=filter_path, val_weights_from=val_weights_from,
            from_scratch=from_scratch, device=dev,
            progress=lambda e, n, s: update(1,
                                            text=f"loss {s['loss']:.3f}  val bal. acc {s['val_balanced']:.3f}  best "
                                                 f"epoch {s['best_epoch']}"),
        )
    for w in fit.report.warnings:
        rep.warn(w)
    _render_fit(fit.classifier, fit.report, out, epochs=cfg.epochs, seconds=fit.seconds,
                weighted=val_weights_from is not None, json_out=json_out)


def _render_fit(clf, report, out: Path, *, epochs: int, seconds: float, weighted: bool, json_out: bool) -> None:
    from dlsa_cli.classify.summary import ClassifierFitReport

    result = ClassifierFitReport.of(clf, report, out, epochs=epochs, seconds=seconds, weighted=weighted)
    if json_out:
        emit_json(result.to_json())
        return
    render_classifier_fit(result)


@command("predict", sections=(Section("", PredictConfig),))
def predict_cmd(
    model: Annotated[Path, typer.Argument(help="A classifier file, or a cascade (its folder or cascade.json).")],
    features: Annotated[Path,
                        typer.Argument(help="Feature file to predict (labels, when present, are copied through).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Predictions table to write (.parquet).")],
    settings: Given = None,  # type: ignore[assignment]
    filter_path: Annotated[
        Path | None,
        typer.Option("--filter", help="For a cluster-aided classifier alone: the filter it was trained with.")
    ] = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Predict with one classifier or a whole DLSA cascade.

    Writes a Parquet table: id, label (when known), prediction, score, topk_labels,
    topk_scores, and for a cascade the route each sample took (route, depth, branch).
    The file is read and the table written in batches (memory is bounded by
    --batch-size); under `torchrun --nproc-per-node N` each process predicts
    its contiguous share of the rows and rank 0 writes the table.

    Example: [bold]dlsa predict cascade/ test.safetensors -o pred.parquet[/]
    """
    from dlsa_cli.cascade.stage import predict_path
    from dlsa_cli.runtime.distributed import setup
    from dlsa_cli.settings import resolve

    Reporter(quiet)
    cfg = resolve(PredictConfig, *settings.layers(""))
    _, dev = setup(device)  # under torchrun: this rank's device, rows sharded over the ranks
    report = predict_path(model, features, out, cfg, filter_path=filter_path, device=dev)
    if report is None:  # a torchrun rank other than 0: rank 0 writes and reports
        return
    if json_out:
        emit_json(report.to_json())
    else:
        render_predict(report)
