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

`evaluate_files` reads each table in batches (`iter_predictions`) into a
`Tally` (`dlsa_cli.evaluation.tally`), whose counts give every metric; it
returns an `EvaluationReport`, one `TableMetrics` per table.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dlsa_cli.errors import InputError
from dlsa_cli.evaluation.metrics import FEW_BELOW, MANY_ABOVE, TAIL_AT_MOST
from dlsa_cli.evaluation.tally import TableMetrics, Tally
from dlsa_cli.io.files import load_json_text, read_table_metadata, require_file

__all__ = [
    "EvaluationReport",
    "Predictions",
    "check_groups",
    "evaluate_files",
    "evaluate_predictions",
    "iter_predictions",
    "read_predictions",
    "read_train_counts",
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


@dataclass
class EvaluationReport:
    """What `evaluate` reports: each table's metrics (by its path as given) and the group bounds they used."""

    tables: dict[str, TableMetrics]
    many_above: int = MANY_ABOVE
    few_below: int = FEW_BELOW
    tail_at_most: int = TAIL_AT_MOST

    def to_json(self) -> dict[str, Any]:
        """{path as given: that table's metrics}."""
        return {name: m.to_json() for name, m in self.tables.items()}


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


PREDICTION_BATCH = 65_536  # rows of a predictions table read at a time


def read_predictions(path: str | Path, *, labels_from: Any = None) -> Predictions:
    """Read the columns evaluation needs from a predictions table, whole (see `iter_predictions`)."""
    parts = list(iter_predictions(path, labels_from=labels_from))

    def cat(name: str) -> np.ndarray | None:
        cols = [getattr(q, name) for q in parts]
        return None if cols[0] is None else np.concatenate(cols)

    def whole(name: str) -> np.ndarray:  # a column every batch has
        return np.concatenate([getattr(q, name) for q in parts])

    return Predictions(whole("labels"), whole("predictions"), cat("routes"), cat("depths"), cat("branches"),
                       parts[0].meta, parts[0].path)


def iter_predictions(path: str | Path, *, labels_from: Any = None,
                     batch_size: int | None = None) -> Iterator[Predictions]:
    """The columns evaluation needs from a predictions table, `batch_size` rows at a time.

    `labels_from` (a `LabelSet` or `FeatureSet` with labels), when given,
    supplies the true labels, joined on the table's `id` (a labels file
    without ids is matched by row index), in place of any `label` column.
    Ids that are absent there or repeated in the table are an error, raised
    once the whole table was read, with their count.
    """
    from dlsa_cli.io.files import iter_table

    p, names, meta = _open_predictions(path, labels_from)
    want = ["prediction"] + [c for c in ("label", "id", "route", "depth", "branch") if c in names]
    join = _LabelJoin(labels_from, p) if labels_from is not None else None
    for batch in iter_table(p, want, batch_size or PREDICTION_BATCH):
        pred = _int_column(batch, "prediction", p)
        labels = join.labels(batch) if join is not None else _int_column(batch, "label", p)
        routes, branches = (batch.column(c).to_numpy(zero_copy_only=False).astype(str) if c in names else None
                            for c in ("route", "branch"))
        depths = batch.column("depth").to_numpy(zero_copy_only=False) if "depth" in names else None
        yield Predictions(labels, pred, routes, depths, branches, meta, p)
    if join is not None:
        join.finish()


def _open_predictions(path: str | Path, labels_from: Any) -> tuple[Path, list[str], dict[str, Any]]:
    """The table's path, column names and metadata, once its shape was checked."""
    p = require_file(path, "predictions file")
    if p.suffix.lower() != ".parquet":
        raise InputError("a predictions file must be Parquet (.parquet)", path=p, hint="write it with `dlsa predict`")
    schema, rows, _, meta, _ = read_table_metadata(p)
    names = schema.names
    if "prediction" not in names:
        raise InputError(
            f"has no 'prediction' column (it has {', '.join(names) or 'none'})",
            path=p,
            hint="a predictions table needs columns 'label' and 'prediction'",
        )
    if rows == 0:
        raise InputError("has no rows", path=p, hint="predict on a non-empty feature file")
    if labels_from is None and "label" not in names:
        raise InputError(
            "has no 'label' column",
            path=p,
            hint="pass --labels FILE (a feature file with ids and labels) to join on 'id'",
        )
    if labels_from is not None and "id" not in names:
        raise InputError("has no 'id' column to join the labels on", path=p, hint="predict writes one; keep it")
    return p, names, meta


class _LabelJoin:
    """True labels for a table's ids, batch by batch, looked up in `source` (ids + labels)."""

    def __init__(self, source: Any, p: Path):
        self.y = source.require_labels()
        self.src_ids = source.ids if source.ids is not None else np.arange(len(self.y), dtype=np.int64)
        self._index: tuple[np.ndarray, np.ndarray] | None = None  # (order, sorted ids), built for the table's id kind
        self.seen = np.zeros(len(self.y), dtype=bool)  # sorted source rows already joined: a second one is a repeat
        self.where = getattr(source, "path", None) or "the labels file"
        self.p = p
        self.rows = self.absent = self.repeats = 0
        self.first_absent = self.first_repeat = None

    def _sorted(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The source ids sorted, as strings when the table's ids are strings and the source's are not
        (or the reverse)."""
        if self._index is None:
            src = self.src_ids
            if (ids.dtype.kind in "iu") != (src.dtype.kind in "iu"):  # int ids on one side, strings on the other
                src = src.astype(str)
            order = np.argsort(src, kind="stable")
            self._index = (order, src[order])
        return self._index

    def labels(self, batch: Any) -> np.ndarray:
        ids = batch.column("id").to_numpy(zero_copy_only=False)
        if ids.dtype == object:  # Arrow strings
            ids = ids.astype(str)
        order, src = self._sorted(ids)
        if src.dtype.kind == "U" and ids.dtype.kind != "U":
            ids = ids.astype(str)
        pos = np.clip(np.searchsorted(src, ids), 0, len(src) - 1)  # (B,)
        found = src[pos] == ids
        self.rows += len(ids)
        if not found.all():
            self.absent += int((~found).sum())
            self.first_absent = self.first_absent if self.first_absent is not None else ids[np.flatnonzero(~found)[0]]
        self._count_repeats(ids[found], pos[found])
        return self.y[order[pos]]

    def _count_repeats(self, ids: np.ndarray, pos: np.ndarray) -> None:
        uniq, first = np.unique(pos, return_index=True)
        again = np.ones(len(pos), dtype=bool)
        again[first] = False
        again |= self.seen[pos]  # joined in an earlier batch already
        if again.any():
            self.repeats += int(again.sum())
            self.first_repeat = self.first_repeat if self.first_repeat is not None else ids[np.flatnonzero(again)[0]]
        self.seen[uniq] = True

    def finish(self) -> None:
        """Raise for repeated or absent ids, counted over the whole table."""
        if self.repeats:
            raise InputError(
                f"{self.repeats} rows repeat an id (first: {self.first_repeat}); joined to the labels "
                "they would be scored twice",
                path=self.p,
                hint="give a table with one row per sample",
            )
        if self.absent:
            raise InputError(
                f"{self.absent} of {self.rows} predicted ids are absent from the labels in {self.where} (first: "
                f"{self.first_absent})",
                path=self.p,
                hint="evaluate against the feature file the predictions were made from",
            )


def check_groups(many_above: int, few_below: int, tail_at_most: int) -> None:
    """Refuse group bounds out of range, or overlapping many-/few-shot groups, before any work."""
    from dlsa_cli.evaluation.config import EvaluateConfig

    EvaluateConfig(many_above=many_above, few_below=few_below, tail_at_most=tail_at_most).check()
    if few_below > many_above + 1:
        raise InputError(
            f"EvaluateConfig.few_below {few_below} and EvaluateConfig.many_above {many_above} overlap: a class with "
            f"{many_above + 1} training samples would be both many- and few-shot",
            hint=f"keep EvaluateConfig.few_below at most EvaluateConfig.many_above + 1 ({many_above + 1})",
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
            obj = load_json_text(p.read_text(), where=p)
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"not readable JSON ({e})", path=p) from None
        if isinstance(obj, dict):
            obj = obj.get("train_counts")
        ok = isinstance(obj, list) and obj and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in obj)
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
) -> TableMetrics:
    """All metrics of one predictions table.

    samples, overall, many, medium, few, mcc, nmi (fractions; None for an
    empty group), classes (classes per group in training), separation (over all
    samples routed to a cluster-aided classifier; None without routes), routes
    ({route: samples, share, overall, many, medium, few, depth, separation}), and
    per_class when asked.
    """
    tally = Tally(np.asarray(counts, dtype=np.int64), tail_at_most)
    tally.add(labels, predictions, routes=routes, depths=depths, branches=branches)
    return tally.metrics(many_above, few_below, per_class)


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
        raise InputError(f"EvaluateConfig.bins {bins}: must be at least 1")


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
) -> EvaluationReport:
    """Evaluate several predictions tables against one training set: the metrics of each, by its path as given.

    `train` is a feature file or a JSON counts file; without it the first
    table's `train_counts` metadata is used. `labels` is a feature file whose
    ids and labels are joined to the tables on `id` (in place of their own
    `label` column, which they may lack). `plot`
    writes the Fig. 1 view (binned confusion without correct predictions,
    one panel per table) atomically, after everything else succeeded.
    """
    from dlsa_cli.io.features import read_labels

    check_groups(many_above, few_below, tail_at_most)
    _check_request(paths, plot, bins)
    if plot is not None:
        from dlsa_cli.io.files import check_output_file

        check_output_file(plot, suffixes=(), inputs=[*paths, train, labels], flag="--plot")
    counts, train_name = _counts_for(paths[0], train)
    label_set = read_labels(labels, require_labels=True) if labels is not None else None
    results: dict[str, TableMetrics] = {}
    panels: list[tuple[str, np.ndarray]] = []
    for path in paths:
        tally = _tally_file(path, counts, train_name, label_set, tail_at_most, bins if plot is not None else None)
        results[str(path)] = tally.metrics(many_above, few_below, per_class)
        if plot is not None and tally.confusion is not None:  # tallied with bins when plotting
            panels.append((str(path), tally.confusion))
    if plot is not None:
        from dlsa_cli.evaluation.plot import plot_confusion

        plot_confusion(plot, panels, num_classes=len(counts))
    return EvaluationReport(results, many_above, few_below, tail_at_most)


def _tally_file(path: str, counts: np.ndarray, train_name: str, label_set: Any, tail_at_most: int,
                bins: int | None) -> Tally:
    """A predictions table's counts, read batch by batch (memory: one batch and C x routes counts)."""
    tally = Tally(counts, tail_at_most, bins=bins)
    for pr in iter_predictions(path, labels_from=label_set):
        _check_classes(pr, len(counts), train_name)
        tally.add(pr.labels, pr.predictions, routes=pr.routes, depths=pr.depths, branches=pr.branches)
    return tally
