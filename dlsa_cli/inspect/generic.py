"""The fallback summary of any safetensors, Parquet or JSON file: its tensors or columns, and metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dlsa_cli.errors import InputError
from dlsa_cli.inspect.fields import provenance_fields, read_json, scalar_fields
from dlsa_cli.io.files import read_safetensors_header, read_table_metadata, require_file

__all__ = ["generic_summary"]


def generic_summary(path: str | Path, *, kind: str | None = None) -> dict[str, Any]:
    """What any safetensors, Parquet or JSON file holds: tensors or columns, and metadata."""
    p = require_file(path)
    suffix = p.suffix.lower()
    fields: dict[str, Any] = {}
    tables: list[dict[str, Any]] = []
    if suffix == ".safetensors":
        header, _, meta, prov = read_safetensors_header(p)
        fields["tensors"] = len(header)
        tables.append({"title": "tensors", "columns": ["name", "dtype", "shape"],
                       "rows": [[k, dt, "x".join(map(str, shape)) or "scalar"] for k, (dt, shape) in header.items()]})
        fields.update(scalar_fields(meta, "meta: "))
        fields.update(provenance_fields(prov))
    elif suffix == ".parquet":
        schema, rows, _, meta, prov = read_table_metadata(p)
        fields["rows"] = rows
        tables.append({"title": "columns", "columns": ["name", "type"],
                       "rows": [[f.name, str(f.type)] for f in schema]})
        fields.update(scalar_fields(meta, "meta: "))
        fields.update(provenance_fields(prov))
    elif suffix == ".json":
        obj = read_json(p)
        if isinstance(obj, dict):
            fields["keys"] = len(obj)
            fields.update(scalar_fields(obj))
        else:
            fields["type"] = type(obj).__name__
            if isinstance(obj, list):
                fields["items"] = len(obj)
    else:
        raise InputError(f"cannot summarise a '{suffix}' file", path=p)
    return {"kind": kind or "unknown", "path": str(p), "fields": fields, "tables": tables, "charts": []}
