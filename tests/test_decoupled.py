"""The decoupling baselines of `fit-classifier`: nearest class mean (ncm) and learnable weight scaling (lws)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_clean_failure, invoke

from dlsa_cli.classify import Classifier
from dlsa_cli.io.features import read_features
from dlsa_cli.io.files import read_table


def _fit(digits: Path, out: Path, *args) -> Path:
    r = invoke("fit-classifier", digits / "train.safetensors", "--val", digits / "val.safetensors", "-o", out,
               "--device", "cpu", "--quiet", *args)
    assert r.returncode == 0, r.stderr
    return out


def _predictions(model: Path, digits: Path, tmp_path: Path) -> np.ndarray:
    out = tmp_path / f"{model.stem}.parquet"
    r = invoke("predict", model, digits / "test.safetensors", "-o", out, "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    return np.asarray(read_table(out)[0]["prediction"])


@pytest.fixture(scope="module")
def baseline(digits) -> Path:
    return _fit(digits, digits / "baseline.safetensors", "--epochs", "20")


def test_ncm_stores_the_class_means_of_normalised_features_and_predicts_the_nearest_in_angle(digits, tmp_path):
    clf_path = _fit(digits, tmp_path / "ncm.safetensors", "--model", "ncm")
    train = read_features(digits / "train.safetensors", require_labels=True)
    x = train.features / np.linalg.norm(train.features, axis=1, keepdims=True)
    means = np.stack([x[train.labels == k].mean(0) for k in range(10)])  # (C, D) by hand
    clf = Classifier.load(clf_path)
    assert (clf.kind, clf.base_kind) == ("ncm", "ncm")
    assert np.allclose(clf.module.means.numpy(), means, atol=1e-6)
    assert not list(clf.module.parameters())  # nothing trained

    test = read_features(digits / "test.safetensors", require_labels=True)
    xt = test.features / np.linalg.norm(test.features, axis=1, keepdims=True)
    cos = xt @ (means / np.linalg.norm(means, axis=1, keepdims=True)).T  # (N, C)
    pred = _predictions(clf_path, digits, tmp_path)
    assert np.array_equal(pred, cos.argmax(1))
    assert (pred == test.labels).mean() > 0.8  # real digit scans: class means separate them well


def test_lws_learns_only_a_scale_per_weight_row(digits, baseline, tmp_path):
    clf_path = _fit(digits, tmp_path / "lws.safetensors", "--model", "lws", "--init", baseline, "--sampler",
                    "balanced", "--loss", "ce", "--epochs", "5", "--select", "last")
    init, lws = Classifier.load(baseline), Classifier.load(clf_path)
    assert (lws.kind, lws.base_kind) == ("lws", "lws")
    assert [name for name, _ in lws.module.named_parameters()] == ["scale"]  # all the optimiser could move
    w0, w = init.module.weight.detach(), lws.module.weight.detach()
    f = lws.module.scale.detach()
    assert torch.equal(lws.module.init_weight, w0) and torch.equal(lws.module.bias, init.module.bias.detach())
    nz = w0 != 0  # (C, D); pixels that are blank in every scan keep zero weights
    ratio = w[nz] / w0[nz]  # one constant per row: the row's scale
    assert torch.allclose(ratio, f[:, None].expand_as(w0)[nz], rtol=1e-5) and torch.equal(w[~nz], w0[~nz])
    assert not torch.allclose(f, torch.ones_like(f))  # five epochs did move the scales

    test = read_features(digits / "test.safetensors")
    hand = test.features @ (f[:, None] * w0).numpy().T + init.module.bias.detach().numpy()
    assert np.array_equal(_predictions(clf_path, digits, tmp_path), hand.argmax(1))


def test_an_lws_classifier_is_a_linear_init_for_another_fit(digits, baseline, tmp_path):
    lws = _fit(digits, tmp_path / "lws.safetensors", "--model", "lws", "--init", baseline, "--sampler", "balanced",
               "--epochs", "2")
    tuned = Classifier.load(_fit(digits, tmp_path / "tuned.safetensors", "--init", lws, "--epochs", "1",
                                 "--select", "best"))
    assert tuned.kind == "linear"


@pytest.mark.parametrize("args, needle", [
    (["--model", "ncm", "--epochs", "3"], "--epochs does not apply to --model ncm"),
    (["--model", "ncm", "--posthoc", "la"], "--posthoc does not apply to --model ncm"),
    (["--model", "lws", "--sampler", "balanced"], "pass --init"),
    (["--model", "lws"], "add --sampler balanced"),
    (["--model", "lws", "--sampler", "balanced", "--posthoc", "tau", "--init", "BASELINE"], "tau"),
])
def test_settings_that_do_not_apply_are_one_line_errors(digits, baseline, tmp_path, args, needle):
    out = tmp_path / "bad.safetensors"
    args = [baseline if a == "BASELINE" else a for a in args]
    r = invoke("fit-classifier", digits / "train.safetensors", "-o", out, "--device", "cpu", *args)
    assert_clean_failure(r, out, needle)


def test_ncm_is_not_an_init(digits, tmp_path):
    ncm = _fit(digits, tmp_path / "ncm.safetensors", "--model", "ncm")
    out = tmp_path / "bad.safetensors"
    r = invoke("fit-classifier", digits / "train.safetensors", "-o", out, "--init", ncm, "--device", "cpu")
    assert_clean_failure(r, out, "no linear head")
