"""NumPy archives (`.npz`), as `np.savez` writes them; read only, never with pickle.

Arrays `features` (or another name of `FEATURE_KEYS`), `labels` (or
`label`, `y`, `targets`), `ids` (or `id`, `files`, `paths`). The header
comes from the members' own headers; an archive cannot be sliced, so batches
load it whole once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from dlsa_cli.errors import InputError
from dlsa_cli.io.formats.base import (
    FEATURE_KEYS,
    ID_KEYS,
    LABEL_KEYS,
    FeatureInfo,
    FeatureSet,
    RowBatch,
    check_matrix_shape,
    ids_kind,
    pick,
    ranges,
    validate_features,
)

__all__ = ["NAME", "SUFFIXES", "info", "labels", "memmap", "read", "rows", "write"]

NAME = "npz"
SUFFIXES = (".npz",)
write = None  # feature files are written as safetensors
memmap = None


def _pickle_error(p: Path, e: Exception) -> InputError:
    return InputError(f"cannot read .npz without pickle ({e})", path=p, hint="store plain numeric arrays")


def info(p: Path) -> FeatureInfo:
    """N, D, dtype and labels/ids present, from the members' headers (no array is read)."""
    heads = _headers(p)
    fkey = pick(heads, FEATURE_KEYS)
    if fkey is None:
        raise InputError(f"no features array (it has {', '.join(heads)})", path=p, hint="name it 'features'")
    n, d = check_matrix_shape(heads[fkey][0], p, heads[fkey][1])
    ikey = pick(heads, ID_KEYS)
    ids = None if ikey is None else ids_kind(heads[ikey][1])
    return FeatureInfo(p, NAME, n, d, heads[fkey][1].name, pick(heads, LABEL_KEYS) is not None, ids, None)


def read(p: Path, *, mmap: bool = False) -> FeatureSet:
    """The whole archive (`mmap` does not apply)."""
    try:
        with np.load(p, allow_pickle=False) as d:
            keys = list(d.files)
            fkey = pick(keys, FEATURE_KEYS)
            if fkey is None:
                raise InputError(f"no features array (it has {', '.join(keys)})", path=p, hint="name it 'features'")
            lkey, ikey = pick(keys, LABEL_KEYS), pick(keys, ID_KEYS)
            return FeatureSet(d[fkey], d[lkey] if lkey else None, d[ikey] if ikey else None, path=p)
    except InputError:
        raise
    except ValueError as e:
        raise _pickle_error(p, e) from None
    except Exception as e:
        raise InputError(f"not a readable .npz file ({e})", path=p) from None


def rows(p: Path, batch_size: int, start: int, stop: int) -> Iterator[RowBatch]:
    """Rows start..stop of the archive, loaded (and checked) whole once."""
    fs = read(p)
    validate_features(fs, check_finite=False)
    for a, b in ranges(start, stop, batch_size):
        yield RowBatch(a, fs.features[a:b], None if fs.labels is None else fs.labels[a:b],
                       None if fs.ids is None else fs.ids[a:b])


def labels(p: Path) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(labels, ids) as stored; members load one at a time, so the features are not read."""
    with np.load(p, allow_pickle=False) as d:
        lkey, ikey = pick(d.files, LABEL_KEYS), pick(d.files, ID_KEYS)
        try:
            return (d[lkey] if lkey else None), (d[ikey] if ikey else None)
        except ValueError as e:
            raise _pickle_error(p, e) from None


def _headers(p: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
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
                    fmt = np.lib.format
                    reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                    shape, _, dtype = reader(f)
                out[name[:-4]] = (shape, dtype)
    except Exception as e:
        raise InputError(f"not a readable .npz file ({e})", path=p) from None
    return out
