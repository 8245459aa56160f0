"""One way to write and read every file the tool produces.

- Dense matrices (features, latents, weights) go to safetensors; per-sample
  tables (ids, labels, routes, clusters, predictions) go to Parquet.
- Both carry three metadata entries, JSON-encoded strings:
  `dlsa_kind` (what the file is: "features", "filter", "classifier", ...),
  `dlsa_meta` (kind-specific settings and results) and `dlsa_provenance`
  (command, options, input file hashes, package version, seed, time).
- Every write goes to a temporary name in the target folder and is renamed
  into place when complete, so a failed or interrupted command never leaves a
  half file that looks whole. The temporary name carries the writer's pid;
  the next write beside it removes those of dead writers (`sweep_stale`).
- Before any work, a command checks its outputs with `check_output_file` /
  `check_output_dir`: the name fits what is written, the folder is writable,
  and nothing it writes or removes is one of its inputs (`protect_inputs`).
  An OS error while writing (disk full, file too large, permission) becomes an
  `OutputError` naming the path.
- JSON, in files and in metadata, is strict: NaN or infinity is refused.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dlsa_cli import __version__
from dlsa_cli.errors import DlsaError, InputError, OutputError

__all__ = [
    "KIND_KEY",
    "META_KEY",
    "PROV_KEY",
    "arrow_column",
    "atomic_dir",
    "atomic_path",
    "check_output_dir",
    "check_output_file",
    "claim_output_dir",
    "encode_meta",
    "file_sha256",
    "folder_marker",
    "iter_table",
    "load_json_text",
    "move_into",
    "protect_inputs",
    "provenance",
    "read_safetensors",
    "read_safetensors_header",
    "read_table",
    "read_table_metadata",
    "recorded_kind",
    "require_file",
    "staging_dir",
    "strict_json",
    "sweep_stale",
    "write_json",
    "write_safetensors",
    "write_table",
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
    if not p.is_file():  # checked before opening: a FIFO nobody writes would block the read forever
        raise InputError(f"{what} is not a regular file (a FIFO, device or socket)", path=p,
                         hint="pass a regular file; copy a stream to a file first")
    if not os.access(p, os.R_OK):
        raise InputError(f"{what} is not readable", path=p, hint="check its permissions")
    return p


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` on success.

    On any exception the temporary file is removed and `path` is untouched; an
    OSError (disk full, file too large, no permission) becomes an OutputError.
    """
    target = Path(path)
    if target.is_dir():
        raise OutputError("is a folder; the output must be a file name", path=target, hint="pick a file name")
    tmp = _stage(target, folder=False)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp (and some writers) make 0600; use the usual mode
        os.replace(tmp, target)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(e, OSError):
            raise _write_error(e, target) from None
        raise


def _write_error(e: OSError, target: Path) -> OutputError:
    why = e.strerror or str(e)
    return OutputError(f"cannot write ({why})", path=target,
                       hint="free space, raise the file-size limit or pick another -o")


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; move it onto `path` on success.

    An existing `path` is replaced only after the new folder is complete.
    """
    import shutil

    target = Path(path)
    if not target.parent.is_dir():
        raise InputError("output folder's parent does not exist", path=target.parent, hint="create it first")
    if target.exists() and not target.is_dir():
        raise InputError("output path exists and is not a folder", path=target)
    if target.exists() and not overwrite:
        raise InputError("output folder exists", path=target, hint="remove it or pick another name")
    tmp = staging_dir(target)
    try:
        yield tmp
        if target.exists():
            old = _stage(target, folder=True, suffix=".old")
            os.replace(target, old / "prev")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise _write_error(e, target) from None
        raise


def staging_dir(target: str | Path) -> Path:
    """A fresh staging folder beside `target` (usual permissions), named with this process's pid.

    The caller moves it (or its files) into place when complete, or removes it.
    """
    return _stage(Path(target), folder=True)


def _stage(target: Path, *, folder: bool, suffix: str = ".tmp") -> Path:
    """The one staging mechanism: a fresh `.NAME.PID-XXXXXXXX.tmp` file or folder beside `target`.

    Leftovers of killed writers beside `target` are swept first (`sweep_stale`).
    """
    parent = target.parent
    if not parent.is_dir():
        raise InputError("output folder does not exist", path=parent, hint="create it first")
    sweep_stale(parent, target.name)
    try:
        if folder:
            tmp = Path(tempfile.mkdtemp(prefix=_stage_prefix(target.name), suffix=suffix, dir=parent))
            os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the folder may become `target` itself
            return tmp
        fd, name = tempfile.mkstemp(prefix=_stage_prefix(target.name), suffix=suffix, dir=parent)
        os.close(fd)
        return Path(name)
    except OSError as e:
        raise _write_error(e, target) from None


# ----------------------------------------------------------------------------- stale staging

STALE_AFTER_S = 24 * 3600  # a staging entry this old is removed even when its pid is alive (pid reuse)


_STAGING = re.compile(r"\..+\.(?:\d+-|split-)?[a-z0-9_]{8}\.(?:tmp|old)")  # any staging entry (`_stage`)


def _stage_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def sweep_stale(parent: Path, name: str, *, now: float | None = None) -> list[Path]:
    """Remove staging files/folders `.NAME.*.tmp` / `.old` beside `name` left by killed runs.

    An entry is stale when the pid in its name is not a running process (this
    machine), or when it is older than STALE_AFTER_S; entries of this process
    and of running writers are kept. Returns what was removed.
    """
    import shutil

    now = time.time() if now is None else now
    pat = re.compile(re.escape(f".{name}.") + r"(?:(\d+)-|split-)?[a-z0-9_]{8}\.(?:tmp|old)")
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = pat.fullmatch(entry.name)
        if m is None:
            continue
        pid = int(m.group(1)) if m.group(1) else None
        try:
            age = now - entry.lstat().st_mtime
        except OSError:
            continue
        dead = pid is not None and pid != os.getpid() and not _pid_alive(pid)
        if dead or age > STALE_AFTER_S or (pid is None and age > 3600):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
            removed.append(entry)
    return removed


# ----------------------------------------------------------------------------- output checks


def _clash(write: Path, inp: Path, replaces: str | None = None) -> str | None:
    """How writing (or removing) `write` would harm the input `inp`, or None.

    An input folder (a cascade, an image folder) stands for every file inside
    it, so writing over any existing file there is a clash, unless that file is
    this command's own earlier output (its recorded kind is `replaces`); a
    written folder (replaced as a whole) clashes with any input inside it.
    """
    w, i = write.resolve(), inp.resolve()
    if w == i or (w.exists() and i.exists() and not w.is_dir() and os.path.samefile(w, i)):
        return "is"
    if i.is_dir() and i in w.parents and w.exists() and (replaces is None or recorded_kind(w) != replaces):
        return "is a file inside"
    if w in i.parents:
        return "holds"
    return None


def recorded_kind(path: Path) -> str | None:
    """The `dlsa_kind` a safetensors or Parquet file records, or None (another file, or unreadable)."""
    if not path.is_file():
        return None
    try:
        if path.suffix.lower() == ".parquet":
            return read_table_metadata(path)[2]
        if path.suffix.lower() == ".safetensors":
            return read_safetensors_header(path)[1]
    except DlsaError:
        return None
    return None


def _expand_input(p: Path) -> list[Path]:
    """A cascade (its folder, or its manifest under any name) stands for its folder, its manifest and
    every file the manifest lists; any other path stands for itself (a folder then protects every file
    inside it)."""
    manifest = p / "cascade.json" if p.is_dir() else p
    if not manifest.is_file() or manifest.suffix.lower() != ".json":
        return [p]
    try:
        raw = load_json_text(manifest.read_text())
        listed = [d[k] for d in raw.get("depths", []) for k in ("filter", "classifier")] + [raw["final"]]
    except (OSError, ValueError, AttributeError, KeyError, TypeError, InputError):
        return [p]
    return [manifest.parent, manifest, *(manifest.parent / q for q in listed if isinstance(q, str) and q)]


def protect_inputs(writes: Sequence[str | Path], inputs: Sequence[str | Path | None], *, flag: str = "-o",
                   replaces: str | None = None) -> None:
    """Raise OutputError when a path to be written or removed is an input, lies in an input
    folder (unless it is this command's own earlier output, of kind `replaces`), or is a folder
    holding an input."""
    for q in [e for i in inputs if i is not None for e in _expand_input(Path(i))]:
        if not q.exists():
            continue
        for w in writes:
            how = _clash(Path(w), Path(q), replaces)
            if how is not None:
                raise OutputError(
                    f"{flag}: {w} {how} one of this command's inputs ({q}); writing there would destroy it",
                    hint=f"pick another {flag}",
                )


def _check_writable_folder(folder: Path, flag: str, out: Path) -> None:
    if not folder.exists():
        raise OutputError(f"{flag} {out}: folder {folder} does not exist", hint="create it first")
    if not folder.is_dir():
        raise OutputError(f"{flag} {out}: {folder} is not a folder")
    try:  # a real probe: permission bits say nothing for root, a read-only mount or a full quota
        fd, probe = tempfile.mkstemp(prefix=_stage_prefix(out.name), suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(
            f"{flag} {out}: cannot write in folder {folder} ({e.strerror or e})",
            hint="check its permissions or free space, or pick another place",
        ) from None


def check_output_file(
    path: str | Path, *, suffixes: Sequence[str], inputs: Sequence[str | Path | None] = (), flag: str = "-o",
    replaces: str | None = None,
) -> Path:
    """Check an output file before any work: its extension is one of `suffixes`, it is not a
    folder, its folder exists and is writable, and it is none of `inputs` (nor a file inside an
    input folder, unless one of kind `replaces`: this command's earlier output)."""
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{flag} {p} is a folder; give a file name",
                          hint=f"e.g. {flag} {p / ('out' + (suffixes or ('',))[0])}")
    if suffixes and not any(p.name.lower().endswith(sfx) for sfx in suffixes):
        raise OutputError(
            f"{flag} {p}: this output is written as {' or '.join(suffixes)}, so its name must end so",
            hint=f"e.g. {flag} {p.with_suffix(suffixes[0]).name}",
        )
    _check_writable_folder(p.parent, flag, p)
    protect_inputs([p], inputs, flag=flag, replaces=replaces)
    return p


def check_output_dir(
    path: str | Path, *, writes: Sequence[str] = (), inputs: Sequence[str | Path | None] = (), whole: bool = False,
    flag: str = "-o"
) -> Path:
    """Check an output folder before any work: it is a writable folder (or can be made in a
    writable one); none of the files `writes` (names inside it) is an input; with `whole`
    (the folder is replaced as a whole) no input may lie inside it."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise OutputError(f"{flag} {p} exists and is not a folder", hint=f"pick a folder name for {flag}")
    if p.exists():
        _check_writable_folder(p, flag, p)
    else:
        _check_writable_folder(p.parent, flag, p)
    protect_inputs([p] if whole else [p / w for w in writes], inputs, flag=flag)
    return p


# ----------------------------------------------------------------------------- folders a command owns


def folder_marker(command: str) -> str:
    """The file a command leaves in a folder it made (`.dlsa-make-dataset`): later runs may write there again."""
    return f".dlsa-{command}"


def claim_output_dir(path: str | Path, command: str, *, flag: str = "-o") -> Path:
    """The folder rule for a command that fills a whole folder: it must be new, empty, or one
    this command made before (it holds `folder_marker(command)`); otherwise OutputError."""
    p = Path(path)
    if not p.is_dir():
        return p
    try:
        entries = [e.name for e in p.iterdir() if not _STAGING.fullmatch(e.name)]
    except OSError as e:
        raise OutputError(f"{flag} {p}: cannot list the folder ({e.strerror or e})") from None
    if entries and folder_marker(command) not in entries:
        shown = ", ".join(sorted(entries)[:3]) + (", ..." if len(entries) > 3 else "")
        raise OutputError(f"{flag} {p}: the folder holds files this command did not write ({shown})",
                          hint=f"pick a new or empty folder for {flag}")
    return p


def move_into(stage: Path, target: Path) -> None:
    """Publish a finished staging folder: it becomes `target`, or its files replace their namesakes
    in an existing `target` one by one (nothing else there is touched); the staging folder goes."""
    import shutil

    if not target.exists():
        os.replace(stage, target)
        return
    for f in sorted(stage.iterdir()):
        os.replace(f, target / f.name)
    shutil.rmtree(stage, ignore_errors=True)


# ----------------------------------------------------------------------------- strict JSON

MAX_JSON_DEPTH = 64  # manifests, reports and metadata nest a few levels; deeper is not a file of ours


def load_json_text(text: str | bytes, *, where: str | Path | None = None) -> Any:
    """Parse JSON read from a file, nesting bounded (MAX_JSON_DEPTH): InputError naming `where` otherwise."""
    try:
        obj = json.loads(text)
    except RecursionError:
        obj, deep = None, True
    except ValueError as e:
        raise InputError(f"not valid JSON ({e})", path=where) from None
    else:
        deep = _depth(obj) > MAX_JSON_DEPTH
    if deep:
        raise InputError(f"JSON nested more than {MAX_JSON_DEPTH} levels deep", path=where,
                         hint="this is not a file dlsa wrote")
    return obj


def _depth(obj: Any) -> int:
    """How deep lists and objects nest in `obj` (iterative: no recursion limit)."""
    deepest, todo = 0, [(obj, 1)]
    while todo:
        o, d = todo.pop()
        if isinstance(o, dict):
            o = list(o.values())
        if isinstance(o, list):
            deepest = max(deepest, d)
            todo.extend((v, d + 1) for v in o)
    return deepest



def strict_json(obj: Any, *, indent: int | None = None, where: str | Path | None = None,
                nonfinite_as_null: bool = False) -> str:
    """JSON text with NaN and infinity refused (they are not JSON); DlsaError naming the field.

    `nonfinite_as_null` writes them as null instead: for showing what another
    file holds (its metadata may come from an older or foreign writer).
    """
    if nonfinite_as_null:
        obj = _null_nonfinite(obj)
    try:
        return json.dumps(obj, indent=indent, default=_json_default, allow_nan=False)
    except ValueError:
        field = _first_nonfinite(obj) or "a value"
        raise DlsaError(f"{field} is NaN or infinite; refusing to write invalid JSON", path=where) from None


def _null_nonfinite(obj: Any) -> Any:
    import math

    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: _null_nonfinite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_null_nonfinite(v) for v in obj]
    return obj


def _first_nonfinite(obj: Any, at: str = "") -> str | None:
    import math

    if isinstance(obj, float) and not math.isfinite(obj):
        return at or "a value"
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            if (hit := _first_nonfinite(v, f"{at}.{k}" if at else str(k))) is not None:
                return hit
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            if (hit := _first_nonfinite(v, f"{at}[{i}]")) is not None:
                return hit
    return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    text = strict_json(obj, indent=2, where=path)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


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
    *,
    settings: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """What produced a file: command, options, input hashes, versions, seed, time; `settings`: the
    config-file tables that repeat the run (`dlsa inspect FILE --config` prints them)."""
    import torch

    from dlsa_cli.runtime.distributed import current

    return {
        "command": command,
        "world_size": current().world_size,  # processes that made the file (torchrun), 1 alone
        "options": {k: _plain(v) for k, v in (options or {}).items()},
        **({} if settings is None else {"settings": {k: dict(t) for k, t in settings.items()}}),
        "inputs": [{"path": str(p), "sha256": file_sha256(p)} for p in inputs if Path(p).is_file()],
        "seed": seed,
        "dlsa_cli": __version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),  # results are bitwise repeatable at a fixed thread count
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
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


def encode_meta(
    kind: str, meta: Mapping[str, Any] | None, prov: Mapping[str, Any] | None, *, where: str | Path | None = None
) -> dict[str, str]:
    """The three metadata entries of every written safetensors or Parquet file, as strict JSON strings.

    The one metadata encoder: every writer (whole or streamed) calls it, so NaN
    or infinity in settings or reports is refused the same way everywhere.
    """
    return {KIND_KEY: kind, META_KEY: strict_json(dict(meta or {}), where=where),
            PROV_KEY: strict_json(dict(prov or {}), where=where)}


def _decode_meta(
    raw: Mapping[str, str] | None, where: str | Path | None = None
) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
    """kind, meta and provenance of a file's metadata; InputError naming `where` when one is not a JSON object."""
    raw = raw or {}
    kind = raw.get(KIND_KEY)
    parsed = []
    for key in (META_KEY, PROV_KEY):
        obj = load_json_text(raw[key], where=where) if key in raw else {}
        if not isinstance(obj, dict):
            raise InputError(f"metadata '{key}' must be a JSON object, got {type(obj).__name__}", path=where)
        parsed.append(obj)
    return kind, parsed[0], parsed[1]


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
    metadata = encode_meta(kind, meta, prov, where=path)
    with atomic_path(path) as tmp:
        try:
            save_file(flat, str(tmp), metadata=metadata)
        except Exception as e:  # safetensors reports OS errors as its own type
            if isinstance(e, OSError):
                raise
            raise OutputError(f"cannot write ({_short(e)})", path=path,
                              hint="free space, raise the file-size limit or pick another -o") from None


def _short(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]


def read_safetensors_header(path: str | Path) -> tuple[dict[str, tuple[str, list[int]]], str | None, dict, dict]:
    """Tensor names with (dtype, shape), plus kind, meta and provenance, without reading data.

    The header is checked against the file (`_check_header`): every tensor's shape, dtype and
    offsets agree and lie inside it, so no later read runs past the end of a truncated file.
    """
    p = require_file(path)
    try:
        with open(p, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or n > 100 * 2**20:
                raise ValueError("bad header size")
            text = f.read(n)
            if len(text) < n:
                raise ValueError(f"the header is cut off: {len(text)} of {n} bytes")
        header = load_json_text(text, where=p)
    except (ValueError, OSError) as e:
        raise InputError(f"not a readable safetensors file ({e})", path=p) from None
    if not isinstance(header, dict):
        raise InputError(f"not a readable safetensors file (its header is a JSON {type(header).__name__}, "
                         "not an object)", path=p)
    raw_meta = header.pop("__metadata__", None)
    if raw_meta is not None and not (isinstance(raw_meta, dict) and all(isinstance(v, str) for v in raw_meta.values())):
        raise InputError("not a readable safetensors file (__metadata__ must map names to strings)", path=p)
    tensors = _check_header(header, p, p.stat().st_size - 8 - n)
    kind, meta, prov = _decode_meta(raw_meta, p)
    return tensors, kind, meta, prov


_ST_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
             "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8}


def _check_header(header: dict[str, Any], p: Path, data_bytes: int) -> dict[str, tuple[str, list[int]]]:
    """(dtype, shape) per tensor, or InputError when an entry is malformed or does not fit the file's data."""
    out: dict[str, tuple[str, list[int]]] = {}
    for name, v in header.items():
        bad = f"not a readable safetensors file (tensor '{name}'"
        if not isinstance(v, dict):
            raise InputError(f"{bad} is a JSON {type(v).__name__}, not an object)", path=p)
        dtype, shape, offsets = v.get("dtype"), v.get("shape"), v.get("data_offsets")
        if dtype not in _ST_SIZES:
            raise InputError(f"{bad} has dtype {dtype!r})", path=p)
        if not (isinstance(shape, list) and all(type(s) is int and s >= 0 for s in shape)):
            raise InputError(f"{bad} has shape {shape!r}, not a list of sizes)", path=p)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise InputError(f"{bad} has data_offsets {offsets!r})", path=p)
        if offsets[1] > data_bytes:
            raise InputError(f"{bad} ends at byte {offsets[1]} of data, but the file holds {data_bytes}: "
                             "truncated?)", path=p)
        if offsets[1] - offsets[0] != _ST_SIZES[dtype] * int(np.prod(shape, dtype=object)):
            raise InputError(f"{bad}: its shape {shape} does not match its {offsets[1] - offsets[0]} bytes)", path=p)
        out[name] = (dtype, list(shape))
    return out


def read_safetensors(path: str | Path,
                     names: Sequence[str] | None = None) -> tuple[dict[str, Any], str | None, dict, dict]:
    """Read tensors (torch, CPU) and metadata from a safetensors file."""
    from safetensors import safe_open

    p = require_file(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            keys = list(f.keys()) if names is None else list(names)
            present = set(f.keys())
            missing = [k for k in keys if k not in present]
            if missing:
                raise InputError(f"missing tensor(s) {', '.join(missing)}", path=p)
            tensors = {k: f.get_tensor(k) for k in keys}
            raw_meta = f.metadata()
    except InputError:
        raise
    except Exception as e:  # safetensors raises its own error types
        raise InputError(f"not a readable safetensors file ({e})", path=p) from None
    kind, meta, prov = _decode_meta(raw_meta, p)
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
    table = columns if isinstance(columns, pa.Table) else pa.table({k: arrow_column(v) for k, v in columns.items()})
    enc = {k.encode(): v.encode() for k, v in encode_meta(kind, meta, prov, where=path).items()}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), **enc})
    with atomic_path(path) as tmp:
        pq.write_table(table, str(tmp))


def arrow_column(v: Any) -> Any:
    """A column for `pa.table`: a torch tensor as numpy, an (N, K) matrix as a fixed-size list column."""
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
    kind, meta, prov = _decode_meta(raw, p)
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
    kind, meta, prov = _decode_meta(raw, p)
    return table, kind, meta, prov


def iter_table(path: str | Path, columns: Sequence[str], batch_size: int) -> Iterator[pa.RecordBatch]:
    """Record batches of some columns of a Parquet table, `batch_size` rows at a time."""
    p = require_file(path)
    try:
        batches = pq.ParquetFile(str(p)).iter_batches(batch_size=batch_size, columns=list(columns))
    except Exception as e:
        raise InputError(f"not a readable Parquet file ({e})", path=p) from None
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except Exception as e:
            raise InputError(f"not a readable Parquet file ({e})", path=p) from None
        yield batch

