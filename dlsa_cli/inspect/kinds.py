"""Which summary a file gets: its kind, from the recorded `dlsa_kind` or its extension, and `summarize`.

`summarize(path)` picks the summary function by the file's kind from
`REGISTRY`, importing it lazily; when that function does not exist (yet), it
falls back to `generic_summary`, which lists the file's tensors or columns and
metadata. A folder is summarised as a cascade.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dlsa_cli.errors import InputError
from dlsa_cli.inspect.features import features_summary
from dlsa_cli.inspect.fields import read_json
from dlsa_cli.inspect.generic import generic_summary
from dlsa_cli.io.files import read_safetensors_header, read_table_metadata, require_file
from dlsa_cli.io.formats.base import FEATURE_KEYS, pick

__all__ = ["REGISTRY", "detect_kind", "resolve", "summarize"]

# kind -> "module:function"; each function takes a path and returns the summary dict.
REGISTRY: dict[str, str] = {
    "features": "dlsa_cli.inspect.features:features_summary",
    "predictions": "dlsa_cli.inspect.predictions:predictions_summary",
    "counts": "dlsa_cli.inspect.counts:counts_summary",
    "filter": "dlsa_cli.flow.summary:summary",
    "split": "dlsa_cli.flow.summary:split_summary",
    "classifier": "dlsa_cli.classify.summary:summary",
    "cascade": "dlsa_cli.cascade.summary:summary",  # a cascade folder or its cascade.json
}


def detect_kind(path: str | Path) -> str | None:
    """The kind a file is summarised as; None when only a generic summary fits."""
    return _detect(require_file(path))[0]


def _detect(p: Path) -> tuple[str | None, bool]:
    """(kind, sure): not sure for a Parquet file from another tool, read as features if it can be."""
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        header, kind, _, _ = read_safetensors_header(p)
        if kind:
            return kind, True
        return ("features" if pick(header, FEATURE_KEYS) is not None else None), True
    if suffix == ".parquet":
        schema, _, kind, _, _ = read_table_metadata(p)
        if kind:
            return kind, True
        return ("predictions", True) if "prediction" in schema.names else ("features", False)
    if suffix == ".json":
        obj = read_json(p)
        if isinstance(obj, list) and obj and all(isinstance(v, int) and not isinstance(v, bool) for v in obj):
            return "counts", True
        if isinstance(obj, dict) and isinstance(obj.get("dlsa_kind"), str):
            return obj["dlsa_kind"], True
        return None, True
    return "features", True  # every other extension is read (or rejected) as a feature file


def _looks_like_features(p: Path) -> bool:
    """A Parquet table with a features or labels column is meant as a feature table."""
    from dlsa_cli.io.formats.base import FEATURE_KEYS, LABEL_KEYS

    names = read_table_metadata(p)[0].names
    return any(k in names for k in (*FEATURE_KEYS, *LABEL_KEYS))


def resolve(kind: str) -> Callable[[Path], dict[str, Any]] | None:
    """The summary function `REGISTRY` names for `kind`; None when there is none (yet) or it cannot load."""
    target = REGISTRY.get(kind)
    if target is None:
        return None
    module, _, name = target.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):  # not written yet, or its module cannot load here
        return None


def summarize(path: str | Path) -> dict[str, Any]:
    """Summary dict of any file, or of a cascade folder (its shape: `inspect/fields.py`)."""
    if Path(path).is_dir():
        fn = resolve("cascade")
        if fn is None:
            raise InputError("is a folder; inspect summarises files", path=path, hint="name a file in it")
        return fn(Path(path))
    p = require_file(path)
    kind, sure = _detect(p)
    if not sure:  # a Parquet file from another tool: a feature table if it reads as one
        try:
            return features_summary(p)
        except InputError as e:
            summary = generic_summary(p)
            if _looks_like_features(p):  # a broken feature table: described, then what is broken (exit 1)
                why = str(e).replace(f"{p}: ", "", 1)
                summary["problems"] = [f"does not read as a feature table: {why}"]
            return summary
    fn = resolve(kind) if kind else None
    if fn is None:
        return generic_summary(p, kind=kind)
    return fn(p)
