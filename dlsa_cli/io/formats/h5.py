"""HDF5 files (`.h5`, `.hdf5`), the layout of the DLSA authors' implementation; read only, needs the `h5` extra.

Datasets `features` and `labels` (or `label`), optional `ids` (integers or
strings). Batches and labels read dataset slices, never the whole matrix.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from dlsa_cli.errors import InputError
from dlsa_cli.io.formats.base import (
    FEATURE_KEYS,
    ID_KEYS,
    LABEL_KEYS,
    FeatureInfo,
    FeatureSet,
    RowBatch,
    check_matrix_shape,
    pick,
    ranges,
)

__all__ = ["NAME", "SUFFIXES", "h5py_module", "info", "labels", "memmap", "read", "rows", "write"]

NAME = "h5"
SUFFIXES = (".h5", ".hdf5")
write = None  # feature files are written as safetensors
memmap = None


def h5py_module(p: Path) -> Any:
    """The h5py module, or a one-line error naming the extra that provides it."""
    try:
        import h5py
    except ImportError:
        raise InputError("reading .h5 needs h5py", path=p, hint="pip install 'dlsa-cli[h5]'") from None
    return h5py


@contextmanager
def _open(p: Path) -> Iterator[tuple[Any, str | None, str | None, str]]:
    """(the open file, its labels key, ids key, features key); any failure but ours is one
    "not a readable HDF5 file" line."""
    h5py = h5py_module(p)
    try:
        with h5py.File(p, "r") as f:
            keys = list(f.keys())
            fkey = pick(keys, FEATURE_KEYS)
            if fkey is None:
                raise InputError(f"no 'features' dataset (it has {', '.join(keys)})", path=p)
            yield f, pick(keys, LABEL_KEYS), pick(keys, ID_KEYS), fkey
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"not a readable HDF5 file ({e})", path=p) from None


def _ids(values: np.ndarray) -> np.ndarray:
    """HDF5 ids as read: integers as they are, byte or object strings as str."""
    if values.dtype.kind in "SO":
        return np.array([i.decode() if isinstance(i, bytes) else str(i) for i in values])
    return values


def info(p: Path) -> FeatureInfo:
    """N, D, dtype and labels/ids present, from the datasets' shapes and dtypes."""
    with _open(p) as (f, lkey, ikey, fkey):
        n, d = check_matrix_shape(f[fkey].shape, p)
        ids = None if ikey is None else ("int" if f[ikey].dtype.kind in "iu" else "str")
        return FeatureInfo(p, NAME, n, d, f[fkey].dtype.name, lkey is not None, ids, None)


def read(p: Path, *, mmap: bool = False) -> FeatureSet:
    """The whole file (`mmap` does not apply)."""
    with _open(p) as (f, lkey, ikey, fkey):
        return FeatureSet(f[fkey][()], f[lkey][()] if lkey else None, _ids(f[ikey][()]) if ikey else None, path=p)


def rows(p: Path, batch_size: int, start: int, stop: int) -> Iterator[RowBatch]:
    """Rows start..stop as dataset slices."""
    with _open(p) as (f, lkey, ikey, fkey):
        for a, b in ranges(start, stop, batch_size):
            ids = _ids(f[ikey][a:b]) if ikey else None
            yield RowBatch(a, f[fkey][a:b], f[lkey][a:b] if lkey else None, ids)


def labels(p: Path) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(labels, ids) as stored, without reading the features."""
    with _open(p) as (f, lkey, ikey, _):
        return (f[lkey][()] if lkey else None), (_ids(f[ikey][()]) if ikey else None)
