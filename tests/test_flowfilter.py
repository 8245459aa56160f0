"""The flow filter library: losses by hand, pair sampling, epoch selection, routing, files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dlsa_cli.errors import InputError, ModelMismatchError, TrainingError
from dlsa_cli.flow import (
    BalanceLoss,
    FilterConfig,
    FlowFilter,
    PairSampler,
    class_weights,
    cluster_stats,
    cluster_table,
    fit_filter,
    mle_loss,
    purity_loss,
    split_report,
)
from dlsa_cli.io.features import FeatureSet, write_features
from dlsa_cli.io.files import read_safetensors, write_safetensors

COUNTS = [120, 80, 50, 30, 20, 12, 8, 5, 3, 2]


def _synthetic(dim: int = 8, seed: int = 0, counts=COUNTS) -> FeatureSet:
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(n, c) for c, n in enumerate(counts)]).astype(np.int64)
    centers = rng.normal(size=(len(counts), dim)) * 3
    x = (centers[y] + rng.normal(size=(len(y), dim))).astype(np.float32)
    return FeatureSet(x, y, np.arange(len(y), dtype=np.int64) + 1000)


SMALL = dict(clusters=6, epochs=3, batch_size=32, hidden=12, max_cluster_share=0.9)


@pytest.fixture(scope="module")
def data() -> FeatureSet:
    return _synthetic()


@pytest.fixture(scope="module")
def filt(data) -> FlowFilter:
    return fit_filter(data, **SMALL)


# --------------------------------------------------------------------------- losses by hand


def test_class_weights_by_hand():
    w = class_weights(np.array([8, 4, 0, 2]), q=2.0)
    assert np.allclose(w.numpy(), [1 / 21, 4 / 21, 0, 16 / 21], atol=1e-7)
    w1 = class_weights(np.array([8, 4, 2]), q=1.0)
    assert np.allclose(w1.numpy(), [1 / 7, 2 / 7, 4 / 7], atol=1e-7)


def test_mle_loss_by_hand():
    logp = torch.tensor([-2.0, -4.0, -1.0])
    w = torch.tensor([0.5, 0.25, 0.25])
    assert math.isclose(float(mle_loss(logp, w, 2.0)), -2.0 * (-1.0 - 1.0 - 0.25) / 3, rel_tol=1e-6)


def test_purity_loss_by_hand_and_pos_is_detached():
    l_pos = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, -1.0]], requires_grad=True)
    l_neg = torch.tensor([[2.0, 0.0, 0.0], [0.5, 0.5, 3.0]], requires_grad=True)
    got = purity_loss(l_pos, l_neg, 0.5)
    lp, ln = l_pos.detach().numpy(), l_neg.detach().numpy()
    p = np.exp(lp) / np.exp(lp).sum(1, keepdims=True)
    logq = ln - np.log(np.exp(ln).sum(1, keepdims=True))
    want = 0.5 * (p * logq).sum(1).mean()
    assert math.isclose(got.item(), want, rel_tol=1e-6)
    got.backward()
    assert l_pos.grad is None
    assert l_neg.grad is not None and l_neg.grad.abs().sum() > 0


def test_balance_loss_by_hand_with_ema_and_bias_correction():
    k, eta, lam = 3, 0.7, 1.5
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(4, k)) for _ in range(3)]
    bal = BalanceLoss(k, eta, lam)
    p_tilde = np.zeros(k)
    leaves = []
    for t, logits_t in enumerate(batches, start=1):
        lt = torch.tensor(logits_t, requires_grad=True)
        leaves.append(lt)
        got = bal(lt)
        soft = np.exp(logits_t) / np.exp(logits_t).sum(1, keepdims=True)
        p_t = soft.mean(0) + 1e-7
        p_tilde = eta * p_tilde + (1 - eta) * p_t
        p_hat = p_tilde / (1 - eta**t)
        want = lam * ((p_hat * np.log(p_hat)).sum() + math.log(k))
        assert math.isclose(got.item(), want, rel_tol=1e-9, abs_tol=1e-12)
        assert got.item() >= -1e-5
    got.backward()  # the last step's loss: gradient reaches the current batch only
    assert leaves[-1].grad is not None and leaves[-1].grad.abs().sum() > 0
    assert leaves[0].grad is None and leaves[1].grad is None


def test_balance_loss_is_zero_for_even_and_log_k_for_collapsed_clusters():
    even = BalanceLoss(4, 0.7, 1.0)(torch.zeros(8, 4))
    assert abs(float(even)) < 1e-5
    collapsed = BalanceLoss(4, 0.7, 1.0)(torch.tensor([[50.0, 0, 0, 0]] * 8))
    assert math.isclose(float(collapsed), math.log(4), rel_tol=1e-4)


# --------------------------------------------------------------------------- pairs and clusters


def test_pair_sampler_is_class_uniform_and_pairs_differ():
    counts = [200, 50, 10, 3, 1, 0, 7]
    y = torch.tensor(np.concatenate([np.full(n, c) for c, n in enumerate(counts)]), dtype=torch.long)
    y = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    s = PairSampler(y, torch.Generator().manual_seed(0))
    pos, neg = s.draw(60_000)
    yp, yn = y[pos], y[neg]
    assert (yp != yn).all()
    present = [c for c, n in enumerate(counts) if n > 0]
    freq_p = torch.bincount(yp, minlength=len(counts)).double() / len(yp)
    freq_n = torch.bincount(yn, minlength=len(counts)).double() / len(yn)
    for c in range(len(counts)):
        want = 1 / len(present) if c in present else 0.0
        assert abs(float(freq_p[c]) - want) < 0.01, (c, float(freq_p[c]))
        assert abs(float(freq_n[c]) - want) < 0.01, (c, float(freq_n[c]))
    # neg class given pos class: uniform over the other 5 classes
    both = yp * 10 + yn
    joint = torch.bincount(both[yp == 0], minlength=10)[torch.tensor(present[1:])].double()
    assert (joint / joint.sum() - 1 / 5).abs().max() < 0.02
    # within a class every sample is drawn about equally often
    idx3 = torch.nonzero(y == 3).flatten()
    hits = torch.stack([(pos == i).sum() + (neg == i).sum() for i in idx3]).double()
    assert (hits / hits.sum() - 1 / 3).abs().max() < 0.03


def test_pair_sampler_is_reproducible():
    y = torch.tensor([0, 0, 1, 1, 1, 2])
    a = PairSampler(y, torch.Generator().manual_seed(5)).draw(50)
    b = PairSampler(y, torch.Generator().manual_seed(5)).draw(50)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_cluster_table_and_stats_by_hand():
    cluster = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 3])
    labels = torch.tensor([0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 0, 1])
    t = cluster_table(cluster, labels, 4, 3)
    want = np.zeros((4, 3), dtype=np.int64)
    for c, y in zip(cluster.tolist(), labels.tolist(), strict=False):
        want[c, y] += 1
    assert np.array_equal(t.numpy(), want)
    st = cluster_stats(t, purity_threshold=0.7, min_size=10)
    assert st["empty"] == 1 and st["size_max"] == 12 and st["samples"] == 16
    assert st["good_clusters"] == 1  # cluster 1: 11/12 pure, 12 samples
    assert st["purity_above_0.9"] == 2  # clusters 1 (0.917) and 3 (1.0)
    assert st["purity_above_0.5"] == 3
    assert math.isclose(st["largest_share"], 12 / 16)


# --------------------------------------------------------------------------- training and routing


def test_train_routed_share_equals_option_within_one_sample(filt, data):
    sc = filt.score(data.features)
    assert abs(int(sc.routed.sum()) - 0.3 * data.n) <= 1
    assert filt.stats["routed"] == int(sc.routed.sum())
    assert np.array_equal(sc.routed, sc.log_likelihood >= filt.threshold)
    f2 = fit_filter(data, **{**SMALL, "share": 0.55, "epochs": 1})
    assert abs(int(f2.score(data.features).routed.sum()) - 0.55 * data.n) <= 1


def test_cluster_prior_counts_training_clusters(filt, data):
    sc = filt.score(data.features)
    want = np.zeros((filt.num_clusters, filt.num_classes), dtype=np.int64)
    np.add.at(want, (sc.cluster, data.labels), 1)
    assert np.array_equal(filt.cluster_counts.numpy(), want)
    prior = filt.cluster_prior.numpy()
    assert prior.dtype == np.float32 and prior.shape == (6, 10)
    rows = prior.sum(1)
    assert np.allclose(rows[want.sum(1) > 0], 1, atol=1e-6)
    assert np.all(rows[want.sum(1) == 0] == 0)
    assert np.array_equal(filt.train_counts, COUNTS)


def test_epoch_selection_keeps_most_good_clusters_among_eligible(data):
    f = fit_filter(data, **{**SMALL, "epochs": 5, "min_cluster_size": 3, "purity_threshold": 0.4})
    hist = f.history
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4, 5]
    eligible = [h for h in hist if h["eligible"]]
    assert eligible, "max_cluster_share 0.9 should let some epoch qualify"
    best = max(h["good_clusters"] for h in eligible)
    assert f.chosen_epoch == max(h["epoch"] for h in eligible if h["good_clusters"] == best)
    assert f.stats["good_clusters"] == hist[f.chosen_epoch - 1]["good_clusters"]


def test_epoch_selection_without_eligible_epoch_warns_and_keeps_most_good(data):
    warnings: list[str] = []
    f = fit_filter(data, **{**SMALL, "epochs": 3, "max_cluster_share": 0.01}, on_warning=warnings.append)
    assert not any(h["eligible"] for h in f.history)
    assert any("FilterConfig.max_cluster_share" in w for w in warnings)  # the library names the setting
    best = max(h["good_clusters"] for h in f.history)
    assert f.history[f.chosen_epoch - 1]["good_clusters"] == best


def test_select_last_keeps_the_final_epoch(data):
    f = fit_filter(data, **{**SMALL, "select": "last"})
    assert f.chosen_epoch == SMALL["epochs"]


@pytest.mark.parametrize("off", ["lambda_lh", "lambda_bal", "lambda_pure"])
def test_each_loss_can_be_switched_off(data, off):
    f = fit_filter(data, **{**SMALL, "epochs": 1, off: 0.0})
    term = {"lambda_lh": "mle", "lambda_bal": "bal", "lambda_pure": "pure"}[off]
    assert f.history[0][term] == 0.0
    assert math.isfinite(f.history[0]["loss"])
    others = {"mle", "bal", "pure"} - {term}
    assert all(f.history[0][t] != 0.0 for t in others)


def test_same_seed_gives_bitwise_identical_filter(data, tmp_path):
    a = fit_filter(data, **SMALL, seed=7)
    b = fit_filter(data, **SMALL, seed=7)
    c = fit_filter(data, **SMALL, seed=8)
    a.save(tmp_path / "a.safetensors")
    b.save(tmp_path / "b.safetensors")
    c.save(tmp_path / "c.safetensors")
    ta, _, ma, _ = read_safetensors(tmp_path / "a.safetensors")
    tb, _, mb, _ = read_safetensors(tmp_path / "b.safetensors")
    tc, _, _, _ = read_safetensors(tmp_path / "c.safetensors")
    assert ta.keys() == tb.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert ma["threshold"] == mb["threshold"]
    assert not torch.equal(ta["means"], tc["means"])


def test_save_load_gives_identical_scores_and_meta(filt, data, tmp_path):
    p = tmp_path / "f.safetensors"
    filt.save(p, prov={"command": "test"})
    g = FlowFilter.load(p)
    a = filt.score(data.features, latent=True)
    b = g.score(data.features, latent=True, batch_size=7)
    assert np.array_equal(a.log_likelihood, b.log_likelihood) or np.allclose(a.log_likelihood, b.log_likelihood, atol=1e-4)
    b2 = g.score(data.features, latent=True)
    assert np.array_equal(a.log_likelihood, b2.log_likelihood)
    assert np.array_equal(a.cluster, b2.cluster) and np.array_equal(a.routed, b2.routed)
    assert np.array_equal(a.latent, b2.latent) and a.latent.shape == (data.n, 8)
    assert torch.equal(g.cluster_prior, filt.cluster_prior)
    assert (g.dim, g.num_clusters, g.num_classes, g.depth) == (8, 6, 10, 1)
    assert g.threshold == filt.threshold and g.share == 0.3
    assert g.chosen_epoch == filt.chosen_epoch and len(g.history) == 3
    assert g.config == filt.config
    names = read_safetensors(p)[0].keys()
    assert {"means", "cluster_prior", "cluster_counts"} <= set(names)
    assert all(n.startswith("flow.") for n in names if n not in ("means", "cluster_prior", "cluster_counts"))
    assert not any(n.endswith(".mask") for n in names)


def test_score_batch_of_one_and_float16_input(filt, data):
    a = filt.score(data.features[:5])
    b = filt.score(data.features[:5], batch_size=1)
    assert np.allclose(a.log_likelihood, b.log_likelihood, atol=1e-4)
    assert np.array_equal(a.cluster, b.cluster)
    h = filt.score(data.features[:5].astype(np.float16))
    assert h.log_likelihood.dtype == np.float64 and np.isfinite(h.log_likelihood).all()


def test_depth_comes_from_a_rest_file(data):
    rest = FeatureSet(data.features, data.labels, data.ids, {"part": "rest", "depth": 2, "num_classes": 12})
    f = fit_filter(rest, **{**SMALL, "epochs": 1})
    assert f.depth == 3 and f.num_classes == 12
    assert fit_filter(data, **{**SMALL, "epochs": 1}, depth=5).depth == 5


def test_split_report_by_hand(filt):
    from dlsa_cli.evaluation.tally import GroupCounts
    from dlsa_cli.flow import FilterScores
    from dlsa_cli.flow.summary import HeadTail, SplitFileReport

    labels = np.array([0, 0, 9, 8, 4, 4])  # counts 120, 120, 2, 3, 20, 20 -> many, many, few, few, medium, medium
    routed = np.array([True, False, True, True, False, False])
    sc = FilterScores(np.array([1.0, -1.0, 2.0, 3.0, -2.0, -3.0]), np.zeros(6, dtype=np.int64), routed)
    r = split_report(filt, labels, sc)
    assert r.routed == 3 and r.rest == 3 and r.routed_share == 0.5
    assert r.groups.routed == GroupCounts(many=1, medium=0, few=2)
    assert r.groups.rest == GroupCounts(many=1, medium=2, few=0)
    assert r.head_tail.routed == HeadTail(head=1, tail=2)
    assert math.isclose(r.separation, 2 / 3)
    assert math.isclose(r.tail_share.all, 4 / 6)
    assert math.isclose(r.mean_log_likelihood.routed, 2.0)
    j = r.to_json()  # the one JSON form, as split.json and the split table hold it
    assert j["groups"]["routed"] == {"many": 1, "medium": 0, "few": 2} and j["separation"] == r.separation
    assert SplitFileReport.from_json(j) == r
    old = {**j, "separation_accuracy": j["separation"]}  # what split.json held before `separation`
    del old["separation"]
    assert SplitFileReport.from_json(old) == r


# --------------------------------------------------------------------------- bad input


def test_single_sample_class_is_an_error_unless_allowed(data):
    one = _synthetic(counts=[40, 30, 1])
    with pytest.raises(InputError, match="class 2 has a single training sample"):
        fit_filter(one, **{**SMALL, "epochs": 1})
    warnings: list[str] = []
    f = fit_filter(one, **{**SMALL, "epochs": 1}, allow_singletons=True, on_warning=warnings.append)
    assert f.num_classes == 3 and any("single" in w for w in warnings)


def test_fewer_samples_than_batch_is_an_error(data):
    with pytest.raises(InputError, match=r"fewer than the batch size 1024.*FilterConfig\.batch_size"):
        fit_filter(data, **{**SMALL, "batch_size": 1024})


def test_nan_loss_names_the_epoch_and_hints_lr(data):
    with pytest.raises(TrainingError, match=r"epoch 1 .*lower FilterConfig\.lr"):
        fit_filter(data, **{**SMALL, "lr": 1e6})


def test_missing_labels_and_one_class_are_errors(data):
    with pytest.raises(InputError, match="no labels"):
        fit_filter(FeatureSet(data.features), **SMALL)
    with pytest.raises(InputError, match="fewer than 2 classes"):
        fit_filter(FeatureSet(data.features, np.zeros(data.n, dtype=np.int64)), **SMALL)


def test_score_rejects_other_dims_and_load_rejects_non_filters(filt, data, tmp_path):
    with pytest.raises(ModelMismatchError, match="expects 8-dim features, got 5-dim"):
        filt.score(np.zeros((3, 5), dtype=np.float32))
    p = tmp_path / "feat.safetensors"
    write_features(p, data)
    with pytest.raises(ModelMismatchError, match="not a filter"):
        FlowFilter.load(p)
    q = tmp_path / "broken.safetensors"
    write_safetensors(q, {"means": torch.zeros(2, 2)}, kind="filter", meta={"dim": 2})
    with pytest.raises(ModelMismatchError, match="lacks"):
        FlowFilter.load(q)


def test_bad_option_values_are_clear_errors(data):
    from dlsa_cli.errors import DlsaError

    for opt, val, msg in [("share", 1.5, "share"), ("batch_size", 1, "batch"), ("select", "best", "select"), ("ema", 1.0, "ema")]:
        with pytest.raises(DlsaError, match=msg):
            fit_filter(data, **{**SMALL, opt: val})
    assert FilterConfig().clusters == 500 and FilterConfig().lr == 0.2
