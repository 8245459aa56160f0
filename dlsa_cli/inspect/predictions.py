"""Summary of a predictions table: rows, columns, accuracy when labelled, and samples per route."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dlsa_cli.inspect.fields import provenance_fields
from dlsa_cli.io.files import read_table, read_table_metadata, require_file

__all__ = ["predictions_summary"]


def predictions_summary(path: str | Path) -> dict[str, Any]:
    """Rows, columns, accuracy (when labels are present) and route counts of a predictions table."""
    p = require_file(path)
    schema, rows, kind, meta, prov = read_table_metadata(p)
    names = schema.names
    want = [c for c in ("label", "prediction", "route") if c in names]
    table = read_table(p, want)[0]
    fields: dict[str, Any] = {"rows": rows, "columns": ", ".join(names)}
    for key, name in (("num_classes", "classes"), ("model", "model")):
        if key in meta:
            fields[name] = meta[key]
    fields["train counts recorded"] = "yes" if "train_counts" in meta else "no"
    if "label" in names and "prediction" in names and rows:
        y = table.column("label").to_numpy(zero_copy_only=False)
        pr = table.column("prediction").to_numpy(zero_copy_only=False)
        fields["accuracy"] = float(np.mean(y == pr))
    tables: list[dict[str, Any]] = []
    charts: list[dict[str, Any]] = []
    if "route" in names and rows:
        routes = table.column("route").to_numpy(zero_copy_only=False).astype(str)
        r_rows = []
        for r in sorted(np.unique(routes)):
            m = routes == r
            row = [r, int(m.sum()), float(m.mean())]
            if "accuracy" in fields:
                row.append(float(np.mean(y[m] == pr[m])))
            r_rows.append(row)
        cols = ["route", "samples", "share"] + (["accuracy"] if "accuracy" in fields else [])
        tables.append({"title": "routes", "columns": cols, "rows": r_rows})
        charts.append({"title": "samples per route", "values": [float(r[1]) for r in r_rows],
                       "labels": [r[0] for r in r_rows]})
    if "prediction" in names and rows:
        c = int(meta.get("num_classes") or int(table.column("prediction").to_numpy().max()) + 1)
        per_class = np.bincount(table.column("prediction").to_numpy().astype(np.int64), minlength=c)
        charts.append({"title": "predictions per class, most predicted first",
                       "values": np.sort(per_class)[::-1].astype(float).tolist(), "labels": None})
    fields.update(provenance_fields(prov))
    return {"kind": kind or "predictions", "path": str(p), "fields": fields, "tables": tables, "charts": charts}
