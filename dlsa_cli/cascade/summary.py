"""`dlsa inspect` summary of a cascade."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dlsa_cli.cascade.manifest import read_manifest
from dlsa_cli.cascade.model import Cascade
from dlsa_cli.classify.model import Classifier
from dlsa_cli.errors import InputError, ModelMismatchError
from dlsa_cli.io.files import (
    read_safetensors_header,
)

# ----------------------------------------------------------------------------- inspect


def summary(path: str | Path) -> dict[str, Any]:
    """Inspect summary of a cascade (folder or cascade.json)."""
    spec = read_manifest(path)
    rows = []
    for i, (f, c) in enumerate(zip(spec.filters, spec.classifiers), start=1):
        _, _, fm, _ = read_safetensors_header(f)
        clf = Classifier.load(c)
        rows.append(
            [
                i,
                str(f.relative_to(spec.manifest.parent)) if f.is_relative_to(spec.manifest.parent) else str(f),
                fm.get("num_clusters"),
                fm.get("share"),
                str(c.relative_to(spec.manifest.parent)) if c.is_relative_to(spec.manifest.parent) else str(c),
                clf.meta.get("loss"),
                clf.meta.get("epoch"),
                (clf.meta.get("val") or {}).get("balanced_accuracy"),
            ]
        )
    final = Classifier.load(spec.final)
    try:
        Cascade.load(path)
        consistent = "yes"
    except (ModelMismatchError, InputError) as e:
        consistent = f"no: {e}"
    fields = {
        "depths": len(spec.filters),
        "dim": final.dim,
        "classes": final.num_classes,
        "final classifier": str(spec.final.name),
        "final model": final.kind,
        "final loss": final.meta.get("loss"),
        "files belong together": consistent,
    }
    return {
        "kind": "cascade",
        "path": str(path),
        "fields": fields,
        "tables": [
            {
                "title": "depths",
                "columns": ["depth", "filter", "clusters", "share", "classifier", "loss", "epoch", "val score"],
                "rows": rows,
            }
        ],
        "charts": [],
    }

