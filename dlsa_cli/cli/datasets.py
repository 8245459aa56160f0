"""CLI for `make-dataset`: write a real long-tailed benchmark as feature files."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any

import typer

from dlsa_cli.cli.common import JsonOpt, SeedOpt, command, emit_json, stdout
from dlsa_cli.errors import DlsaError
from dlsa_cli.evaluation.metrics import class_counts, shot_groups
from dlsa_cli.io.features import write_features
from dlsa_cli.io.files import claim_output_dir, folder_marker, move_into, provenance, staging_dir

DATASETS = ("caltech101-lt", "digits-lt")


@command("make-dataset")
def make_dataset_cmd(
    name: Annotated[str, typer.Argument(help=f"Which benchmark: {', '.join(DATASETS)}.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write train/val/test.safetensors into.")],
    source: Annotated[
        Path | None,
        typer.Option("--source", help="caltech101-lt: the caltech101_lite0.npz file (default: ../shared/data/...)."),
    ] = None,
    val_fraction: Annotated[float,
                            typer.Option("--val-fraction",
                                         help="Share of each class's training part kept for validation.")] = 0.2,
    seed: SeedOpt = 0,
    json_out: JsonOpt = False,
) -> None:
    """Build a real long-tailed benchmark (train / val / test feature files).

    [bold]caltech101-lt[/]: Caltech-101 EfficientNet-Lite0 features, imbalance 100.
    [bold]digits-lt[/]: scikit-learn's digit scans (pixels), imbalance 20; needs scikit-learn.

    Example: [bold]dlsa make-dataset caltech101-lt -o data/caltech-lt[/]
    """
    from dlsa_cli import datasets
    from dlsa_cli.io.files import check_output_dir

    if not 0 < val_fraction < 1:
        raise DlsaError(f"--val-fraction {val_fraction}: must be between 0 and 1 (exclusive)")
    check_output_dir(out, inputs=[source or Path("../shared/data/caltech101_lite0.npz")], whole=True)
    claim_output_dir(out, "make-dataset")  # new, empty, or made by make-dataset: never a user's folder
    if name == "caltech101-lt":
        src = source or Path("../shared/data/caltech101_lite0.npz")
        if source is None and not src.exists():
            raise DlsaError(
                f"caltech101-lt needs the Caltech-101 feature file, not found at {src}",
                hint="pass --source PATH/caltech101_lite0.npz",
            )
        splits = datasets.caltech101_lt(src, seed=seed, val_fraction=val_fraction)
        inputs = [src]
    elif name == "digits-lt":
        splits = datasets.digits_lt(seed=seed, val_fraction=val_fraction)
        inputs = []
    else:
        raise DlsaError(f"unknown data set '{name}'", hint=f"use one of {', '.join(DATASETS)}")
    prov = provenance("make-dataset", {"name": name, "val_fraction": val_fraction}, inputs, seed)
    summary: dict[str, Any] = {}
    tmp = staging_dir(out)
    try:
        for part in ("train", "val", "test"):
            fs = getattr(splits, part)
            write_features(tmp / f"{part}.safetensors", fs, prov=prov,
                           meta={"dataset": name, "split": part, "class_names": splits.class_names})
            summary[part] = {"samples": fs.n, "dim": fs.dim}
        (tmp / folder_marker("make-dataset")).write_text("this folder was written by dlsa make-dataset\n")
        move_into(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    counts = class_counts(splits.train.require_labels(), len(splits.class_names))
    groups = shot_groups(counts)
    summary["classes"] = len(counts)
    summary["train_counts"] = {"max": int(counts.max()), "min": int(counts.min())}
    summary["groups"] = {g: int((groups == g).sum()) for g in ("many", "medium", "few")}
    if json_out:
        emit_json(summary)
    else:
        stdout.print(
            f"{name} -> {out}: train {summary['train']['samples']}, val {summary['val']['samples']}, "
            f"test {summary['test']['samples']} samples, D={summary['train']['dim']}, {len(counts)} classes "
            f"({summary['groups']['many']} many / {summary['groups']['medium']} medium / "
            f"{summary['groups']['few']} few), "
            f"train counts {counts.max()}..{counts.min()}"
        )
