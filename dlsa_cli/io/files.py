"""One way to write and read every file the tool produces.

- Dense matrices (features, latents, weights) go to safetensors; per-sample
  tables (ids, labels, routes, clusters, predictions) go to Parquet.
- Both carry three metadata entries, JSON-encoded strings:
  `dlsa_kind` (what the file is: "features", "filter", "classifier", ...),
  `dlsa_meta` (kind-specific settings and results) and `dlsa_provenance`
  (command, options, input file hashes, package version, seed, time).
- Every write goes to a temporary name in the target folder and is renamed
  into place when complete, so a failed or interrupted command never leaves a
  half file that looks whole.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dlsa_cli import __version__
from dlsa_cli.errors import InputError

__all__ = [
    "atomic_path",
    "atomic_dir",
    "write_json",
    "file_sha256",
    "provenance",
    "write_safetensors",
    "read_safetensors",
    "read_safetensors_header",
    "write_table",
    "read_table",
    "read_table_metadata",
    "file_kind",
    "require_file",
]

KIND_KEY = "dlsa_kind"
META_KEY = "dlsa_meta"
PROV_KEY = "dlsa_provenance"


def require_file(path: str | Path, what: str = "input file") -> Path:
    """Return `path` as a Path, or raise InputError if it is not a readable file."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} does not exist", path=p, hint="check the path")
    if p.is_dir():
        raise InputError(f"{what} is a folder, expected a file", path=p)
    if not os.access(p, os.R_OK):
        raise InputError(f"{what} is not readable", path=p, hint="check its permissions")
    return p


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` on success.

    On any exception the temporary file is removed and `path` is untouched.
    """
    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.exists():
        raise InputError("output folder does not exist", path=parent, hint="create it first")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp (and some writers) make 0600; use the usual mode
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; move it onto `path` on success.

    An existing `path` is replaced only after the new folder is complete.
    """
    import shutil

    target = Path(path)
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.exists():
        raise InputError("output folder's parent does not exist", path=parent, hint="create it first")
    if target.exists() and not target.is_dir():
        raise InputError("output path exists and is not a folder", path=target)
    if target.exists() and not overwrite:
        raise InputError("output folder exists", path=target, hint="remove it or pick another name")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=parent))
            os.replace(target, old / "prev")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def file_sha256(path: str | Path, *, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def provenance(
    command: str,
    options: Mapping[str, Any] | None = None,
    inputs: Sequence[str | Path] = (),
    seed: int | None = None,
) -> dict[str, Any]:
    """What produced a file: command, options, input hashes, versions, seed, time."""
    import torch

    from dlsa_cli.distributed import current

    return {
        "command": command,
        "world_size": current().world_size,  # processes that made the file (torchrun), 1 alone
        "options": {k: _plain(v) for k, v in (options or {}).items()},
        "inputs": [{"path": str(p), "sha256": file_sha256(p)} for p in inputs if Path(p).is_file()],
        "seed": seed,
        "dlsa_cli": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "argv": sys.argv[1:],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _plain(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    return str(v)


def _encode_meta(kind: str, meta: Mapping[str, Any] | None, prov: Mapping[str, Any] | None) -> dict[str, str]:
    out = {KIND_KEY: kind}
    out[META_KEY] = json.dumps(meta or {}, default=_json_default)
    out[PROV_KEY] = json.dumps(prov or {}, default=_json_default)
    return out


def _decode_meta(raw: Mapping[str, str] | None) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    raw = raw or {}
    kind = raw.get(KIND_KEY)
    meta = json.loads(raw[META_KEY]) if META_KEY in raw else {}
    prov = json.loads(raw[PROV_KEY]) if PROV_KEY in raw else {}
    return kind, meta, prov


def write_safetensors(
    path: str | Path,
    tensors: Mapping[str, Any],
    *,
    kind: str,
    meta: Mapping[str, Any] | None = None,
    prov: Mapping[str, Any] | None = None,
) -> None:
    """Write numpy arrays or torch tensors to `path` atomically, with metadata."""
    import torch
    from safetensors.torch import save_file

    flat = {}
    for name, t in tensors.items():
        if isinstance(t, np.ndarray):
            t = torch.from_numpy(np.ascontiguousarray(t))
        flat[name] = t.detach().cpu().contiguous()
    with atomic_path(path) as tmp:
        save_file(flat, str(tmp), metadata=_encode_meta(kind, meta, prov))


def read_safetensors_header(path: str | Path) -> tuple[dict[str, tuple[str, list[int]]], str | None, dict, dict]:
    """Tensor names with (dtype, shape), plus kind, meta and provenance, without reading data."""
    p = require_file(path)
    try:
        with open(p, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or n > 100 * 2**20:
                raise ValueError("bad header size")
            header = json.loads(f.read(n))
    except (ValueError, OSError) as e:
        raise InputError(f"not a readable safetensors file ({e})", path=p) from None
    raw_meta = header.pop("__metadata__", None)
    tensors = {k: (v["dtype"], list(v["shape"])) for k, v in header.items()}
    kind, meta, prov = _decode_meta(raw_meta)
    return tensors, kind, meta, prov


def read_safetensors(path: str | Path, names: Sequence[str] | None = None) -> tuple[dict[str, Any], str | None, dict, dict]:
    """Read tensors (torch, CPU) and metadata from a safetensors file."""
    from safetensors import safe_open

    p = require_file(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            keys = list(f.keys()) if names is None else list(names)
            missing = [k for k in keys if k not in f.keys()]
            if missing:
                raise InputError(f"missing tensor(s) {', '.join(missing)}", path=p)
            tensors = {k: f.get_tensor(k) for k in keys}
            raw_meta = f.metadata()
    except InputError:
        raise
    except Exception as e:  # safetensors raises its own error types
        raise InputError(f"not a readable safetensors file ({e})", path=p) from None
    kind, meta, prov = _decode_meta(raw_meta)
    return tensors, kind, meta, prov


def write_table(
    path: str | Path,
    columns: Mapping[str, Any] | pa.Table,
    *,
    kind: str,
    meta: Mapping[str, Any] | None = None,
    prov: Mapping[str, Any] | None = None,
) -> None:
    """Write a per-sample table to Parquet atomically, with metadata."""
    table = columns if isinstance(columns, pa.Table) else pa.table({k: _column(v) for k, v in columns.items()})
    enc = {k.encode(): v.encode() for k, v in _encode_meta(kind, meta, prov).items()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **enc})
    with atomic_path(path) as tmp:
        pq.write_table(table, str(tmp))


def _column(v: Any) -> Any:
    try:
        import torch

        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(v, np.ndarray) and v.ndim == 2:
        return pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])
    return v


def read_table_metadata(path: str | Path) -> tuple[pa.Schema, int, str | None, dict, dict]:
    """Schema, row count, kind, meta and provenance of a Parquet file, without reading rows."""
    p = require_file(path)
    try:
        pf = pq.ParquetFile(str(p))
    except Exception as e:
        raise InputError(f"not a readable Parquet file ({e})", path=p) from None
    raw = {k.decode(): v.decode() for k, v in (pf.schema_arrow.metadata or {}).items()}
    kind, meta, prov = _decode_meta(raw)
    return pf.schema_arrow, pf.metadata.num_rows, kind, meta, prov


def read_table(path: str | Path, columns: Sequence[str] | None = None) -> tuple[pa.Table, str | None, dict, dict]:
    """Read a Parquet table (optionally only some columns) and its metadata."""
    p = require_file(path)
    try:
        schema = pq.read_schema(str(p))
        if columns is not None:
            missing = [c for c in columns if c not in schema.names]
            if missing:
                raise InputError(
                    f"missing column(s) {', '.join(missing)}; it has {', '.join(schema.names)}", path=p
                )
        table = pq.read_table(str(p), columns=list(columns) if columns is not None else None)
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"not a readable Parquet file ({e})", path=p) from None
    raw = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    kind, meta, prov = _decode_meta(raw)
    return table, kind, meta, prov


def file_kind(path: str | Path) -> str | None:
    """The `dlsa_kind` recorded in a safetensors or Parquet file, or None."""
    p = require_file(path)
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        return read_safetensors_header(p)[1]
    if suffix == ".parquet":
        return read_table_metadata(p)[2]
    return None
