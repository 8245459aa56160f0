"""Files larger than memory: outputs written batch by batch.

Writers (each writes through the one staging mechanism of `dlsa_cli.io.files`:
a temporary name beside the target, renamed into place only when complete,
with the metadata of `encode_meta`):
- `SafetensorsSink` (`stream_safetensors`): a safetensors file whose header
  (every tensor's dtype and shape, hence every byte offset) is written first
  into a file sized from it; rows are then written at their offsets, batch
  by batch, in any order. Its header is known once the row counts are, so a
  command that must count first (split's routed / rest files) counts in one
  pass and fills in a second.
- `FeatureSink` (`stream_features`): the canonical feature file through a
  `SafetensorsSink`, appended to in row order; string ids in the header or,
  past `IDS_IN_HEADER_MAX` bytes, as byte tensors (the layout of
  `dlsa_cli.io.formats.safetensors`).
- `TableSink` (`stream_table`): a Parquet table written by row groups, into
  one or more ordered parts (one per rank when ranks' rows arrive
  interleaved) in a staging folder; on close the parts are copied, row group
  by row group, into the final file with the dlsa metadata, which may be
  completed meanwhile (`sink.meta`), e.g. with a report computed from all rows.

The readers of row ranges (`iter_rows`, `RowBatch`, `memmap_features`) live in
`dlsa_cli.io.features` and the string-id layout in
`dlsa_cli.io.formats.safetensors`; both are re-exported here for their
existing callers. `IDS_IN_HEADER_MAX` here is a copy: the value
`write_features` uses is `dlsa_cli.io.formats.safetensors.IDS_IN_HEADER_MAX`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dlsa_cli.io.features import RowBatch, iter_rows, memmap_features
from dlsa_cli.io.files import arrow_column, atomic_path, encode_meta, staging_dir
from dlsa_cli.io.formats.safetensors import (
    IDS_BYTES_KEY,
    IDS_IN_HEADER_MAX,
    IDS_OFFSETS_KEY,
    decode_ids,
    encode_ids,
    ids_nbytes,
    read_id_range,
)

__all__ = [
    "IDS_BYTES_KEY",
    "IDS_IN_HEADER_MAX",
    "IDS_OFFSETS_KEY",
    "FeatureSink",
    "RowBatch",
    "SafetensorsSink",
    "TableSink",
    "decode_ids",
    "encode_ids",
    "ids_nbytes",
    "iter_rows",
    "memmap_features",
    "read_id_range",
    "stream_features",
    "stream_safetensors",
    "stream_table",
]

_HEADER_MAX = 100 * 2**20  # safetensors' own cap

_ST_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "int64": "I64", "int32": "I32",
    "int16": "I16", "int8": "I8", "uint8": "U8", "uint16": "U16", "uint32": "U32", "uint64": "U64", "bool": "BOOL",
}

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
        buf = a.reshape(-1).view(np.uint8).data  # a memoryview of the bytes
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
    raw = json.dumps(head, separators=(",", ":"), allow_nan=False).encode()  # the container; metadata is already text
    raw += b" " * (-len(raw) % 8)
    if len(raw) > _HEADER_MAX:
        raise ValueError(f"safetensors header of {len(raw)} bytes exceeds the 100 MB cap")
    return raw, layout


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
    raw, layout = _header(spec, encode_meta(kind, meta, prov, where=path))
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
            if ids is None:
                raise ValueError("FeatureSink: this file stores string ids; pass each batch's ids")
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
    header_ids: Sequence[str] | np.ndarray | None = None,
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

        table = pa.table({k: arrow_column(v) for k, v in columns.items()})
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
    """A Parquet table written by row groups into `parts` ordered parts, joined into `path` on success.

    The parts live in a staging folder beside `path` (`staging_dir`), removed when the block ends.
    """
    import pyarrow.parquet as pq

    target = Path(path)
    folder = staging_dir(target)
    sink = TableSink(folder, parts, dict(meta or {}))
    try:
        yield sink
        files = sink._close_parts()
        if not files:
            raise RuntimeError("stream_table: no rows were written")
        enc = {k.encode(): v.encode() for k, v in encode_meta(kind, sink.meta, prov, where=target).items()}
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
