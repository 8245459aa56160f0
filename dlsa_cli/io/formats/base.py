"""What every feature format reads into, and the checks every read passes.

- `FeatureSet`: features (N, D), labels (N,), ids (N,) and metadata of a whole file;
- `RowBatch`: the same for rows start..stop;
- `FeatureInfo`: what a file holds, from its header where the format has one;
- `validate_features`: shapes, dtypes and values of a FeatureSet, normalised in place;
- the names a format's features, labels and ids may be stored under, and `pick`.

A format module (`dlsa_cli.io.formats.<name>`) returns these records as
stored (unvalidated); `dlsa_cli.io.features` validates them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from dlsa_cli.errors import InputError

__all__ = [
    "FEATURE_KEYS",
    "ID_KEYS",
    "LABEL_KEYS",
    "TABLE_ID_KEYS",
    "FeatureInfo",
    "FeatureSet",
    "MapMode",
    "RowBatch",
    "check_ids",
    "check_label_range",
    "check_labels",
    "check_matrix_shape",
    "check_meta",
    "ids_kind",
    "pick",
    "ranges",
    "recorded_classes",
    "validate_features",
]

FEATURE_KEYS = ("features", "feature", "feats", "F", "X", "x")
LABEL_KEYS = ("labels", "label", "y", "targets")
ID_KEYS = ("ids", "id", "files", "paths")
TABLE_ID_KEYS = ("id", "ids")  # a Parquet table's id column

MapMode = Literal["r", "c"]  # a memory map read-only, or copy-on-write (writable in memory, never the file)


def pick(keys: Collection[str], names: tuple[str, ...]) -> str | None:
    """The first of `names` present in `keys`, or None."""
    for n in names:
        if n in keys:
            return n
    return None


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


@dataclass
class RowBatch:
    """Rows start..start+len of a feature file: features (B, D), labels (B,) or None, ids (B,) or None."""

    start: int
    features: np.ndarray
    labels: np.ndarray | None = None
    ids: np.ndarray | None = None

    @property
    def stop(self) -> int:
        return self.start + int(self.features.shape[0])


@dataclass
class FeatureInfo:
    """What a feature file holds, read without loading its feature matrix."""

    path: Path
    format: str  # the format's NAME: "safetensors", "parquet", "npz", "npy", "pt" or "h5"
    n: int
    dim: int
    dtype: str  # dtype of the stored matrix, e.g. "float16"
    has_labels: bool
    ids: str | None  # "int", "str", or None when the file has no ids
    kind: str | None  # the recorded dlsa_kind; None for files from other tools
    meta: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)


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
        fs.labels = check_labels(fs.labels, n, p)
    if fs.ids is not None:
        fs.ids = check_ids(fs.ids, n, p)


def _nonfinite_rows(x: np.ndarray, chunk_bytes: int = 64 * 2**20) -> np.ndarray:
    """(N,) True where a row holds NaN or infinity, checked a chunk of rows at a time (no N x D temporary)."""
    step = max(1, chunk_bytes // max(x.shape[1] * x.itemsize, 1))
    return np.concatenate([~np.isfinite(x[a : a + step]).all(axis=1) for a in range(0, x.shape[0], step)])


def check_labels(labels: Any, n: int, p: Path | None) -> np.ndarray:
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


def check_ids(ids: Any, n: int, p: Path | None) -> np.ndarray:
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


def check_meta(meta: dict[str, Any], p: Path | None) -> None:
    """The class fields a feature file's metadata may record, by type and range, or a one-line InputError:
    `num_classes` a whole number >= 1, `class_names` a list of strings, `train_counts` a list of counts >= 0."""
    def bad(key: str, what: str) -> InputError:
        return InputError(f"metadata '{key}' must be {what}, got {_preview(meta[key])}", path=p)

    if "num_classes" in meta and not (_is_int(meta["num_classes"]) and meta["num_classes"] >= 1):
        raise bad("num_classes", "a whole number >= 1")
    if "class_names" in meta and not (isinstance(meta["class_names"], list)
                                      and all(isinstance(v, str) for v in meta["class_names"])):
        raise bad("class_names", "a list of strings")
    if "train_counts" in meta and not (isinstance(meta["train_counts"], list)
                                       and all(_is_int(v) and v >= 0 for v in meta["train_counts"])):
        raise bad("train_counts", "a list of whole numbers >= 0")


def recorded_classes(meta: dict[str, Any]) -> int | None:
    """The class count the metadata records (`num_classes`, else the length of `class_names` or
    `train_counts`), or None; the fields are taken as `check_meta` accepted them."""
    if _is_int(meta.get("num_classes")):
        return int(meta["num_classes"])
    for key in ("class_names", "train_counts"):
        if isinstance(meta.get(key), list):
            return len(meta[key])
    return None


def check_label_range(y: np.ndarray | None, meta: dict[str, Any], p: Path | None, where: str = "") -> None:
    """Labels must lie below the class count the metadata records: a one-line InputError otherwise."""
    c = recorded_classes(meta)
    if y is not None and y.size and c is not None and int(y.max()) >= c:
        raise InputError(f"label {int(y.max())}{where} is out of range for the {c} classes its metadata records",
                         path=p, hint="fix num_classes / class_names / train_counts, or the labels")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _preview(v: Any) -> str:
    """A value as a short text for an error line."""
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def check_matrix_shape(shape: Any, p: Path, dtype: Any = None) -> tuple[int, int]:
    """(N, D) of a stored features array, or a one-line InputError (not 2-D, or not numbers)."""
    if dtype is not None and np.dtype(dtype).kind not in "fiub":
        raise InputError(
            f"the features array holds {np.dtype(dtype).name} values (Python objects or text), not numbers; "
            "such arrays are never read (they need pickle)",
            path=p,
            hint="store a plain numeric (N, D) array, e.g. X.astype('float32')",
        )
    dims = tuple(int(s) for s in shape)
    if len(dims) != 2:
        raise InputError(f"features must be a 2-D (N, D) matrix, got shape {dims}", path=p)
    return dims[0], dims[1]


def ids_kind(dtype: Any) -> str:
    """"int" for integer ids, "str" for any other."""
    return "int" if np.issubdtype(np.dtype(dtype), np.integer) else "str"


def ranges(start: int, stop: int, batch_size: int) -> Iterator[tuple[int, int]]:
    """(a, b) row ranges of at most `batch_size` rows covering start..stop."""
    for a in range(start, stop, batch_size):
        yield a, min(a + batch_size, stop)
