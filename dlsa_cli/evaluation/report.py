"""Evaluate predictions tables against the training class counts.

A predictions table (Parquet, as written by `predict`) holds `label` and
`prediction` per sample, and for a cascade `route` ("cluster@1", ...,
"regular"), `depth` and `branch`. `evaluate_predictions` computes, from the
ORIGINAL training counts: overall top-1, many/medium/few accuracy, MCC, NMI,
per-class accuracy, and the same per route, with head-tail separation accuracy
(share of tail classes among the samples a cluster-aided classifier took) for
each cluster route, i.e. each depth (paper Fig. 7).

Training counts come from a feature file's labels (or its `train_counts`
metadata, for files derived by `split`) or from a JSON list of per-class
counts. A class with count 0 is few-shot. Labels or predictions outside the
training classes are an error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dlsa_cli.errors import InputError
from dlsa_cli.evaluation.metrics import (
    FEW_BELOW,
    MANY_ABOVE,
    TAIL_AT_MOST,
    group_accuracies,
    matthews_corrcoef,
    normalized_mutual_info,
    per_class_accuracy,
    separation_accuracy,
    shot_groups,
    top1_accuracy,
)
from dlsa_cli.io.files import read_table, read_table_metadata, require_file

__all__ = [
    "Predictions",
    "read_predictions",
    "read_train_counts",
    "evaluate_predictions",
    "evaluate_files",
    "check_groups",
]


@dataclass
class Predictions:
    """The columns of a predictions table that evaluation uses."""

    labels: np.ndarray  # (N,) int64
    predictions: np.ndarray  # (N,) int64
    routes: np.ndarray | None = None  # (N,) str, e.g. "cluster@1" / "regular"
    depths: np.ndarray | None = None  # (N,) int
    branches: np.ndarray | None = None  # (N,) str, "cluster" / "regular"
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def _int_column(table: Any, name: str, p: Path) -> np.ndarray:
    import pyarrow as pa

    col = table.column(name)
    if col.null_count:
        raise InputError(f"column '{name}' has {col.null_count} missing value(s)", path=p)
    t = col.type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        raise InputError(f"column '{name}' must hold integer classes, got {t}", path=p)
    v = col.to_numpy()
    if pa.types.is_floating(t) and not np.all(np.isfinite(v) & (v == np.round(v))):
        raise InputError(f"column '{name}' must hold integer classes, found non-integer values", path=p)
    v = v.astype(np.int64)
    if v.size and v.min() < 0:
        raise InputError(f"column '{name}' holds a negative class {int(v.min())}", path=p)
    return v


def read_predictions(path: str | Path, *, labels_from: Any = None) -> Predictions:
    """Read the columns evaluation needs from a predictions table.

    `labels_from` (a `LabelSet` or `FeatureSet` with labels), when given,
    supplies the true labels, joined on the table's `id` (a labels file
    without ids is matched by row index), in place of any `label` column.
    Any predicted id missing there is an error.
    """
    p = require_file(path, "predictions file")
    if p.suffix.lower() != ".parquet":
        raise InputError("a predictions file must be Parquet (.parquet)", path=p, hint="write it with `dlsa predict`")
    schema, rows, kind, meta, _ = read_table_metadata(p)
    names = schema.names
    if "prediction" not in names:
        raise InputError(
            f"has no 'prediction' column (it has {', '.join(names) or 'none'})",
            path=p,
            hint="a predictions table needs columns 'label' and 'prediction'",
        )
    if rows == 0:
        raise InputError("has no rows", path=p, hint="predict on a non-empty feature file")
    want = ["prediction"] + [c for c in ("label", "id", "route", "depth", "branch") if c in names]
    table = read_table(p, want)[0]
    pred = _int_column(table, "prediction", p)
    if labels_from is not None:
        labels = _join_labels(table, labels_from, p)
    elif "label" in names:
        labels = _int_column(table, "label", p)
    else:
        raise InputError(
            "has no 'label' column",
            path=p,
            hint="pass --labels FILE (a feature file with ids and labels) to join on 'id'",
        )

    def text(name: str) -> np.ndarray | None:
        return table.column(name).to_numpy(zero_copy_only=False).astype(str) if name in names else None

    depths = table.column("depth").to_numpy(zero_copy_only=False) if "depth" in names else None
    return Predictions(labels, pred, text("route"), depths, text("branch"), meta, p)


def _join_labels(table: Any, source: Any, p: Path) -> np.ndarray:
    """True labels for the table's `id`s, looked up in `source` (ids + labels)."""
    y = source.require_labels()
    src_ids = source.ids if source.ids is not None else np.arange(len(y), dtype=np.int64)
    where = getattr(source, "path", None) or "the labels file"
    if "id" not in table.column_names:
        raise InputError("has no 'id' column to join the labels on", path=p, hint="predict writes one; keep it")
    ids = table.column("id").to_numpy(zero_copy_only=False)
    if ids.dtype == object:  # Arrow strings
        ids = ids.astype(str)
    uniq, counts = np.unique(ids, return_counts=True)
    if uniq.size < ids.size:
        dup = uniq[counts > 1]
        raise InputError(
            f"{int((counts[counts > 1] - 1).sum())} rows repeat an id (first: {dup[0]}); joined to the labels "
            "they would be scored twice",
            path=p,
            hint="give a table with one row per sample",
        )
    if (ids.dtype.kind in "iu") != (src_ids.dtype.kind in "iu"):  # int ids on one side, strings on the other
        ids, src_ids = ids.astype(str), src_ids.astype(str)
    order = np.argsort(src_ids, kind="stable")
    sorted_ids = src_ids[order]
    pos = np.clip(np.searchsorted(sorted_ids, ids), 0, len(sorted_ids) - 1)  # (N,)
    found = sorted_ids[pos] == ids
    if not found.all():
        first = ids[np.flatnonzero(~found)[0]]
        raise InputError(
            f"{int((~found).sum())} of {len(ids)} predicted ids are absent from the labels in {where} (first: {first})",
            path=p,
            hint="evaluate against the feature file the predictions were made from",
        )
    return y[order[pos]]


def check_groups(many_above: int, few_below: int, tail_at_most: int) -> None:
    """Refuse group bounds out of range, or overlapping many-/few-shot groups, before any work."""
    for flag, v in (("--many-above", many_above), ("--few-below", few_below), ("--tail-at-most", tail_at_most)):
        if v < 0:
            raise InputError(f"{flag} {v}: a count bound must be >= 0")
    if few_below > many_above + 1:
        raise InputError(
            f"--few-below {few_below} and --many-above {many_above} overlap: a class with "
            f"{many_above + 1} training samples would be both many- and few-shot",
            hint=f"keep --few-below at most --many-above + 1 ({many_above + 1})",
        )


def read_train_counts(path: str | Path) -> np.ndarray:
    """Per-class training counts (C,) int64 from a feature file or a JSON counts file.

    JSON: a list of non-negative integers, or an object with a `train_counts` list.
    A feature file: its `train_counts` metadata when derived (by `split`), else
    the counts of its labels over its `num_classes`.
    """
    from dlsa_cli.io.features import read_labels, train_counts

    p = require_file(path, "training file")
    if p.suffix.lower() == ".json":
        try:
            obj = json.loads(p.read_text())
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"not readable JSON ({e})", path=p) from None
        if isinstance(obj, dict):
            obj = obj.get("train_counts")
        ok = isinstance(obj, list) and obj and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in obj)
        if not ok:
            raise InputError(
                "a counts file must be a JSON list of per-class training counts (non-negative integers)",
                path=p,
                hint='e.g. [400, 380, 12, 4]',
            )
        return np.asarray(obj, dtype=np.int64)
    return train_counts(read_labels(p))


def _check_classes(pr: Predictions, c: int, train_name: str) -> None:
    for what, v in (("label", pr.labels), ("prediction", pr.predictions)):
        if v.size and v.max() >= c:
            raise InputError(
                f"{what} {int(v.max())} is outside the {c} classes of {train_name}",
                path=pr.path,
                hint="evaluate against the training set the model was fit on",
            )


def evaluate_predictions(
    labels: np.ndarray,
    predictions: np.ndarray,
    counts: np.ndarray,
    *,
    routes: np.ndarray | None = None,
    depths: np.ndarray | None = None,
    branches: np.ndarray | None = None,
    many_above: int = MANY_ABOVE,
    few_below: int = FEW_BELOW,
    tail_at_most: int = TAIL_AT_MOST,
    per_class: bool = False,
) -> dict[str, Any]:
    """All metrics of one predictions table, as a JSON-able dict.

    Keys: samples, overall, many, medium, few, mcc, nmi (fractions; None for an
    empty group), classes (classes per group in training), separation (over all
    samples routed to a cluster-aided classifier; None without routes), routes
    ({route: samples, share, overall, many, medium, few, depth, separation}), and
    per_class (list of dicts) when asked.
    """
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(predictions, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    c = len(counts)
    acc, correct, support = per_class_accuracy(y, p, c)
    groups = shot_groups(counts, many_above, few_below)
    out: dict[str, Any] = {
        "samples": int(y.size),
        "overall": top1_accuracy(y, p),
        **group_accuracies(acc, counts, many_above, few_below),
        "mcc": matthews_corrcoef(y, p),
        "nmi": normalized_mutual_info(y, p),
        "classes": {g: int(np.sum(groups == g)) for g in ("many", "medium", "few")},
        "separation": None,
        "routes": {},
    }
    if routes is not None:
        out["separation"], out["routes"] = _route_metrics(
            y, p, counts, np.asarray(routes).astype(str), depths, branches, many_above, few_below, tail_at_most
        )
    if per_class:
        out["per_class"] = _per_class(counts, groups, acc, correct, support)
    return out


def _route_metrics(
    y: np.ndarray,
    p: np.ndarray,
    counts: np.ndarray,
    routes: np.ndarray,
    depths: np.ndarray | None,
    branches: np.ndarray | None,
    many_above: int,
    few_below: int,
    tail_at_most: int,
) -> tuple[float | None, dict[str, Any]]:
    """Separation over every cluster-routed sample, and the metrics of each route."""
    c = len(counts)
    is_cluster = (np.asarray(branches).astype(str) == "cluster") if branches is not None else np.char.startswith(routes, "cluster")
    separation = separation_accuracy(y[is_cluster], counts, tail_at_most) if is_cluster.any() else None
    per_route: dict[str, Any] = {}
    for r in sorted(np.unique(routes), key=_route_order):
        m = routes == r
        r_acc = per_class_accuracy(y[m], p[m], c)[0]
        per_route[str(r)] = {
            "samples": int(m.sum()),
            "share": float(m.mean()),
            "overall": top1_accuracy(y[m], p[m]),
            **group_accuracies(r_acc, counts, many_above, few_below),
            "depth": int(np.asarray(depths)[m][0]) if depths is not None else _route_depth(r),
            "separation": separation_accuracy(y[m], counts, tail_at_most) if is_cluster[m].all() else None,
        }
    return separation, per_route


def _per_class(counts: np.ndarray, groups: np.ndarray, acc: np.ndarray, correct: np.ndarray, support: np.ndarray) -> list[dict[str, Any]]:
    return [
        {
            "class": k,
            "train_count": int(counts[k]),
            "group": str(groups[k]),
            "samples": int(support[k]),
            "correct": int(correct[k]),
            "accuracy": None if support[k] == 0 else float(acc[k]),
        }
        for k in range(len(counts))
    ]


def _route_depth(route: str) -> int | None:
    _, _, d = route.partition("@")
    return int(d) if d.isdigit() else None


def _route_order(route: str) -> tuple[int, int, str]:
    """cluster@1, cluster@2, ..., then regular, then anything else."""
    d = _route_depth(route)
    if route.startswith("cluster"):
        return (0, d or 0, route)
    return (1 if route == "regular" else 2, 0, route)


def _check_request(paths: list[str], plot: str | Path | None, bins: int) -> None:
    """Errors in what was asked, before any file is read."""
    if not paths:
        raise InputError("no predictions file given")
    if len(set(map(str, paths))) != len(paths):
        raise InputError("a predictions file is given twice", hint="give each file once")
    if plot is not None:
        from dlsa_cli.evaluation.plot import check_plot_target

        check_plot_target(plot)
    if bins < 1:
        raise InputError(f"--bins must be at least 1, got {bins}")


def _counts_for(first_path: str, train: str | Path | None) -> tuple[np.ndarray, str]:
    """Per-class training counts from --train, else the first table's recorded train_counts; and their name."""
    if train is not None:
        return read_train_counts(train), str(train)
    first = require_file(first_path, "predictions file")
    meta = read_table_metadata(first)[3]
    if "train_counts" not in meta:
        raise InputError(
            "records no training counts", path=first, hint="pass --train TRAIN (a feature file or a JSON counts list)"
        )
    return np.asarray(meta["train_counts"], dtype=np.int64), f"{first}'s train_counts"


def evaluate_files(
    paths: list[str],
    train: str | Path | None = None,
    *,
    labels: str | Path | None = None,
    many_above: int = MANY_ABOVE,
    few_below: int = FEW_BELOW,
    tail_at_most: int = TAIL_AT_MOST,
    per_class: bool = False,
    plot: str | Path | None = None,
    bins: int = 20,
) -> dict[str, dict[str, Any]]:
    """Evaluate several predictions tables against one training set: {path as given: metrics}.

    `train` is a feature file or a JSON counts file; without it the first
    table's `train_counts` metadata is used. `labels` is a feature file whose
    ids and labels are joined to the tables on `id` (in place of their own
    `label` column, which they may lack). `plot`
    writes the Fig. 1 view (binned confusion without correct predictions,
    one panel per table) atomically, after everything else succeeded.
    """
    from dlsa_cli.evaluation.metrics import binned_confusion
    from dlsa_cli.io.features import read_labels

    check_groups(many_above, few_below, tail_at_most)
    _check_request(paths, plot, bins)
    if plot is not None:
        from dlsa_cli.io.files import check_output_file

        check_output_file(plot, suffixes=(), inputs=[*paths, train, labels], flag="--plot")
    counts, train_name = _counts_for(paths[0], train)
    label_set = read_labels(labels, require_labels=True) if labels is not None else None
    results: dict[str, dict[str, Any]] = {}
    panels = []
    for path in paths:
        pr = read_predictions(path, labels_from=label_set)
        _check_classes(pr, len(counts), train_name)
        results[str(path)] = evaluate_predictions(
            pr.labels,
            pr.predictions,
            counts,
            routes=pr.routes,
            depths=pr.depths,
            branches=pr.branches,
            many_above=many_above,
            few_below=few_below,
            tail_at_most=tail_at_most,
            per_class=per_class,
        )
        if plot is not None:
            panels.append((str(path), binned_confusion(pr.labels, pr.predictions, counts, bins)))
    if plot is not None:
        from dlsa_cli.evaluation.plot import plot_confusion

        plot_confusion(plot, panels, num_classes=len(counts))
    return results
