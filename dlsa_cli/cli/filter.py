"""CLI for `fit-filter` and `split`: thin wrappers over `dlsa_cli.flow`."""

from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from dlsa_cli.cli.common import (
    DeviceOpt,
    JsonOpt,
    QuietOpt,
    Reporter,
    command,
    emit_json,
    stdout,
)
from dlsa_cli.cli.derive import Given, Section
from dlsa_cli.flow.config import FilterConfig, FilterRun

FILTER_VAL = Annotated[Optional[str], typer.Option(
    "--val", help="Validation feature file with labels: each epoch's record gets its routed tail share and mean log p(x), "
    "and the val-* --select rules choose the epoch on it.", show_default=False)]
PRESET_HELP = ("The paper's settings for imagenet-lt, places-lt or inat18 (imagenet-lt's are the defaults); "
               "explicit settings override it.")
FIT_FILTER = (Section("", FilterConfig, extra={"preset": PRESET_HELP}), Section("", FilterRun))


@command("fit-filter", sections=FIT_FILTER)
def fit_filter_cmd(
    train: Annotated[str, typer.Argument(help="Training feature file with labels (or a split's rest file for the next depth).", show_default=False)],
    out: Annotated[str, typer.Option("--out", "-o", help="Filter file to write (.safetensors).", show_default=False)],
    settings: Given,
    val: FILTER_VAL = None,
    device: DeviceOpt = "auto",
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
    result = {
        "filter": str(out),
        "train": str(train),
        "val": None if val is None else str(val),
        "depth": filt.depth,
        "threshold": filt.threshold,
        "share": filt.share,
        "chosen_epoch": filt.chosen_epoch,
        "stats": filt.stats,
        "config": config.to_dict(),
        "history": filt.history,
        "resumed_from": filt.resumed_from,
        "epochs_run": [h["epoch"] for h in filt.history[filt.resumed_from or 0 :]],
    }
    if json_out:
        emit_json(result)
        return
    _render_fit(result)


def _render_fit(r: dict[str, Any]) -> None:
    st = r["stats"]
    t = Table(title=f"flow filter -> {r['filter']}", show_header=False, title_justify="left")
    t.add_column("", style="bold")
    t.add_column("")

    def f(v: Any) -> str:
        return "n/a" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))

    t.add_row("training samples", f"{st['train_samples']} ({r['train']}), depth {r['depth']}")
    t.add_row("chosen epoch", f"{r['chosen_epoch']} of {len(r['history'])}" + ("" if st["chosen_epoch_eligible"] else " (no epoch met --max-cluster-share)"))
    t.add_row("cluster sizes", f"min {st['size_min']}  q1 {f(st['size_q1'])}  median {f(st['size_median'])}  q3 {f(st['size_q3'])}  max {st['size_max']}  empty {st['empty']}")
    t.add_row("purity", f"> 0.9: {st['purity_above_0.9']}  > 0.7: {st['purity_above_0.7']}  > 0.5: {st['purity_above_0.5']}")
    t.add_row("good clusters", f"{st['good_clusters']} of {r['config']['clusters']} (purity > {r['config']['purity_threshold']:g}, size > {r['config']['min_cluster_size']})")
    t.add_row("threshold", f"log p(x) >= {r['threshold']:.6g} routes {st['routed']} training samples ({r['share']:g})")
    t.add_row("tail share (<= 50)", f"routed {f(st['routed_tail_share'])}, all training samples {f(st['tail_share'])}")
    kept = r["history"][r["chosen_epoch"] - 1] if r["history"] else {}
    if "val_separation" in kept:
        t.add_row("validation (kept epoch)", f"routed tail share {f(kept['val_separation'])} vs {f(kept['val_tail_share'])} "
                  f"of all; routed {f(kept['val_routed_share'])}; mean log p(x) {f(kept['val_mean_log_likelihood'])}")
    t.add_row("time", f"{st['seconds_per_epoch']:.3g} s per epoch on {st['device']}")
    stdout.print(t)


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
    from dlsa_cli.flow import FlowFilter, split
    from dlsa_cli.io.features import feature_info
    from dlsa_cli.io.files import provenance
    from dlsa_cli.runtime.distributed import setup

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
    for name, fr in report["files"].items():
        if fr["nonfinite"]:
            rep.warn(f"{name}: {fr['nonfinite']} sample(s) have a NaN or infinite log p(x); sent to the rest, flagged in its table's 'finite' column")
        for part in ("routed", "rest"):
            if fr["outputs"].get(part) is None:
                rep.warn(f"{name}: no sample was {'routed' if part == 'routed' else 'left for the rest'}; no {part} file written")
    if json_out:
        emit_json(report)
        return
    _render_split(report)


def _render_split(report: dict[str, Any]) -> None:
    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{100 * v:.1f}%"

    def num(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.1f}"

    for name, r in report["files"].items():
        title = f"{name}: depth {r['depth']}, routed when log p(x) >= {r['threshold']:.6g}"
        if r["has_labels"]:
            title += f"; tail = at most {r['tail_at_most']} training samples"
        t = Table(title=title, title_justify="left")
        cols = ["part", "n", "share"]
        if r["has_labels"]:
            cols += ["many", "med", "few", "head", "tail", "tail %"]
        cols += ["mean log p"]
        for c in cols:
            t.add_column(c, justify="left" if c == "part" else "right")
        for part in ("routed", "rest", "all"):
            n = r["samples"] if part == "all" else r[part]
            row = [part, str(n), pct(n / r["samples"] if r["samples"] else None)]
            if r["has_labels"]:
                g, ht = r["groups"][part], r["head_tail"][part]
                row += [str(g["many"]), str(g["medium"]), str(g["few"]), str(ht["head"]), str(ht["tail"]), pct(r["tail_share"][part])]
            row.append(num(r["mean_log_likelihood"][part]))
            t.add_row(*row)
        stdout.print(t)
        if r["has_labels"]:
            stdout.print(
                f"head-tail separation accuracy (tail share of routed): [bold]{pct(r['separation_accuracy'])}[/]"
                f" vs {pct(r['tail_share']['all'])} in the whole file"
            )
        stdout.print("")
