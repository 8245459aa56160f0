"""Pieces every summary shares: provenance lines, the scalars of a metadata dict, reading JSON.

Every summary is a JSON-able dict of one shape, rendered by one renderer
(`render.py`):

    {"kind": str, "path": str,
     "fields": {name: scalar},
     "tables": [{"title": str, "columns": [str], "rows": [[...]]}],
     "charts": [{"title": str, "values": [float], "labels": [str] | None}],
     "problems": [str]}          # optional: what makes the file unusable
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dlsa_cli.errors import InputError
from dlsa_cli.io.files import load_json_text

__all__ = ["provenance_fields", "read_json", "scalar_fields"]


def scalar_fields(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Scalars as they are; lists and dicts by their size (the details belong in tables)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[prefix + k] = v
        elif isinstance(v, list):
            out[prefix + k] = f"list of {len(v)}"
        elif isinstance(v, dict):
            out[prefix + k] = f"{len(v)} entries"
    return out


def provenance_fields(prov: dict[str, Any]) -> dict[str, Any]:
    """Who made the file, when, with which version and seed; or that another tool did."""
    if not prov:
        return {"made by": "another tool (no dlsa provenance)"}
    return {
        "made by": f"dlsa {prov.get('command', '?')}",
        "created": prov.get("created"),
        "dlsa-cli version": prov.get("dlsa_cli"),
        "seed": prov.get("seed"),
    }


def read_json(p: Path) -> Any:
    """A JSON file's content, or one line saying it is not JSON."""
    try:
        return load_json_text(p.read_text(), where=p)
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"not readable JSON ({e})", path=p) from None
