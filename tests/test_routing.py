"""Routing scores (flow/routing.py): each score by hand, the threshold rule, files, the CLI and the controls."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, assert_clean_failure, invoke

from dlsa_cli.errors import DlsaError, ModelMismatchError
from dlsa_cli.flow import FlowFilter, fit_filter
from dlsa_cli.flow.neighbours import NeighbourBank
from dlsa_cli.flow.routing import cluster_tail_share, quantile_threshold, routing_score, separation
from dlsa_cli.io.features import FeatureSet, read_features
from dlsa_cli.io.files import read_safetensors, write_safetensors

sys.path.insert(0, str(REPO / "benchmarks"))
from controls import RoutedBy, expected_class_weight, random_score  # the benchmarks' routing controls

COUNTS = [120, 80, 60, 40, 20, 12, 8, 5]  # tail (<= 50): classes 3..7
SMALL = dict(clusters=6, epochs=2, batch_size=32, hidden=12, max_cluster_share=0.9)
FAST = ["-k", "6", "--epochs", "2", "--batch-size", "64", "--hidden", "16", "--max-cluster-share", "0.9", "--device", "cpu"]


def _synthetic(dim: int = 6, seed: int = 0) -> FeatureSet:
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(n, c) for c, n in enumerate(COUNTS)]).astype(np.int64)
    x = (rng.normal(size=(len(COUNTS), dim))[y] * 3 + rng.normal(size=(len(y), dim))).astype(np.float32)
    return FeatureSet(x, y, np.arange(len(y), dtype=np.int64))


@pytest.fixture(scope="module")
def data() -> FeatureSet:
    return _synthetic()


@pytest.fixture(scope="module")
def ratio_filter(data) -> FlowFilter:
    return fit_filter(data, routing="ratio", **SMALL)


# --------------------------------------------------------------------------- scores by hand


def test_cluster_tail_share_by_hand():
    table = np.array([[3, 1, 0], [0, 0, 0], [1, 1, 2]])  # (K=3, C=3)
    counts = np.array([100, 60, 10])  # tail: classes 2 (<= 50)
    assert np.allclose(cluster_tail_share(table, counts), [0.0, 0.0, 0.5])
    assert np.allclose(cluster_tail_share(table, np.array([100, 50, 10])), [0.25, 0.0, 0.75])


def test_routing_score_definitions():
    ll = np.array([-3.0, -1.0, -2.0, -5.0])
    ref = np.array([-4.0, 0.0, -2.5, -5.0])
    cluster = np.array([0, 1, 0, 1])
    tail = np.array([0.2, 0.7])
    assert np.array_equal(routing_score("likelihood", ll, cluster), ll)
    assert np.allclose(routing_score("ratio", ll, cluster, reference_log_likelihood=ref), [1.0, -1.0, 0.5, 0.0])
    s = routing_score("cluster-tail", ll, cluster, cluster_tail=tail)
    assert np.allclose(s, tail[cluster], atol=1e-7)
    assert list(np.argsort(-s)) == [1, 3, 2, 0]  # by tail share first, then by log p(x) within a cluster
    with pytest.raises(DlsaError, match="unknown routing score"):
        routing_score("density", ll, cluster)
    with pytest.raises(DlsaError, match="reference"):
        routing_score("ratio", ll, cluster)


def test_quantile_threshold_routes_the_share():
    s = np.random.default_rng(0).normal(size=1000)
    for share in (0.1, 0.3, 0.5):
        assert (s >= quantile_threshold(s, share)).sum() == round(share * 1000)
    assert (s >= quantile_threshold(s, 1e-9)).sum() == 1  # at least one sample


def test_separation_by_definition():
    counts = np.array([100, 60, 10, 5])  # tail: 2, 3
    labels = np.array([0, 1, 2, 3, 2, 0])
    routed = np.array([True, False, True, True, False, False])
    sep = separation(routed, labels, counts)
    assert sep == {"routed_share": 0.5, "separation": 2 / 3, "chance": 0.5}
    assert separation(np.zeros(6, bool), labels, counts)["separation"] is None


# --------------------------------------------------------------------------- filters that route by a score


def test_ratio_filter_scores_against_its_reference(ratio_filter, data):
    f = ratio_filter
    assert f.routing == "ratio" and f.reference is not None
    sc = f.score(data.features)
    with torch.inference_mode():
        x = torch.from_numpy(data.features)
        ll = f.flow.log_prob(x)[0].double().numpy()
        ref = f.reference.log_prob(x)[0].double().numpy()
    assert np.allclose(sc.log_likelihood, ll) and np.allclose(sc.route_score, ll - ref)
    assert np.array_equal(sc.routed, sc.route_score >= f.threshold)
    assert sc.routed.sum() == round(0.3 * data.n)  # the training share, by the ratio
    tail = np.array(COUNTS) <= 50
    assert f.stats["routing"] == "ratio" and f.stats["routed"] == sc.routed.sum()
    assert np.isclose(f.stats["separation"], tail[data.labels[sc.routed]].mean())
    # the reference is the same flow trained with q = 0: same seed, same fixed means, other weights
    assert torch.equal(f.reference.means, f.flow.means)
    assert not np.allclose(ll, ref)


def test_ratio_filter_file_round_trip(ratio_filter, data, tmp_path):
    p = tmp_path / "ratio.safetensors"
    ratio_filter.save(p)
    g = FlowFilter.load(p)
    assert g.routing == "ratio" and g.threshold == ratio_filter.threshold
    a, b = ratio_filter.score(data.features), g.score(data.features)
    assert np.array_equal(a.route_score, b.route_score) and np.array_equal(a.routed, b.routed)
    tensors, _, meta, _ = read_safetensors(p)
    assert meta["routing"] == "ratio" and "reference.means" in tensors
    # a ratio filter without its reference flow is refused with one line
    write_safetensors(tmp_path / "broken.safetensors", {k: v for k, v in tensors.items() if not k.startswith("reference.")},
                      kind="filter", meta=meta)
    with pytest.raises(ModelMismatchError, match="no reference flow"):
        FlowFilter.load(tmp_path / "broken.safetensors")


def test_cluster_tail_filter_routes_the_share_and_by_cluster(data):
    f = fit_filter(data, routing="cluster-tail", **SMALL)
    sc = f.score(data.features)
    assert sc.routed.sum() == round(0.3 * data.n)  # ties inside a cluster are broken by log p(x)
    share = cluster_tail_share(f.cluster_counts, f.train_counts)
    assert np.allclose(sc.route_score, share[sc.cluster], atol=1e-7)
    # every cluster whose tail share is above the threshold's cluster is routed whole
    edge = share[sc.cluster[sc.routed]].min()
    assert sc.routed[share[sc.cluster] > edge + 1e-6].all()


def test_neighbour_tail_share_by_hand():
    z = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.3], [0.0, 1.0], [-1.0, 0.1]])  # (5, 2)
    bank = NeighbourBank.build(z, np.array([True, False, True, True, False]), k=2)
    assert bank.latents.dtype == torch.float16 and torch.allclose(bank.latents.float().norm(dim=1), torch.ones(5), atol=1e-3)
    # row 0 is itself in the bank: its 2 nearest others are rows 1 (head) and 2 (tail)
    # a new sample near (0, 1): rows 3 (tail) and 2 (tail); one near (-1, 0): rows 4 (head) and 3 (tail)
    q = torch.tensor([[2.0, 0.0], [0.1, 1.0], [-1.0, -0.05]])
    assert torch.allclose(bank.tail_share(q), torch.tensor([0.5, 1.0, 0.5], dtype=torch.float64))
    # k beyond the others: the share among those there are
    assert torch.allclose(NeighbourBank.build(z[:2], np.array([True, False]), k=5).tail_share(z[:1]),
                          torch.tensor([0.0], dtype=torch.float64))


def test_neighbour_search_in_chunks_equals_one_pass(monkeypatch):
    from dlsa_cli.flow import neighbours

    rng = np.random.default_rng(0)
    z = torch.from_numpy(rng.normal(size=(300, 8)).astype(np.float32))
    bank = NeighbourBank.build(z, rng.random(300) < 0.4, k=7)
    whole = bank.tail_share(z)
    monkeypatch.setattr(neighbours, "BANK_CHUNK", 13)
    monkeypatch.setattr(neighbours, "QUERY_CHUNK", 17)
    assert torch.equal(bank.tail_share(z), whole)
    # by hand: cosine similarities, the sample itself left out, the 7 best
    u = torch.nn.functional.normalize(bank.latents.float(), dim=1)
    sim = u @ u.T
    sim.fill_diagonal_(float("-inf"))
    expected = bank.tail[sim.topk(7, dim=1).indices].double().mean(1)
    assert torch.allclose(whole, expected)


def test_knn_tail_filter_routes_the_share_by_its_neighbours(data, tmp_path):
    f = fit_filter(data, routing="knn-tail", neighbours=5, **SMALL)
    sc = f.score(data.features, latent=True)
    assert f.routing == "knn-tail" and f.neighbours.k == 5 and f.neighbours.latents.shape == (data.n, 6)
    assert sc.routed.sum() == round(0.3 * data.n)  # ties of the k-share are broken by log p(x)
    tail = np.array(COUNTS) <= 50
    assert np.array_equal(f.neighbours.tail.numpy(), tail[data.labels])
    share = NeighbourBank.build(sc.latent, tail[data.labels], 5).tail_share(torch.from_numpy(sc.latent)).numpy()
    assert np.allclose(sc.route_score, share, atol=1e-7)
    # the stored filter scores the same, and one without its latents is refused with one line
    p = tmp_path / "knn.safetensors"
    f.save(p)
    g = FlowFilter.load(p)
    assert g.routing == "knn-tail" and g.neighbours.k == 5
    assert np.array_equal(g.score(data.features).routed, sc.routed)
    tensors, _, meta, _ = read_safetensors(p)
    write_safetensors(tmp_path / "broken.safetensors", {k: v for k, v in tensors.items() if not k.startswith("neighbours.")},
                      kind="filter", meta=meta)
    with pytest.raises(ModelMismatchError, match="no training latents"):
        FlowFilter.load(tmp_path / "broken.safetensors")


def test_likelihood_stays_the_default(data):
    f = fit_filter(data, **SMALL)
    sc = f.score(data.features)
    assert f.routing == "likelihood" and f.reference is None
    assert np.array_equal(sc.route_score, sc.log_likelihood)


# --------------------------------------------------------------------------- the CLI


def test_fit_filter_routing_ratio_then_split(digits, tmp_path):
    out = tmp_path / "f.safetensors"
    r = invoke("fit-filter", digits / "train.safetensors", "-o", out, *FAST, "--routing", "ratio", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["config"]["routing"] == "ratio"
    r = invoke("split", out, digits / "train.safetensors", digits / "test.safetensors", "-o", tmp_path / "s", "--device", "cpu", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["routing"] == "ratio"
    train = read_features(digits / "train.safetensors")
    assert abs(rep["files"]["train"]["routed"] - 0.3 * train.n) <= 1
    test = read_features(digits / "test.safetensors")
    expected = FlowFilter.load(out).score(test.features).routed
    assert rep["files"]["test"]["routed"] == expected.sum()
    assert read_features(tmp_path / "s" / "test.routed.safetensors").n == expected.sum()


def test_fit_filter_routing_knn_tail_then_split(digits, tmp_path):
    out = tmp_path / "f.safetensors"
    r = invoke("fit-filter", digits / "train.safetensors", "-o", out, *FAST, "--routing", "knn-tail", "--neighbours", "9", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["config"]["neighbours"] == 9
    r = invoke("split", out, digits / "train.safetensors", digits / "test.safetensors", "-o", tmp_path / "s", "--device", "cpu", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["routing"] == "knn-tail"
    train = read_features(digits / "train.safetensors")
    assert abs(rep["files"]["train"]["routed"] - 0.3 * train.n) <= 1  # training samples are scored by the others
    expected = FlowFilter.load(out).score(read_features(digits / "test.safetensors").features).routed
    assert rep["files"]["test"]["routed"] == expected.sum()
    bad = tmp_path / "g.safetensors"
    r = invoke("fit-filter", digits / "train.safetensors", "-o", bad, *FAST, "--routing", "knn-tail", "--neighbours", "0")
    assert_clean_failure(r, bad, "--neighbours 0: knn-tail needs at least 1 neighbour")


def test_fit_filter_unknown_routing_fails_cleanly(digits, tmp_path):
    out = tmp_path / "f.safetensors"
    r = invoke("fit-filter", digits / "train.safetensors", "-o", out, *FAST, "--routing", "density")
    assert_clean_failure(r, out, "--routing density: unknown routing score")


# --------------------------------------------------------------------------- controls


def test_expected_class_weight_by_hand():
    counts = np.array([4, 2, 1])  # q = 1: w = (1, 2, 4) / 7
    logits = np.log(np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]) + 1e-30)
    assert np.allclose(expected_class_weight(logits, counts, q=1.0), [1 / 7, 1.5 / 7, 4 / 7], atol=1e-6)


def test_random_score_ignores_the_class_and_repeats(data):
    s = random_score(data.features, seed=3)
    assert np.array_equal(s, random_score(data.features, seed=3))
    assert np.array_equal(s[::-1], random_score(data.features[::-1], seed=3))  # a function of the row alone
    assert (s >= 0).all() and (s < 1).all()
    assert abs((s >= 0.7).mean() - 0.3) < 0.08  # close to uniform


def test_routed_by_keeps_clusters_and_routes_by_the_score(ratio_filter, data):
    fn = lambda x: x[:, 0]
    thr = quantile_threshold(fn(data.features), 0.3)
    w = RoutedBy(ratio_filter, fn, thr)
    sc, own = w.score(data.features), ratio_filter.score(data.features)
    assert np.array_equal(sc.routed, data.features[:, 0] >= thr)
    assert np.array_equal(sc.cluster, own.cluster) and w.cluster_prior is ratio_filter.cluster_prior


# --------------------------------------------------------------------------- figures


def test_inspect_plot_draws_fig7_and_the_route_map(digits, tmp_path):
    pytest.importorskip("matplotlib")
    f = tmp_path / "f.safetensors"
    assert invoke("fit-filter", digits / "train.safetensors", "-o", f, *FAST).returncode == 0
    sp = tmp_path / "sp"
    r = invoke("split", f, digits / "val.safetensors", digits / "test.safetensors", "-o", sp, "--device", "cpu", "--json")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    r = invoke("inspect", sp, "--plot", tmp_path / "fig7.png", "--json")
    assert r.returncode == 0, r.stderr
    rows = {row["split"]: row for row in json.loads(r.stdout)}
    assert rows["test"]["separation"] == rep["files"]["test"]["separation"]
    assert rows["test"]["chance"] == rep["files"]["test"]["tail_share"]["all"] and rows["test"]["depth"] == 1
    assert (tmp_path / "fig7.png").read_bytes()[:4] == b"\x89PNG"
    r = invoke("inspect", sp / "test.parquet", "--plot", tmp_path / "fig8.svg")
    assert r.returncode == 0, r.stderr
    assert b"<svg" in (tmp_path / "fig8.svg").read_bytes()[:400]
    out = tmp_path / "bad.gif"
    assert_clean_failure(invoke("inspect", sp, "--plot", out), out, "plot format '.gif' is not supported")


def test_pca_2d_matches_scikit_learn(data):
    from sklearn.decomposition import PCA

    from dlsa_cli.evaluation.plot import pca_2d

    ours = pca_2d(data.features)
    ref = PCA(2).fit_transform(data.features.astype(np.float64))
    assert np.allclose(np.abs(ours), np.abs(ref), atol=1e-6)  # each component up to its sign


# --------------------------------------------------------------------------- the recipe


@pytest.mark.slow
def test_tinyimagenet_recipe_routes_by_knn_tail_and_writes_the_fixed_points(digits, tmp_path):
    from dlsa_cli.io.files import read_table
    from tests.test_recipes import run_recipe

    out = tmp_path / "run"
    small = ["--clusters", "4", "--filter-epochs", "1", "--filter-batch", "64", "--filter-opts", "--hidden 16 --max-cluster-share 0.9",
             "--epochs", "2", "--device", "cpu"]
    r = run_recipe("tinyimagenet_lt.sh", *(digits / f"{s}.safetensors" for s in ("train", "val", "test")), out, *small)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"overall", "few"} <= metrics["baseline"].keys() and {"overall", "few"} <= metrics["dlsa"].keys()
    flt = FlowFilter.load(out / "depth1" / "filter.safetensors")
    assert flt.routing == "knn-tail" and flt.neighbours.k == 30 and flt.flow.hidden == 16  # later options win
    table = read_table(out / "dlsa.parquet")[0]
    assert {"label", "prediction", "route", "depth"} <= set(table.column_names)
    assert (out / "baseline.safetensors").is_file()  # the baseline classifier stays in OUTDIR
    combine = json.loads((out / "cascade.json").read_text())["combine"]
    assert combine["k"] == 50 and combine["memory"] == "memory.safetensors" and len(combine["temperatures"]) == 1
    test = read_features(digits / "test.safetensors")
    routes = np.array(table.column("route").to_pylist())
    assert set(routes) <= {"cluster@1", "regular"}
    assert (routes == "cluster@1").sum() == flt.score(test.features).routed.sum()


def test_set_routing_on_a_trained_filter_is_what_its_file_says(data, tmp_path):
    from dlsa_cli.flow.routing import set_routing

    f = fit_filter(data, **SMALL)
    set_routing(f, data.features, data.labels, routing="cluster-tail")
    f.save(tmp_path / "ct.safetensors")
    g = FlowFilter.load(tmp_path / "ct.safetensors")
    assert g.routing == "cluster-tail" and g.config.routing == "cluster-tail"
    assert np.array_equal(g.score(data.features).routed, f.score(data.features).routed)
    assert g.score(data.features).routed.sum() == round(0.3 * data.n)
