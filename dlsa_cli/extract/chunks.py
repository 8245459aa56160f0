"""Resume chunks: an extraction's finished chunks of images as files, and what they depend on.

A chunk folder (the CLI uses `OUT.resume/`) holds `run.json`, the run's
fingerprint (images, model, preprocessing, batching), and one
`chunk-000000.safetensors`, ... per finished chunk: its features and the rows
of the image list they belong to, and the images it skipped.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from dlsa_cli.errors import InputError, OutputError
from dlsa_cli.extract.backbones import Backbone
from dlsa_cli.extract.images import ImageList
from dlsa_cli.extract.preprocess import Preprocess
from dlsa_cli.io.files import read_safetensors, write_json, write_safetensors

__all__ = ["ChunkStore", "check_chunk_folder", "run_fingerprint", "save_chunk"]


def run_fingerprint(
    images: ImageList, backbone: Backbone, pre: Preprocess, batch_size: int, half: bool, dtype: str, skip_bad: bool,
    chunk_size: int
) -> dict[str, Any]:
    """What a chunk depends on: the images (ids and paths), the model, preprocessing and batching."""
    h = hashlib.sha256(json.dumps([images.ids, images.paths]).encode())
    return {
        "images_sha256": h.hexdigest(), "images": len(images), "backbone": backbone.name, "weights": backbone.weights,
        "preprocessing": pre.to_meta(), "batch_size": batch_size, "half": half, "dtype": dtype, "skip_bad": skip_bad,
        "chunk_size": chunk_size,
    }


def check_chunk_folder(folder: Path) -> None:
    """Before any work: an existing chunk folder must be one an extraction made (a real folder holding
    only run.json, chunk files and staging leftovers), since a run may remove it; OutputError otherwise."""
    if not folder.is_symlink() and not folder.exists():
        return
    if folder.is_symlink() or not folder.is_dir():
        what = "a symbolic link" if folder.is_symlink() else "not a folder"
        raise OutputError(f"{folder} is {what}, not an extraction's resume folder; extract would remove it",
                          hint="move it away or pick another -o")
    own = re.compile(r"run\.json|chunk-\d{6}\.safetensors|\..*\.tmp")
    foreign = sorted(e.name for e in folder.iterdir() if not own.fullmatch(e.name))
    if foreign:
        raise OutputError(f"{folder} holds files an extraction did not write ({', '.join(foreign[:3])}); "
                          "extract would remove them", hint="move them away or pick another -o")


class ChunkStore:
    """A folder of finished chunks (`chunk-000000.safetensors`, ...) and the run's fingerprint (`run.json`)."""

    def __init__(self, folder: Path, fingerprint: dict[str, Any], resume: bool):
        self.folder, self.fingerprint = folder, json.loads(json.dumps(fingerprint))
        run = folder / "run.json"
        if resume and run.is_file():
            try:
                old = json.loads(run.read_text())
            except (OSError, ValueError):
                old = None
            if old != self.fingerprint:
                raise InputError(
                    "resume folder comes from other images or other settings",
                    path=folder,
                    hint="run with the same list and options, or remove the folder (or drop --resume) to start over",
                )
            return
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
        write_json(run, self.fingerprint)

    def path(self, c: int) -> Path:
        return self.folder / f"chunk-{c:06d}.safetensors"

    def load(self, c: int) -> tuple[np.ndarray, list[int], list[dict[str, str]]] | None:
        """Chunk c's (features (n, D), rows of the image list, skipped images), or None when not finished."""
        if not self.path(c).is_file():
            return None
        tensors, _, meta, _ = read_safetensors(self.path(c))
        return tensors["features"].numpy(), tensors["rows"].tolist(), list(meta["skipped"])


def save_chunk(store: ChunkStore, c: int, block: np.ndarray, rows: list[int], skipped: list[dict[str, str]]) -> None:
    """Write one finished chunk atomically (a module function, so a test can kill the run right after it)."""
    tensors = {"features": np.ascontiguousarray(block), "rows": np.asarray(rows, dtype=np.int64)}
    write_safetensors(store.path(c), tensors, kind="extract-chunk", meta={"skipped": skipped})
