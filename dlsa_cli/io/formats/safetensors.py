"""The canonical feature file: safetensors (`.safetensors`), the one writable format.

Tensors `features` (N, D) float32 or float16 (bfloat16 is read as float32),
`labels` (N,) int64 where known, and ids: integer ids as an `ids` tensor;
string ids as a JSON list in the metadata, or, past `IDS_IN_HEADER_MAX` bytes
(safetensors caps its header at 100 MB, a few million ids), as two tensors:
`ids_utf8` (U8, the UTF-8 bytes of all ids one after another) and
`ids_offsets` (I64, N + 1 byte offsets), so a range of ids is read without
the rest. Readers accept every layout. The metadata is that of every dlsa
file (`dlsa_cli.io.files`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dlsa_cli.errors import InputError
from dlsa_cli.io.files import (
    read_safetensors,
    read_safetensors_header,
    write_safetensors,
)
from dlsa_cli.io.formats.base import (
    FEATURE_KEYS,
    LABEL_KEYS,
    FeatureInfo,
    FeatureSet,
    MapMode,
    RowBatch,
    check_matrix_shape,
    pick,
    ranges,
)

__all__ = [
    "IDS_BYTES_KEY",
    "IDS_IN_HEADER_MAX",
    "IDS_OFFSETS_KEY",
    "NAME",
    "SUFFIXES",
    "decode_ids",
    "encode_ids",
    "ids_nbytes",
    "info",
    "labels",
    "memmap",
    "read",
    "read_id_range",
    "rows",
    "write",
]

NAME = "safetensors"
SUFFIXES = (".safetensors",)

IDS_IN_HEADER_MAX = 16 * 2**20  # bytes of JSON string ids kept in the header; past it, the tensor layout
IDS_BYTES_KEY = "ids_utf8"
IDS_OFFSETS_KEY = "ids_offsets"

_DTYPE_NAMES = {"F16": "float16", "F32": "float32", "F64": "float64", "BF16": "bfloat16"}


def _features_key(p: Path, header: dict, kind: str | None) -> str:
    fkey = pick(header, FEATURE_KEYS)
    if fkey is None:
        raise InputError(
            f"no 'features' tensor (it has {', '.join(header) or 'none'})",
            path=p,
            hint="is this a feature file?" + (f" It is a dlsa '{kind}' file" if kind and kind != "features" else ""),
        )
    return fkey


def info(p: Path) -> FeatureInfo:
    """N, D, dtype, labels/ids present and metadata, from the header alone."""
    header, kind, meta, prov = read_safetensors_header(p)
    fkey = _features_key(p, header, kind)
    n, d = check_matrix_shape(header[fkey][1], p)
    dtype = _DTYPE_NAMES.get(header[fkey][0], header[fkey][0].lower())
    meta = dict(meta)
    ids = "int" if "ids" in header else ("str" if "ids" in meta or IDS_OFFSETS_KEY in header else None)
    meta.pop("ids", None)
    return FeatureInfo(p, NAME, n, d, dtype, pick(header, LABEL_KEYS) is not None, ids, kind, meta, prov)


def read(p: Path, *, mmap: bool = False) -> FeatureSet:
    """The whole file; `mmap`: a float16/float32 matrix is mapped copy-on-write instead of read."""
    header, kind, meta, prov = read_safetensors_header(p)
    fkey = _features_key(p, header, kind)
    lkey = pick(header, LABEL_KEYS)
    ikey = "ids" if "ids" in header else None
    mapped = memmap(p, mode="c") if mmap else None  # None for a dtype numpy cannot map (bfloat16): read as usual
    tensors, _, _, _ = read_safetensors(p, [k for k in (lkey, ikey) if k] + ([fkey] if mapped is None else []))
    ids = tensors[ikey].numpy() if ikey else _tensor_str_ids(p, header)
    meta = dict(meta)
    if ids is None and "ids" in meta:
        ids = np.asarray(meta.pop("ids"), dtype=str)
    else:
        meta.pop("ids", None)
    if mapped is not None:
        x = mapped
    else:
        t = tensors[fkey]
        x = t.float().numpy() if str(t.dtype) == "torch.bfloat16" else np.asarray(t)
    return FeatureSet(x, tensors[lkey].numpy() if lkey else None, ids, {"provenance": prov, **meta}, p)


def rows(p: Path, batch_size: int, start: int, stop: int) -> Iterator[RowBatch]:
    """Rows start..stop as slices (`safe_open().get_slice`): memory grows with the batch."""
    from safetensors import safe_open

    header, kind, meta, _ = read_safetensors_header(p)
    fkey, lkey = _features_key(p, header, kind), pick(header, LABEL_KEYS)
    bf16 = header[fkey][0] == "BF16"  # numpy has no bfloat16: only then go through torch
    with safe_open(str(p), framework="pt" if bf16 else "numpy") as f:
        xs, ys = f.get_slice(fkey), (f.get_slice(lkey) if lkey else None)
        for a, b in ranges(start, stop, batch_size):
            x = xs[a:b].float().numpy() if bf16 else xs[a:b]
            y = None if ys is None else (ys[a:b].numpy() if bf16 else ys[a:b])
            yield RowBatch(a, x, y, _ids_slice(f, header, meta, a, b, bf16))


def labels(p: Path) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(labels, ids) as stored, without reading the matrix (nor importing torch)."""
    header, _, meta, _ = read_safetensors_header(p)
    lkey = pick(header, LABEL_KEYS)
    ikey = "ids" if "ids" in header else None
    tensors = _numpy_tensors(p, [k for k in (lkey, ikey) if k])
    y = tensors[lkey] if lkey else None
    if ikey:
        return y, tensors[ikey]
    return y, (np.asarray(meta["ids"], dtype=str) if "ids" in meta else _tensor_str_ids(p, header))


def write(
    path: str | Path,
    fs: FeatureSet,
    *,
    prov: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    dtype: str | None = None,
) -> None:
    """Write the canonical feature file atomically (string ids in the header, or past its cap in tensors)."""
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
        elif ids_nbytes(ids) > IDS_IN_HEADER_MAX:  # millions of ids: tensors, past the header's cap
            tensors[IDS_OFFSETS_KEY], tensors[IDS_BYTES_KEY] = encode_ids(ids)
        else:
            all_meta["ids"] = [str(i) for i in ids]
    write_safetensors(path, tensors, kind="features", meta=all_meta, prov=prov)


def memmap(p: Path, mode: MapMode = "r") -> np.ndarray | None:
    """The (N, D) float16/float32 matrix mapped ("r" read-only, "c" copy-on-write); None for other dtypes."""
    with open(p, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        head = json.loads(f.read(n))
    fkey = pick(head, FEATURE_KEYS)
    if fkey is None or head[fkey]["dtype"] not in ("F16",
                                                   "F32") or len(head[fkey]["shape"]) != 2 or 0 in head[fkey]["shape"]:
        return None
    begin, _ = head[fkey]["data_offsets"]
    dtype = np.dtype("float16" if head[fkey]["dtype"] == "F16" else "float32")
    return np.memmap(p, dtype=dtype, mode=mode, offset=8 + n + begin, shape=tuple(head[fkey]["shape"]))


# ----------------------------------------------------------------------------- string ids


def encode_ids(ids: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """String ids as (offsets (n + 1,) int64 from 0, UTF-8 bytes (total,) uint8)."""
    enc = [str(i).encode() for i in ids]
    offsets = np.zeros(len(enc) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in enc], out=offsets[1:])
    return offsets, np.frombuffer(b"".join(enc), dtype=np.uint8).copy()


def decode_ids(offsets: np.ndarray, data: np.ndarray) -> np.ndarray:
    """The inverse of `encode_ids` for any slice: offsets (k + 1,) (absolute), data starting at offsets[0]."""
    raw = np.asarray(data, dtype=np.uint8).tobytes()
    o = np.asarray(offsets, dtype=np.int64) - int(offsets[0])
    return np.array([raw[o[i] : o[i + 1]].decode() for i in range(len(o) - 1)], dtype=str)


def ids_nbytes(ids: Sequence[Any] | np.ndarray) -> int:
    """UTF-8 bytes of string ids, the size that picks the header or the tensor layout."""
    return sum(len(str(i).encode()) for i in ids)


def read_id_range(path: str | Path, start: int, stop: int) -> np.ndarray | None:
    """Ids of rows start..stop of a safetensors feature file (int tensor, byte tensors or header list), or None."""
    from safetensors import safe_open

    header, _, meta, _ = read_safetensors_header(path)
    with safe_open(str(path), framework="numpy") as f:
        ids = _ids_slice(f, header, meta, start, stop, False)
    return ids.astype(np.int64) if "ids" in header and ids is not None else ids


def _ids_slice(f: Any, header: dict, meta: dict, a: int, b: int, torch_framework: bool) -> np.ndarray | None:
    def arr(v: Any) -> np.ndarray:
        return v.numpy() if torch_framework else v

    if "ids" in header:
        return arr(f.get_slice("ids")[a:b])
    if IDS_OFFSETS_KEY in header:
        off = arr(f.get_slice(IDS_OFFSETS_KEY)[a : b + 1])
        return decode_ids(off, arr(f.get_slice(IDS_BYTES_KEY)[int(off[0]) : int(off[-1])]))
    return np.asarray(meta["ids"][a:b], dtype=str) if "ids" in meta else None


def _tensor_str_ids(p: Path, header: dict) -> np.ndarray | None:
    """String ids stored as byte tensors (files of millions of rows), or None."""
    return read_id_range(p, 0, int(header[IDS_OFFSETS_KEY][1][0]) - 1) if IDS_OFFSETS_KEY in header else None


def _numpy_tensors(p: Path, names: list[str]) -> dict[str, np.ndarray]:
    """Some (integer) tensors as numpy arrays, without importing torch."""
    if not names:
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="numpy") as f:
            return {k: f.get_tensor(k) for k in names}
    except Exception as e:  # safetensors raises its own error types
        raise InputError(f"not a readable safetensors file ({e})", path=p) from None
