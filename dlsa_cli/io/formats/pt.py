"""PyTorch files (`.pt`, `.pth`), as `torch.save` writes them; read only.

A tensor (features only), or a dict of tensors under the names of `base`
(ids may be a list of strings). Loaded with `weights_only=True`, so no
pickled code ever runs. The file has no header: every read loads it whole.
"""

from __future__ import annotations

from collections.abc import Iterator
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
    ids_kind,
    pick,
    ranges,
    validate_features,
)

__all__ = ["NAME", "SUFFIXES", "info", "labels", "memmap", "read", "rows", "unsafe_torch_file", "write"]

NAME = "pt"
SUFFIXES = (".pt", ".pth")
write = None  # feature files are written as safetensors
memmap = None


def unsafe_torch_file(p: Path, e: Exception) -> InputError:
    """The one line for a .pt/.pth that torch.load(weights_only=True) refuses (pickled objects, or not a torch file)."""
    first = str(e).splitlines()[0] if str(e) else ""
    if "Weights only load failed" in first or "Unsupported global" in str(e):
        what = "holds pickled Python objects beyond tensors, which are never loaded here (they could run code)"
    else:
        what = f"is not a readable torch file ({type(e).__name__})"
    return InputError(what, path=p, hint="save a tensor, or a dict of tensors (ids as a list of strings)")


def read(p: Path, *, mmap: bool = False) -> FeatureSet:
    """The whole file (`mmap` does not apply)."""
    import torch

    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        raise unsafe_torch_file(p, e) from None

    def arr(v: Any) -> np.ndarray:
        if isinstance(v, torch.Tensor):
            return (v.float() if v.dtype == torch.bfloat16 else v).numpy()
        return np.asarray(v)

    if isinstance(obj, torch.Tensor):
        return FeatureSet(arr(obj), path=p)
    if isinstance(obj, dict):
        fkey = pick(obj, FEATURE_KEYS)
        if fkey is None:
            raise InputError(f"no features entry (it has {', '.join(map(str, obj))})", path=p,
                             hint="name it 'features'")
        lkey, ikey = pick(obj, LABEL_KEYS), pick(obj, ID_KEYS)
        return FeatureSet(arr(obj[fkey]), arr(obj[lkey]) if lkey else None, arr(obj[ikey]) if ikey else None, path=p)
    raise InputError(f"holds a {type(obj).__name__}, expected a tensor or a dict of tensors", path=p)


def _checked(p: Path) -> FeatureSet:
    fs = read(p)
    validate_features(fs, check_finite=False)
    return fs


def info(p: Path) -> FeatureInfo:
    """N, D, dtype (as read) and labels/ids present: the file is loaded and checked whole."""
    fs = _checked(p)
    ids = None if fs.ids is None else ids_kind(fs.ids.dtype)
    return FeatureInfo(p, NAME, fs.n, fs.dim, fs.features.dtype.name, fs.labels is not None, ids, None)


def rows(p: Path, batch_size: int, start: int, stop: int) -> Iterator[RowBatch]:
    """Rows start..stop of the file, loaded (and checked) whole once."""
    fs = _checked(p)
    for a, b in ranges(start, stop, batch_size):
        yield RowBatch(a, fs.features[a:b], None if fs.labels is None else fs.labels[a:b],
                       None if fs.ids is None else fs.ids[a:b])


def labels(p: Path) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(labels, ids) as stored (the file is loaded whole)."""
    fs = read(p)
    return fs.labels, fs.ids
