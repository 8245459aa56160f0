"""Feature tables in Parquet (`.parquet`), as pandas or pyarrow users write them; read only.

Features are a list column `features` (or another name of `FEATURE_KEYS`),
or one numeric column per dimension; `label`/`labels` and `id`/`ids`
columns where present. Batches read only the row groups they need.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dlsa_cli.errors import InputError
from dlsa_cli.io.files import iter_table, read_table, read_table_metadata
from dlsa_cli.io.formats.base import (
    FEATURE_KEYS,
    LABEL_KEYS,
    TABLE_ID_KEYS,
    FeatureInfo,
    FeatureSet,
    RowBatch,
    pick,
)

__all__ = ["NAME", "SUFFIXES", "info", "labels", "memmap", "read", "rows", "write"]

NAME = "parquet"
SUFFIXES = (".parquet",)
write = None  # feature files are written as safetensors
memmap = None


def _columns(schema: Any) -> tuple[str | None, str | None, str | None, list[str]]:
    """(features list column or None, label column, id column, the feature columns)."""
    names = schema.names
    lkey, ikey, fkey = pick(names, LABEL_KEYS), pick(names, TABLE_ID_KEYS), pick(names, FEATURE_KEYS)
    return fkey, lkey, ikey, [fkey] if fkey is not None else _dim_columns(schema, {lkey, ikey})


def _no_features(p: Path) -> InputError:
    return InputError("no feature columns: expected a list column 'features' or one numeric column per dimension",
                      path=p)


def info(p: Path) -> FeatureInfo:
    """N, D, dtype, labels/ids present and metadata, from the footer (and the first row of a list column)."""
    import pyarrow as pa

    schema, n, kind, meta, prov = read_table_metadata(p)
    fkey, lkey, ikey, fcols = _columns(schema)
    if not fcols:
        raise _no_features(p)
    if fkey is not None:
        t = schema.field(fkey).type
        if pa.types.is_fixed_size_list(t):
            d = t.list_size
        elif n:
            d = len(next(iter_table(p, [fkey], 1)).column(0)[0])
        else:
            d = 0
        dtype = str(t.value_type.to_pandas_dtype().__name__) if hasattr(t, "value_type") else str(t)
    else:
        d = len(fcols)
        dtype = np.result_type(*[schema.field(c).type.to_pandas_dtype() for c in fcols]).name
    ids = None if ikey is None else ("int" if pa.types.is_integer(schema.field(ikey).type) else "str")
    return FeatureInfo(p, NAME, n, d, dtype, lkey is not None, ids, kind, meta, prov)


def read(p: Path, *, mmap: bool = False) -> FeatureSet:
    """The whole table (`mmap` does not apply)."""
    table, _kind, meta, prov = read_table(p)
    fkey, lkey, ikey, fcols = _columns(table.schema)
    if not fcols:
        raise _no_features(p)
    x = _matrix(table, fcols, p, list_column=fkey is not None)
    y = table.column(lkey).to_numpy() if lkey else None
    ids = table.column(ikey).to_numpy(zero_copy_only=False) if ikey else None
    return FeatureSet(x, y, ids, {"provenance": prov, **meta}, p)


def rows(p: Path, batch_size: int, start: int, stop: int) -> Iterator[RowBatch]:
    """Rows start..stop; only the row groups that overlap them are read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(str(p))
    fkey, lkey, ikey, fcols = _columns(pf.schema_arrow)
    cols = fcols + [k for k in (lkey, ikey) if k]
    bounds = np.concatenate([[0], np.cumsum([pf.metadata.row_group(g).num_rows for g in range(pf.num_row_groups)])])
    groups = [g for g in range(pf.num_row_groups) if bounds[g] < stop and bounds[g + 1] > start]
    pending: list[Any] = []
    pos = int(bounds[groups[0]]) if groups else start
    a = start
    for batch in (pf.iter_batches(batch_size=batch_size, columns=cols, row_groups=groups) if groups else []):
        lo, hi = max(start - pos, 0), min(stop - pos, batch.num_rows)
        pos += batch.num_rows
        if hi > lo:
            pending.append(batch.slice(lo, hi - lo))
        while pending and (sum(b.num_rows for b in pending) >= batch_size or pos >= stop):
            t = pa.Table.from_batches(pending).combine_chunks()
            head, rest = t.slice(0, batch_size), t.slice(batch_size)
            pending = rest.to_batches() if rest.num_rows else []
            x = _matrix(head, fcols, p, list_column=fkey is not None)
            y = head.column(lkey).to_numpy(zero_copy_only=False) if lkey else None
            ids = head.column(ikey).to_numpy(zero_copy_only=False) if ikey else None
            yield RowBatch(a, x, y, ids)
            a += head.num_rows
        if pos >= stop:
            break


def labels(p: Path) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(labels, ids) as stored, reading those two columns only."""
    schema = read_table_metadata(p)[0]
    _, lkey, ikey, _ = _columns(schema)
    cols = [k for k in (lkey, ikey) if k]
    if not cols:
        return None, None
    table = read_table(p, cols)[0]
    y = table.column(lkey).to_numpy(zero_copy_only=False) if lkey else None
    ids = table.column(ikey).to_numpy(zero_copy_only=False) if ikey else None
    return y, ids


def _dim_columns(schema: Any, skip: set[str | None]) -> list[str]:
    import pyarrow as pa

    return [
        n for n in schema.names
        if n not in skip
        and not n.startswith("__index_level_")  # a pandas index that to_parquet kept
        and (pa.types.is_floating(schema.field(n).type) or pa.types.is_integer(schema.field(n).type))
    ]


def _matrix(batch: Any, fcols: list[str], p: Path, *, list_column: bool) -> np.ndarray:
    """(B, D) matrix from a Parquet batch or table: one list column, or one column per dimension."""
    import pyarrow as pa

    if not list_column:
        return np.stack([batch.column(c).to_numpy(zero_copy_only=False) for c in fcols], axis=1)
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
