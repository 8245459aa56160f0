"""One extraction as `dlsa extract` runs it: `extract_file` writes exactly the file the command writes.

It checks the output before any work, joins torchrun's process group, loads
the backbone, reads the image list, extracts (each rank its share under
torchrun), records provenance, and writes the feature file on rank 0. Resume:
finished chunks go to `OUT.resume/` as the run goes (one process only); with
`resume` they are read back instead of computed; the folder is removed once
the file is written, and when bad input stops a run that had no folder
before, so only an interrupted run leaves one behind.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dlsa_cli.errors import DlsaError
from dlsa_cli.extract.backbones import load_backbone
from dlsa_cli.extract.chunks import check_chunk_folder
from dlsa_cli.extract.config import ExtractConfig
from dlsa_cli.extract.images import ImageList, read_image_list
from dlsa_cli.extract.loop import default_workers
from dlsa_cli.extract.preprocess import Preprocess
from dlsa_cli.extract.shard import extract_sharded, write_extracted
from dlsa_cli.io.features import FeatureSet
from dlsa_cli.io.files import check_output_file, provenance
from dlsa_cli.runtime import distributed as dist
from dlsa_cli.settings import to_table

__all__ = ["ExtractReport", "ExtractStart", "chunk_folder", "extract_file"]


@dataclass(frozen=True)
class ExtractStart:
    """What a run is about to do, known once the list is read and the backbone loaded."""

    images: int
    backbone: str
    device: str
    batch_size: int
    workers: int


@dataclass(frozen=True)
class ExtractReport:
    """What `extract_file` wrote; `to_dict()` is `dlsa extract --json`."""

    out: Path
    images: int  # rows written
    dim: int
    dtype: str
    labelled: bool
    classes: int | None  # class names recorded (a folder, or a CSV with named labels)
    skipped: list[dict[str, str]]  # {"id", "reason"} of every image left out
    backbone: str
    device: str
    seconds: float
    resumed_from: int | None  # images taken from an interrupted run's chunks (None without resume)
    images_run: int  # images decoded by this run

    @property
    def images_per_s(self) -> float:
        return round(self.images / max(self.seconds, 1e-9), 2)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out": str(self.out), "images": self.images, "dim": self.dim, "skipped": len(self.skipped),
            "backbone": self.backbone, "device": self.device, "dtype": self.dtype, "labels": self.labelled,
            "classes": self.classes, "seconds": round(self.seconds, 3), "images_per_s": self.images_per_s,
            "resumed_from": self.resumed_from, "images_run": self.images_run,
        }


def chunk_folder(out: str | Path) -> Path:
    """Where a run writing `out` keeps its finished chunks: `OUT.resume/`."""
    out = Path(out)
    return out.with_name(out.name + ".resume")


def extract_file(
    images: str | Path,
    out: str | Path,
    config: ExtractConfig | None = None,
    *,
    root: str | Path | None = None,
    on_start: Callable[[ExtractStart], None] | None = None,
    progress: Callable[[int], None] | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> ExtractReport | None:
    """Extract the images `images` lists (a folder, CSV or list file; `root` as in `read_image_list`) into `out`.

    `on_start` is called once before any image is decoded, `progress(k)`
    after each batch of k images. Returns what was written on rank 0, None
    on the other torchrun ranks.
    """
    cfg = config or ExtractConfig()
    cfg.check()
    images, out = Path(images), Path(out)
    backbone_file = Path(cfg.backbone) if Path(cfg.backbone).is_file() else None
    check_output_file(out, suffixes=(".safetensors",), inputs=[images, root, cfg.weights, backbone_file])
    check_chunk_folder(chunk_folder(out))
    _, dev = dist.setup(cfg.device)  # under torchrun: this rank's device and its share of the images
    model = load_backbone(cfg.backbone, weights=cfg.weights)  # first: cheap, while listing a big folder is not
    image_list = read_image_list(images, root=root)
    pre = _preprocess(model.preprocess, cfg)
    if pre.crop > pre.resize:  # a crop larger than the resized image would pad or fail per image
        which = "ExtractConfig.crop" if cfg.crop is not None else "the backbone's crop"
        raise DlsaError(f"{which} {pre.crop} is larger than the resized shorter side {pre.resize}",
                        hint="pass a crop at most the resize (ExtractConfig.resize)")
    workers = default_workers() if cfg.workers is None else cfg.workers
    if on_start is not None:
        on_start(ExtractStart(len(image_list), model.name, str(dev), cfg.batch_size, workers))
    done = 0

    def step(k: int) -> None:
        nonlocal done
        done += k
        if progress is not None:
            progress(k)

    start = time.perf_counter()
    fs = _extract(image_list, model, cfg, pre, workers, dev, chunk_folder(out), step, on_warning)
    seconds = time.perf_counter() - start
    resumed_from = fs.meta.pop("resumed_from", None)
    prov = _provenance(images, root, cfg, pre, workers, dev, backbone_file, len(image_list))
    prov["resumed_from"] = resumed_from  # images taken from an interrupted run's chunks, or None
    written = write_extracted(out, fs, prov=prov, dtype=cfg.dtype)  # under torchrun: rank 0 writes every rank's rows
    if written is None:  # a torchrun rank other than 0
        return None
    shutil.rmtree(chunk_folder(out), ignore_errors=True)
    classes = len(written.meta["class_names"]) if "class_names" in written.meta else None
    return ExtractReport(out, written.n, written.dim, cfg.dtype, written.labelled, classes, written.meta["skipped"],
                         model.name, str(dev), seconds, resumed_from, done)


def _preprocess(own: Preprocess, cfg: ExtractConfig) -> Preprocess:
    """The backbone's preprocessing with the settings that are not None on top."""
    return Preprocess(
        resize=own.resize if cfg.resize is None else cfg.resize,
        crop=own.crop if cfg.crop is None else cfg.crop,
        mean=own.mean if cfg.mean is None else cfg.mean,
        std=own.std if cfg.std is None else cfg.std,
        interpolation=own.interpolation if cfg.interpolation is None else cfg.interpolation,
    )


def _extract(
    image_list: ImageList, model: Any, cfg: ExtractConfig, pre: Preprocess, workers: int, dev: torch.device,
    chunks: Path, progress: Callable[[int], None], on_warning: Callable[[str], None] | None,
) -> FeatureSet:
    """This rank's features; one process keeps finished chunks in `chunks` (removed again if bad input stops it)."""
    alone = dist.current().world_size == 1  # under torchrun no resume chunks: the ranks would share one folder
    if cfg.resume and not alone:
        raise DlsaError("ExtractConfig.resume is not available under torchrun", hint="resume the run in one process")
    had_chunks = chunks.exists()
    if had_chunks and not cfg.resume and on_warning is not None:
        on_warning(f"{chunks} holds an interrupted run; starting over (pass --resume to continue it)")
    try:
        return extract_sharded(
            image_list, model, preprocess=pre, batch_size=cfg.batch_size, workers=workers, device=dev,
            half=cfg.half, dtype=cfg.dtype, skip_bad=cfg.skip_bad, progress=progress,
            chunks=chunks if alone else None, chunk_size=cfg.chunk_size, resume=cfg.resume,
        )
    except DlsaError:  # bad input: nothing stays behind (an interrupted run keeps its chunks)
        if not had_chunks and alone:
            shutil.rmtree(chunks, ignore_errors=True)
        raise


def _provenance(
    images: Path, root: str | Path | None, cfg: ExtractConfig, pre: Preprocess, workers: int, dev: torch.device,
    backbone_file: Path | None, n: int,
) -> dict[str, Any]:
    """The file's provenance: the options as run (preprocessing resolved), input hashes, and the ranks' rows."""
    options = {
        "images": images, "root": root, "backbone": cfg.backbone, "weights": cfg.weights,
        "preprocessing": pre.to_meta(), "batch_size": cfg.batch_size, "workers": workers, "device": str(dev),
        "half": cfg.half, "dtype": cfg.dtype, "skip_bad": cfg.skip_bad,
    }
    inputs = [p for p in (images, cfg.weights) if p is not None and Path(p).is_file()]
    if backbone_file is not None:
        inputs.append(backbone_file)
    settings = {k: v for k, v in to_table(cfg).items() if k != "resume"}  # a repeat need not resume
    return {**provenance("extract", options, inputs, settings={"": settings}), **dist.provenance_fields(n)}
