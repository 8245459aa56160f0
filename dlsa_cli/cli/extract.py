"""CLI for `extract`: images to a feature file with a pretrained backbone."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dlsa_cli.cli.common import (
    JsonOpt,
    QuietOpt,
    Reporter,
    command,
    emit_json,
    stdout,
)
from dlsa_cli.cli.derive import Given, Section
from dlsa_cli.extract.config import ExtractConfig

if TYPE_CHECKING:
    from dlsa_cli.extract import ExtractReport, ExtractStart

MAX_LISTED = 20  # skipped images named on stderr; all of them go into the file's metadata


@command("extract", sections=(Section("", ExtractConfig),))
def extract_cmd(
    images: Annotated[
        Path,
        typer.Argument(
            help="An image folder (one sub-folder per class), a CSV with header 'path,label' (label optional), "
            "or a list file of 'relative/path.jpg label' lines."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Feature file to write (.safetensors).")],
    root: Annotated[
        Path | None,
        typer.Option("--root",
                     help="Folder that the paths in a CSV or list file start from (default: the list's folder)."),
    ] = None,
    settings: Given = None,  # type: ignore[assignment]
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Images to a feature file with a pretrained backbone (the pooled penultimate layer). Offline.

    The output is a normal feature file: ids are the image paths as written in
    the list (for a folder, relative to it), labels and class names where
    known, and the backbone, weights and preprocessing in its metadata.

    Under `torchrun --nproc-per-node N` each process extracts its contiguous
    share of the list and rank 0 writes the same file (ids and order).

    Example: [bold]dlsa extract train.csv --root images/ -o train.safetensors --backbone efficientnet-lite0[/]
    """
    from dlsa_cli.extract import extract_file
    from dlsa_cli.settings import resolve

    rep = Reporter(quiet)
    cfg = resolve(ExtractConfig, *settings.layers(""))
    with ExitStack() as stack:
        bar = _Bar(rep, stack, images)
        report = extract_file(images, out, cfg, root=root, on_start=bar.begin, progress=bar.step, on_warning=rep.warn)
    if report is not None:  # None on a torchrun rank other than 0
        _render(report, rep, json_out)


class _Bar:
    """The run's progress bar on stderr, opened once the image count is known, with the rate."""

    def __init__(self, rep: Reporter, stack: ExitStack, images: Path):
        self.rep, self.stack, self.images = rep, stack, images
        self.update: Callable[..., None] = lambda *a, **k: None
        self.done, self.start = 0, time.perf_counter()

    def begin(self, s: ExtractStart) -> None:
        self.rep.log(f"{s.images} images from {self.images} -> {s.backbone} on {s.device}, batch {s.batch_size}, "
                     f"{s.workers} workers")
        self.update = self.stack.enter_context(self.rep.progress("extract", total=s.images))
        self.start = time.perf_counter()

    def step(self, k: int) -> None:
        self.done += k
        self.update(k, text=f"{self.done / max(time.perf_counter() - self.start, 1e-9):.1f} images/s")


def _render(report: ExtractReport, rep: Reporter, json_out: bool) -> None:
    """The skipped images on stderr, then the summary line (or `--json`) on stdout."""
    for s in report.skipped[:MAX_LISTED]:
        rep.warn(f"skipped {s['id']}: {s['reason']}")
    if len(report.skipped) > MAX_LISTED:
        rep.warn(f"... and {len(report.skipped) - MAX_LISTED} more skipped (all are listed in {report.out}'s "
                 "metadata 'skipped')")
    if json_out:
        emit_json(report.to_dict())
        return
    r = report
    extra = f", {r.classes} classes" if r.classes else (", labelled" if r.labelled else ", unlabelled")
    stdout.print(
        f"{r.images} images -> {r.out}: D={r.dim} {r.dtype}{extra}, {r.backbone} on {r.device}, "
        f"{r.images_per_s:.1f} images/s" + (f", {len(r.skipped)} skipped" if r.skipped else ""),
        soft_wrap=True,
    )
