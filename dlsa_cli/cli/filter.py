"""CLI for `fit-filter` and `split`: thin wrappers over `dlsa_cli.flow`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from dlsa_cli.cli.common import (
    DeviceOpt,
    JsonOpt,
    QuietOpt,
    Reporter,
    command,
    emit_json,
)
from dlsa_cli.cli.derive import Given, Section
from dlsa_cli.cli.render import render_filter_fit, render_split
from dlsa_cli.flow.config import FilterConfig, FilterRun, SplitConfig

FILTER_VAL = Annotated[str | None, typer.Option(
    "--val",
    help="Validation feature file with labels: each epoch's record gets its routed tail share and mean log p(x), "
    "and the val-* --select rules choose the epoch on it.", show_default=False)]
PRESET_HELP = ("The paper's settings for imagenet-lt, places-lt or inat18 (imagenet-lt's are the defaults); "
               "explicit settings override it.")
FIT_FILTER = (Section("", FilterConfig, extra={"preset": PRESET_HELP}), Section("", FilterRun))


@command("fit-filter", sections=FIT_FILTER)
def fit_filter_cmd(
    train: Annotated[str,
                     typer.Argument(help="Training feature file with labels (or a split's rest file for "
                                         "the next depth).", show_default=False)],
    out: Annotated[str, typer.Option("--out", "-o", help="Filter file to write (.safetensors).", show_default=False)],
    settings: Given,
    val: FILTER_VAL = None,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    resume: Annotated[bool,
                      typer.Option("--resume",
                                   help="Continue an interrupted run from its last finished epoch (the checkpoint "
                                        "OUT.resume beside the output, written after every epoch and removed on "
                                        "success); the result equals an uninterrupted run's.")] = False,
    checkpoint_every: Annotated[int,
                                typer.Option("--checkpoint-every",
                                             help="Write the resume checkpoint after every N epochs (it holds two "
                                                  "copies of the flow: at D = 2048 about 0.3 GB); 0 writes none.")] = 1,
) -> None:
    """Train the Gaussian-mixture flow filter on a training feature file.

    A masked autoregressive flow maps the features onto a mixture of K unit
    Gaussians, trained with the class-weighted likelihood, balance and purity
    losses on pairs from two different classes. The epoch kept is --select's:
    by default the paper's, the one with the most good clusters; with --val the
    val-* rules choose on validation samples instead (e.g. `--val val.safetensors
    --select val-separation`). The routing threshold routes --share of the training
    samples; the cluster prior P(y | cluster) is stored with it. Under
    `torchrun --nproc-per-node N` each process takes its share of every global
    batch (DistributedDataParallel, batch statistics over the global batch).

    Example: [bold]dlsa fit-filter train.safetensors -o filter.safetensors --clusters 100 --epochs 20[/]
    """
    from dlsa_cli.flow.config import preset_settings
    from dlsa_cli.flow.stage import fit_filter_file
    from dlsa_cli.runtime import distributed as dist
    from dlsa_cli.settings import resolve

    rep = Reporter(quiet)
    table, flags = settings.layers("")
    preset = flags.get("preset", table.get("preset"))
    config = resolve(FilterConfig, preset_settings(preset), table, flags)  # out of range: one line, before any work
    run = resolve(FilterRun, table, flags)
    _, dev = dist.setup(device)  # under torchrun: DDP over the ranks, one device each
    with rep.progress("fit-filter", total=config.epochs) as update:
        last: dict[str, Any] = {"good": None}

        def on_step(epoch: int, step: int, steps: int, losses: dict[str, float]) -> None:
            good = "" if last["good"] is None else f" good {last['good']}"
            update(
                advance=0,
                text=f"epoch {epoch} step {step}/{steps} loss {losses['loss']:.4g} mle {losses['mle']:.4g} "
                f"bal {losses['bal']:.3g} pure {losses['pure']:.3g}{good}",
            )

        def on_epoch(record: dict[str, Any]) -> None:
            last["good"] = record["good_clusters"]
            update(advance=1)

        filt = fit_filter_file(train, out, config, run, val=val, device=dev, resume=resume,
                               checkpoint_every=checkpoint_every, preset=preset, on_step=on_step, on_epoch=on_epoch,
                               on_warning=rep.warn)
    from dlsa_cli.flow.summary import FilterFitReport

    report = FilterFitReport.of(filt, out, train, val)
    if json_out:
        emit_json(report.to_json())
        return
    render_filter_fit(report)


@command("split", sections=(Section("", SplitConfig),))
def split_cmd(
    filter_path: Annotated[str,
                           typer.Argument(metavar="FILTER", help="Filter file written by `dlsa fit-filter`.",
                                          show_default=False)],
    features: Annotated[list[str], typer.Argument(help="Feature files to score and route.", show_default=False)],
    out: Annotated[str,
                   typer.Option("--out", "-o",
                                help="Output folder (created if missing; files of the same names are replaced).",
                                show_default=False)],
    settings: Given = None,  # type: ignore[assignment]
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Score feature files with a filter and route each sample.

    For each input NAME: DIR/NAME.parquet (id, label, cluster, log_likelihood,
    routed, depth), DIR/NAME.routed.safetensors (to the cluster-aided
    classifier) and DIR/NAME.rest.safetensors (to the next depth: a valid
    `fit-filter` input), and DIR/split.json with the table shown here.
    Files are read and written in batches (memory is bounded by --batch-size,
    not by the file); under `torchrun --nproc-per-node N` each process scores
    its contiguous share of the rows and rank 0 writes the same files.

    Example: [bold]dlsa split filter.safetensors train.safetensors test.safetensors -o split1/[/]
    """
    from dlsa_cli.flow.stage import split_files
    from dlsa_cli.runtime.distributed import setup
    from dlsa_cli.settings import resolve

    rep = Reporter(quiet)
    cfg = resolve(SplitConfig, *settings.layers(""))
    _, dev = setup(device)  # under torchrun: this rank's device, rows sharded over the ranks
    with rep.progress("split", total=len(features)) as update:
        report = split_files(filter_path, features, out, cfg, device=dev,
                             on_file=lambda name, _r: update(advance=1, text=name))
    for name, fr in report.files.items():
        if fr.nonfinite:
            rep.warn(f"{name}: {fr.nonfinite} sample(s) have a NaN or infinite log p(x); sent to the rest, flagged in "
                     "its table's 'finite' column")
        for part in ("routed", "rest"):
            if fr.outputs is not None and getattr(fr.outputs, part) is None:
                rep.warn(f"{name}: no sample was {'routed' if part == 'routed' else 'left for the rest'}; no "
                         f"{part} file written")
    if json_out:
        emit_json(report.to_json())
        return
    render_split(report)
