"""`dlsa_cli.compare.ceiling`: the paper's Fig. 2 probe on the digits split, against hand computations."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dlsa_cli.classify import TrainConfig, fit_classifier
from dlsa_cli.compare.ceiling import ceiling_curve, fit_group_classifiers, place_routing, separation_ceiling
from dlsa_cli.datasets import digits_lt
from dlsa_cli.errors import InputError
from dlsa_cli.evaluation.metrics import group_accuracies, per_class_accuracy
from dlsa_cli.io.features import FeatureSet

CFG = TrainConfig(epochs=15)


@pytest.fixture(scope="module")
def splits():
    return digits_lt()


@pytest.fixture(scope="module")
def probe(splits):
    return fit_group_classifiers(splits.train, splits.val, config=CFG)


@pytest.fixture(scope="module")
def test_curve(probe, splits):
    return ceiling_curve(probe, splits.test, split="test", seed=3)


def _hand_group(fs: FeatureSet, classes: np.ndarray, counts: np.ndarray | None) -> FeatureSet:
    rows = np.isin(fs.labels, classes)
    y = np.searchsorted(classes, fs.labels[rows])
    meta = {} if counts is None else {"train_counts": counts[classes].tolist()}
    return FeatureSet(fs.features[rows], y, None, meta)


def test_at_ideal_separation_hard_is_two_group_classifiers_trained_and_scored_by_hand(splits, test_curve):
    counts = np.bincount(splits.train.labels, minlength=10)
    pred = np.empty(splits.test.n, dtype=np.int64)
    for classes in (np.flatnonzero(counts > 50), np.flatnonzero(counts <= 50)):  # head, tail
        clf, _ = fit_classifier(_hand_group(splits.train, classes, counts), _hand_group(splits.val, classes, None),
                                TrainConfig(epochs=15))
        rows = np.isin(splits.test.labels, classes)
        pred[rows] = classes[clf.logits(splits.test.features[rows], posthoc=False).argmax(1)]
    y = splits.test.labels
    few = group_accuracies(per_class_accuracy(y, pred, 10)[0], counts)["few"]
    top = test_curve.points[-1]
    assert top.group_accuracy == 1.0
    assert top.hard_overall == pytest.approx(np.mean(pred == y), abs=1e-12)
    assert top.hard_few == pytest.approx(few, abs=1e-12)


def test_soft_at_random_separation_is_the_baseline_and_at_ideal_the_baseline_masked_to_the_true_group(
        probe, splits, test_curve):
    z = probe.whole.logits(splits.test.features, posthoc=False)
    y = splits.test.labels
    assert test_curve.points[0].soft_overall == test_curve.baseline_overall == pytest.approx(np.mean(z.argmax(1) == y))
    masked = np.where(probe.is_tail[None, :] == probe.is_tail[y][:, None], z, -np.inf)
    assert test_curve.points[-1].soft_overall == pytest.approx(np.mean(masked.argmax(1) == y))
    assert test_curve.points[-1].soft_overall > test_curve.baseline_overall


def test_hard_accuracy_falls_with_each_flip_share(test_curve):
    hard = [p.hard_overall for p in test_curve.points]
    assert hard == sorted(hard)  # nested flips: each point's misrouted samples include the next one's
    assert hard[0] < 0.6 < hard[-1]


def test_place_routing_on_the_curve_beside_the_baseline_tail_mass(probe, splits, test_curve):
    y = splits.test.labels
    truth = probe.is_tail[y]
    routed = truth.copy()
    routed[:40] = ~routed[:40]  # 40 of 400 samples in the wrong group
    place = place_routing(probe, splits.test, routed, test_curve)
    assert place.group_accuracy == pytest.approx(0.9)
    assert place.routed_share == pytest.approx(routed.mean())
    assert place.separation == pytest.approx(truth[routed].mean())
    assert place.soft_overall_at == pytest.approx(test_curve.at(0.9)["soft_overall"])

    z = probe.whole.logits(splits.test.features, posthoc=False).astype(np.float64)
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    top = np.argsort(-p[:, probe.is_tail].sum(1), kind="stable")[: routed.sum()]
    base = np.zeros(len(y), dtype=bool)
    base[top] = True
    assert place.baseline_group_accuracy == pytest.approx(np.mean(base == truth))
    assert place.baseline_separation == pytest.approx(truth[base].mean())


def test_a_routing_must_be_one_boolean_per_sample(probe, splits, test_curve):
    with pytest.raises(InputError, match="one boolean per sample"):
        place_routing(probe, splits.test, np.ones(3, dtype=bool), test_curve)


def test_separation_ceiling_labels_its_curves_and_is_json(splits):
    report = separation_ceiling(splits.train, splits.val, splits.test, config=TrainConfig(epochs=5),
                                group_accuracies=(0.5, 1.0))
    assert (report.val.split, report.test.split) == ("val", "test")
    assert (report.head_classes, report.tail_classes) == (3, 7)
    d = json.loads(json.dumps(report.to_json()))
    assert [p["group_accuracy"] for p in d["test"]["points"]] == [0.5, 1.0]


def test_a_boundary_that_leaves_a_group_empty_is_a_one_line_error(splits):
    with pytest.raises(InputError, match="no tail class"):
        fit_group_classifiers(splits.train, splits.val, tail_at_most=2, config=CFG)
