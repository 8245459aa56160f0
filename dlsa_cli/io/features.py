"""Feature files: read features from any framework, write the canonical file.

The canonical feature file is safetensors with `features` (N, D) float32 or
float16, `labels` (N,) int64 where known, integer ids as an `ids` tensor or
string ids as a JSON list in the metadata, and the usual dlsa metadata
(see `dlsa_cli.io.files` and `dlsa_cli.io.formats.safetensors`).

Every reader here asks the format registry (`dlsa_cli.io.formats`, chosen by
suffix) and validates what the format returns, so every format gives the
same checks and the same one-line errors:
- `.safetensors`: tensors `features` and `labels` (or `label`), optional `ids`.
- `.parquet`: a list column `features`, or one numeric column per dimension;
  `label`/`labels` and `id`/`ids` columns where present.
- `.npz`: arrays `features` (or `F`, `X`, `x`), `labels` (or `label`, `y`),
  `ids` (or `id`, `files`); read without pickle.
- `.npy`: a bare (N, D) matrix, no labels.
- `.pt`/`.pth`: a tensor, or a dict of tensors with the names above, loaded
  with `weights_only=True` (no pickle code runs).
- `.h5`/`.hdf5`: datasets `features` and `labels` or `label` (the layout of
  the DLSA authors' implementation), optional `ids`; needs the `h5` extra.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dlsa_cli.errors import InputError
from dlsa_cli.io.formats import SUFFIXES, find_format, open_feature_file, writer_for
from dlsa_cli.io.formats.base import (
    FeatureInfo,
    FeatureSet,
    MapMode,
    RowBatch,
    check_ids,
    check_label_range,
    check_labels,
    check_meta,
    validate_features,
)
from dlsa_cli.io.formats.pt import unsafe_torch_file

__all__ = [
    "FEATURE_EXTENSIONS",
    "FeatureInfo",
    "FeatureSet",
    "LabelSet",
    "RowBatch",
    "feature_info",
    "iter_feature_batches",
    "iter_rows",
    "memmap_features",
    "num_classes",
    "read_features",
    "read_labels",
    "train_counts",
    "unsafe_torch_file",
    "validate_features",
    "write_features",
]

FEATURE_EXTENSIONS = SUFFIXES


def read_features(path: str | Path, *, require_labels: bool = False, check_finite: bool = True,
                  mmap: bool = False) -> FeatureSet:
    """Read a feature file of any supported format and validate it.

    `mmap`: a safetensors float16/float32 matrix is memory-mapped
    copy-on-write instead of read (training on files larger than memory: the
    pages come and go with the page cache, not anonymous memory; the file is
    never changed). Other formats and dtypes are read as usual.
    """
    p, fmt = open_feature_file(path)
    fs = fmt.read(p, mmap=mmap)
    fs.path = p
    validate_features(fs, check_finite=check_finite)
    check_meta(fs.meta, p)
    check_label_range(fs.labels, fs.meta, p)
    if require_labels:
        fs.require_labels()
    return fs


def write_features(
    path: str | Path,
    fs: FeatureSet,
    *,
    prov: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    dtype: str | None = None,
) -> None:
    """Write the canonical feature file atomically (a `.safetensors` name; other formats are read only).

    String ids go in the header as a JSON list, or past `IDS_IN_HEADER_MAX`
    bytes as the `ids_utf8` / `ids_offsets` tensors (`dlsa_cli.io.formats.safetensors`).
    """
    writer_for(path)(path, fs, prov=prov, meta=meta, dtype=dtype)


def feature_info(path: str | Path) -> FeatureInfo:
    """N, D, dtype, labels/ids present and metadata of a feature file.

    Reads headers only for .safetensors, .parquet, .npy, .npz and .h5; a .pt
    file has no header and is loaded whole.
    """
    p, fmt = open_feature_file(path)
    info = fmt.info(p)
    check_meta(info.meta, p)
    return info


def iter_rows(
    path: str | Path,
    batch_size: int = 65536,
    start: int = 0,
    stop: int | None = None,
    *,
    check_finite: bool = True,
) -> Iterator[RowBatch]:
    """Yield RowBatches covering rows start..stop of a feature file, in order, memory bounded by the batch.

    Slices for safetensors, HDF5, .npy and Parquet row groups; .npz and .pt are
    loaded whole, as they cannot be sliced. Dtypes and values are checked as
    `read_features` checks them (per batch; id uniqueness is the writer's
    promise and is not re-checked across batches).
    """
    p, fmt = open_feature_file(path)
    info = fmt.info(p)
    check_meta(info.meta, p)
    n = info.n
    stop = n if stop is None else min(int(stop), n)
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    if not 0 <= start <= stop:
        raise ValueError(f"no rows {start}..{stop} in a file of {n}")
    for b in fmt.rows(p, batch_size, start, stop):
        checked = _checked(p, b, check_finite)
        check_label_range(checked.labels, info.meta, p, f" (in rows {checked.start}..{checked.stop - 1})")
        yield checked


def _checked(p: Path, b: RowBatch, check_finite: bool) -> RowBatch:
    a = b.start
    fs = FeatureSet(np.asarray(b.features), None if b.labels is None else np.asarray(b.labels),
                    None if b.ids is None else np.asarray(b.ids), path=p)
    try:
        validate_features(fs, check_finite=False)
    except InputError as e:
        raise InputError(f"{e} (in rows {a}..{a + len(fs.features) - 1})") from None
    if check_finite:
        bad = ~np.isfinite(fs.features).all(axis=1)
        if bad.any():
            raise InputError(
                f"row {a + int(np.flatnonzero(bad)[0])} of features holds NaN or infinity "
                f"({int(bad.sum())} such row(s) in rows {a}..{a + len(bad) - 1})",
                path=p,
                hint="remove or repair those rows",
            )
    return RowBatch(a, fs.features, fs.labels, fs.ids)


def iter_feature_batches(
    path: str | Path, batch_size: int = 65536, *, check_finite: bool = False
) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """Yield `(start, features (B, D), labels (B,) or None)` in row order: `iter_rows` without the ids."""
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")
    for b in iter_rows(path, batch_size, check_finite=check_finite):
        yield b.start, b.features, b.labels


def memmap_features(path: str | Path, mode: MapMode = "r") -> np.ndarray | None:
    """The (N, D) float16/float32 matrix of a safetensors or .npy file, memory-mapped; None otherwise.

    mode "r": read-only; "c": copy-on-write (writable in memory, the file never changes), which torch
    takes without a warning.
    """
    fmt = find_format(path)
    return None if fmt is None or fmt.memmap is None else fmt.memmap(Path(path), mode)


@dataclass
class LabelSet:
    """Labels (N,) and ids (N,) of a feature file, read without its features."""

    n: int
    labels: np.ndarray | None = None
    ids: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def require_labels(self) -> np.ndarray:
        """Return the labels, or raise a one-line error naming the file."""
        if self.labels is None:
            raise InputError("has no labels, which this step needs", path=self.path,
                             hint="store them as 'labels' beside 'features'")
        return self.labels


def read_labels(path: str | Path, *, require_labels: bool = False) -> LabelSet:
    """Labels, ids and metadata of a feature file, leaving the matrix on disk where the format allows.

    `num_classes` and `train_counts` accept the result as they accept a FeatureSet.
    """
    p, fmt = open_feature_file(path)
    info = fmt.info(p)
    y, ids = fmt.labels(p)
    meta: dict[str, Any] = {"provenance": info.provenance, **info.meta}
    ls = LabelSet(info.n, None if y is None else check_labels(y, info.n, p),
                  None if ids is None else check_ids(ids, info.n, p), meta, p)
    check_meta(meta, p)
    check_label_range(ls.labels, meta, p)
    if require_labels:
        ls.require_labels()
    return ls


def num_classes(fs: FeatureSet | LabelSet) -> int:
    """Class count C: from the metadata (`num_classes`, `class_names`, `train_counts`) or max label + 1.

    Files written by `split` keep the global C in their metadata, so a deeper
    stage whose samples lack some classes still knows all of them.
    """
    for key in ("num_classes",):
        if key in fs.meta:
            return int(fs.meta[key])
    for key in ("class_names", "train_counts"):
        if key in fs.meta:
            return len(fs.meta[key])
    y = fs.require_labels()
    return int(y.max()) + 1 if y.size else 0  # a file without rows knows no class


def train_counts(fs: FeatureSet | LabelSet) -> np.ndarray:
    """Per-class counts (C,) of the ORIGINAL training set.

    Files derived from a training set (by `split`) carry `train_counts` in their
    metadata; for any other file the counts of its own labels are used.
    """
    if "train_counts" in fs.meta:
        return np.asarray(fs.meta["train_counts"], dtype=np.int64)
    return np.bincount(fs.require_labels(), minlength=num_classes(fs)).astype(np.int64)
