"""Summary of a feature file of any format: N, D, dtype, classes and their profile, non-finite rows, provenance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dlsa_cli.evaluation.metrics import FEW_BELOW, MANY_ABOVE
from dlsa_cli.inspect.counts import class_profile
from dlsa_cli.inspect.fields import provenance_fields

__all__ = ["features_summary"]


def features_summary(path: str | Path, *, many_above: int = MANY_ABOVE, few_below: int = FEW_BELOW) -> dict[str, Any]:
    """N, D, dtype, classes and their count profile, non-finite rows, ids and provenance of a feature file.

    The matrix is scanned in batches only to count rows holding NaN or
    infinity; such rows are reported (as a problem), not raised.
    """
    from dlsa_cli.io.features import (
        feature_info,
        iter_feature_batches,
        num_classes,
        read_labels,
    )

    info = feature_info(path)
    labels = read_labels(path)
    bad = 0
    first_bad = None
    for start, x, _ in iter_feature_batches(path, batch_size=max(1, (64 << 20) // max(4 * info.dim, 1))):
        rows = ~np.isfinite(x).all(axis=1)  # (B,)
        if rows.any():
            if first_bad is None:
                first_bad = start + int(np.flatnonzero(rows)[0])
            bad += int(rows.sum())
    meta = dict(info.meta)
    fields: dict[str, Any] = {
        "format": info.format,
        "samples (N)": info.n,
        "dimensions (D)": info.dim,
        "dtype": info.dtype,
        "labels": "yes" if info.has_labels else "no",
        "ids": info.ids or "none (row index)",
        "non-finite rows": bad,
    }
    tables: list[dict[str, Any]] = []
    charts: list[dict[str, Any]] = []
    if labels.labels is not None and (labels.labels.size or num_classes(labels)):
        c = num_classes(labels)
        counts = np.bincount(labels.labels, minlength=c)
        pf, pt, pc = class_profile(counts, many_above, few_below, meta.get("class_names"))
        pf.pop("samples")  # the same as N
        fields.update(pf)
        tables += pt
        charts += pc
    if "train_counts" in meta:
        recorded = meta["train_counts"]
        fields["recorded train_counts"] = f"{len(recorded)} classes, {int(np.sum(recorded))} samples"
    fields.update(provenance_fields(info.provenance))
    for key in ("depth", "num_classes", "source"):
        if key in meta and isinstance(meta[key], (str, int, float)):
            fields[key] = meta[key]
    out = {"kind": "features", "path": str(path), "fields": fields, "tables": tables, "charts": charts}
    if bad:
        out["problems"] = [
            f"{bad} row(s) of features hold NaN or infinity (first: row {first_bad}); remove or repair those rows"
        ]
    return out
