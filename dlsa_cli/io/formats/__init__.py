"""The registry of feature file formats: one module per format, chosen by file suffix here and nowhere else.

Every format module gives the same small interface (`Format`):

- `NAME`, `SUFFIXES`;
- `info(p)`: a `FeatureInfo` (N, D, dtype, labels/ids present, metadata),
  from the header where the format has one;
- `read(p, mmap=False)`: the whole file as a `FeatureSet`;
- `rows(p, batch_size, start, stop)`: `RowBatch`es covering rows start..stop,
  memory bounded by the batch where the format can be sliced;
- `labels(p)`: (labels, ids) without the features where the format allows;
- `write(path, fs, prov=, meta=, dtype=)`: the canonical file, or None for a
  format that is read only (files made by other tools);
- `memmap(p, mode)`: the matrix mapped from the file (None where it cannot be),
  or None for a format that is never mapped.

Records come back as stored; `dlsa_cli.io.features` validates them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dlsa_cli.errors import InputError, OutputError
from dlsa_cli.io.files import require_file
from dlsa_cli.io.formats import h5, npy, npz, parquet, pt, safetensors
from dlsa_cli.io.formats.base import FeatureInfo, FeatureSet, RowBatch

__all__ = ["FORMATS", "SUFFIXES", "Format", "find_format", "format_for", "open_feature_file", "strip_suffix",
           "writer_for"]


class Format(Protocol):
    """What every format module provides (see the module docstring)."""

    NAME: str
    SUFFIXES: tuple[str, ...]
    write: Callable[..., None] | None
    memmap: Callable[..., np.ndarray | None] | None

    def info(self, p: Path) -> FeatureInfo: ...

    def read(self, p: Path, *, mmap: bool = False) -> FeatureSet: ...

    def rows(self, p: Path, batch_size: int, start: int, stop: int) -> Iterator[RowBatch]: ...

    def labels(self, p: Path) -> tuple[Any, Any]: ...


FORMATS: dict[str, Format] = {m.NAME: m for m in (safetensors, parquet, npz, npy, pt, h5)}
_BY_SUFFIX: dict[str, Format] = {sfx: m for m in FORMATS.values() for sfx in m.SUFFIXES}
SUFFIXES: tuple[str, ...] = tuple(_BY_SUFFIX)


def find_format(path: str | Path) -> Format | None:
    """The format a file's suffix names, or None: the one place a suffix picks a format."""
    return _BY_SUFFIX.get(Path(path).suffix.lower())


def format_for(path: str | Path) -> Format:
    """The format a feature file's suffix names, or a one-line InputError listing the known suffixes."""
    p = Path(path)
    fmt = find_format(p)
    if fmt is None:
        raise InputError(
            f"unknown feature file extension '{p.suffix.lower() or '(none)'}'",
            path=p,
            hint=f"use one of {', '.join(SUFFIXES)}",
        )
    return fmt


def open_feature_file(path: str | Path) -> tuple[Path, Format]:
    """(path, its format) of an existing, readable feature file; one-line InputError otherwise."""
    p = require_file(path, "feature file")
    return p, format_for(p)


def writer_for(path: str | Path) -> Callable[..., None]:
    """The writer of the format `path` names; OutputError for a format that is read only."""
    fmt = format_for(path)
    if fmt.write is None:
        writable = [s for m in FORMATS.values() if m.write is not None for s in m.SUFFIXES]
        raise OutputError(
            f"feature files are not written as '{Path(path).suffix.lower()}'",
            path=path,
            hint=f"name the output {' or '.join(writable)}",
        )
    return fmt.write


def strip_suffix(name: str) -> str:
    """A feature file's name without its format suffix (`a.b.safetensors` -> `a.b`); other names lose
    their last suffix."""
    p = Path(name)
    return p.name[: -len(p.suffix)] if find_format(p) is not None else p.stem
