"""Class-count profiles: shot groups, imbalance, largest and smallest classes; a counts JSON file's summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dlsa_cli.evaluation.metrics import FEW_BELOW, MANY_ABOVE, shot_groups

__all__ = ["class_profile", "counts_summary"]


def class_profile(counts: np.ndarray, many_above: int, few_below: int,
                  class_names: list[str] | None = None) -> tuple[dict, list, list]:
    """Fields, tables and charts that picture a class-count profile."""
    counts = np.asarray(counts, dtype=np.int64)
    groups = shot_groups(counts, many_above, few_below)
    present = counts[counts > 0]
    fields: dict[str, Any] = {
        "classes": len(counts),
        "samples": int(counts.sum()),
        "many-shot classes": int(np.sum(groups == "many")),
        "medium-shot classes": int(np.sum(groups == "medium")),
        "few-shot classes": int(np.sum(groups == "few")),
        "max count": int(counts.max()) if counts.size else 0,
        "min count": int(counts.min()) if counts.size else 0,
        "imbalance (max / min)": float(present.max() / present.min()) if present.size else None,
        "classes without samples": int(np.sum(counts == 0)),
    }
    rows = []
    for g, rule in (("many", f"> {many_above}"), ("medium", f"{few_below}..{many_above}"), ("few", f"< {few_below}")):
        m = groups == g
        rows.append([g, rule, int(m.sum()), int(counts[m].sum())])
    tables = [{"title": "shot groups", "columns": ["group", "samples per class", "classes", "samples"], "rows": rows}]
    order = np.argsort(-counts, kind="stable")
    if len(counts) > 10:
        pick = np.concatenate([order[:5], order[-5:]])
        title = "largest and smallest classes"
    else:
        pick = order
        title = "classes"
    names = class_names if class_names and len(class_names) == len(counts) else None
    tables.append(
        {
            "title": title,
            "columns": ["class"] + (["name"] if names else []) + ["count", "group"],
            "rows": [[int(k)] + ([names[k]] if names else []) + [int(counts[k]), str(groups[k])] for k in pick],
        }
    )
    charts = [{"title": "samples per class, largest first", "values": counts[order].astype(float).tolist(),
               "labels": None}]
    return fields, tables, charts


def counts_summary(path: str | Path) -> dict[str, Any]:
    """Profile of a JSON list of per-class training counts."""
    from dlsa_cli.evaluation.report import read_train_counts

    counts = read_train_counts(path)
    fields, tables, charts = class_profile(counts, MANY_ABOVE, FEW_BELOW)
    return {"kind": "counts", "path": str(path), "fields": fields, "tables": tables, "charts": charts}
