"""CLI for `fit-filter` and `split`: thin wrappers over `dlsa_cli.flow`."""

from __future__ import annotations

import re
from typing import Annotated, Any, Optional

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
from dlsa_cli.cli.options import FILTER, FILTER_VAL
from dlsa_cli.cli.render import render_filter_fit, render_split
from dlsa_cli.errors import DlsaError


def _opt(*names: str, help: str) -> Any:
    """An option whose value None means "from --preset or the paper's default", shown as `[default: X]` text."""
    m = re.search(r" \[default: ([^\]]+)\]\.?$", help)
    if m:
        return typer.Option(*names, help=help[: m.start()] + ".", show_default=m.group(1))
    return typer.Option(*names, help=help, show_default=False)


@command("fit-filter")
def fit_filter_cmd(
    train: Annotated[str, typer.Argument(help="Training feature file with labels (or a split's rest file for the next depth).", show_default=False)],
    out: Annotated[str, typer.Option("--out", "-o", help="Filter file to write (.safetensors).", show_default=False)],
    preset: FILTER.preset = None,
    clusters: FILTER.clusters = None,
    epochs: FILTER.epochs = None,
    batch_size: FILTER.batch_size = None,
    lr: FILTER.lr = None,
    lambda_lh: FILTER.lambda_lh = None,
    lambda_bal: FILTER.lambda_bal = None,
    lambda_pure: FILTER.lambda_pure = None,
    q: FILTER.q = None,
    center_std: FILTER.center_std = None,
    ema: FILTER.ema = None,
    share: FILTER.share = None,
    hidden: FILTER.hidden = None,
    blocks: FILTER.blocks = None,
    purity_threshold: FILTER.purity_threshold = None,
    min_cluster_size: FILTER.min_cluster_size = None,
    max_cluster_share: FILTER.max_cluster_share = None,
    select: FILTER.select = None,
    routing: FILTER.routing = None,
    neighbours: FILTER.neighbours = None,
    input_noise: FILTER.input_noise = None,
    weight_decay: FILTER.weight_decay = None,
    val: FILTER_VAL = None,
    depth: Annotated[Optional[int], _opt("--depth", help="Depth to record [default: the input's depth + 1 for a split's rest file, else 1].")] = None,
    allow_singletons: Annotated[Optional[bool], typer.Option("--allow-singletons/--no-singletons", help="Train with classes of a single sample.", show_default="only at depth > 1")] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    tf32: Annotated[bool, typer.Option("--tf32/--no-tf32", help="On CUDA, let matrix products use TF32: faster on Ampere and newer (the reference speed figures use it) but log p(x) then differs slightly from `split`'s full-precision scores near the threshold. No effect on CPU.")] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its last finished epoch (the checkpoint OUT.resume beside the output, written after every epoch and removed on success); the result equals an uninterrupted run's.")] = False,
    checkpoint_every: Annotated[int, typer.Option("--checkpoint-every", help="Write the resume checkpoint after every N epochs (it holds two copies of the flow: at D = 2048 about 0.3 GB); 0 writes none.")] = 1,
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
    from dlsa_cli import distributed as dist
    from dlsa_cli.flow import FilterConfig, fit_filter
    from dlsa_cli.flow.config import check_select
    from dlsa_cli.io.features import read_features
    from dlsa_cli.io.files import provenance

    from dlsa_cli.flow.checkpoint import checkpoint_path
    from dlsa_cli.io.files import check_output_file

    rep = Reporter(quiet)
    inputs = [train, *([val] if val else [])]
    out_p = check_output_file(out, suffixes=(".safetensors",), inputs=inputs)
    config = FilterConfig.from_preset(  # unknown preset or a value out of range: one line, before any work
        preset, clusters=clusters, epochs=epochs, batch_size=batch_size, lr=lr, lambda_lh=lambda_lh, lambda_bal=lambda_bal,
        lambda_pure=lambda_pure, q=q, center_std=center_std, ema=ema, share=share, hidden=hidden, blocks=blocks,
        purity_threshold=purity_threshold, min_cluster_size=min_cluster_size, max_cluster_share=max_cluster_share,
        select=select, routing=routing, neighbours=neighbours, input_noise=input_noise, weight_decay=weight_decay, seed=seed,
    )
    check_select(config, val is not None)  # a val-* rule without --val: one line, before any work
    ckpt = checkpoint_path(out_p)
    if checkpoint_every < 0:
        raise DlsaError(f"--checkpoint-every {checkpoint_every}: must be >= 0 (0 writes no checkpoint)")
    had_ckpt = ckpt.exists()
    if had_ckpt and not resume:
        rep.warn(f"{ckpt} holds an interrupted run; starting over (pass --resume to continue it)")
    _, dev = dist.setup(device)  # under torchrun: DDP over the ranks, one device each
    if dev.type == "cuda":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = tf32
    fs = read_features(train, require_labels=True, mmap=True)  # training reads a mapped matrix: no copy of a big file
    val_fs = None if val is None else read_features(val, require_labels=True, mmap=True)

    with rep.progress("fit-filter", total=config.epochs) as update:
        last = {"good": None}

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

        try:
            filt = fit_filter(
                fs,
                config=config,
                depth=depth,
                device=dev,
                allow_singletons=allow_singletons,
                on_step=on_step,
                on_epoch=on_epoch,
                on_warning=rep.warn,
                checkpoint=ckpt if checkpoint_every > 0 else None,
                resume=resume,
                checkpoint_every=checkpoint_every,
                val=val_fs,
            )
        except DlsaError:  # a refusal or a diverged run leaves nothing behind (an interrupted one keeps its checkpoint)
            if not had_ckpt:
                ckpt.unlink(missing_ok=True)
            raise
    options = {"preset": preset, **config.to_dict(), "depth": filt.depth, "device": str(dev), "tf32": tf32 and dev.type == "cuda"}
    prov = provenance("fit-filter", options, inputs, seed)
    prov["resumed_from"] = filt.resumed_from  # the epoch this run continued after, or None
    if dist.is_main():  # every rank holds the same filter; rank 0 writes it
        filt.save(out_p, prov=prov)
        ckpt.unlink(missing_ok=True)
    dist.barrier()
    from dlsa_cli.flow.summary import FilterFitReport

    report = FilterFitReport.of(filt, out_p, train, val)
    if json_out:
        emit_json(report.to_json())
        return
    render_filter_fit(report)


@command("split")
def split_cmd(
    filter_path: Annotated[str, typer.Argument(metavar="FILTER", help="Filter file written by `dlsa fit-filter`.", show_default=False)],
    features: Annotated[list[str], typer.Argument(help="Feature files to score and route.", show_default=False)],
    out: Annotated[str, typer.Option("--out", "-o", help="Output folder (created if missing; files of the same names are replaced).", show_default=False)],
    latent: Annotated[bool, typer.Option("--latent", help="Also store each sample's latent z in the routed/rest files.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Samples scored at once (memory is bounded by it).")] = 4096,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    allow_nonfinite: Annotated[bool, typer.Option("--allow-nonfinite", help="Go on when a sample's log p(x) is NaN or infinite (features far too large for the filter): it goes to the rest, flagged in the table's 'finite' column and counted; without it the split stops naming the rows.")] = False,
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
    from dlsa_cli.distributed import setup
    from dlsa_cli.flow import FlowFilter, split
    from dlsa_cli.io.features import feature_info
    from dlsa_cli.io.files import provenance

    rep = Reporter(quiet)
    _, dev = setup(device)  # under torchrun: this rank's device, rows sharded over the ranks
    filt = FlowFilter.load(filter_path, device=dev)
    for p in features:  # headers only: fail before any scoring
        info = feature_info(p)
        filt.check_dim(info.dim, p)
    prov = provenance("split", {"latent": latent, "batch_size": batch_size, "device": str(dev)}, [filter_path, *features])
    with rep.progress("split", total=len(features)) as update:
        report = split(
            filt, features, out, batch_size=batch_size, device=dev, latent=latent, prov=prov,
            on_file=lambda name, _r: update(advance=1, text=name), allow_nonfinite=allow_nonfinite,
        )
    for name, fr in report.files.items():
        if fr.nonfinite:
            rep.warn(f"{name}: {fr.nonfinite} sample(s) have a NaN or infinite log p(x); sent to the rest, flagged in its table's 'finite' column")
        for part in ("routed", "rest"):
            if fr.outputs is not None and getattr(fr.outputs, part) is None:
                rep.warn(f"{name}: no sample was {'routed' if part == 'routed' else 'left for the rest'}; no {part} file written")
    if json_out:
        emit_json(report.to_json())
        return
    render_split(report)
