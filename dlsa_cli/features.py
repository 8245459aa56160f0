"""Feature files: read features from any framework, write the canonical file.

The canonical feature file is safetensors with `features` (N, D) float32 or
float16, `labels` (N,) int64 where known, integer ids as an `ids` tensor or
string ids as a JSON list in the metadata, and the usual dlsa metadata
(see `dlsa_cli.files`).

Readers, chosen by extension:
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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dlsa_cli.errors import InputError
from dlsa_cli.files import read_safetensors, read_safetensors_header, read_table, require_file, write_safetensors

__all__ = [
    "FeatureSet",
    "FEATURE_EXTENSIONS",
    "read_features",
    "write_features",
    "validate_features",
    "num_classes",
    "train_counts",
]

FEATURE_EXTENSIONS = (".safetensors", ".parquet", ".npz", ".npy", ".pt", ".pth", ".h5", ".hdf5")

_FEATURE_KEYS = ("features", "feature", "feats", "F", "X", "x")
_LABEL_KEYS = ("labels", "label", "y", "targets")
_ID_KEYS = ("ids", "id", "files", "paths")


@dataclass
class FeatureSet:
    """Features (N, D), optional integer labels (N,) and ids (N,), plus metadata."""

    features: np.ndarray
    labels: np.ndarray | None = None
    ids: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def n(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    def require_labels(self) -> np.ndarray:
        """Return the labels, or raise a one-line error naming the file."""
        if self.labels is None:
            raise InputError(
                "has no labels, which this step needs",
                path=self.path,
                hint="store them as 'labels' beside 'features'",
            )
        return self.labels

    def subset(self, index: np.ndarray) -> FeatureSet:
        """Rows `index` (an integer index array or boolean mask) as a new FeatureSet."""
        return FeatureSet(
            features=self.features[index],
            labels=None if self.labels is None else self.labels[index],
            ids=None if self.ids is None else self.ids[index],
            meta=dict(self.meta),
            path=self.path,
        )


def read_features(path: str | Path, *, require_labels: bool = False, check_finite: bool = True) -> FeatureSet:
    """Read a feature file of any supported format and validate it."""
    p = require_file(path, "feature file")
    suffix = p.suffix.lower()
    readers = {
        ".safetensors": _read_safetensors,
        ".parquet": _read_parquet,
        ".npz": _read_npz,
        ".npy": _read_npy,
        ".pt": _read_pt,
        ".pth": _read_pt,
        ".h5": _read_h5,
        ".hdf5": _read_h5,
    }
    if suffix not in readers:
        raise InputError(
            f"unknown feature file extension '{suffix or '(none)'}'",
            path=p,
            hint=f"use one of {', '.join(FEATURE_EXTENSIONS)}",
        )
    fs = readers[suffix](p)
    fs.path = p
    validate_features(fs, check_finite=check_finite)
    if require_labels:
        fs.require_labels()
    return fs


def validate_features(fs: FeatureSet, *, check_finite: bool = True) -> None:
    """Check shapes, dtypes and values; normalise dtypes in place."""
    p = fs.path
    x = np.asarray(fs.features)
    if x.ndim != 2:
        raise InputError(f"features must be a 2-D (N, D) matrix, got shape {tuple(x.shape)}", path=p)
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(f"features are empty (shape {tuple(x.shape)})", path=p)
    if not np.issubdtype(x.dtype, np.floating):
        if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
            x = x.astype(np.float32)
        else:
            raise InputError(f"features must be numbers, got dtype {x.dtype}", path=p)
    if x.dtype not in (np.float16, np.float32):
        x = x.astype(np.float32)
    if check_finite:
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"{int(bad.sum())} row(s) of features hold NaN or infinity (first: row {first})",
                path=p,
                hint="remove or repair those rows",
            )
    fs.features = x
    n = x.shape[0]
    if fs.labels is not None:
        y = np.asarray(fs.labels)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.ndim != 1:
            raise InputError(f"labels must be 1-D, got shape {tuple(y.shape)}", path=p)
        if y.shape[0] != n:
            raise InputError(f"{n} feature rows but {y.shape[0]} labels", path=p, hint="they must match row for row")
        if np.issubdtype(y.dtype, np.floating):
            if not np.all(np.isfinite(y)) or not np.all(y == np.round(y)):
                raise InputError("labels must be integers, found non-integer values", path=p)
        elif not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
            raise InputError(f"labels must be integers, got dtype {y.dtype}", path=p)
        y = y.astype(np.int64)
        if y.size and y.min() < 0:
            raise InputError(f"labels must be >= 0, found {int(y.min())}", path=p, hint="number classes 0..C-1")
        fs.labels = y
    if fs.ids is not None:
        ids = np.asarray(fs.ids)
        if ids.ndim != 1 or ids.shape[0] != n:
            raise InputError(f"{n} feature rows but ids of shape {tuple(ids.shape)}", path=p)
        if ids.dtype.kind in "US" or ids.dtype == object:
            ids = ids.astype(str)
        elif np.issubdtype(ids.dtype, np.integer):
            ids = ids.astype(np.int64)
        else:
            raise InputError(f"ids must be integers or strings, got dtype {ids.dtype}", path=p)
        if len(np.unique(ids)) != n:
            raise InputError("ids are not unique", path=p, hint="each sample needs its own id")
        fs.ids = ids


def write_features(
    path: str | Path,
    fs: FeatureSet,
    *,
    prov: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    dtype: str | None = None,
) -> None:
    """Write the canonical safetensors feature file atomically."""
    x = np.ascontiguousarray(fs.features)
    if dtype is not None:
        x = x.astype(np.dtype(dtype))
    tensors: dict[str, np.ndarray] = {"features": x}
    if fs.labels is not None:
        tensors["labels"] = np.asarray(fs.labels, dtype=np.int64)
    all_meta = dict(fs.meta)
    all_meta.update(meta or {})
    if fs.ids is not None:
        ids = np.asarray(fs.ids)
        if np.issubdtype(ids.dtype, np.integer):
            tensors["ids"] = ids.astype(np.int64)
        else:
            all_meta["ids"] = [str(i) for i in ids]
    write_safetensors(path, tensors, kind="features", meta=all_meta, prov=prov)


def _pick(keys: Any, names: tuple[str, ...]) -> str | None:
    for n in names:
        if n in keys:
            return n
    return None


def _read_safetensors(p: Path) -> FeatureSet:
    header, kind, meta, prov = read_safetensors_header(p)
    fkey = _pick(header, _FEATURE_KEYS)
    if fkey is None:
        raise InputError(
            f"no 'features' tensor (it has {', '.join(header) or 'none'})",
            path=p,
            hint="is this a feature file?" + (f" It is a dlsa '{kind}' file" if kind and kind != "features" else ""),
        )
    lkey = _pick(header, _LABEL_KEYS)
    ikey = "ids" if "ids" in header else None
    tensors, _, _, _ = read_safetensors(p, [k for k in (fkey, lkey, ikey) if k])
    ids = tensors[ikey].numpy() if ikey else None
    meta = dict(meta)
    if ids is None and "ids" in meta:
        ids = np.asarray(meta.pop("ids"), dtype=str)
    else:
        meta.pop("ids", None)
    x = tensors[fkey]
    x = x.float().numpy() if str(x.dtype) == "torch.bfloat16" else x.numpy()
    return FeatureSet(x, tensors[lkey].numpy() if lkey else None, ids, {"provenance": prov, **meta})


def _read_parquet(p: Path) -> FeatureSet:
    import pyarrow as pa

    table, kind, meta, prov = read_table(p)
    names = table.column_names
    lkey = _pick(names, _LABEL_KEYS)
    ikey = _pick(names, ("id", "ids"))
    fkey = _pick(names, _FEATURE_KEYS)
    if fkey is not None:
        col = table.column(fkey).combine_chunks()
        if not (pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type)):
            raise InputError(f"column '{fkey}' must be a list of numbers per row", path=p)
        lengths = set(np.unique(col.value_lengths().to_numpy(zero_copy_only=False)).tolist())
        if len(lengths) != 1:
            raise InputError(f"rows of column '{fkey}' have different lengths {sorted(lengths)[:5]}", path=p)
        d = lengths.pop()
        x = col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), d)
    else:
        skip = {lkey, ikey}
        dims = [
            n for n in names
            if n not in skip and (pa.types.is_floating(table.schema.field(n).type) or pa.types.is_integer(table.schema.field(n).type))
        ]
        if not dims:
            raise InputError(
                "no feature columns: expected a list column 'features' or one numeric column per dimension",
                path=p,
            )
        x = np.stack([table.column(n).to_numpy() for n in dims], axis=1)
    y = table.column(lkey).to_numpy() if lkey else None
    ids = table.column(ikey).to_numpy(zero_copy_only=False) if ikey else None
    return FeatureSet(x, y, ids, {"provenance": prov, **meta})


def _read_npz(p: Path) -> FeatureSet:
    try:
        with np.load(p, allow_pickle=False) as d:
            keys = list(d.files)
            fkey = _pick(keys, _FEATURE_KEYS)
            if fkey is None:
                raise InputError(f"no features array (it has {', '.join(keys)})", path=p, hint="name it 'features'")
            lkey = _pick(keys, _LABEL_KEYS)
            ikey = _pick(keys, _ID_KEYS)
            return FeatureSet(d[fkey], d[lkey] if lkey else None, d[ikey] if ikey else None)
    except InputError:
        raise
    except ValueError as e:
        raise InputError(f"cannot read .npz without pickle ({e})", path=p, hint="store plain numeric arrays") from None
    except Exception as e:
        raise InputError(f"not a readable .npz file ({e})", path=p) from None


def _read_npy(p: Path) -> FeatureSet:
    try:
        x = np.load(p, allow_pickle=False, mmap_mode="r")
    except Exception as e:
        raise InputError(f"not a readable .npy matrix ({e})", path=p) from None
    return FeatureSet(np.asarray(x))


def _read_pt(p: Path) -> FeatureSet:
    import torch

    try:
        obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(
            f"cannot load safely with weights_only=True ({str(e).splitlines()[0][:200]})",
            path=p,
            hint="save a tensor or a dict of tensors",
        ) from None

    def arr(v: Any) -> np.ndarray:
        if isinstance(v, torch.Tensor):
            return (v.float() if v.dtype == torch.bfloat16 else v).numpy()
        return np.asarray(v)

    if isinstance(obj, torch.Tensor):
        return FeatureSet(arr(obj))
    if isinstance(obj, dict):
        fkey = _pick(obj, _FEATURE_KEYS)
        if fkey is None:
            raise InputError(f"no features entry (it has {', '.join(map(str, obj))})", path=p, hint="name it 'features'")
        lkey = _pick(obj, _LABEL_KEYS)
        ikey = _pick(obj, _ID_KEYS)
        return FeatureSet(arr(obj[fkey]), arr(obj[lkey]) if lkey else None, arr(obj[ikey]) if ikey else None)
    raise InputError(f"holds a {type(obj).__name__}, expected a tensor or a dict of tensors", path=p)


def _read_h5(p: Path) -> FeatureSet:
    try:
        import h5py
    except ImportError:
        raise InputError("reading .h5 needs h5py", path=p, hint="pip install 'dlsa-cli[h5]'") from None
    try:
        with h5py.File(p, "r") as f:
            keys = list(f.keys())
            fkey = _pick(keys, _FEATURE_KEYS)
            if fkey is None:
                raise InputError(f"no 'features' dataset (it has {', '.join(keys)})", path=p)
            lkey = _pick(keys, _LABEL_KEYS)
            ikey = _pick(keys, _ID_KEYS)
            ids = None
            if ikey:
                ids = f[ikey][()]
                if ids.dtype.kind in "SO":
                    ids = np.array([i.decode() if isinstance(i, bytes) else str(i) for i in ids])
            return FeatureSet(f[fkey][()], f[lkey][()] if lkey else None, ids)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"not a readable HDF5 file ({e})", path=p) from None



def num_classes(fs: FeatureSet) -> int:
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
    return int(fs.require_labels().max()) + 1


def train_counts(fs: FeatureSet) -> np.ndarray:
    """Per-class counts (C,) of the ORIGINAL training set.

    Files derived from a training set (by `split`) carry `train_counts` in their
    metadata; for any other file the counts of its own labels are used.
    """
    if "train_counts" in fs.meta:
        return np.asarray(fs.meta["train_counts"], dtype=np.int64)
    return np.bincount(fs.require_labels(), minlength=num_classes(fs)).astype(np.int64)
