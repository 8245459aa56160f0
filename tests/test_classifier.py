"""`dlsa fit-classifier`: losses, samplers, epoch selection, post-hoc, cluster-aided inputs, bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_clean_failure, invoke
from safetensors.torch import save_file

from dlsa_cli.classify import (
    Classifier,
    TrainConfig,
    carve_validation,
    cluster_inputs,
    draw_batches,
    fit_classifier,
    loss_logit_shift,
)
from dlsa_cli.io.features import FeatureSet, read_features, write_features
from dlsa_cli.io.files import read_safetensors, read_table

C = 10  # digits classes


@pytest.fixture(scope="module")
def baseline(digits) -> Path:
    out = digits / "baseline.safetensors"
    r = invoke("fit-classifier", digits / "train.safetensors", "--val", digits / "val.safetensors", "-o", out,
               "--epochs", "30", "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    return out


@pytest.fixture(scope="module")
def small_filter(digits) -> Path:
    """A small real flow filter on the digits training set."""
    from dlsa_cli.flow import fit_filter

    fs = read_features(digits / "train.safetensors", require_labels=True)
    flt = fit_filter(fs, clusters=8, epochs=3, batch_size=64, hidden=32, lr=0.01, max_cluster_share=0.9)
    out = digits / "filter.safetensors"
    flt.save(out)
    return out


def _zero_head(path: Path, dim: int) -> Path:
    save_file({"weight": torch.zeros(C, dim), "bias": torch.zeros(C)}, str(path))
    return path


# ----------------------------------------------------------------------------- losses


@pytest.mark.parametrize("loss", ["bsm", "ce"])
def test_bsm_shift_is_applied_in_training_and_not_at_predict_time(digits, tmp_path, loss):
    """One full-batch SGD step from a zero head, checked against the hand computation.

    With BSM the training logits are 0 + log n_j, so p = n / N for every sample:
    the bias gradient mean(p - onehot) is exactly zero. With CE p = 1 / C and the
    bias moves. At predict time the logits are W x + b with no log n_j added.
    """
    train = read_features(digits / "train.safetensors", require_labels=True)
    x, y = torch.from_numpy(train.features.astype(np.float32)), torch.from_numpy(train.labels)
    n = train.n
    lr = 0.5
    head = _zero_head(tmp_path / "zero.safetensors", train.dim)
    out = tmp_path / "clf.safetensors"
    r = invoke("fit-classifier", digits / "train.safetensors", "--val", digits / "val.safetensors", "-o", out,
               "--init", head, "--loss", loss, "--epochs", "1", "--batch-size", n, "--momentum", "0",
               "--lr", lr, "--select", "last", "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    tensors, _, meta, _ = read_safetensors(out)
    assert meta["epoch"] == 1 and meta["loss"] == loss

    counts = torch.bincount(y, minlength=C).double()
    logits0 = torch.log(counts).expand(n, C) if loss == "bsm" else torch.zeros(n, C, dtype=torch.float64)
    p = torch.softmax(logits0, dim=1)
    g = p - torch.nn.functional.one_hot(y, C).double()  # dL/dlogits * N
    w1 = -lr * (g.T @ x.double()) / n
    b1 = -lr * g.mean(0)
    assert torch.allclose(tensors["weight"].double(), w1, atol=1e-5)
    assert torch.allclose(tensors["bias"].double(), b1, atol=1e-6)
    if loss == "bsm":
        assert tensors["bias"].abs().max() < 1e-6
    else:
        assert tensors["bias"].abs().max() > 1e-3

    pred = tmp_path / "pred.parquet"
    r = invoke("predict", out, digits / "test.safetensors", "-o", pred, "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    table, kind, _, _ = read_table(pred)
    assert kind == "predictions"
    test = read_features(digits / "test.safetensors")
    raw = torch.from_numpy(test.features.astype(np.float64)) @ w1.T + b1  # no log n_j
    probs = torch.softmax(raw, dim=1)
    assert np.array_equal(table.column("prediction").to_numpy(), raw.argmax(1).numpy())
    np.testing.assert_allclose(table.column("score").to_numpy(), probs.max(1).values.numpy(), atol=1e-5)


def test_loss_logit_shift_values():
    counts = np.array([100, 10, 1, 0])
    np.testing.assert_allclose(loss_logit_shift("bsm", counts), np.log([100, 10, 1, 1]), rtol=1e-6)
    la = loss_logit_shift("la", counts, la_tau=2.0)
    np.testing.assert_allclose(la, 2.0 * np.log(np.array([100, 10, 1, 1]) / 112), rtol=1e-6)
    assert loss_logit_shift("ce", counts) is None


# ----------------------------------------------------------------------------- samplers


def test_class_balanced_sampler_draws_classes_uniformly():
    from scipy.stats import chisquare

    counts = [2000, 300, 40, 5, 1]
    labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))]
    g = torch.Generator().manual_seed(0)
    idx = torch.cat([torch.cat(draw_batches(labels, "balanced", 128, g)) for _ in range(4)])
    assert len(idx) == 4 * len(labels)
    drawn = torch.bincount(labels[idx], minlength=len(counts)).numpy()
    assert chisquare(drawn).pvalue > 1e-3, drawn  # uniform over classes
    assert drawn.min() > 0.18 * len(idx)
    # within a class every sample is equally likely: the 5 samples of class 3
    rows = torch.nonzero(labels == 3).squeeze(1)
    per_sample = torch.stack([(idx == r).sum() for r in rows]).numpy()
    assert chisquare(per_sample).pvalue > 1e-3, per_sample
    # the uniform sampler is a permutation: every sample exactly once per epoch
    perm = torch.cat(draw_batches(labels, "uniform", 128, g))
    assert torch.equal(torch.sort(perm).values, torch.arange(len(labels)))


# ----------------------------------------------------------------------------- validation


def test_carved_validation_keeps_every_class_and_singletons_in_train():
    labels = np.repeat(np.arange(5), [50, 10, 3, 2, 1])
    tr, va = carve_validation(labels, 0.2, seed=0)
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(labels)
    assert set(labels[tr]) == {0, 1, 2, 3, 4}
    assert set(labels[va]) == {0, 1, 2, 3}  # the single-sample class stays in train only
    assert np.bincount(labels[va], minlength=5).tolist() == [10, 2, 1, 1, 0]


def test_carved_validation_is_used_without_val(digits, tmp_path):
    out = tmp_path / "clf.safetensors"
    r = invoke("fit-classifier", digits / "train.safetensors", "-o", out, "--epochs", "5", "--device", "cpu", "--json")
    assert r.returncode == 0, r.stderr
    _, _, meta, _ = read_safetensors(out, [])
    assert "carved" in meta["val"]["source"]
    train_n = read_features(digits / "train.safetensors").n
    assert meta["train_samples"] + meta["val"]["samples"] == train_n
    assert len(meta["history"]) == 6  # epoch 0 (the start) and 5 epochs


def test_val_missing_a_class_is_a_clean_error_unless_allowed(digits, tmp_path):
    val = read_features(digits / "val.safetensors")
    write_features(tmp_path / "val_no3.safetensors", val.subset(val.labels != 3), meta={"class_names": [str(i) for i in range(C)]})
    out = tmp_path / "clf.safetensors"
    r = invoke("fit-classifier", digits / "train.safetensors", "--val", tmp_path / "val_no3.safetensors", "-o", out,
               "--epochs", "2", "--device", "cpu")
    assert_clean_failure(r, out, "lacks 1 class")
    r = invoke("fit-classifier", digits / "train.safetensors", "--val", tmp_path / "val_no3.safetensors", "-o", out,
               "--epochs", "2", "--device", "cpu", "--allow-missing-val-classes", "--quiet")
    assert r.returncode == 0, r.stderr and out.exists()


def test_weighted_selection_is_the_part_of_the_whole_balanced_accuracy():
    """A branch sees part of the validation set; weighting by the whole set's class counts
    makes its score exactly its share of the whole set's balanced accuracy."""
    from dlsa_cli.classify import balanced_accuracy

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 7, (300,), generator=g)
    p = torch.where(torch.rand(300, generator=g) < 0.7, y, torch.randint(0, 7, (300,), generator=g))
    part = torch.rand(300, generator=g) < 0.3
    full = torch.bincount(y, minlength=7)
    whole = balanced_accuracy(p, y, 7)[0]
    a = balanced_accuracy(p[part], y[part], 7, full)[0]
    b = balanced_accuracy(p[~part], y[~part], 7, full)[0]
    assert a + b == pytest.approx(whole, abs=1e-6)
    assert balanced_accuracy(p[part], y[part], 7)[0] != pytest.approx(a)


def test_epoch_choice_follows_validation_balanced_accuracy(baseline):
    clf = Classifier.load(baseline)
    hist = clf.meta["history"]
    scores = [h["val_balanced"] for h in hist]
    assert clf.meta["epoch"] == int(np.argmax(scores))  # first best epoch
    assert clf.meta["val"]["balanced_accuracy"] == pytest.approx(max(scores))


# ----------------------------------------------------------------------------- post-hoc, save/load, init


def test_posthoc_logit_adjustment_is_applied_at_predict_time(digits):
    train = read_features(digits / "train.safetensors", require_labels=True)
    val = read_features(digits / "val.safetensors", require_labels=True)
    clf, report = fit_classifier(train, val, TrainConfig(loss="ce", posthoc="la", epochs=20))
    tau = clf.meta["posthoc"]["tau"]
    assert report.posthoc["kind"] == "la" and tau in clf.meta["posthoc"]["grid"]
    scores = clf.meta["posthoc"]["val_balanced"]
    assert scores[clf.meta["posthoc"]["grid"].index(tau)] == max(scores)
    raw = clf.logits(val.features, posthoc=False)
    log_pi = np.log(np.bincount(train.labels, minlength=C) / train.n)
    np.testing.assert_allclose(clf.logits(val.features), raw - tau * log_pi, atol=1e-5)


def test_tau_normalisation_divides_weights_by_their_norm(digits):
    train = read_features(digits / "train.safetensors", require_labels=True)
    val = read_features(digits / "val.safetensors", require_labels=True)
    clf, _ = fit_classifier(train, val, TrainConfig(posthoc="tau", epochs=10))
    tau = clf.meta["posthoc"]["tau"]
    w, b = clf.module.weight.detach().double(), clf.module.bias.detach().double()
    s = w.norm(dim=1) ** -tau
    expect = torch.from_numpy(val.features.astype(np.float64)) @ (w * s[:, None]).T + b * s
    np.testing.assert_allclose(clf.logits(val.features), expect.numpy(), atol=1e-4)


def test_save_load_round_trip_is_exact(baseline, digits, tmp_path):
    clf = Classifier.load(baseline)
    clf.save(tmp_path / "copy.safetensors")
    again = Classifier.load(tmp_path / "copy.safetensors")
    x = read_features(digits / "test.safetensors").features
    assert np.array_equal(clf.logits(x), again.logits(x))
    assert again.meta["train_counts"] == clf.meta["train_counts"]


def test_init_from_a_backbone_head_in_pt_format(digits, tmp_path, baseline):
    tensors, _, _, _ = read_safetensors(baseline)
    torch.save({"fc.weight": tensors["weight"], "fc.bias": tensors["bias"]}, tmp_path / "head.pt")
    out = tmp_path / "ft.safetensors"
    r = invoke("fit-classifier", digits / "train.safetensors", "--val", digits / "val.safetensors", "-o", out,
               "--init", tmp_path / "head.pt", "--epochs", "2", "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    _, _, meta, _ = read_safetensors(out, [])
    assert meta["init"]["source"].endswith("head.pt") and meta["hyper"]["lr"] == pytest.approx(3e-4)
    # the starting point (epoch 0) is the baseline itself
    assert meta["history"][0]["val_balanced"] == pytest.approx(Classifier.load(baseline).meta["val"]["balanced_accuracy"])


def test_init_of_another_shape_is_a_clean_error(digits, tmp_path):
    head = tmp_path / "bad.safetensors"
    save_file({"weight": torch.zeros(C + 1, 64), "bias": torch.zeros(C + 1)}, str(head))
    out = tmp_path / "clf.safetensors"
    r = invoke("fit-classifier", digits / "train.safetensors", "-o", out, "--init", head, "--device", "cpu")
    assert_clean_failure(r, out, "(C, D)")


def test_same_seed_reproduces_and_another_seed_differs(digits, tmp_path):
    outs = []
    for i, seed in enumerate((7, 7, 8)):
        out = tmp_path / f"clf{i}.safetensors"
        r = invoke("fit-classifier", digits / "train.safetensors", "--val", digits / "val.safetensors", "-o", out,
                   "--epochs", "4", "--seed", seed, "--device", "cpu", "--quiet")
        assert r.returncode == 0, r.stderr
        pred = tmp_path / f"pred{i}.parquet"
        assert invoke("predict", out, digits / "test.safetensors", "-o", pred, "--device", "cpu", "--quiet").returncode == 0
        outs.append((read_safetensors(out)[0]["weight"], read_table(pred)[0]))
    assert torch.equal(outs[0][0], outs[1][0])
    assert outs[0][1].column("topk_scores").equals(outs[1][1].column("topk_scores"))
    assert not torch.equal(outs[0][0], outs[2][0])


# ----------------------------------------------------------------------------- cluster-aided


def test_cluster_aided_prior_input_is_the_filter_table_row(digits, small_filter, baseline, tmp_path):
    """The prior a sample sees equals the filter file's cluster_prior row of its cluster,
    and the saved classifier's logits are FC_a(x) + FC_b([x, that row]) by hand."""
    from dlsa_cli.flow import FlowFilter

    flt = FlowFilter.load(small_filter)
    table = read_safetensors(small_filter, ["cluster_prior"])[0]["cluster_prior"].numpy()  # (K, C), straight from the file
    test = read_features(digits / "test.safetensors")
    cluster, side, prior = cluster_inputs(flt, test.features, side_input="features")
    assert np.array_equal(cluster, flt.score(test.features).cluster)
    assert np.array_equal(prior, table[cluster])
    assert np.allclose(prior.sum(1), 1.0, atol=1e-5)  # no empty cluster holds a test sample here, or it would be 0
    assert np.array_equal(side, test.features.astype(np.float32))

    out = tmp_path / "ca.safetensors"
    r = invoke("fit-classifier", digits / "train.safetensors", "--val", digits / "val.safetensors", "-o", out,
               "--filter", small_filter, "--from-scratch", "--epochs", "15", "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    clf = Classifier.load(out)
    assert clf.kind == "cluster-aided" and clf.meta["epoch"] > 0
    t = read_safetensors(out)[0]
    assert t["b.weight"].shape == (C, test.dim + C)
    assert t["b.weight"][:, test.dim:].abs().max() > 0  # the prior columns were trained
    x = torch.from_numpy(test.features.astype(np.float64))
    pr = torch.from_numpy(table[cluster].astype(np.float64))
    by_hand = x @ t["a.weight"].double().T + t["a.bias"].double() + torch.cat([x, pr], 1) @ t["b.weight"].double().T + t["b.bias"].double()
    got = clf.logits(test.features, side=test.features, prior=table[cluster])
    np.testing.assert_allclose(got, by_hand.numpy(), atol=1e-4)
    _, meta = read_safetensors(out, [])[1:3]
    from dlsa_cli.io.files import file_sha256

    assert meta["filter"]["sha256"] == file_sha256(small_filter)


def test_cluster_aided_starts_exactly_at_its_init(digits, small_filter, baseline, tmp_path):
    from dlsa_cli.flow import FlowFilter

    flt = FlowFilter.load(small_filter)
    train = read_features(digits / "train.safetensors", require_labels=True)
    val = read_features(digits / "val.safetensors", require_labels=True)
    _clf, report = fit_classifier(train, val, TrainConfig(epochs=1), init=baseline, flt=flt, filter_path=small_filter)
    base = Classifier.load(baseline)
    assert report.history[0]["val_balanced"] == pytest.approx(base.meta["val"]["balanced_accuracy"])


def test_leave_one_out_prior_removes_the_sample_itself(digits, small_filter):
    from dlsa_cli.classify.data import leave_one_out_prior
    from dlsa_cli.flow import FlowFilter

    flt = FlowFilter.load(small_filter)
    train = read_features(digits / "train.safetensors", require_labels=True)
    cl, _, plain = cluster_inputs(flt, train.features, side_input="none")
    loo = leave_one_out_prior(flt, small_filter, cl, train.labels, plain)
    counts = flt.cluster_counts.numpy().astype(np.float64)
    i = int(np.argmax(counts[cl].sum(1) > 2))
    row = counts[cl[i]].copy()
    row[train.labels[i]] -= 1
    np.testing.assert_allclose(loo[i], row / row.sum(), atol=1e-6)


def test_branch_classifier_needs_init_or_from_scratch(digits, small_filter, tmp_path):
    out = tmp_path / "ca.safetensors"
    r = invoke("fit-classifier", digits / "train.safetensors", "-o", out, "--filter", small_filter, "--device", "cpu")
    assert_clean_failure(r, out, "--init")


def test_classifier_on_features_of_another_dim_or_class_count(digits, baseline, tmp_path):
    test = read_features(digits / "test.safetensors")
    write_features(tmp_path / "d32.safetensors", FeatureSet(test.features[:, :32], test.labels), meta={"class_names": [str(i) for i in range(C)]})
    out = tmp_path / "pred.parquet"
    r = invoke("predict", baseline, tmp_path / "d32.safetensors", "-o", out, "--device", "cpu")
    assert_clean_failure(r, out, "D=32")
    write_features(tmp_path / "c12.safetensors", test, meta={"class_names": [str(i) for i in range(12)]})
    r = invoke("predict", baseline, tmp_path / "c12.safetensors", "-o", out, "--device", "cpu")
    assert_clean_failure(r, out, "12 classes")
