"""The separation ceiling (the paper's Fig. 2): how much a head/tail split could give on these features.

Test samples are sent to a group, head or tail (tail: at most `tail_at_most`
training samples), and classified knowing that group. `group_accuracy`, the
curve's x axis (the paper's "separation accuracy"), is the share of samples
sent to their true group: 0.5 is random, 1.0 ideal. Below 1.0, a seeded random
`1 - group_accuracy` share of the samples goes to the wrong group; the flipped
samples are the first of one fixed permutation, so each point's flips contain
the next point's.

- soft: one classifier over all classes, plus the log-probability of the
  routed group given each class: `log a` for the group's classes, `log(1 - a)`
  for the others (a = group_accuracy). It is the Bayes prior of a route that
  is right with probability a, independent of the features: at 0.5 it adds a
  constant (the baseline itself), at 1.0 it masks the other group.
- hard: one classifier per group over that group's classes only, trained on
  them; a sample sent to the wrong group cannot be classified right.

All classifiers are Balanced Softmax linear heads from `fit_classifier`,
epochs chosen on VAL. The curve assumes the group signal is new information,
so it is an upper bound. `place_routing` puts a real routing beside it: its
group accuracy and its `separation` (the share of routed samples whose class
is tail, as `evaluation.metrics.separation_accuracy`), and the same two for
the baseline's own tail signal (its softmax mass on tail classes) routing the
same share.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from dlsa_cli.classify.config import TrainConfig
from dlsa_cli.classify.model import Classifier
from dlsa_cli.errors import InputError
from dlsa_cli.evaluation.metrics import (
    TAIL_AT_MOST,
    group_accuracies,
    per_class_accuracy,
    separation_accuracy,
    tail_classes,
)
from dlsa_cli.io.features import FeatureSet
from dlsa_cli.io.features import train_counts as _train_counts

__all__ = [
    "GROUP_ACCURACIES",
    "CeilingCurve",
    "CeilingPoint",
    "CeilingReport",
    "GroupClassifiers",
    "RoutingPlacement",
    "ceiling_curve",
    "fit_group_classifiers",
    "place_routing",
    "separation_ceiling",
]

GROUP_ACCURACIES = (0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 1.0)


@dataclass
class GroupClassifiers:
    """The all-class classifier and one per group (head, tail), fitted on TRAIN with epochs chosen on VAL."""

    whole: Classifier
    head: Classifier
    tail: Classifier
    counts: np.ndarray  # (C,) training counts
    is_tail: np.ndarray  # (C,) bool
    tail_at_most: int

    @property
    def epochs(self) -> dict[str, int]:
        return {name: int(getattr(self, name).meta["epoch"]) for name in ("whole", "head", "tail")}

    def classes(self, tail: bool) -> np.ndarray:
        """The global class ids of the tail (or head) group, ascending: the group classifier's class order."""
        return np.flatnonzero(self.is_tail == tail)


@dataclass
class CeilingPoint:
    """Accuracies (0..1) at one group accuracy; `few` is None when the split has no few-shot class."""

    group_accuracy: float
    soft_overall: float
    soft_few: float | None
    hard_overall: float
    hard_few: float | None


@dataclass
class CeilingCurve:
    """The probe on one labelled split (`split`: "val" for decisions, "test" for the report)."""

    split: str
    samples: int
    seed: int
    baseline_overall: float
    baseline_few: float | None
    points: list[CeilingPoint]

    def at(self, group_accuracy: float) -> dict[str, float]:
        """Overall accuracies read off the curve at `group_accuracy` (linear between points, clamped at the ends)."""
        xs = [p.group_accuracy for p in self.points]
        return {key: float(np.interp(group_accuracy, xs, [getattr(p, key) for p in self.points]))
                for key in ("soft_overall", "hard_overall")}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RoutingPlacement:
    """A routing beside the baseline's own tail signal routing the same share of the same split."""

    routed_share: float
    group_accuracy: float  # the routing, on the curve's x axis
    separation: float | None  # share of its routed samples whose class is tail
    baseline_group_accuracy: float  # the baseline's tail mass, thresholded at `routed_share`
    baseline_separation: float | None
    soft_overall_at: float  # the curve read at the routing's group accuracy
    baseline_soft_overall_at: float  # and at the baseline's

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class CeilingReport:
    """`separation_ceiling`'s answer: the curve on VAL (for decisions) and on TEST (for the report)."""

    tail_at_most: int
    head_classes: int
    tail_classes: int
    epochs: dict[str, int]
    val: CeilingCurve
    test: CeilingCurve
    placements: dict[str, RoutingPlacement] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"tail_at_most": self.tail_at_most, "head_classes": self.head_classes, "tail_classes": self.tail_classes,
                "epochs": self.epochs, "val": self.val.to_json(), "test": self.test.to_json(),
                "placements": {k: v.to_json() for k, v in self.placements.items()}}


def fit_group_classifiers(train: FeatureSet, val: FeatureSet, *, tail_at_most: int = TAIL_AT_MOST,
                          config: TrainConfig | None = None, device: Any = "cpu") -> GroupClassifiers:
    """Balanced Softmax linear classifiers over all classes and over each group's classes (epochs on VAL)."""
    from dlsa_cli.classify.train import fit_classifier

    cfg = replace(config or TrainConfig(), model="linear", loss="bsm", posthoc="none")
    counts = _train_counts(train)
    is_tail = tail_classes(counts, tail_at_most)
    for name, members in (("head", ~is_tail), ("tail", is_tail)):
        if not members.any():
            raise InputError(f"no {name} class at a head/tail boundary of {tail_at_most} training samples",
                             path=train.path, hint="move the boundary (tail = at most this many training samples)")
    whole, _ = fit_classifier(train, val, cfg, device=device)
    heads = [fit_classifier(_group(train, members, counts), _group(val, members), cfg, device=device)[0]
             for members in (~is_tail, is_tail)]
    return GroupClassifiers(whole, heads[0], heads[1], counts, is_tail, tail_at_most)


def _group(fs: FeatureSet, members: np.ndarray, counts: np.ndarray | None = None) -> FeatureSet:
    """The samples of the classes `members` (C,) marks, labels renumbered 0..G-1 in class order."""
    y = fs.require_labels()
    rows = np.flatnonzero(members[y])
    new_id = np.cumsum(members) - 1  # (C,) a member class's index in its group
    meta = {} if counts is None else {"train_counts": counts[members].tolist()}
    return FeatureSet(fs.features[rows], new_id[y[rows]], None if fs.ids is None else fs.ids[rows], meta, fs.path)


def ceiling_curve(probe: GroupClassifiers, fs: FeatureSet, *, split: str, seed: int = 0,
                  group_accuracies: tuple[float, ...] = GROUP_ACCURACIES, device: Any = "cpu") -> CeilingCurve:
    """Soft and hard accuracies on `fs` at each group accuracy (0.5..1.0), routes flipped with a seeded generator."""
    y = fs.require_labels()
    if any(not 0.5 <= a <= 1.0 for a in group_accuracies):
        raise InputError("group accuracies lie in [0.5, 1] (0.5: random routes, 1: every sample in its true group)")
    true_tail = probe.is_tail[y]  # (N,)
    order = np.random.default_rng(seed).permutation(len(y))  # the first k are flipped at 1 - k / N
    z = probe.whole.logits(fs.features, device=device, posthoc=False)  # (N, C)
    group_pred = {t: probe.classes(t)[(probe.tail if t else probe.head).logits(fs.features, device=device,
                                                                               posthoc=False).argmax(1)]
                  for t in (False, True)}  # each group classifier's prediction, as a global class id
    points = []
    for a in group_accuracies:
        routed_tail = true_tail.copy()
        flip = order[: round((1 - a) * len(y))]
        routed_tail[flip] = ~routed_tail[flip]
        soft = _soft_predictions(z, routed_tail, probe.is_tail, a)
        hard = np.where(routed_tail, group_pred[True], group_pred[False])
        points.append(CeilingPoint(a, *_scores(y, soft, probe.counts), *_scores(y, hard, probe.counts)))
    base = _scores(y, z.argmax(1), probe.counts)
    return CeilingCurve(split, len(y), seed, base[0], base[1], points)


def _soft_predictions(z: np.ndarray, routed_tail: np.ndarray, is_tail: np.ndarray, a: float) -> np.ndarray:
    """argmax of the logits (N, C) plus log P(routed group | class): log a in the routed group, log(1 - a) outside."""
    same = routed_tail[:, None] == is_tail[None, :]  # (N, C)
    with np.errstate(divide="ignore"):
        prior = np.where(same, np.log(a), np.log1p(-a))  # -inf outside the group at a = 1
    return (z + prior).argmax(1)


def _scores(y: np.ndarray, pred: np.ndarray, counts: np.ndarray) -> tuple[float, float | None]:
    """(overall top-1, few-shot accuracy) of predictions `pred` (N,)."""
    class_acc, _, _ = per_class_accuracy(y, pred, len(counts))
    return float(np.mean(y == pred)), group_accuracies(class_acc, counts)["few"]


def place_routing(probe: GroupClassifiers, fs: FeatureSet, routed: np.ndarray, curve: CeilingCurve, *,
                  device: Any = "cpu") -> RoutingPlacement:
    """Where a routing (`routed` (N,) bool: sent to the tail group) sits on `curve`, beside the baseline's signal."""
    y = fs.require_labels()
    routed = np.asarray(routed)
    if routed.dtype != bool or routed.shape != y.shape:
        raise InputError(f"a routing is one boolean per sample ({len(y)}), got {routed.dtype} {routed.shape}",
                         path=fs.path)
    z = probe.whole.logits(fs.features, device=device, posthoc=False)  # (N, C)
    p = np.exp(z - z.max(1, keepdims=True))
    mass = (p[:, probe.is_tail].sum(1) / p.sum(1))  # (N,) softmax mass on tail classes
    base = np.zeros(len(y), dtype=bool)
    base[np.argsort(-mass, kind="stable")[: int(routed.sum())]] = True  # the same share, highest tail mass first
    acc, base_acc = (float(np.mean(r == probe.is_tail[y])) for r in (routed, base))
    return RoutingPlacement(
        routed_share=float(routed.mean()), group_accuracy=acc,
        separation=separation_accuracy(y[routed], probe.counts, probe.tail_at_most),
        baseline_group_accuracy=base_acc,
        baseline_separation=separation_accuracy(y[base], probe.counts, probe.tail_at_most),
        soft_overall_at=curve.at(acc)["soft_overall"], baseline_soft_overall_at=curve.at(base_acc)["soft_overall"])


def separation_ceiling(train: FeatureSet, val: FeatureSet, test: FeatureSet, *, tail_at_most: int = TAIL_AT_MOST,
                       config: TrainConfig | None = None, seed: int = 0,
                       group_accuracies: tuple[float, ...] = GROUP_ACCURACIES, device: Any = "cpu") -> CeilingReport:
    """The Fig. 2 probe on these features: classifiers fitted on TRAIN (epochs on VAL), curves on VAL and TEST."""
    probe = fit_group_classifiers(train, val, tail_at_most=tail_at_most, config=config, device=device)
    curves = [ceiling_curve(probe, fs, split=name, seed=seed, group_accuracies=group_accuracies, device=device)
              for name, fs in (("val", val), ("test", test))]
    return CeilingReport(tail_at_most, int((~probe.is_tail).sum()), int(probe.is_tail.sum()), probe.epochs,
                         val=curves[0], test=curves[1])
