"""The cascade manifest (cascade.json): reading, checking paths, writing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlsa_cli.errors import InputError
from dlsa_cli.io.files import (
    load_json_text,
    require_file,
    write_json,
)

MANIFEST = "cascade.json"


@dataclass
class CascadeSpec:
    """The manifest, with paths resolved against its folder."""

    manifest: Path
    filters: list[Path]
    classifiers: list[Path]
    final: Path
    raw: dict[str, Any] = field(default_factory=dict)
    memory: Path | None = None  # the training samples of memory in the branches ("combine"'s memory)


def _manifest_path(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST
    if not p.exists():
        raise InputError("cascade manifest does not exist", path=p, hint=f"give a cascade folder holding {MANIFEST}")
    return p


def read_manifest(path: str | Path, *, allow_outside: bool = False) -> CascadeSpec:
    """Parse a cascade manifest (the JSON file or its folder); paths resolved, files must exist.

    Every path must stay inside the manifest's folder (no absolute paths, no
    `..` climbing out, no symlink leading out): a manifest is data, and a
    cascade folder received from elsewhere must not make `predict` read files
    anywhere on the machine. `allow_outside=True` (`--allow-outside-paths`)
    trusts the manifest instead.
    """
    p = _manifest_path(path)
    try:
        raw = load_json_text(p.read_text(), where=p)
    except (OSError, ValueError) as e:
        raise InputError(f"not a readable JSON cascade manifest ({e})", path=p) from None
    if not isinstance(raw, dict) or "final" not in raw or not isinstance(raw.get("depths", []), list):
        raise InputError(
            'a cascade manifest needs "depths": [{"filter": ..., "classifier": ...}, ...] and "final"', path=p
        )
    root = p.parent

    def entry(value: Any, what: str) -> Path:
        if not isinstance(value, str) or not value:
            raise InputError(f"{what} must be a path (a non-empty string), got {value!r}", path=p)
        q = root / value
        if not allow_outside and (Path(value).is_absolute() or root.resolve() not in q.resolve().parents):
            raise InputError(
                f"{what} '{value}' lies outside the cascade folder",
                path=p,
                hint="keep the cascade's files inside its folder, or pass --allow-outside-paths if you "
                     "trust this manifest",
            )
        return require_file(q, f"{what} (listed in {p})")

    filters, classifiers = [], []
    for i, d in enumerate(raw.get("depths", []), start=1):
        if not isinstance(d, dict) or "filter" not in d or "classifier" not in d:
            raise InputError(f'depth {i} needs "filter" and "classifier" entries', path=p)
        filters.append(entry(d["filter"], f"depth-{i} filter"))
        classifiers.append(entry(d["classifier"], f"depth-{i} classifier"))
    final = entry(raw["final"], "final classifier")
    combine = raw.get("combine") or {}
    if not isinstance(combine, dict):
        raise InputError('"combine" must be an object (memory, weights, temperatures)', path=p)
    memory = entry(combine["memory"], "memory file") if combine.get("memory") is not None else None
    return CascadeSpec(p, filters, classifiers, final, raw, memory)


def write_manifest(
    path: str | Path,
    depths: Sequence[tuple[str | Path, str | Path]],
    final: str | Path,
    *,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `cascade.json` (into a folder `path`, or to the file `path`); paths stored relative to it."""
    p = Path(path)
    if p.is_dir() or not p.suffix:
        p = p / MANIFEST
    root = p.parent.resolve()

    def rel(q: str | Path) -> str:
        q = Path(q).resolve()
        try:
            return str(q.relative_to(root))
        except ValueError:
            return str(q)

    obj = {
        "dlsa_kind": "cascade",
        "depths": [{"filter": rel(f), "classifier": rel(c)} for f, c in depths],
        "final": rel(final),
        **(extra or {}),
    }
    write_json(p, obj)
    return p


