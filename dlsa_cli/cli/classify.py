"""CLI for `fit-classifier` and `predict`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from dlsa_cli.cli.common import (
    DeviceOpt,
    JsonOpt,
    QuietOpt,
    Reporter,
    SeedOpt,
    command,
    emit_json,
)
from dlsa_cli.cli.options import CLASSIFIER, CLASSIFIER_DEFAULTS
from dlsa_cli.cli.render import render_classifier_fit, render_predict
from dlsa_cli.errors import InputError


@command("fit-classifier")
def fit_classifier_cmd(
    train: Annotated[Path, typer.Argument(help="Training feature file with labels (for a branch: its routed or rest part).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Classifier file to write (.safetensors).")],
    val: Annotated[
        Path | None,
        typer.Option("--val", help="Validation feature file that chooses the epoch (default: a stratified 20% carved from TRAIN)."),
    ] = None,
    model: CLASSIFIER.model = CLASSIFIER_DEFAULTS.model,
    loss: CLASSIFIER.loss = CLASSIFIER_DEFAULTS.loss,
    sampler: CLASSIFIER.sampler = CLASSIFIER_DEFAULTS.sampler,
    epochs: CLASSIFIER.epochs = CLASSIFIER_DEFAULTS.epochs,
    batch_size: CLASSIFIER.batch_size = CLASSIFIER_DEFAULTS.batch_size,
    lr: CLASSIFIER.lr = CLASSIFIER_DEFAULTS.lr,
    lr_side: CLASSIFIER.lr_side = CLASSIFIER_DEFAULTS.lr_side,
    momentum: CLASSIFIER.momentum = CLASSIFIER_DEFAULTS.momentum,
    weight_decay: CLASSIFIER.weight_decay = CLASSIFIER_DEFAULTS.weight_decay,
    la_tau: CLASSIFIER.la_tau = CLASSIFIER_DEFAULTS.la_tau,
    init: Annotated[
        Path | None,
        typer.Option(
            "--init",
            help="Start from a classifier trained on ALL training data (a classifier file, or a backbone head "
            "with weight (C, D) and bias (C,) as .safetensors / .pt). Required for branch classifiers unless --from-scratch.",
        ),
    ] = None,
    from_scratch: Annotated[
        bool, typer.Option("--from-scratch", help="Train a branch classifier from scratch on its subset (the authors' way; loses few-shot).")
    ] = False,
    filter_path: Annotated[
        Path | None, typer.Option("--filter", help="The depth's filter: makes the classifier cluster-aided.")
    ] = None,
    side_input: CLASSIFIER.side_input = CLASSIFIER_DEFAULTS.side_input,
    prior_train: CLASSIFIER.prior_train = CLASSIFIER_DEFAULTS.prior_train,
    loss_counts: CLASSIFIER.loss_counts = CLASSIFIER_DEFAULTS.loss_counts,
    posthoc: CLASSIFIER.posthoc = CLASSIFIER_DEFAULTS.posthoc,
    val_fraction: CLASSIFIER.val_fraction = CLASSIFIER_DEFAULTS.val_fraction,
    val_weights_from: Annotated[
        Path | None,
        typer.Option(
            "--val-weights-from",
            help="Branch classifiers: the whole validation file that --val was split from; each validation sample "
            "then weighs 1 / its class's count there, so the epoch maximises the whole file's balanced accuracy.",
        ),
    ] = None,
    allow_missing_val_classes: Annotated[
        bool,
        typer.Option("--allow-missing-val-classes", help="Accept a validation file that lacks some training classes (routed subsets do)."),
    ] = False,
    select: CLASSIFIER.select = CLASSIFIER_DEFAULTS.select,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    experts: CLASSIFIER.experts = CLASSIFIER_DEFAULTS.experts,
    expert_hidden: CLASSIFIER.expert_hidden = CLASSIFIER_DEFAULTS.expert_hidden,
    ride_diversity: CLASSIFIER.ride_diversity = CLASSIFIER_DEFAULTS.ride_diversity,
    ride_temperature: CLASSIFIER.ride_temperature = CLASSIFIER_DEFAULTS.ride_temperature,
    ride_init_noise: CLASSIFIER.ride_init_noise = CLASSIFIER_DEFAULTS.ride_init_noise,
    m2m_from: CLASSIFIER.m2m_from = CLASSIFIER_DEFAULTS.m2m_from,
    m2m_warmup: CLASSIFIER.m2m_warmup = CLASSIFIER_DEFAULTS.m2m_warmup,
    m2m_beta: CLASSIFIER.m2m_beta = CLASSIFIER_DEFAULTS.m2m_beta,
    m2m_lambda: CLASSIFIER.m2m_lambda = CLASSIFIER_DEFAULTS.m2m_lambda,
    m2m_gamma: CLASSIFIER.m2m_gamma = CLASSIFIER_DEFAULTS.m2m_gamma,
    m2m_steps: CLASSIFIER.m2m_steps = CLASSIFIER_DEFAULTS.m2m_steps,
    m2m_step: CLASSIFIER.m2m_step = CLASSIFIER_DEFAULTS.m2m_step,
    m2m_start: CLASSIFIER.m2m_start = CLASSIFIER_DEFAULTS.m2m_start,
    m2m_every: CLASSIFIER.m2m_every = CLASSIFIER_DEFAULTS.m2m_every,
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
    from dlsa_cli.classify import TrainConfig
    from dlsa_cli.io.files import check_output_file

    check_output_file(out, suffixes=(".safetensors",), inputs=[train, val, init, filter_path, val_weights_from, m2m_from])
    rep = Reporter(quiet)
    cfg = TrainConfig(
        model=model, loss=loss, sampler=sampler, epochs=epochs, batch_size=batch_size, lr=lr, lr_side=lr_side,
        momentum=momentum, weight_decay=weight_decay, la_tau=la_tau, loss_counts=loss_counts, side_input=side_input,
        prior_train=prior_train, posthoc=posthoc, val_fraction=val_fraction,
        allow_missing_val_classes=allow_missing_val_classes, select=select, seed=seed, experts=experts,
        expert_hidden=expert_hidden, ride_diversity=ride_diversity, ride_temperature=ride_temperature,
        ride_init_noise=ride_init_noise, m2m_from=None if m2m_from is None else str(m2m_from), m2m_warmup=m2m_warmup,
        m2m_beta=m2m_beta, m2m_lambda=m2m_lambda, m2m_gamma=m2m_gamma, m2m_steps=m2m_steps, m2m_step=m2m_step,
        m2m_start=m2m_start, m2m_every=m2m_every,
    )
    cfg.check()
    paths = {"train": train, "val": val, "init": init, "filter": filter_path, "val_weights_from": val_weights_from,
             "m2m_from": m2m_from}
    clf, report, seconds, dev = _run_fit(cfg, paths, from_scratch=from_scratch, device=device, rep=rep)
    _save_classifier(clf, cfg, paths, out, seconds=seconds, dev=dev)
    _render_fit(clf, report, out, epochs=epochs, seconds=seconds, weighted=val_weights_from is not None, json_out=json_out)


def _run_fit(cfg, paths: dict[str, Path | None], *, from_scratch: bool, device: str, rep: Reporter):
    """Read the inputs and fit; returns (classifier, report, seconds, device)."""
    from dlsa_cli import distributed as dist
    from dlsa_cli.classify import fit_classifier
    from dlsa_cli.device import seed_everything
    from dlsa_cli.io.features import read_features

    _, dev = dist.setup(device)  # under torchrun: DDP over the ranks, one device each
    train_fs = read_features(paths["train"], require_labels=True, mmap=True)
    val_fs = read_features(paths["val"], require_labels=True, mmap=True) if paths["val"] is not None else None
    flt = None
    if paths["filter"] is not None:
        from dlsa_cli.flow import FlowFilter

        flt = FlowFilter.load(paths["filter"], device=dev)
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    with rep.progress("fit-classifier", total=cfg.epochs) as update:
        clf, report = fit_classifier(
            train_fs, val_fs, cfg, init=paths["init"], flt=flt, filter_path=paths["filter"], device=dev,
            val_weights_from=paths["val_weights_from"], from_scratch=from_scratch,
            progress=lambda e, n, s: update(1, text=f"loss {s['loss']:.3f}  val bal. acc {s['val_balanced']:.3f}  best epoch {s['best_epoch']}"),
        )
    for w in report.warnings:
        rep.warn(w)
    return clf, report, time.perf_counter() - t0, dev


def _save_classifier(clf, cfg, paths: dict[str, Path | None], out: Path, *, seconds: float, dev) -> None:
    from dlsa_cli import distributed as dist
    from dlsa_cli.io.files import provenance

    inputs = [p for p in paths.values() if p is not None]
    options = dict(cfg.__dict__) | {"init": paths["init"], "filter": paths["filter"], "device": str(dev)}
    clf.meta["seconds"] = seconds
    if dist.is_main():  # every rank holds the same classifier; rank 0 writes it
        clf.save(out, prov=provenance("fit-classifier", options, inputs, cfg.seed))
    dist.barrier()


def _render_fit(clf, report, out: Path, *, epochs: int, seconds: float, weighted: bool, json_out: bool) -> None:
    from dlsa_cli.classify.summary import ClassifierFitReport

    result = ClassifierFitReport.of(clf, report, out, epochs=epochs, seconds=seconds, weighted=weighted)
    if json_out:
        emit_json(result.to_json())
        return
    render_classifier_fit(result)


@command("predict")
def predict_cmd(
    model: Annotated[Path, typer.Argument(help="A classifier file, or a cascade (its folder or cascade.json).")],
    features: Annotated[Path, typer.Argument(help="Feature file to predict (labels, when present, are copied through).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Predictions table to write (.parquet).")],
    topk: Annotated[int, typer.Option("--topk", help="How many top classes to keep per sample.")] = 5,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Samples per forward pass.")] = 4096,
    filter_path: Annotated[
        Path | None, typer.Option("--filter", help="For a cluster-aided classifier alone: the filter it was trained with.")
    ] = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    allow_outside_paths: Annotated[
        bool, typer.Option("--allow-outside-paths", help="Trust a cascade.json whose paths leave its folder (absolute or ../); refused otherwise.")
    ] = False,
) -> None:
    """Predict with one classifier or a whole DLSA cascade.

    Writes a Parquet table: id, label (when known), prediction, score, topk_labels,
    topk_scores, and for a cascade the route each sample took (route, depth, branch).
    The file is read and the table written in batches (memory is bounded by
    --batch-size); under `torchrun --nproc-per-node N` each process predicts
    its contiguous share of the rows and rank 0 writes the table.

    Example: [bold]dlsa predict cascade/ test.safetensors -o pred.parquet[/]
    """
    from dlsa_cli.cascade import Cascade, load_model
    from dlsa_cli.cascade.predict_stream import predict_file
    from dlsa_cli.distributed import setup
    from dlsa_cli.io.files import provenance

    from dlsa_cli.io.files import check_output_file

    check_output_file(out, suffixes=(".parquet",), inputs=[model, features, filter_path])
    Reporter(quiet)
    if topk < 1:
        raise InputError(f"--topk {topk}: must be at least 1")
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be at least 1")
    _, dev = setup(device)  # under torchrun: this rank's device, rows sharded over the ranks
    mdl = load_model(model, allow_outside=allow_outside_paths)
    flt = None
    if filter_path is not None:
        from dlsa_cli.flow import FlowFilter

        flt = FlowFilter.load(filter_path, device=dev)
    t0 = time.perf_counter()
    inputs: list[Path] = [features]
    if isinstance(mdl, Cascade):
        inputs += [mdl.spec.manifest, *mdl.spec.filters, *mdl.spec.classifiers, mdl.spec.final]
    else:
        inputs.append(model)
    prov = provenance("predict", {"model": model, "topk": topk, "device": str(dev)}, inputs)
    report = predict_file(mdl, features, out, topk=topk, batch_size=batch_size, device=dev, flt=flt, prov=prov)
    if report is None:  # a torchrun rank other than 0: rank 0 writes and reports
        return
    report.output, report.seconds = str(out), round(time.perf_counter() - t0, 3)
    if json_out:
        emit_json(report.to_json())
    else:
        render_predict(report)
