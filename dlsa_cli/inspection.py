"""`dlsa inspect`: a summary of any file the tool reads or writes.

Every summary is a JSON-able dict of one shape, rendered by one renderer:

    {"kind": str, "path": str,
     "fields": {name: scalar},
     "tables": [{"title": str, "columns": [str], "rows": [[...]]}],
     "charts": [{"title": str, "values": [float], "labels": [str] | None}],
     "problems": [str]}          # optional: what makes the file unusable

`summarize(path)` picks the summary function by the file's recorded
`dlsa_kind` (or by extension for files from other tools) from `REGISTRY`,
importing it lazily; when that function does not exist (yet), it falls back to
`generic_summary`, which lists the file's tensors or columns and metadata.
Nothing here prints: `render` returns a rich renderable.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dlsa_cli.errors import InputError
from dlsa_cli.evaluation.metrics import FEW_BELOW, MANY_ABOVE, shot_groups
from dlsa_cli.io.files import (
    read_safetensors_header,
    read_table,
    read_table_metadata,
    require_file,
)

__all__ = [
    "REGISTRY",
    "detect_kind",
    "summarize",
    "features_summary",
    "predictions_summary",
    "counts_summary",
    "generic_summary",
    "render",
    "sparkline",
]

# kind -> "module:function"; each function takes a path and returns the summary dict.
REGISTRY: dict[str, str] = {
    "features": "dlsa_cli.inspection:features_summary",
    "predictions": "dlsa_cli.inspection:predictions_summary",
    "counts": "dlsa_cli.inspection:counts_summary",
    "filter": "dlsa_cli.flow.summary:summary",
    "split": "dlsa_cli.flow.summary:split_summary",
    "classifier": "dlsa_cli.classify.summary:summary",
    "cascade": "dlsa_cli.cascade.summary:summary",  # a cascade folder or its cascade.json
}

_FEATURE_SUFFIXES = (".npz", ".npy", ".pt", ".pth", ".h5", ".hdf5")


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
        return ("features" if any(k in header for k in ("features", "feature", "feats", "F", "X", "x")) else None), True
    if suffix == ".parquet":
        schema, _, kind, _, _ = read_table_metadata(p)
        if kind:
            return kind, True
        return ("predictions", True) if "prediction" in schema.names else ("features", False)
    if suffix == ".json":
        obj = _read_json(p)
        if isinstance(obj, list) and obj and all(isinstance(v, int) and not isinstance(v, bool) for v in obj):
            return "counts", True
        if isinstance(obj, dict) and isinstance(obj.get("dlsa_kind"), str):
            return obj["dlsa_kind"], True
        return None, True
    return "features", True  # every other extension is read (or rejected) as a feature file


def _resolve(kind: str) -> Callable[[Path], dict[str, Any]] | None:
    target = REGISTRY.get(kind)
    if target is None:
        return None
    module, _, name = target.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):  # not written yet, or its module cannot load here
        return None


def summarize(path: str | Path) -> dict[str, Any]:
    """Summary dict of any file, or of a cascade folder (see the module docstring for its shape)."""
    if Path(path).is_dir():
        fn = _resolve("cascade")
        if fn is None:
            raise InputError("is a folder; inspect summarises files", path=path, hint="name a file in it")
        return fn(Path(path))
    p = require_file(path)
    kind, sure = _detect(p)
    if not sure:  # a Parquet file from another tool: a feature table if it reads as one
        try:
            return features_summary(p)
        except InputError:
            return generic_summary(p)
    fn = _resolve(kind) if kind else None
    if fn is None:
        return generic_summary(p, kind=kind)
    return fn(p)


# ----------------------------------------------------------------------------- summaries


def _scalar_fields(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
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


def _provenance_fields(prov: dict[str, Any]) -> dict[str, Any]:
    if not prov:
        return {"made by": "another tool (no dlsa provenance)"}
    return {
        "made by": f"dlsa {prov.get('command', '?')}",
        "created": prov.get("created"),
        "dlsa-cli version": prov.get("dlsa_cli"),
        "seed": prov.get("seed"),
    }


def _profile(counts: np.ndarray, many_above: int, few_below: int, class_names: list[str] | None = None) -> tuple[dict, list, list]:
    """Fields, tables and charts that picture a class-count profile."""
    counts = np.asarray(counts, dtype=np.int64)
    groups = shot_groups(counts, many_above, few_below)
    present = counts[counts > 0]
    fields: dict[str, Any] = {
        "classes": int(len(counts)),
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
    named = bool(class_names) and len(class_names) == len(counts)
    tables.append(
        {
            "title": title,
            "columns": ["class"] + (["name"] if named else []) + ["count", "group"],
            "rows": [[int(k)] + ([class_names[k]] if named else []) + [int(counts[k]), str(groups[k])] for k in pick],
        }
    )
    charts = [{"title": "samples per class, largest first", "values": counts[order].astype(float).tolist(), "labels": None}]
    return fields, tables, charts


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
        pf, pt, pc = _profile(counts, many_above, few_below, meta.get("class_names"))
        pf.pop("samples")  # the same as N
        fields.update(pf)
        tables += pt
        charts += pc
    if "train_counts" in meta:
        fields["recorded train_counts"] = f"{len(meta['train_counts'])} classes, {int(np.sum(meta['train_counts']))} samples"
    fields.update(_provenance_fields(info.provenance))
    for key in ("depth", "num_classes", "source"):
        if key in meta and isinstance(meta[key], (str, int, float)):
            fields[key] = meta[key]
    out = {"kind": "features", "path": str(path), "fields": fields, "tables": tables, "charts": charts}
    if bad:
        out["problems"] = [
            f"{bad} row(s) of features hold NaN or infinity (first: row {first_bad}); remove or repair those rows"
        ]
    return out


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
        charts.append({"title": "samples per route", "values": [float(r[1]) for r in r_rows], "labels": [r[0] for r in r_rows]})
    if "prediction" in names and rows:
        c = int(meta.get("num_classes") or int(table.column("prediction").to_numpy().max()) + 1)
        per_class = np.bincount(table.column("prediction").to_numpy().astype(np.int64), minlength=c)
        charts.append({"title": "predictions per class, most predicted first", "values": np.sort(per_class)[::-1].astype(float).tolist(), "labels": None})
    fields.update(_provenance_fields(prov))
    return {"kind": kind or "predictions", "path": str(p), "fields": fields, "tables": tables, "charts": charts}


def counts_summary(path: str | Path) -> dict[str, Any]:
    """Profile of a JSON list of per-class training counts."""
    from dlsa_cli.evaluation.report import read_train_counts

    counts = read_train_counts(path)
    fields, tables, charts = _profile(counts, MANY_ABOVE, FEW_BELOW)
    return {"kind": "counts", "path": str(path), "fields": fields, "tables": tables, "charts": charts}


def generic_summary(path: str | Path, *, kind: str | None = None) -> dict[str, Any]:
    """What any safetensors, Parquet or JSON file holds: tensors or columns, and metadata."""
    p = require_file(path)
    suffix = p.suffix.lower()
    fields: dict[str, Any] = {}
    tables: list[dict[str, Any]] = []
    if suffix == ".safetensors":
        header, kind2, meta, prov = read_safetensors_header(p)
        fields["tensors"] = len(header)
        tables.append({"title": "tensors", "columns": ["name", "dtype", "shape"],
                       "rows": [[k, dt, "x".join(map(str, shape)) or "scalar"] for k, (dt, shape) in header.items()]})
        fields.update(_scalar_fields(meta, "meta: "))
        fields.update(_provenance_fields(prov))
    elif suffix == ".parquet":
        schema, rows, kind2, meta, prov = read_table_metadata(p)
        fields["rows"] = rows
        tables.append({"title": "columns", "columns": ["name", "type"], "rows": [[f.name, str(f.type)] for f in schema]})
        fields.update(_scalar_fields(meta, "meta: "))
        fields.update(_provenance_fields(prov))
    elif suffix == ".json":
        obj = _read_json(p)
        if isinstance(obj, dict):
            fields["keys"] = len(obj)
            fields.update(_scalar_fields(obj))
        else:
            fields["type"] = type(obj).__name__
            if isinstance(obj, list):
                fields["items"] = len(obj)
    else:
        raise InputError(f"cannot summarise a '{suffix}' file", path=p)
    return {"kind": kind or "unknown", "path": str(p), "fields": fields, "tables": tables, "charts": []}


def _read_json(p: Path) -> Any:
    try:
        return json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"not readable JSON ({e})", path=p) from None


# ----------------------------------------------------------------------------- rendering

_BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 48) -> str:
    """Values as one line of block characters; more values than `width` are averaged in chunks."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return ""
    v = np.nan_to_num(v, nan=np.nanmin(v) if np.isfinite(v).any() else 0.0)
    if v.size > width:
        v = np.array([c.mean() for c in np.array_split(v, width)])
    lo = min(0.0, float(v.min()))
    hi = float(v.max())
    if hi <= lo:
        return _BLOCKS[0] * len(v)
    idx = np.clip(((v - lo) / (hi - lo) * (len(_BLOCKS) - 1)).round().astype(int), 0, len(_BLOCKS) - 1)
    return "".join(_BLOCKS[i] for i in idx)


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def render(summary: dict[str, Any]) -> Any:
    """A rich renderable for a summary dict: fields, problems, tables, then charts."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = [Text.from_markup(f"[bold]{escape(str(summary.get('kind')))}[/] {escape(str(summary.get('path')))}")]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column()
    for k, v in (summary.get("fields") or {}).items():
        grid.add_row(escape(str(k)), escape(_fmt(v)))
    parts.append(grid)
    for msg in summary.get("problems") or []:
        parts.append(Text.from_markup(f"[bold red]problem:[/] {escape(msg)}"))
    for t in summary.get("tables") or []:
        tab = Table(title=escape(t.get("title", "")), title_justify="left")
        for c in t.get("columns", []):
            tab.add_column(escape(str(c)))
        for row in t.get("rows", []):
            tab.add_row(*[escape(_fmt(x)) for x in row])
        parts.append(tab)
    for ch in summary.get("charts") or []:
        values = [float(x) for x in ch.get("values") or []]
        if not values:
            continue
        labels = ch.get("labels")
        parts.append(Text.from_markup(f"[bold]{escape(ch.get('title', ''))}[/]"))
        if labels and len(values) <= 30:
            top = max(max(abs(x) for x in values), 1e-12)
            bars = Table.grid(padding=(0, 1))
            bars.add_column(style="dim", no_wrap=True)
            bars.add_column(no_wrap=True)
            bars.add_column(justify="right")
            for lab, x in zip(labels, values):
                bars.add_row(escape(str(lab)), "█" * max(0, round(40 * abs(x) / top)), _fmt(x))
            parts.append(bars)
        else:
            parts.append(Text(f"{sparkline(values)}  {len(values)} values, {_fmt(min(values))}..{_fmt(max(values))}"))
    return Group(*parts)
