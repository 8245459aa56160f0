"""CLI for `extract`: images to a feature file with a pretrained backbone."""

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
    command,
    emit_json,
    stdout,
)
from dlsa_cli.errors import DlsaError

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
    import shutil

    from dlsa_cli.runtime import distributed as dist
    from dlsa_cli import extract as ex
    from dlsa_cli.extract_shard import extract_sharded, write_extracted
    from dlsa_cli.io.files import provenance

    from dlsa_cli.io.files import check_output_file

    rep = Reporter(quiet)
    backbone_file = Path(backbone) if Path(backbone).is_file() else None
    check_output_file(out, suffixes=(".safetensors",), inputs=[images, root, weights, backbone_file])
    mean_t, std_t = _triple(mean, "mean"), _triple(std, "std")
    _, dev = dist.setup(device)  # under torchrun: this rank's device and its share of the images

    model = ex.load_backbone(backbone, weights=weights)  # first: cheap, while listing a big folder is not
    image_list = ex.read_image_list(images, root=root)
    d = model.preprocess
    pre = ex.Preprocess(
        resize=d.resize if resize is None else resize,
        crop=d.crop if crop is None else crop,
        mean=d.mean if mean_t is None else mean_t,
        std=d.std if std_t is None else std_t,
        interpolation=d.interpolation if interpolation is None else interpolation,
    )
    n_workers = ex.default_workers() if workers is None else workers
    rep.log(f"{len(image_list)} images from {images} -> {model.name} on {dev}, batch {batch_size}, {n_workers} workers")

    start = time.perf_counter()
    with rep.progress("extract", total=len(image_list)) as update:
        done = 0

        def step(k: int) -> None:
            nonlocal done
            done += k
            rate = done / max(time.perf_counter() - start, 1e-9)
            update(k, text=f"{rate:.1f} images/s")

        chunks = out.with_name(out.name + ".resume")
        alone = dist.current().world_size == 1  # under torchrun no resume chunks: the ranks would share one folder
        if resume and not alone:
            raise DlsaError("--resume is not available under torchrun", hint="resume the run in one process")
        had_chunks = chunks.exists()
        if had_chunks and not resume:
            rep.warn(f"{chunks} holds an interrupted run; starting over (pass --resume to continue it)")
        try:
            fs = extract_sharded(
                image_list, model, preprocess=pre, batch_size=batch_size, workers=n_workers, device=dev,
                half=half, dtype=dtype, skip_bad=skip_bad, progress=step, chunks=chunks if alone else None,
                chunk_size=chunk_size, resume=resume,
            )
        except DlsaError:  # bad input: nothing stays behind (an interrupted run keeps its chunks)
            if not had_chunks and alone:
                shutil.rmtree(chunks, ignore_errors=True)
            raise
    seconds = time.perf_counter() - start
    options = {
        "images": images, "root": root, "backbone": backbone, "weights": weights, "preprocessing": pre.to_meta(),
        "batch_size": batch_size, "workers": n_workers, "device": str(dev), "half": half, "dtype": dtype,
        "skip_bad": skip_bad,
    }
    inputs = [p for p in (images, weights) if p is not None and p.is_file()]
    if Path(backbone).is_file():
        inputs.append(Path(backbone))
    resumed_from = fs.meta.pop("resumed_from", None)
    prov = {**provenance("extract", options, inputs), **dist.provenance_fields(len(image_list))}
    prov["resumed_from"] = resumed_from  # images taken from an interrupted run's chunks, or None
    written = write_extracted(out, fs, prov=prov, dtype=dtype)  # under torchrun: rank 0 writes every rank's rows
    if written is None:  # a torchrun rank other than 0
        return
    shutil.rmtree(chunks, ignore_errors=True)
    skipped = written.meta["skipped"]
    for s in skipped[:MAX_LISTED]:
        rep.warn(f"skipped {s['id']}: {s['reason']}")
    if len(skipped) > MAX_LISTED:
        rep.warn(f"... and {len(skipped) - MAX_LISTED} more skipped (all are listed in {out}'s metadata 'skipped')")

    summary = {
        "out": str(out), "images": written.n, "dim": written.dim, "skipped": len(skipped), "backbone": model.name,
        "device": str(dev), "dtype": dtype, "labels": written.labelled,
        "classes": len(written.meta["class_names"]) if "class_names" in written.meta else None,
        "seconds": round(seconds, 3), "images_per_s": round(written.n / max(seconds, 1e-9), 2),
        "resumed_from": resumed_from, "images_run": done,
    }
    if json_out:
        emit_json(summary)
    else:
        extra = f", {summary['classes']} classes" if summary["classes"] else (", labelled" if summary["labels"] else ", unlabelled")
        stdout.print(
            f"{written.n} images -> {out}: D={written.dim} {dtype}{extra}, {model.name} on {dev}, "
            f"{summary['images_per_s']:.1f} images/s" + (f", {len(skipped)} skipped" if skipped else ""),
            soft_wrap=True,
        )
