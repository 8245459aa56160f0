"""Long-tail metrics: MCC and NMI equal scikit-learn's, group accuracies equal a direct computation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dlsa_cli.errors import InputError
from dlsa_cli.evaluation import evaluate_predictions, read_train_counts
from dlsa_cli.evaluation.metrics import (
    binned_confusion,
    group_accuracies,
    matthews_corrcoef,
    normalized_mutual_info,
    per_class_accuracy,
    separation_accuracy,
    shot_groups,
)
from dlsa_cli.io.features import FeatureSet, write_features


def real_predictions(splits) -> dict[str, np.ndarray]:
    """Two simple classifiers fit on Caltech-101-LT train, predicting its test split.

    Nearest class mean (Euclidean) and 1-nearest-neighbour (cosine).
    """
    x = splits.train.features.astype(np.float32)
    y = splits.train.labels
    xt = splits.test.features.astype(np.float32)
    c = len(splits.class_names)
    mu = np.zeros((c, x.shape[1]), dtype=np.float32)
    np.add.at(mu, y, x)
    mu /= np.bincount(y, minlength=c)[:, None]
    d = (xt**2).sum(1, keepdims=True) - 2 * xt @ mu.T + (mu**2).sum(1)[None]  # (N, C)
    ncm = d.argmin(1)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    xtn = xt / np.linalg.norm(xt, axis=1, keepdims=True)
    nn1 = y[(xtn @ xn.T).argmax(1)]
    return {"ncm": ncm.astype(np.int64), "1nn": nn1.astype(np.int64)}


@pytest.fixture(scope="module")
def real(caltech_lt):
    preds = real_predictions(caltech_lt)
    counts = np.bincount(caltech_lt.train.labels, minlength=len(caltech_lt.class_names))
    return caltech_lt.test.labels, preds, counts


def test_mcc_and_nmi_equal_sklearn_on_real_labels(real):
    from sklearn.metrics import matthews_corrcoef as sk_mcc
    from sklearn.metrics import normalized_mutual_info_score as sk_nmi

    y, preds, _counts = real
    for name, p in preds.items():
        assert 0.6 < np.mean(p == y) < 0.99, name  # real, imperfect classifiers
        assert matthews_corrcoef(y, p) == pytest.approx(sk_mcc(y, p), abs=1e-12)
        assert normalized_mutual_info(y, p) == pytest.approx(sk_nmi(y, p), abs=1e-12)


def test_group_accuracies_equal_a_direct_computation_on_real_labels(real):
    y, preds, counts = real
    for p in preds.values():
        res = evaluate_predictions(y, p, counts)
        direct = {}
        for group, rule in (("many", counts > 100), ("few", counts < 20), ("medium", (counts >= 20) & (counts <= 100))):
            accs = [np.mean(p[y == k] == k) for k in np.flatnonzero(rule)]
            direct[group] = float(np.mean(accs))
        assert res.many == pytest.approx(direct["many"], abs=1e-12)
        assert res.medium == pytest.approx(direct["medium"], abs=1e-12)
        assert res.few == pytest.approx(direct["few"], abs=1e-12)
        assert res.overall == pytest.approx(float(np.mean(p == y)), abs=1e-12)
        assert res.to_json()["classes"] == {"many": int((counts > 100).sum()), "medium": int(((counts >= 20) & (counts <= 100)).sum()), "few": int((counts < 20).sum())}
        assert res.classes.many + res.classes.medium + res.classes.few == 101


@pytest.mark.parametrize(
    "y,p",
    [
        ([0, 0, 0, 0], [0, 0, 0, 0]),  # one class, all right
        ([0, 0, 0, 0], [0, 1, 2, 3]),  # one true class
        ([0, 1, 2, 3], [1, 1, 1, 1]),  # one predicted class
        ([0, 1, 1, 2], [0, 1, 1, 2]),  # perfect
        ([0, 0, 1, 1], [1, 1, 0, 0]),  # perfect up to renaming (NMI 1, MCC -1/...)
        ([3, 3, 1, 0, 2, 2], [3, 1, 1, 0, 0, 2]),
        ([5], [2]),
    ],
)
def test_edge_cases_match_sklearn(y, p):
    import warnings

    from sklearn.metrics import matthews_corrcoef as sk_mcc
    from sklearn.metrics import normalized_mutual_info_score as sk_nmi

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert matthews_corrcoef(y, p) == pytest.approx(sk_mcc(y, p), abs=1e-12)
    assert normalized_mutual_info(y, p) == pytest.approx(sk_nmi(y, p), abs=1e-12)


def test_empty_group_is_none_not_zero():
    counts = np.array([50, 30, 10, 5])  # no class above 100
    y = np.array([0, 1, 2, 3, 3])
    p = np.array([0, 0, 2, 3, 0])
    res = evaluate_predictions(y, p, counts)
    assert res.many is None
    assert res.medium == pytest.approx((1.0 + 0.0) / 2)
    assert res.few == pytest.approx((1.0 + 0.5) / 2)


def test_a_class_absent_from_training_is_few_shot():
    counts = np.array([200, 0])
    assert list(shot_groups(counts)) == ["many", "few"]
    res = evaluate_predictions(np.array([0, 1, 1]), np.array([0, 1, 0]), counts)
    assert res.few == pytest.approx(0.5)


def test_classes_without_test_samples_are_left_out_of_their_group():
    counts = np.array([150, 150, 5])
    acc, _correct, support = per_class_accuracy(np.array([0, 0]), np.array([0, 1]), 3)
    assert list(support) == [2, 0, 0] and np.isnan(acc[1]) and np.isnan(acc[2])
    g = group_accuracies(acc, counts)
    assert g == {"many": 0.5, "medium": None, "few": None}


def test_separation_and_routes_by_definition():
    counts = np.array([300, 120, 40, 8])  # tail (<= 50): classes 2, 3
    y = np.array([0, 1, 2, 3, 3, 2, 0, 1, 3])
    p = np.array([0, 1, 2, 3, 0, 2, 1, 1, 3])
    routes = np.array(["cluster@1", "cluster@1", "cluster@1", "cluster@2", "cluster@2", "regular", "regular", "regular", "cluster@1"])
    assert separation_accuracy(y[:0], counts) is None
    res = evaluate_predictions(y, p, counts, routes=routes, tail_at_most=50)
    assert list(res.routes) == ["cluster@1", "cluster@2", "regular"]
    c1, c2, reg = (res.routes[r] for r in ("cluster@1", "cluster@2", "regular"))
    assert (c1.samples, c2.samples, reg.samples) == (4, 2, 3)
    assert c1.separation == pytest.approx(2 / 4)  # classes 0, 1, 2, 3 -> 2 and 3 are tail
    assert c2.separation == pytest.approx(1.0)
    assert reg.separation is None
    assert res.separation == pytest.approx(4 / 6)
    assert (c1.depth, c2.depth) == (1, 2)
    assert c2.overall == pytest.approx(0.5)
    assert reg.overall == pytest.approx(2 / 3)
    assert c1.share + c2.share + reg.share == pytest.approx(1.0)
    # a different boundary changes which classes are tail
    assert evaluate_predictions(y, p, counts, routes=routes, tail_at_most=10).routes["cluster@1"].separation == pytest.approx(1 / 4)


def test_binned_confusion_orders_by_frequency_and_drops_correct():
    counts = np.array([5, 100, 50, 200])  # by frequency: 3, 1, 2, 0
    y = np.array([0, 0, 0, 3, 1, 2])
    p = np.array([3, 3, 0, 3, 2, 1])  # mistakes: 0->3, 0->3, 1->2, 2->1
    m = binned_confusion(y, p, counts, bins=4)  # one class per bin: bin = frequency rank
    assert m.sum() == 4
    assert m[3, 0] == 2  # true class 0 (rarest, bin 3) predicted as class 3 (most frequent, bin 0)
    assert m[1, 2] == 1 and m[2, 1] == 1
    assert np.trace(m) == 0
    m2 = binned_confusion(y, p, counts, bins=2)  # bins {3, 1} and {2, 0}
    assert m2.tolist() == [[0, 1], [3, 0]]
    assert binned_confusion(y, p, counts, bins=50).shape == (4, 4)


def test_per_class_report(real):
    y, preds, counts = real
    res = evaluate_predictions(y, preds["ncm"], counts, per_class=True)
    pc = res.per_class
    assert len(pc) == 101
    k = int(np.argmax(counts))
    assert pc[k].train_count == counts[k] and pc[k].group == "many"
    assert pc[k].samples == int((y == k).sum())
    assert pc[k].accuracy == pytest.approx(float(np.mean(preds["ncm"][y == k] == k)))


def test_train_counts_from_json_and_feature_files(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps([5, 0, 3]))
    assert read_train_counts(tmp_path / "c.json").tolist() == [5, 0, 3]
    (tmp_path / "d.json").write_text(json.dumps({"train_counts": [1, 2]}))
    assert read_train_counts(tmp_path / "d.json").tolist() == [1, 2]
    for bad in ("[1, -2]", "[1.5, 2]", "{}", "[]", "not json"):
        (tmp_path / "bad.json").write_text(bad)
        with pytest.raises(InputError):
            read_train_counts(tmp_path / "bad.json")
    fs = FeatureSet(np.zeros((4, 2), np.float32), np.array([0, 0, 2, 2]))
    write_features(tmp_path / "t.safetensors", fs)
    assert read_train_counts(tmp_path / "t.safetensors").tolist() == [2, 0, 2]
    # a derived file carries the ORIGINAL training counts in its metadata
    write_features(tmp_path / "rest.safetensors", fs, meta={"train_counts": [9, 1, 7, 3]})
    assert read_train_counts(tmp_path / "rest.safetensors").tolist() == [9, 1, 7, 3]


def test_real_profiles_give_the_documented_groups():
    from conftest import PROFILES

    path = PROFILES / "imagenet_lt_train_counts.json"
    if not path.exists():
        pytest.skip(f"profiles not found at {PROFILES}")
    counts = read_train_counts(path)
    g = shot_groups(counts)
    assert (len(counts), int(counts.sum())) == (1000, 115846)
    assert [(g == k).sum() for k in ("many", "medium", "few")] == [385, 479, 136]
