"""Every long-tail metric from counts that batches add up, so a predictions table is scored without holding it.

A `Tally` keeps, for C training classes:
- per class: evaluation samples (support), correct ones, times predicted;
- the non-zero cells of the label x prediction contingency table (for NMI),
  at most min(rows, C^2) of them, as sorted pair codes `label * C + prediction`;
- per route: samples, per-class support and correct, its first depth, how many
  of its samples a cluster-aided classifier took, and how many are tail;
- optionally the Fig. 1 binned confusion of the mistakes.

`add(...)` takes a batch; `metrics(...)` gives what `evaluate_predictions`
returns, a `TableMetrics` (one JSON form: `to_json`). The results equal those
of the whole arrays exactly: every metric is a function of these counts
(`dlsa_cli.evaluation.metrics`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from dlsa_cli.evaluation.metrics import (
    FEW_BELOW,
    MANY_ABOVE,
    TAIL_AT_MOST,
    accuracy_from_counts,
    binned_confusion,
    group_accuracies,
    mcc_from_counts,
    nmi_from_cells,
    shot_groups,
    tail_classes,
)

__all__ = ["ClassAccuracy", "GroupCounts", "RouteMetrics", "TableMetrics", "Tally"]


@dataclass
class GroupCounts:
    """One count per shot group: many-, medium- and few-shot."""

    many: int
    medium: int
    few: int


@dataclass
class RouteMetrics:
    """Accuracy of the samples one route of a cascade took (fractions; None for an empty group)."""

    samples: int
    share: float  # of the table's samples
    overall: float
    many: float | None
    medium: float | None
    few: float | None
    depth: int | None
    separation: float | None  # tail share of its samples, for a cluster-aided route; else None


@dataclass
class ClassAccuracy:
    """One class: its training count and group, its evaluation samples and accuracy (None: no sample)."""

    class_: int  # JSON: "class"
    train_count: int
    group: str
    samples: int
    correct: int
    accuracy: float | None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        return {"class": d.pop("class_"), **d}


@dataclass
class TableMetrics:
    """Every metric of one predictions table (fractions; None for an empty group)."""

    samples: int
    overall: float | None
    many: float | None
    medium: float | None
    few: float | None
    mcc: float
    nmi: float
    classes: GroupCounts  # training classes per group
    separation: float | None  # tail share of the samples cluster-aided classifiers took; None without routes
    routes: dict[str, RouteMetrics] = field(default_factory=dict)
    per_class: list[ClassAccuracy] | None = None  # when asked

    def to_json(self) -> dict[str, Any]:
        """The fields; `per_class` only when it was asked for."""
        d = {k: v for k, v in asdict(self).items() if k != "per_class"}
        if self.per_class is not None:
            d["per_class"] = [c.to_json() for c in self.per_class]
        return d


@dataclass
class _RouteTally:
    support: np.ndarray  # (C,) int64
    correct: np.ndarray  # (C,) int64
    depth: int | None
    samples: int = 0
    cluster: int = 0  # samples a cluster-aided classifier took


@dataclass
class Tally:
    """Sufficient statistics of one predictions table against training counts (C,)."""

    counts: np.ndarray
    tail_at_most: int = TAIL_AT_MOST
    bins: int | None = None  # Fig. 1's binned confusion of the mistakes, when set
    samples: int = 0
    routes: dict[str, _RouteTally] = field(default_factory=dict)
    cluster_samples: int = 0
    cluster_tail: int = 0
    has_routes: bool = False

    def __post_init__(self) -> None:
        c = len(self.counts)
        self.support = np.zeros(c, dtype=np.int64)
        self.correct = np.zeros(c, dtype=np.int64)
        self.predicted = np.zeros(c, dtype=np.int64)
        self.cells = np.zeros(0, dtype=np.int64)  # sorted pair codes
        self.cell_counts = np.zeros(0, dtype=np.int64)
        self.confusion = None if self.bins is None else np.zeros((0, 0), dtype=np.int64)
        self._tail = tail_classes(self.counts, self.tail_at_most)

    @property
    def num_classes(self) -> int:
        return len(self.counts)

    def add(
        self,
        labels: np.ndarray,
        predictions: np.ndarray,
        *,
        routes: np.ndarray | None = None,
        depths: np.ndarray | None = None,
        branches: np.ndarray | None = None,
    ) -> Tally:
        """Count a batch: labels and predictions (B,) in [0, C); a cascade's routes, depths, branches (B,)."""
        y = np.asarray(labels, dtype=np.int64)
        p = np.asarray(predictions, dtype=np.int64)
        c = self.num_classes
        right = y == p
        self.samples += int(y.size)
        self.support += np.bincount(y, minlength=c)
        self.correct += np.bincount(y[right], minlength=c)
        self.predicted += np.bincount(p, minlength=c)
        self._add_cells(y * c + p)
        if self.bins is not None:
            self._add_confusion(y, p, self.bins)
        if routes is not None:
            self.has_routes = True
            self._add_routes(y, right, np.asarray(routes).astype(str), depths, branches)
        return self

    def _add_cells(self, codes: np.ndarray) -> None:
        new, k = np.unique(codes, return_counts=True)
        both = np.concatenate([self.cells, new])
        self.cells, inv = np.unique(both, return_inverse=True)
        self.cell_counts = np.bincount(inv, weights=np.concatenate([self.cell_counts, k]),
                                       minlength=len(self.cells)).astype(np.int64)

    def _add_confusion(self, y: np.ndarray, p: np.ndarray, bins: int) -> None:
        m = binned_confusion(y, p, self.counts, bins)
        self.confusion = m if self.confusion is None or self.confusion.size == 0 else self.confusion + m

    def _add_routes(
        self, y: np.ndarray, right: np.ndarray, routes: np.ndarray, depths: np.ndarray | None,
        branches: np.ndarray | None,
    ) -> None:
        c = self.num_classes
        if branches is not None:
            is_cluster = np.asarray(branches).astype(str) == "cluster"
        else:
            is_cluster = np.char.startswith(routes, "cluster")
        self.cluster_samples += int(is_cluster.sum())
        self.cluster_tail += int(self._tail[y[is_cluster]].sum())
        for r in np.unique(routes):
            m = routes == r
            t = self.routes.get(str(r))
            if t is None:
                depth = int(np.asarray(depths)[m][0]) if depths is not None else _route_depth(str(r))
                t = self.routes[str(r)] = _RouteTally(np.zeros(c, np.int64), np.zeros(c, np.int64), depth)
            t.samples += int(m.sum())
            t.cluster += int(is_cluster[m].sum())
            t.support += np.bincount(y[m], minlength=c)
            t.correct += np.bincount(y[m & right], minlength=c)

    def metrics(
        self,
        many_above: int = MANY_ABOVE,
        few_below: int = FEW_BELOW,
        per_class: bool = False,
    ) -> TableMetrics:
        """The metrics of everything added, as `evaluate_predictions` documents them."""
        groups = shot_groups(self.counts, many_above, few_below)
        acc = accuracy_from_counts(self.correct, self.support)
        g = group_accuracies(acc, self.counts, many_above, few_below)
        out = TableMetrics(
            samples=self.samples,
            overall=float(self.correct.sum() / self.samples) if self.samples else None,
            many=g["many"], medium=g["medium"], few=g["few"],
            mcc=mcc_from_counts(self.support, self.predicted, int(self.correct.sum())),
            nmi=nmi_from_cells(self.cells // self.num_classes, self.cells % self.num_classes, self.cell_counts),
            classes=GroupCounts(*(int(np.sum(groups == g)) for g in ("many", "medium", "few"))),
            separation=None,
        )
        if self.has_routes:
            out.separation = self.cluster_tail / self.cluster_samples if self.cluster_samples else None
            out.routes = {r: self._route_metrics(self.routes[r], many_above, few_below)
                          for r in sorted(self.routes, key=_route_order)}
        if per_class:
            out.per_class = _per_class(self.counts, groups, acc, self.correct, self.support)
        return out

    def _route_metrics(self, t: _RouteTally, many_above: int, few_below: int) -> RouteMetrics:
        tail = int(t.support[self._tail].sum())
        g = group_accuracies(accuracy_from_counts(t.correct, t.support), self.counts, many_above, few_below)
        return RouteMetrics(
            samples=t.samples,
            share=t.samples / self.samples,
            overall=float(t.correct.sum() / t.samples),
            many=g["many"], medium=g["medium"], few=g["few"],
            depth=t.depth,
            separation=tail / t.samples if t.cluster == t.samples else None,
        )


def _per_class(counts: np.ndarray, groups: np.ndarray, acc: np.ndarray, correct: np.ndarray,
               support: np.ndarray) -> list[ClassAccuracy]:
    return [
        ClassAccuracy(k, int(counts[k]), str(groups[k]), int(support[k]), int(correct[k]),
                      None if support[k] == 0 else float(acc[k]))
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
