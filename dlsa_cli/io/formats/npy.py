"""A bare NumPy matrix (`.npy`), as `np.save` writes it: features only, no labels or ids; read only.

Read memory-mapped, so batches and `memmap` cost no more than the rows they touch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from dlsa_cli.errors import InputError
from dlsa_cli.io.formats.base import (
    FeatureInfo,
    FeatureSet,
    MapMode,
    RowBatch,
    check_matrix_shape,
    ranges,
)

__all__ = ["NAME", "SUFFIXES", "info", "labels", "memmap", "read", "rows", "write"]

NAME = "npy"
SUFFIXES = (".npy",)
write = None  # feature files are written as safetensors


def _open(p: Path, mode: MapMode = "r") -> np.ndarray:
    try:
        x = np.load(p, allow_pickle=False, mmap_mode=mode)
    except Exception as e:
        raise InputError(f"not a readable .npy matrix ({e})", path=p) from None
    if not isinstance(x, np.ndarray):  # np.load opens an .npz archive whatever its name
        x.close()
        raise InputError("not a .npy matrix: it is a zip archive, as .npz and .pt files are", path=p,
                         hint="name it by its format")
    return x


def info(p: Path) -> FeatureInfo:
    """N, D and dtype from the array's header."""
    x = _open(p)
    n, d = check_matrix_shape(x.shape, p, x.dtype)
    return FeatureInfo(p, NAME, n, d, x.dtype.name, False, None, None)


def read(p: Path, *, mmap: bool = False) -> FeatureSet:
    """The matrix (as a read-only mapping of the file)."""
    return FeatureSet(np.asarray(_open(p)), path=p)


def rows(p: Path, batch_size: int, start: int, stop: int) -> Iterator[RowBatch]:
    """Rows start..stop, copied out of the mapping a batch at a time."""
    x = _open(p)
    for a, b in ranges(start, stop, batch_size):
        yield RowBatch(a, np.array(x[a:b]))


def labels(p: Path) -> tuple[None, None]:
    """A bare matrix has neither labels nor ids."""
    return None, None


def memmap(p: Path, mode: MapMode = "r") -> np.ndarray | None:
    """The (N, D) float16/float32 matrix mapped; None for other shapes and dtypes."""
    x = np.load(p, allow_pickle=False, mmap_mode=mode)
    return x if x.ndim == 2 and x.dtype in (np.float16, np.float32) else None
