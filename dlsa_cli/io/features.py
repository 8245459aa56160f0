"""Feature files: read features from any framework, write the canonical file.

The canonical feature file is safetensors with `features` (N, D) float32 or
float16, `labels` (N,) int64 where known, integer ids as an `ids` tensor or
string ids as a JSON list in the metadata, and the usual dlsa metadata
(see `dlsa_cli.io.files`).

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

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dlsa_cli.errors import InputError
from dlsa_cli.io.files import (
    read_safetensors,
    read_safetensors_header,
    read_table,
    require_file,
    write_safetensors,
)

__all__ = [
    "FeatureSet",
    "FEATURE_EXTENSIONS",
    "read_features",
    "write_features",
    "validate_features",
    "num_classes",
    "train_counts",
    "FeatureInfo",
    "feature_info",
    "iter_feature_batches",
    "LabelSet",
    "read_labels",
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


def read_features(path: str | Path, *, require_labels: bool = False, check_finite: bool = True, mmap: bool = False) -> FeatureSet:
    """Read a feature file of any supported format and validate it.

    `mmap`: a safetensors float16/float32 matrix is memory-mapped
    copy-on-write instead of read (training on files larger than memory: the
    pages come and go with the page cache, not anonymous memory; the file is
    never changed). Other formats and dtypes are read as usual.
    """
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
    fs = _read_safetensors(p, mmap=True) if mmap and suffix == ".safetensors" else readers[suffix](p)
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
        bad = _nonfinite_rows(x)
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
        fs.labels = _check_labels(fs.labels, n, p)
    if fs.ids is not None:
        fs.ids = _check_ids(fs.ids, n, p)


def _nonfinite_rows(x: np.ndarray, chunk_bytes: int = 64 * 2**20) -> np.ndarray:
    """(N,) True where a row holds NaN or infinity, checked a chunk of rows at a time (no N x D temporary)."""
    step = max(1, chunk_bytes // max(x.shape[1] * x.itemsize, 1))
    return np.concatenate([~np.isfinite(x[a : a + step]).all(axis=1) for a in range(0, x.shape[0], step)])


def _check_labels(labels: Any, n: int, p: Path | None) -> np.ndarray:
    """Labels (n,) as int64 >= 0, or a one-line InputError."""
    y = np.asarray(labels)
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
    return y


def _check_ids(ids: Any, n: int, p: Path | None) -> np.ndarray:
    """Ids (n,) as int64 or str, unique, or a one-line InputError."""
    ids = np.asarray(ids)
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
    return ids


def write_features(
    path: str | Path,
    fs: FeatureSet,
    *,
    prov: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    dtype: str | None = None,
) -> None:
    """Write the canonical safetensors feature file atomically.

    String ids go in the header as a JSON list, or past `IDS_IN_HEADER_MAX`
    bytes as the `ids_utf8` / `ids_offsets` tensors (`dlsa_cli.io.stream`).
    """
    from dlsa_cli.io import stream

    x = np.ascontiguousarray(fs.features)
    if dtype is not None:
        x = x.astype(np.dtype(dtype))
    tensors: dict[str, np.ndarray] = {"features": x}
    if fs.labels is not None:
        tensors["labels"] = np.asarray(fs.labels, dtype=np.int64)
    all_meta = dict(fs.meta)
    all_meta.update(meta or {})
    # What a reader put under "provenance" is the SOURCE file's; this file's own goes in `prov`.
    all_meta.pop("provenance", None)
    if fs.ids is not None:
        ids = np.asarray(fs.ids)
        if np.issubdtype(ids.dtype, np.integer):
            tensors["ids"] = ids.astype(np.int64)
        elif stream.ids_nbytes(ids) > stream.IDS_IN_HEADER_MAX:  # millions of ids: tensors, past the header's cap
            tensors[stream.IDS_OFFSETS_KEY], tensors[stream.IDS_BYTES_KEY] = stream.encode_ids(ids)
        else:
            all_meta["ids"] = [str(i) for i in ids]
    write_safetensors(path, tensors, kind="features", meta=all_meta, prov=prov)


def _pick(keys: Any, names: tuple[str, ...]) -> str | None:
    for n in names:
        if n in keys:
            return n
    return None


def _read_safetensors(p: Path, *, mmap: bool = False) -> FeatureSet:
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
    mapped = None
    if mmap:
        from dlsa_cli.io.stream import memmap_features

        mapped = memmap_features(p, mode="c")  # None for a dtype numpy cannot map (bfloat16): read as usual
    tensors, _, _, _ = read_safetensors(p, [k for k in (lkey, ikey) if k] + ([fkey] if mapped is None else []))
    ids = tensors[ikey].numpy() if ikey else _tensor_str_ids(p, header)
    meta = dict(meta)
    if ids is None and "ids" in meta:
        ids = np.asarray(meta.pop("ids"), dtype=str)
    else:
        meta.pop("ids", None)
    x = mapped if mapped is not None else tensors[fkey]
    x = x.float().numpy() if str(x.dtype) == "torch.bfloat16" else np.asarray(x)
    return FeatureSet(x, tensors[lkey].numpy() if lkey else None, ids, {"provenance": prov, **meta})


def _tensor_str_ids(p: Path, header: dict) -> np.ndarray | None:
    """String ids stored as byte tensors (files of millions of rows; see `dlsa_cli.io.stream`), or None."""
    from dlsa_cli.io.stream import IDS_OFFSETS_KEY, read_id_range

    return read_id_range(p, 0, int(header[IDS_OFFSETS_KEY][1][0]) - 1) if IDS_OFFSETS_KEY in header else None


def _read_parquet(p: Path) -> FeatureSet:
    table, kind, meta, prov = read_table(p)
    names = table.column_names
    lkey = _pick(names, _LABEL_KEYS)
    ikey = _pick(names, ("id", "ids"))
    fkey = _pick(names, _FEATURE_KEYS)
    fcols = [fkey] if fkey is not None else _parquet_dim_columns(table.schema, {lkey, ikey})
    if not fcols:
        raise InputError(
            "no feature columns: expected a list column 'features' or one numeric column per dimension",
            path=p,
        )
    x = _parquet_matrix(table, fcols, p, list_column=fkey is not None)
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


def unsafe_torch_file(p: Path, e: Exception) -> InputError:
    """The one line for a .pt/.pth that torch.load(weights_only=True) refuses (pickled objects, or not a torch file)."""
    first = str(e).splitlines()[0] if str(e) else ""
    if "Weights only load failed" in first or "Unsupported global" in str(e):
        what = "holds pickled Python objects beyond tensors, which are never loaded here (they could run code)"
    else:
        what = f"is not a readable torch file ({type(e).__name__})"
    return InputError(what, path=p, hint="save a tensor, or a dict of tensors (ids as a list of strings)")


def _read_pt(p: Path) -> FeatureSet:
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
        return FeatureSet(arr(obj))
    if isinstance(obj, dict):
        fkey = _pick(obj, _FEATURE_KEYS)
        if fkey is None:
            raise InputError(f"no features entry (it has {', '.join(map(str, obj))})", path=p, hint="name it 'features'")
        lkey = _pick(obj, _LABEL_KEYS)
        ikey = _pick(obj, _ID_KEYS)
        return FeatureSet(arr(obj[fkey]), arr(obj[lkey]) if lkey else None, arr(obj[ikey]) if ikey else None)
    raise InputError(f"holds a {type(obj).__name__}, expected a tensor or a dict of tensors", path=p)


@contextmanager
def _h5_features(p: Path) -> Iterator[tuple[Any, list[str], str]]:
    """(the open HDF5 file, its keys, its features key); any failure but ours is one "not a readable HDF5 file" line."""
    h5py = _h5py(p)
    try:
        with h5py.File(p, "r") as f:
            keys = list(f.keys())
            fkey = _pick(keys, _FEATURE_KEYS)
            if fkey is None:
                raise InputError(f"no 'features' dataset (it has {', '.join(keys)})", path=p)
            yield f, keys, fkey
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"not a readable HDF5 file ({e})", path=p) from None


def _h5_ids(values: np.ndarray) -> np.ndarray:
    """HDF5 ids as read: integers as they are, byte or object strings as str."""
    if values.dtype.kind in "SO":
        return np.array([i.decode() if isinstance(i, bytes) else str(i) for i in values])
    return values


def _read_h5(p: Path) -> FeatureSet:
    with _h5_features(p) as (f, keys, fkey):
        lkey, ikey = _pick(keys, _LABEL_KEYS), _pick(keys, _ID_KEYS)
        ids = _h5_ids(f[ikey][()]) if ikey else None
        return FeatureSet(f[fkey][()], f[lkey][()] if lkey else None, ids)




# ---------------------------------------------------------------------------
# Reading in slices: what a file holds without loading its matrix, batches of
# rows, and labels/ids alone.
# ---------------------------------------------------------------------------

_FORMATS = {
    ".safetensors": "safetensors",
    ".parquet": "parquet",
    ".npz": "npz",
    ".npy": "npy",
    ".pt": "pt",
    ".pth": "pt",
    ".h5": "h5",
    ".hdf5": "h5",
}


def _format_of(path: str | Path) -> tuple[Path, str]:
    p = require_file(path, "feature file")
    fmt = _FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise InputError(
            f"unknown feature file extension '{p.suffix.lower() or '(none)'}'",
            path=p,
            hint=f"use one of {', '.join(FEATURE_EXTENSIONS)}",
        )
    return p, fmt


@dataclass
class FeatureInfo:
    """What a feature file holds, read without loading its feature matrix."""

    path: Path
    format: str  # "safetensors", "parquet", "npz", "npy", "pt" or "h5"
    n: int
    dim: int
    dtype: str  # dtype of the stored matrix, e.g. "float16"
    has_labels: bool
    ids: str | None  # "int", "str", or None when the file has no ids
    kind: str | None  # the recorded dlsa_kind; None for files from other tools
    meta: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)


def _ids_kind(dtype: Any) -> str:
    return "int" if np.issubdtype(np.dtype(dtype), np.integer) else "str"


def _check_matrix_shape(shape: Any, p: Path, dtype: Any = None) -> tuple[int, int]:
    if dtype is not None and np.dtype(dtype).kind not in "fiub":
        raise InputError(
            f"the features array holds {np.dtype(dtype).name} values (Python objects or text), not numbers; "
            "such arrays are never read (they need pickle)",
            path=p,
            hint="store a plain numeric (N, D) array, e.g. X.astype('float32')",
        )
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2:
        raise InputError(f"features must be a 2-D (N, D) matrix, got shape {shape}", path=p)
    return shape


def feature_info(path: str | Path) -> FeatureInfo:
    """N, D, dtype, labels/ids present and metadata of a feature file.

    Reads headers only for .safetensors, .parquet, .npy, .npz and .h5; a .pt
    file has no header and is loaded whole.
    """
    p, fmt = _format_of(path)
    if fmt == "safetensors":
        header, kind, meta, prov = read_safetensors_header(p)
        fkey = _pick(header, _FEATURE_KEYS)
        if fkey is None:
            _read_safetensors(p)  # raises the reader's own message
        n, d = _check_matrix_shape(header[fkey][1], p)
        dtype = {"F16": "float16", "F32": "float32", "F64": "float64", "BF16": "bfloat16"}.get(
            header[fkey][0], header[fkey][0].lower()
        )
        meta = dict(meta)
        ids = "int" if "ids" in header else ("str" if "ids" in meta or "ids_offsets" in header else None)
        meta.pop("ids", None)
        return FeatureInfo(p, fmt, n, d, dtype, _pick(header, _LABEL_KEYS) is not None, ids, kind, meta, prov)
    if fmt == "parquet":
        import pyarrow as pa

        from dlsa_cli.io.files import read_table_metadata

        schema, rows, kind, meta, prov = read_table_metadata(p)
        names = schema.names
        lkey, ikey, fkey = _pick(names, _LABEL_KEYS), _pick(names, ("id", "ids")), _pick(names, _FEATURE_KEYS)
        if fkey is not None:
            t = schema.field(fkey).type
            if pa.types.is_fixed_size_list(t):
                d = t.list_size
            elif rows:
                first = next(_parquet_batches(p, 1, [fkey]))
                d = len(first.column(0)[0])
            else:
                d = 0
            dtype = str(t.value_type.to_pandas_dtype().__name__) if hasattr(t, "value_type") else str(t)
        else:
            dims = _parquet_dim_columns(schema, {lkey, ikey})
            if not dims:
                _read_parquet(p)  # raises the reader's own message
            d = len(dims)
            dtype = np.result_type(*[schema.field(c).type.to_pandas_dtype() for c in dims]).name
        ids = None if ikey is None else ("int" if pa.types.is_integer(schema.field(ikey).type) else "str")
        return FeatureInfo(p, fmt, rows, d, dtype, lkey is not None, ids, kind, meta, prov)
    if fmt == "npy":
        try:
            x = np.load(p, allow_pickle=False, mmap_mode="r")
        except Exception as e:
            raise InputError(f"not a readable .npy matrix ({e})", path=p) from None
        n, d = _check_matrix_shape(x.shape, p, x.dtype)
        return FeatureInfo(p, fmt, n, d, x.dtype.name, False, None, None)
    if fmt == "npz":
        heads = _npz_headers(p)
        fkey = _pick(heads, _FEATURE_KEYS)
        if fkey is None:
            raise InputError(f"no features array (it has {', '.join(heads)})", path=p, hint="name it 'features'")
        n, d = _check_matrix_shape(heads[fkey][0], p, heads[fkey][1])
        ikey = _pick(heads, _ID_KEYS)
        ids = None if ikey is None else _ids_kind(heads[ikey][1])
        return FeatureInfo(p, fmt, n, d, heads[fkey][1].name, _pick(heads, _LABEL_KEYS) is not None, ids, None)
    if fmt == "h5":
        with _h5_features(p) as (f, keys, fkey):
            n, d = _check_matrix_shape(f[fkey].shape, p)
            ikey = _pick(keys, _ID_KEYS)
            ids = None if ikey is None else ("int" if f[ikey].dtype.kind in "iu" else "str")
            return FeatureInfo(p, fmt, n, d, f[fkey].dtype.name, _pick(keys, _LABEL_KEYS) is not None, ids, None)
    fs = _read_pt(p)
    fs.path = p
    validate_features(fs, check_finite=False)
    ids = None if fs.ids is None else _ids_kind(fs.ids.dtype)
    return FeatureInfo(p, fmt, fs.n, fs.dim, fs.features.dtype.name, fs.labels is not None, ids, None)


def iter_feature_batches(
    path: str | Path, batch_size: int = 65536, *, check_finite: bool = False
) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """Yield `(start, features (B, D), labels (B,) or None)` in row order.

    Memory grows with the batch: safetensors slices (`safe_open().get_slice`),
    HDF5 slices, a memory-mapped .npy and Parquet row batches. .npz and .pt
    files are loaded whole and then sliced. Dtypes are normalised as in
    `read_features`; non-finite rows raise only with `check_finite=True`.
    """
    p, fmt = _format_of(path)
    info = feature_info(p)
    n = info.n
    if batch_size <= 0:
        raise ValueError("batch_size must be positive")

    def out(start: int, x: Any, y: Any) -> tuple[int, np.ndarray, np.ndarray | None]:
        fs = FeatureSet(np.asarray(x), None if y is None else np.asarray(y), path=p)
        try:
            validate_features(fs, check_finite=check_finite)
        except InputError as e:
            raise InputError(f"{e} (in rows {start}..{start + len(fs.features) - 1})") from None
        return start, fs.features, fs.labels

    if fmt == "safetensors":
        from safetensors import safe_open

        header, _, _, _ = read_safetensors_header(p)
        fkey, lkey = _pick(header, _FEATURE_KEYS), _pick(header, _LABEL_KEYS)
        bf16 = info.dtype == "bfloat16"  # numpy has no bfloat16: only then go through torch
        with safe_open(str(p), framework="pt" if bf16 else "numpy") as f:
            xs = f.get_slice(fkey)
            ys = f.get_slice(lkey) if lkey else None
            for a in range(0, n, batch_size):
                b = min(a + batch_size, n)
                x = xs[a:b]
                x = x.float().numpy() if bf16 else x
                y = None if ys is None else ys[a:b]
                yield out(a, x, y.numpy() if bf16 and y is not None else y)
    elif fmt == "h5":
        h5py = _h5py(p)
        with h5py.File(p, "r") as f:
            keys = list(f.keys())
            fkey, lkey = _pick(keys, _FEATURE_KEYS), _pick(keys, _LABEL_KEYS)
            for a in range(0, n, batch_size):
                b = min(a + batch_size, n)
                yield out(a, f[fkey][a:b], None if lkey is None else f[lkey][a:b])
    elif fmt == "npy":
        x = np.load(p, allow_pickle=False, mmap_mode="r")
        for a in range(0, n, batch_size):
            yield out(a, np.array(x[a : a + batch_size]), None)
    elif fmt == "parquet":
        from dlsa_cli.io.files import read_table_metadata

        schema = read_table_metadata(p)[0]
        names = schema.names
        lkey, ikey, fkey = _pick(names, _LABEL_KEYS), _pick(names, ("id", "ids")), _pick(names, _FEATURE_KEYS)
        fcols = [fkey] if fkey is not None else _parquet_dim_columns(schema, {lkey, ikey})
        a = 0
        for batch in _parquet_batches(p, batch_size, fcols + ([lkey] if lkey else [])):
            x = _parquet_matrix(batch, fcols, p, list_column=fkey is not None)
            y = batch.column(lkey).to_numpy(zero_copy_only=False) if lkey else None
            yield out(a, x, y)
            a += batch.num_rows
    else:
        fs = read_features(p, check_finite=False)
        for a in range(0, n, batch_size):
            yield out(a, fs.features[a : a + batch_size], None if fs.labels is None else fs.labels[a : a + batch_size])


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
            raise InputError("has no labels, which this step needs", path=self.path, hint="store them as 'labels' beside 'features'")
        return self.labels


def read_labels(path: str | Path, *, require_labels: bool = False) -> LabelSet:
    """Labels, ids and metadata of a feature file, leaving the matrix on disk where the format allows.

    `num_classes` and `train_counts` accept the result as they accept a FeatureSet.
    """
    p, fmt = _format_of(path)
    info = feature_info(p)
    y = ids = None
    meta: dict[str, Any] = {"provenance": info.provenance, **info.meta}
    if fmt == "safetensors":
        header, _, raw_meta, _ = read_safetensors_header(p)
        lkey = _pick(header, _LABEL_KEYS)
        ikey = "ids" if "ids" in header else None
        tensors = _safetensors_numpy(p, [k for k in (lkey, ikey) if k])
        y = tensors[lkey] if lkey else None
        ids = tensors[ikey] if ikey else (np.asarray(raw_meta["ids"], dtype=str) if "ids" in raw_meta else _tensor_str_ids(p, header))
    elif fmt == "parquet":
        from dlsa_cli.io.files import read_table_metadata

        schema = read_table_metadata(p)[0]
        lkey, ikey = _pick(schema.names, _LABEL_KEYS), _pick(schema.names, ("id", "ids"))
        cols = [k for k in (lkey, ikey) if k]
        if cols:
            table = read_table(p, cols)[0]
            y = table.column(lkey).to_numpy(zero_copy_only=False) if lkey else None
            ids = table.column(ikey).to_numpy(zero_copy_only=False) if ikey else None
    elif fmt == "h5":
        h5py = _h5py(p)
        with h5py.File(p, "r") as f:
            keys = list(f.keys())
            lkey, ikey = _pick(keys, _LABEL_KEYS), _pick(keys, _ID_KEYS)
            y = f[lkey][()] if lkey else None
            if ikey:
                ids = _h5_ids(f[ikey][()])
    elif fmt == "npz":
        with np.load(p, allow_pickle=False) as d:  # members load one at a time
            lkey, ikey = _pick(d.files, _LABEL_KEYS), _pick(d.files, _ID_KEYS)
            try:
                y = d[lkey] if lkey else None
                ids = d[ikey] if ikey else None
            except ValueError as e:
                raise InputError(f"cannot read .npz without pickle ({e})", path=p, hint="store plain numeric arrays") from None
    elif fmt == "pt":
        fs = _read_pt(p)
        y, ids = fs.labels, fs.ids
    ls = LabelSet(info.n, None if y is None else _check_labels(y, info.n, p), None if ids is None else _check_ids(ids, info.n, p), meta, p)
    if require_labels:
        ls.require_labels()
    return ls


def _safetensors_numpy(p: Path, names: list[str]) -> dict[str, np.ndarray]:
    """Some (integer) tensors of a safetensors file as numpy arrays, without importing torch."""
    if not names:
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="numpy") as f:
            return {k: f.get_tensor(k) for k in names}
    except Exception as e:  # safetensors raises its own error types
        raise InputError(f"not a readable safetensors file ({e})", path=p) from None


def _h5py(p: Path) -> Any:
    try:
        import h5py
    except ImportError:
        raise InputError("reading .h5 needs h5py", path=p, hint="pip install 'dlsa-cli[h5]'") from None
    return h5py


def _npz_headers(p: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in an .npz, from the member headers."""
    import zipfile

    out = {}
    try:
        with zipfile.ZipFile(p) as z:
            for name in z.namelist():
                if not name.endswith(".npy"):
                    continue
                with z.open(name) as f:
                    version = np.lib.format.read_magic(f)
                    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, dtype = reader(f)
                out[name[:-4]] = (shape, dtype)
    except Exception as e:
        raise InputError(f"not a readable .npz file ({e})", path=p) from None
    return out


def _parquet_dim_columns(schema: Any, skip: set[str | None]) -> list[str]:
    import pyarrow as pa

    return [
        n for n in schema.names
        if n not in skip
        and not n.startswith("__index_level_")  # a pandas index that to_parquet kept
        and (pa.types.is_floating(schema.field(n).type) or pa.types.is_integer(schema.field(n).type))
    ]


def _parquet_batches(p: Path, batch_size: int, columns: list[str]) -> Iterator[Any]:
    from dlsa_cli.io.files import iter_table

    return iter_table(p, columns, batch_size)


def _parquet_matrix(batch: Any, fcols: list[str], p: Path, *, list_column: bool) -> np.ndarray:
    """(B, D) matrix from a Parquet batch or table: one list column, or one column per dimension."""
    import pyarrow as pa

    if list_column:
        col = batch.column(fcols[0])
        if isinstance(col, pa.ChunkedArray):
            col = col.combine_chunks()
        if not (pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type) or pa.types.is_large_list(col.type)):
            raise InputError(f"column '{fcols[0]}' must be a list of numbers per row", path=p)
        if len(col) == 0:
            return np.zeros((0, 0), dtype=np.float32)
        if col.null_count:
            first = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise InputError(
                f"column '{fcols[0]}' has {col.null_count} empty (null) row(s), first at row {first} of this batch",
                path=p,
                hint="drop those rows or fill them with the sample's features",
            )
        lengths = np.unique(col.value_lengths().to_numpy(zero_copy_only=False))
        if len(lengths) != 1:
            raise InputError(f"rows of column '{fcols[0]}' have different lengths {lengths[:5].tolist()}", path=p)
        return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), int(lengths[0]))
    return np.stack([batch.column(c).to_numpy(zero_copy_only=False) for c in fcols], axis=1)


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
