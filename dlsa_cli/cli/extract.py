"""CLI for `extract`: images to a feature file with a pretrained backbone."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dlsa_cli.cli.common import (
    DeviceOpt,
    JsonOpt,
    QuietOpt,
    Reporter,
    command,
    emit_json,
    stdout,
)
from dlsa_cli.errors import DlsaError

if TYPE_CHECKING:
    from dlsa_cli.extract import ExtractReport, ExtractStart

MAX_LISTED = 20  # skipped images named on stderr; all of them go into the file's metadata


def _triple(text: str | None, what: str) -> tuple[float, float, float] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise DlsaError(f"--{what} {text}: not numbers", hint=f"give three, e.g. --{what} 0.485,0.456,0.406") from None
    if len(values) != 3:
        raise DlsaError(f"--{what} {text}: needs 3 numbers (R,G,B), got {len(values)}")
    return values  # type: ignore[return-value]


@command("extract")
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
        typer.Option("--root", help="Folder that the paths in a CSV or list file start from (default: the list's folder)."),
    ] = None,
    backbone: Annotated[
        str,
        typer.Option(
            "--backbone",
            help="efficientnet-lite0 (built in), a TorchScript file, or torchvision:ARCH / timm:ARCH when installed.",
        ),
    ] = "efficientnet-lite0",
    weights: Annotated[
        Path | None,
        typer.Option("--weights", help="Local weights file (state dict) for torchvision/timm, or to replace efficientnet-lite0's."),
    ] = None,
    resize: Annotated[int | None, typer.Option("--resize", help="Shorter side after resizing.", show_default="256")] = None,
    crop: Annotated[int | None, typer.Option("--crop", help="Centre crop size.", show_default="224")] = None,
    mean: Annotated[str | None, typer.Option("--mean", help="Per-channel mean, R,G,B.", show_default="ImageNet's")] = None,
    std: Annotated[str | None, typer.Option("--std", help="Per-channel std, R,G,B.", show_default="ImageNet's")] = None,
    interpolation: Annotated[
        str | None, typer.Option("--interpolation", help="Resize filter: bilinear or bicubic.", show_default="bilinear")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Images per forward pass.")] = 64,
    workers: Annotated[
        int | None,
        typer.Option("--workers", help="Decoding processes (0: decode in the main process).", show_default="cores - 1, at most 8"),
    ] = None,
    device: DeviceOpt = "auto",
    half: Annotated[bool, typer.Option("--half", help="Run the model in float16 (CUDA only).")] = False,
    dtype: Annotated[str, typer.Option("--dtype", help="Stored feature type: float32 or float16.")] = "float32",
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Leave out images that cannot be read, and list them, instead of stopping.")
    ] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted run: reuse the finished chunks in OUT.resume/ (same images and options) and extract only the rest.")
    ] = False,
    chunk_size: Annotated[
        int, typer.Option("--chunk-size", help="Images per chunk file in OUT.resume/ (what an interrupted run keeps; the folder is removed on success).")
    ] = 4096,
) -> None:
    """Images to a feature file with a pretrained backbone (the pooled penultimate layer). Offline.

    The output is a normal feature file: ids are the image paths as written in
    the list (for a folder, relative to it), labels and class names where
    known, and the backbone, weights and preprocessing in its metadata.

    Under `torchrun --nproc-per-node N` each process extracts its contiguous
    share of the list and rank 0 writes the same file (ids and order).

    Example: [bold]dlsa extract train.csv --root images/ -o train.safetensors --backbone efficientnet-lite0[/]
    """
    from dlsa_cli.extract import ExtractConfig, extract_file

    rep = Reporter(quiet)
    cfg = ExtractConfig(
        backbone=backbone, weights=weights, resize=resize, crop=crop, mean=_triple(mean, "mean"),
        std=_triple(std, "std"), interpolation=interpolation, batch_size=batch_size, workers=workers, device=device,
        half=half, dtype=dtype, skip_bad=skip_bad, resume=resume, chunk_size=chunk_size,
    )
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
        self.rep.log(f"{s.images} images from {self.images} -> {s.backbone} on {s.device}, batch {s.batch_size}, {s.workers} workers")
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
        rep.warn(f"... and {len(report.skipped) - MAX_LISTED} more skipped (all are listed in {report.out}'s metadata 'skipped')")
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
