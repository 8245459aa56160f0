"""Files larger than memory: reading rows in ranges, writing outputs batch by batch.

Writers (each writes to a temporary name beside the target and renames it
into place only when complete, as `dlsa_cli.io.files` does):
- `SafetensorsSink` (`stream_safetensors`): a safetensors file whose header
  (every tensor's dtype and shape, hence every byte offset) is written first
  into a file sized from it; rows are then written at their offsets, batch
  by batch, in any order. Its header is known once the row counts are, so a
  command that must count first (split's routed / rest files) counts in one
  pass and fills in a second.
- `FeatureSink` (`stream_features`): the canonical feature file through a
  `SafetensorsSink`, appended to in row order.
- `TableSink` (`stream_table`): a Parquet table written by row groups, into
  one or more ordered parts (one per rank when ranks' rows arrive
  interleaved); on close the parts are copied, row group by row group, into
  the final file with the dlsa metadata, which may be completed meanwhile
  (`sink.meta`), e.g. with a report computed from all rows.

String ids: today's files keep them as a JSON list in the safetensors header,
which safetensors caps at 100 MB (a few million ids). Past `IDS_IN_HEADER_MAX`
bytes they are stored as two tensors instead, `ids_utf8` (U8, the UTF-8 bytes
of all ids one after another) and `ids_offsets` (I64, N + 1 byte offsets), so
a range of ids is read without the rest. Readers accept both layouts.

Readers: `iter_rows(path, batch_size, start, stop)` yields `RowBatch`es of
features, labels and ids for any row range of every feature format (slices
for safetensors, HDF5, .npy and Parquet row groups; .npz and .pt are loaded
whole, as they cannot be sliced); `memmap_features` maps a safetensors or
.npy matrix without reading it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlsa_cli.errors import InputError
from dlsa_cli.io.files import KIND_KEY, META_KEY, PROV_KEY, _json_default, atomic_path, read_safetensors_header

__all__ = [
    "IDS_IN_HEADER_MAX",
    "IDS_BYTES_KEY",
    "IDS_OFFSETS_KEY",
    "SafetensorsSink",
    "stream_safetensors",
    "FeatureSink",
    "stream_features",
    "TableSink",
    "stream_table",
    "encode_ids",
    "decode_ids",
    "ids_nbytes",
    "read_id_range",
    "RowBatch",
    "iter_rows",
    "memmap_features",
]

IDS_IN_HEADER_MAX = 16 * 2**20  # bytes of JSON string ids kept in the header; past it, the tensor layout
IDS_BYTES_KEY = "ids_utf8"
IDS_OFFSETS_KEY = "ids_offsets"
_HEADER_MAX = 100 * 2**20  # safetensors' own cap

_ST_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "int64": "I64", "int32": "I32",
    "int16": "I16", "int8": "I8", "uint8": "U8", "uint16": "U16", "uint32": "U32", "uint64": "U64", "bool": "BOOL",
}
_NP_DTYPES = {v: k for k, v in _ST_DTYPES.items()}

# ----------------------------------------------------------------------------- safetensors, filled by offset


class SafetensorsSink:
    """An open, pre-sized safetensors file; `write(name, start, rows)` puts rows at their offsets."""

    def __init__(self, fd: int, layout: dict[str, tuple[np.dtype, tuple[int, ...], int]]):
        self._fd = fd
        self._layout = layout  # name -> (dtype, shape, absolute byte offset)
        self._rows = {name: 0 for name in layout}

    def write(self, name: str, start: int, rows: np.ndarray) -> None:
        """Write `rows` (k, *shape[1:]) as rows start..start+k of tensor `name`."""
        dtype, shape, offset = self._layout[name]
        a = np.ascontiguousarray(np.asarray(rows), dtype=dtype)
        if tuple(a.shape[1:]) != tuple(shape[1:]) or start < 0 or start + a.shape[0] > shape[0]:
            raise ValueError(f"{name}: rows {start}..{start + a.shape[0]} of shape {a.shape} do not fit {shape}")
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        buf = memoryview(a.reshape(-1).view(np.uint8))
        pos = offset + start * row_bytes
        while buf.nbytes:  # pwrite may write less than asked
            done = os.pwrite(self._fd, buf, pos)
            buf, pos = buf[done:], pos + done
        self._rows[name] += a.shape[0]

    def missing(self) -> list[str]:
        """Tensors that did not receive as many rows as their shape holds."""
        return [n for n, (_, shape, _) in self._layout.items() if self._rows[n] != (shape[0] if shape else 1)]


def _dtype(d: Any) -> np.dtype:
    dt = np.dtype(d)
    if dt.name not in _ST_DTYPES:
        raise ValueError(f"safetensors has no dtype for {dt}")
    return dt


def _header(spec: Mapping[str, tuple[Any, Sequence[int]]], metadata: dict[str, str]) -> tuple[bytes, dict]:
    """The header bytes (padded to 8) and name -> (dtype, shape, offset in the data buffer)."""
    items = sorted(((n, _dtype(d), tuple(int(s) for s in shape)) for n, (d, shape) in spec.items()),
                   key=lambda t: (-t[1].itemsize, t[0]))  # widest first keeps every tensor aligned
    head: dict[str, Any] = {"__metadata__": metadata}
    layout, pos = {}, 0
    for name, dt, shape in items:
        size = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        head[name] = {"dtype": _ST_DTYPES[dt.name], "shape": list(shape), "data_offsets": [pos, pos + size]}
        layout[name] = (dt, shape, pos)
        pos += size
    raw = json.dumps(head, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    if len(raw) > _HEADER_MAX:
        raise ValueError(f"safetensors header of {len(raw)} bytes exceeds the 100 MB cap")
    return raw, layout


def _encode(kind: str, meta: Mapping[str, Any] | None, prov: Mapping[str, Any] | None) -> dict[str, str]:
    return {
        KIND_KEY: kind,
        META_KEY: json.dumps(dict(meta or {}), default=_json_default),
        PROV_KEY: json.dumps(dict(prov or {}), default=_json_default),
    }


@contextlib.contextmanager
def stream_safetensors(
    path: str | Path,
    spec: Mapping[str, tuple[Any, Sequence[int]]],
    *,
    kind: str,
    meta: Mapping[str, Any] | None = None,
    prov: Mapping[str, Any] | None = None,
) -> Iterator[SafetensorsSink]:
    """A safetensors file of tensors `spec` {name: (dtype, shape)}, filled through the sink.

    The file appears at `path` only when the block ends without an error and
    every tensor got all its rows.
    """
    raw, layout = _header(spec, _encode(kind, meta, prov))
    total = 8 + len(raw) + sum(int(np.prod(s, dtype=np.int64)) * d.itemsize for d, s, _ in layout.values())
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_RDWR | os.O_TRUNC)
        try:
            os.ftruncate(fd, total)
            os.pwrite(fd, len(raw).to_bytes(8, "little") + raw, 0)
            base = 8 + len(raw)
            sink = SafetensorsSink(fd, {n: (d, s, base + o) for n, (d, s, o) in layout.items()})
            yield sink
            if sink.missing():
                raise RuntimeError(f"stream_safetensors: tensors not filled: {', '.join(sink.missing())}")
            os.fsync(fd)
        finally:
            os.close(fd)


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
        if "ids" in header:
            return f.get_slice("ids")[start:stop].astype(np.int64)
        if IDS_OFFSETS_KEY in header:
            off = f.get_slice(IDS_OFFSETS_KEY)[start : stop + 1]
            return decode_ids(off, f.get_slice(IDS_BYTES_KEY)[int(off[0]) : int(off[-1])])
    return np.asarray(meta["ids"][start:stop], dtype=str) if "ids" in meta else None


# ----------------------------------------------------------------------------- feature files, appended in row order


class FeatureSink:
    """Appends rows of features, labels, ids and extra per-sample tensors to a pre-sized feature file."""

    def __init__(self, sink: SafetensorsSink, ids: str | None, extra: Sequence[str]):
        self._sink = sink
        self._ids = ids
        self._extra = tuple(extra)
        self.rows = 0
        self._id_pos = 0

    def append(self, features: np.ndarray, labels: np.ndarray | None = None, ids: np.ndarray | None = None,
               **extra: np.ndarray) -> None:
        """Rows (B, D) and their labels (B,), ids (B,) and extra tensors (B, ...) after the ones written so far."""
        a, k = self.rows, int(features.shape[0])
        self._sink.write("features", a, features)
        if labels is not None:
            self._sink.write("labels", a, np.asarray(labels, dtype=np.int64))
        if self._ids == "int":
            self._sink.write("ids", a, np.asarray(ids, dtype=np.int64))
        elif self._ids == "str":
            off, data = encode_ids(ids)
            self._sink.write(IDS_OFFSETS_KEY, a + 1, off[1:] + self._id_pos)
            self._sink.write(IDS_BYTES_KEY, self._id_pos, data)
            self._id_pos += int(off[-1])
        for name in self._extra:
            self._sink.write(name, a, extra[name])
        self.rows = a + k


@contextlib.contextmanager
def stream_features(
    path: str | Path,
    n: int,
    dim: int,
    *,
    dtype: Any = np.float32,
    labels: bool = True,
    ids: str | None = None,
    ids_bytes: int = 0,
    header_ids: Sequence[str] | None = None,
    extra: Mapping[str, tuple[Any, Sequence[int]]] | None = None,
    meta: Mapping[str, Any] | None = None,
    prov: Mapping[str, Any] | None = None,
) -> Iterator[FeatureSink]:
    """A canonical feature file of n rows (kind "features"), appended to through the sink.

    ids: "int" (an `ids` tensor), "str" (the `ids_utf8` / `ids_offsets`
    tensors, `ids_bytes` long) or None; string ids small enough for the
    header are passed whole as `header_ids` instead (and not appended).
    extra: per-sample tensors {name: (dtype, shape after the row)}.
    """
    spec: dict[str, tuple[Any, Sequence[int]]] = {"features": (dtype, (n, dim))}
    if labels:
        spec["labels"] = (np.int64, (n,))
    meta = dict(meta or {})
    if header_ids is not None:
        meta["ids"] = [str(i) for i in header_ids]
        ids = None
    elif ids == "int":
        spec["ids"] = (np.int64, (n,))
    elif ids == "str":
        spec[IDS_OFFSETS_KEY] = (np.int64, (n + 1,))
        spec[IDS_BYTES_KEY] = (np.uint8, (ids_bytes,))
    for name, (d, tail) in (extra or {}).items():
        spec[name] = (d, (n, *tail))
    with stream_safetensors(path, spec, kind="features", meta=meta, prov=prov) as sink:
        if ids == "str":
            sink.write(IDS_OFFSETS_KEY, 0, np.zeros(1, dtype=np.int64))
        fsink = FeatureSink(sink, ids, list(extra or {}))
        yield fsink
        if fsink.rows != n:
            raise RuntimeError(f"stream_features: {fsink.rows} of {n} rows written")


# ----------------------------------------------------------------------------- Parquet, by row groups


class TableSink:
    """Parquet row groups appended to ordered parts; `meta` may be completed until the block ends."""

    def __init__(self, folder: Path, parts: int, meta: dict[str, Any]):
        self._folder = folder
        self._writers: list[Any] = [None] * parts
        self.meta = meta
        self.rows = 0

    def _path(self, part: int) -> Path:
        return self._folder / f"part-{part:05d}.parquet"

    def write(self, columns: Mapping[str, Any], part: int = 0) -> None:
        """Append one row group of `columns` (name -> (B,) array) to `part`."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from dlsa_cli.io.files import _column

        table = pa.table({k: _column(v) for k, v in columns.items()})
        if self._writers[part] is None:
            self._writers[part] = pq.ParquetWriter(str(self._path(part)), table.schema)
        self._writers[part].write_table(table)
        self.rows += table.num_rows

    def _close_parts(self) -> list[Path]:
        for w in self._writers:
            if w is not None:
                w.close()
        return [self._path(i) for i, w in enumerate(self._writers) if w is not None]


@contextlib.contextmanager
def stream_table(
    path: str | Path,
    *,
    kind: str,
    meta: Mapping[str, Any] | None = None,
    prov: Mapping[str, Any] | None = None,
    parts: int = 1,
) -> Iterator[TableSink]:
    """A Parquet table written by row groups into `parts` ordered parts, joined into `path` on success."""
    import shutil
    import tempfile

    import pyarrow.parquet as pq

    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise InputError("output folder does not exist", path=parent, hint="create it first")
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".parts", dir=parent))
    sink = TableSink(folder, parts, dict(meta or {}))
    try:
        yield sink
        files = sink._close_parts()
        if not files:
            raise RuntimeError("stream_table: no rows were written")
        enc = {k.encode(): v.encode() for k, v in _encode(kind, sink.meta, prov).items()}
        schema = pq.read_schema(str(files[0])).with_metadata(enc)
        with atomic_path(target) as tmp:
            writer = pq.ParquetWriter(str(tmp), schema)
            try:
                for f in files:
                    pf = pq.ParquetFile(str(f))
                    for g in range(pf.num_row_groups):
                        writer.write_table(pf.read_row_group(g).replace_schema_metadata(enc))
            finally:
                writer.close()
    finally:
        for w in sink._writers:
            with contextlib.suppress(Exception):
                if w is not None:
                    w.close()
        shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------------------------- reading row ranges


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


def iter_rows(
    path: str | Path,
    batch_size: int = 65536,
    start: int = 0,
    stop: int | None = None,
    *,
    check_finite: bool = True,
) -> Iterator[RowBatch]:
    """Yield RowBatches covering rows start..stop of a feature file, in order, memory bounded by the batch.

    Dtypes and values are checked as `read_features` checks them (per batch;
    id uniqueness is the writer's promise and is not re-checked here).
    """
    from dlsa_cli.io.features import feature_info

    info = feature_info(path)
    stop = info.n if stop is None else min(int(stop), info.n)
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    if not 0 <= start <= stop:
        raise ValueError(f"no rows {start}..{stop} in a file of {info.n}")
    reader = {"safetensors": _rows_safetensors, "h5": _rows_h5, "npy": _rows_npy, "parquet": _rows_parquet}.get(
        info.format, _rows_whole
    )
    for a, x, y, ids in reader(info.path, batch_size, start, stop):
        yield _checked(info.path, a, x, y, ids, check_finite)


def _checked(p: Path, a: int, x: Any, y: Any, ids: Any, check_finite: bool) -> RowBatch:
    from dlsa_cli.io.features import FeatureSet, validate_features

    fs = FeatureSet(np.asarray(x), None if y is None else np.asarray(y), None if ids is None else np.asarray(ids), path=p)
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


def _ranges(start: int, stop: int, batch_size: int) -> Iterator[tuple[int, int]]:
    for a in range(start, stop, batch_size):
        yield a, min(a + batch_size, stop)


def _rows_safetensors(p: Path, bs: int, start: int, stop: int) -> Iterator[tuple]:
    from safetensors import safe_open

    from dlsa_cli.io.features import _FEATURE_KEYS, _LABEL_KEYS, _pick

    header, _, meta, _ = read_safetensors_header(p)
    fkey, lkey = _pick(header, _FEATURE_KEYS), _pick(header, _LABEL_KEYS)
    bf16 = header[fkey][0] == "BF16"  # numpy has no bfloat16: only then go through torch
    with safe_open(str(p), framework="pt" if bf16 else "numpy") as f:
        xs, ys = f.get_slice(fkey), (f.get_slice(lkey) if lkey else None)
        for a, b in _ranges(start, stop, bs):
            x = xs[a:b].float().numpy() if bf16 else xs[a:b]
            y = None if ys is None else (ys[a:b].numpy() if bf16 else ys[a:b])
            yield a, x, y, _ids_slice(f, header, meta, a, b, bf16)


def _ids_slice(f: Any, header: dict, meta: dict, a: int, b: int, torch_framework: bool) -> np.ndarray | None:
    def arr(v: Any) -> np.ndarray:
        return v.numpy() if torch_framework else v

    if "ids" in header:
        return arr(f.get_slice("ids")[a:b])
    if IDS_OFFSETS_KEY in header:
        off = arr(f.get_slice(IDS_OFFSETS_KEY)[a : b + 1])
        return decode_ids(off, arr(f.get_slice(IDS_BYTES_KEY)[int(off[0]) : int(off[-1])]))
    return np.asarray(meta["ids"][a:b], dtype=str) if "ids" in meta else None


def _rows_h5(p: Path, bs: int, start: int, stop: int) -> Iterator[tuple]:
    from dlsa_cli.io.features import _FEATURE_KEYS, _ID_KEYS, _LABEL_KEYS, _h5_ids, _h5py, _pick

    with _h5py(p).File(p, "r") as f:
        keys = list(f.keys())
        fkey, lkey, ikey = _pick(keys, _FEATURE_KEYS), _pick(keys, _LABEL_KEYS), _pick(keys, _ID_KEYS)
        for a, b in _ranges(start, stop, bs):
            ids = _h5_ids(f[ikey][a:b]) if ikey else None
            yield a, f[fkey][a:b], (f[lkey][a:b] if lkey else None), ids


def _rows_npy(p: Path, bs: int, start: int, stop: int) -> Iterator[tuple]:
    x = np.load(p, allow_pickle=False, mmap_mode="r")
    for a, b in _ranges(start, stop, bs):
        yield a, np.array(x[a:b]), None, None


def _rows_parquet(p: Path, bs: int, start: int, stop: int) -> Iterator[tuple]:
    """Only the row groups that overlap start..stop are read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dlsa_cli.io.features import _FEATURE_KEYS, _LABEL_KEYS, _parquet_dim_columns, _parquet_matrix, _pick

    pf = pq.ParquetFile(str(p))
    names = pf.schema_arrow.names
    lkey, ikey, fkey = _pick(names, _LABEL_KEYS), _pick(names, ("id", "ids")), _pick(names, _FEATURE_KEYS)
    fcols = [fkey] if fkey is not None else _parquet_dim_columns(pf.schema_arrow, {lkey, ikey})
    cols = fcols + [k for k in (lkey, ikey) if k]
    bounds = np.concatenate([[0], np.cumsum([pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])])
    groups = [g for g in range(pf.num_row_groups) if bounds[g] < stop and bounds[g + 1] > start]
    pending: list[Any] = []
    pos = int(bounds[groups[0]]) if groups else start
    a = start
    for batch in (pf.iter_batches(batch_size=bs, columns=cols, row_groups=groups) if groups else []):
        lo, hi = max(start - pos, 0), min(stop - pos, batch.num_rows)
        pos += batch.num_rows
        if hi > lo:
            pending.append(batch.slice(lo, hi - lo))
        while pending and (sum(b.num_rows for b in pending) >= bs or pos >= stop):
            t = pa.Table.from_batches(pending).combine_chunks()
            head, rest = t.slice(0, bs), t.slice(bs)
            pending = rest.to_batches() if rest.num_rows else []
            x = _parquet_matrix(head, fcols, p, list_column=fkey is not None)
            y = head.column(lkey).to_numpy(zero_copy_only=False) if lkey else None
            ids = head.column(ikey).to_numpy(zero_copy_only=False) if ikey else None
            yield a, x, y, ids
            a += head.num_rows
        if pos >= stop:
            break


def _rows_whole(p: Path, bs: int, start: int, stop: int) -> Iterator[tuple]:
    """.npz and .pt: no way to read part of them; load once, then slice."""
    from dlsa_cli.io.features import read_features

    fs = read_features(p, check_finite=False)
    for a, b in _ranges(start, stop, bs):
        yield (a, fs.features[a:b], None if fs.labels is None else fs.labels[a:b],
               None if fs.ids is None else fs.ids[a:b])


def memmap_features(path: str | Path, mode: str = "r") -> np.ndarray | None:
    """The (N, D) float16/float32 matrix of a safetensors or .npy file, memory-mapped; None otherwise.

    mode "r": read-only; "c": copy-on-write (writable in memory, the file never changes), which torch
    takes without a warning.
    """
    p = Path(path)
    if p.suffix.lower() == ".npy":
        x = np.load(p, allow_pickle=False, mmap_mode=mode)
        return x if x.ndim == 2 and x.dtype in (np.float16, np.float32) else None
    if p.suffix.lower() != ".safetensors":
        return None
    from dlsa_cli.io.features import _FEATURE_KEYS, _pick

    with open(p, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        head = json.loads(f.read(n))
    fkey = _pick(head, _FEATURE_KEYS)
    if fkey is None or head[fkey]["dtype"] not in ("F16", "F32") or len(head[fkey]["shape"]) != 2 or 0 in head[fkey]["shape"]:
        return None
    begin, _ = head[fkey]["data_offsets"]
    shape = tuple(head[fkey]["shape"])
    return np.memmap(p, dtype=_NP_DTYPES[head[fkey]["dtype"]], mode=mode, offset=8 + n + begin, shape=shape)
