"""The extraction loop: a backbone over an image list, batch by batch, into a `FeatureSet`.

`extract_features(images, backbone, ...)` decodes in DataLoader worker
processes, runs the model batch by batch in eval and inference mode
(optionally half precision on CUDA) and returns a `FeatureSet` whose metadata
records the backbone, weights and preprocessing. With a chunk folder it
writes each finished chunk of images there (`chunks.py`) and, resuming, reads
the chunks an interrupted run left instead of computing them.

Nothing here prints; progress goes through a callback. Nothing here touches
the network.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlsa_cli.errors import DlsaError, InputError, ModelMismatchError
from dlsa_cli.extract import chunks as chunk_files
from dlsa_cli.extract.backbones import Backbone
from dlsa_cli.extract.config import DTYPES
from dlsa_cli.extract.images import ImageList
from dlsa_cli.extract.preprocess import ImageDataset, Preprocess
from dlsa_cli.io.features import FeatureSet

__all__ = ["default_workers", "extract_features"]


def default_workers() -> int:
    """Decoding processes by default: the cores but one, at most 8 (0 = decode in this process)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores - 1))


def extract_features(
    images: ImageList,
    backbone: Backbone,
    *,
    preprocess: Preprocess | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    device: str | torch.device = "cpu",
    half: bool = False,
    dtype: str = "float32",
    skip_bad: bool = False,
    progress: Callable[[int], None] | None = None,
    chunks: str | Path | None = None,
    chunk_size: int = 4096,
    resume: bool = False,
) -> FeatureSet:
    """Run `backbone` over `images` batch by batch; return features (N, D) with ids and labels.

    An image that cannot be read raises InputError naming it, or with
    `skip_bad` is left out and listed in `meta["skipped"]` (id and reason).
    `progress(k)` is called after each batch with the number of images done.
    Working memory is one batch per worker plus the (N, D) result.

    With `chunks` (a folder; the CLI uses `OUT.resume/`), every `chunk_size`
    images are written there as a file of their own when finished; with
    `resume`, chunks already there (of the same images and settings) are read
    instead of computed, and `meta["resumed_from"]` is the number of images
    they covered. The caller removes the folder once the output is written.
    """
    pre = preprocess or backbone.preprocess
    dev = torch.device(device)
    workers = _check_extract_args(batch_size, dtype, half, dev, workers, chunk_size)
    keep, skipped = _existing_images(images, skip_bad)
    model = _ready_model(backbone, dev, half)
    store = None
    if chunks is not None:
        fingerprint = chunk_files.run_fingerprint(images, backbone, pre, batch_size, half, dtype, skip_bad, chunk_size)
        store = chunk_files.ChunkStore(Path(chunks), fingerprint, resume)
    size = len(keep) if store is None else chunk_size
    blocks: list[np.ndarray] = []
    rows: list[int] = []
    resumed_from = 0
    for c, start in enumerate(range(0, len(keep), size)):
        part = keep[start : start + size]
        done = store.load(c) if store is not None else None
        if done is None:
            done = _extract_rows(part, images, model, backbone, pre, batch_size, workers, dev, half, skip_bad, dtype,
                                 progress)
            if store is not None:
                chunk_files.save_chunk(store, c, *done)  # looked up here, so a test can stop the run after it
        else:
            resumed_from += len(part)
        blocks += [done[0]] if len(done[1]) else []
        rows += done[1]
        skipped += done[2]
    meta = _extract_meta(backbone, pre, rows, skipped, blocks, dev, half, dtype, images)
    if store is not None and resume:
        meta["resumed_from"] = resumed_from
    feats = np.concatenate(blocks) if blocks else None
    if not rows or feats is None:
        raise InputError(
            f"no image could be read ({len(skipped)} skipped; first: {skipped[0]['id']}: {skipped[0]['reason']})",
            path=images.source,
        )
    order = np.asarray(rows, dtype=np.int64)
    return FeatureSet(
        features=feats,
        labels=None if images.labels is None else images.labels[order],
        ids=np.asarray(images.ids, dtype=object)[order].astype(str),
        meta=meta,
    )


def _check_extract_args(batch_size: int, dtype: str, half: bool, dev: torch.device, workers: int | None,
                        chunk_size: int) -> int:
    if batch_size < 1:
        raise DlsaError(f"ExtractConfig.batch_size {batch_size}: must be at least 1")
    if chunk_size < 1:
        raise DlsaError(f"ExtractConfig.chunk_size {chunk_size}: must be at least 1")
    if dtype not in DTYPES:
        raise DlsaError(f"ExtractConfig.dtype {dtype}: unknown", hint="use float32 or float16")
    if half and dev.type != "cuda":
        raise DlsaError("ExtractConfig.half needs a CUDA device", hint="drop ExtractConfig.half on the CPU")
    workers = default_workers() if workers is None else workers
    if workers < 0:
        raise DlsaError(f"ExtractConfig.workers {workers}: must be 0 or more")
    return workers


def _existing_images(images: ImageList, skip_bad: bool) -> tuple[list[int], list[dict[str, str]]]:
    """Rows of `images` whose file exists, and the skipped ones (or InputError without skip_bad)."""
    skipped: list[dict[str, str]] = []
    keep: list[int] = []  # rows of `images` to decode
    for i, p in enumerate(images.paths):
        if os.path.isfile(p):
            keep.append(i)
        elif not skip_bad:
            missing = sum(not os.path.isfile(q) for q in images.paths)
            raise InputError(
                f"image not found ({missing} of {len(images)} listed images are missing)",
                path=p,
                hint="check --root, or pass --skip-bad",
            )
        else:
            skipped.append({"id": images.ids[i], "reason": "file not found"})
    if not keep:
        raise InputError("none of the listed images exist", path=images.source, hint="check --root")
    return keep, skipped


def _ready_model(backbone: Backbone, dev: torch.device, half: bool) -> torch.nn.Module:
    model = backbone.module.to(dev).eval()
    if backbone.channels_last and not isinstance(model, torch.jit.ScriptModule):
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to takes it; the stubs omit it
    return model.half() if half else model.float()  # .to/.half act in place: undo an earlier half run


def _extract_rows(
    keep: list[int], images: ImageList, model: torch.nn.Module, backbone: Backbone, pre: Preprocess, batch_size: int,
    workers: int, dev: torch.device, half: bool, skip_bad: bool, dtype: str, progress: Callable[[int], None] | None,
) -> tuple[np.ndarray, list[int], list[dict[str, str]]]:
    """Features of the images at rows `keep`: (block (n, D), the rows read, in order, the skipped)."""
    compute_dtype = torch.float16 if half else torch.float32
    dataset = ImageDataset([images.paths[i] for i in keep], pre)
    skipped: list[dict[str, str]] = []
    feats: np.ndarray | None = None
    rows: list[int] = []  # rows of `images` written, in order
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This DataLoader will create")
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=dev.type == "cuda"
        )
        with torch.inference_mode():
            for xb, idx, errors in loader:  # (B, H, W, 3) uint8, (B,), B strings
                good = [j for j, e in enumerate(errors) if not e]
                for j, e in enumerate(errors):
                    if e:
                        row = keep[int(idx[j])]
                        if not skip_bad:
                            raise InputError(
                                f"cannot read image ({e})", path=images.paths[row],
                                hint="fix or remove it, or pass --skip-bad"
                            )
                        skipped.append({"id": images.ids[row], "reason": e})
                if good:
                    x = xb[good] if len(good) < len(errors) else xb
                    x = x.to(dev, non_blocking=True).permute(0, 3, 1, 2)  # (B, 3, H, W)
                    block = backbone.features(pre.normalise(x, compute_dtype)).float().cpu().numpy()  # (B, D)
                    if feats is None:
                        feats = np.empty((len(keep), block.shape[1]), dtype=np.dtype(dtype))
                    if not np.isfinite(block).all():
                        first = keep[int(idx[good[int(np.flatnonzero(~np.isfinite(block).all(1))[0])]])]
                        raise ModelMismatchError(
                            "backbone produced NaN or infinity", path=images.paths[first],
                            hint="drop --half" if half else "check the model and its preprocessing",
                        )
                    feats[len(rows) : len(rows) + len(good)] = block
                    rows.extend(keep[int(idx[j])] for j in good)
                if progress is not None:
                    progress(len(errors))
    out = feats[: len(rows)] if feats is not None else np.zeros((0, 0), dtype=np.dtype(dtype))
    return out, rows, skipped


def _extract_meta(
    backbone: Backbone, pre: Preprocess, rows: list[int], skipped: list[dict[str, str]], blocks: list[np.ndarray],
    dev: torch.device, half: bool, dtype: str, images: ImageList,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "backbone": backbone.name,
        "weights": backbone.weights,
        "preprocessing": pre.to_meta(),
        "images": len(rows),
        "skipped": skipped,
        "dim": int(blocks[0].shape[1]) if blocks else 0,
        "device": str(dev),
        "half": half,
        "dtype": dtype,
        "source": None if images.source is None else str(images.source),
        "root": None if images.root is None else str(images.root),
    }
    if images.class_names is not None:
        meta["class_names"] = list(images.class_names)
        meta["num_classes"] = len(images.class_names)
    return meta
