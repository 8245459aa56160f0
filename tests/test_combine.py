"""Issue 24's pieces through the CLI on the digits split: the `posterior` routing score, memory in the
branches, soft routing, and compare's tail-bias and memory-vote controls."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dlsa_cli.cascade.combine import Parts, hard_route, mix, parts, route_probabilities
from dlsa_cli.cascade.model import Cascade
from dlsa_cli.classify.model import Classifier
from dlsa_cli.flow.filter import FlowFilter
from dlsa_cli.io.features import read_features
from dlsa_cli.io.files import read_table
from tests.conftest import assert_clean_failure, invoke

FAST = ["--depth", "2", "--clusters", "6", "--filter-epochs", "3", "--filter-batch-size", "64", "--filter-lr", "0.01",
        "--hidden", "32", "--max-cluster-share", "0.9", "--epochs", "8", "--device", "cpu", "--quiet"]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="module")
def remembering(digits, tmp_path_factory) -> Path:
    """A 2-depth cascade with memory (k 10) and soft routing."""
    run = tmp_path_factory.mktemp("mem") / "run"
    r = invoke("fit-cascade", digits / "train.safetensors", "--val", digits / "val.safetensors", "-o", run, *FAST,
               "--memory-k", "10", "--soft-routing", "--branch-lr", "0.01")  # the final branch moves
    assert r.returncode == 0, r.stderr
    return run


def _softmax_tail_mass(clf: Classifier, x: np.ndarray, is_tail: np.ndarray) -> np.ndarray:
    w, b = (t.detach().double().numpy() for t in (clf.module.weight, clf.module.bias))
    z = x.astype(np.float64) @ w.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    return p[:, is_tail].sum(1) / p.sum(1)


def test_the_posterior_score_is_the_classifiers_softmax_tail_mass(digits, tmp_path):
    train, val = digits / "train.safetensors", digits / "val.safetensors"
    clf_path, flt_path = tmp_path / "clf.safetensors", tmp_path / "f.safetensors"
    assert invoke("fit-classifier", train, "--val", val, "-o", clf_path, "--epochs", "5", "--quiet").returncode == 0
    r = invoke("fit-filter", train, "-o", flt_path, "--clusters", "6", "--epochs", "2", "--batch-size", "64",
               "--hidden", "16", "--max-cluster-share", "0.9", "--routing", "posterior", "--router", clf_path,
               "--tail-at-most", "40", "--quiet")
    assert r.returncode == 0, r.stderr
    flt, clf, fs = FlowFilter.load(flt_path), Classifier.load(clf_path), read_features(val)
    is_tail = flt.train_counts <= 40
    by_hand = _softmax_tail_mass(clf, fs.features, is_tail)
    score = flt.score(fs.features).route_score
    np.testing.assert_allclose(score, by_hand, atol=2e-7)  # the tie-break adds at most 1e-7
    assert flt.stats["routed"] == round(0.3 * read_features(train).n)


def test_posterior_without_a_router_and_a_router_without_posterior_are_one_line(digits, tmp_path):
    out = tmp_path / "f.safetensors"
    r = invoke("fit-filter", digits / "train.safetensors", "-o", out, "--routing", "posterior")
    assert_clean_failure(r, out, "--router")
    r = invoke("fit-filter", digits / "train.safetensors", "-o", out, "--router", digits / "train.safetensors")
    assert_clean_failure(r, out, "used only by --routing posterior")


def test_memory_adds_each_branchs_weight_times_the_log_vote_counted_by_hand(remembering, digits):
    cascade = Cascade.load(remembering)
    comb = cascade.combine
    assert comb is not None and comb.memory == "memory.safetensors" and len(comb.weights) == 3
    test = read_features(digits / "test.safetensors")
    x = np.asarray(test.features, dtype=np.float32)
    train = read_features(digits / "train.safetensors")
    # the vote by brute force: cosine similarity to every training sample, the 10 best, 1 / n_class each
    bank = cascade.memory.features.float().numpy()  # the float16 rows the cascade searches
    q = x / np.linalg.norm(x, axis=1, keepdims=True)
    y, c = train.require_labels(), cascade.num_classes
    n = np.bincount(y, minlength=c)
    vote = np.zeros((len(x), c))
    for i, row in enumerate(q @ bank.T):
        for j in np.argsort(-row, kind="stable")[:10]:
            vote[i, y[j]] += 1.0 / n[y[j]]
    vote /= vote.sum(1, keepdims=True)
    p = parts(cascade, x)
    probs = route_probabilities(p, comb.temperatures)
    expected = p.logits[-1].astype(np.float64) * 0
    for b, z in enumerate(p.logits):  # each branch's own weight and floor, by hand
        reach = np.prod([1 - probs[e] for e in range(min(b, len(probs)))], axis=0) if b else np.ones(len(x))
        take = reach * (probs[b] if b < len(probs) else 1.0)
        expected += take[:, None] * (z + comb.weights[b] * np.log(vote + comb.floors[b]))
    got, route = cascade.logits(x)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert np.array_equal(route, hard_route(p))


def test_soft_routing_at_its_extremes_is_each_branch(remembering, digits):
    cascade = Cascade.load(remembering)
    x = np.asarray(read_features(digits / "test.safetensors").features, dtype=np.float32)
    p = parts(cascade, x)
    n = x.shape[0]
    one, zero = np.ones(n), np.zeros(n)
    for d in range(cascade.depth):  # probability 1 at depth d (0 before it): branch d alone
        probs = [zero] * d + [one] + [zero] * (cascade.depth - d - 1)
        np.testing.assert_array_equal(mix(p, probs), p.logits[d])
    np.testing.assert_array_equal(mix(p, [zero] * cascade.depth), p.logits[-1])
    # temperature 0 everywhere is the hard route: each sample gets its routed branch's logits
    hard = mix(p, route_probabilities(p, [0.0] * cascade.depth))
    route = hard_route(p)
    for i in range(n):
        b = route[i] - 1 if route[i] > 0 else -1
        np.testing.assert_array_equal(hard[i], p.logits[b][i])
    # a high temperature mixes: each row lies between the branches' logits
    t = [1e6 * (np.std(s) + 1.0) for s in p.scores]
    soft = mix(p, route_probabilities(p, t))
    assert not np.allclose(soft, hard)
    stack = np.stack(p.logits)
    assert np.all(soft <= stack.max(0) + 1e-4) and np.all(soft >= stack.min(0) - 1e-4)


def test_a_cascade_without_combine_is_the_hard_route(remembering, digits, tmp_path):
    """Dropping "combine" from the manifest gives the hard cascade, which `parts` reproduces."""
    plain = tmp_path / "plain"
    import shutil

    shutil.copytree(remembering, plain, symlinks=True)
    m = json.loads((plain / "cascade.json").read_text())
    m.pop("combine")
    (plain / "cascade.json").write_text(json.dumps(m))
    x = np.asarray(read_features(digits / "test.safetensors").features, dtype=np.float32)
    hard, route = Cascade.load(plain).logits(x)
    p: Parts = parts(Cascade.load(plain), x)
    np.testing.assert_allclose(hard, mix(p, route_probabilities(p, [0.0, 0.0])), atol=1e-6)
    assert np.array_equal(route, hard_route(p))


def test_predict_writes_the_combined_cascades_routes(remembering, digits, tmp_path):
    out = tmp_path / "p.parquet"
    r = invoke("predict", remembering, digits / "test.safetensors", "-o", out)
    assert r.returncode == 0, r.stderr
    table = read_table(out)[0]
    x = np.asarray(read_features(digits / "test.safetensors").features, dtype=np.float32)
    z, _ = Cascade.load(remembering).logits(x)
    assert np.array_equal(np.asarray(table["prediction"]), z.argmax(1))
    report = json.loads((remembering / "report.json").read_text())
    assert report["combine"]["k"] == 10 and len(report["combine"]["temperatures"]) == 2
    # cascade.json is written once, with the combine; the hard cascade's transient manifest is gone
    assert json.loads((remembering / "cascade.json").read_text())["combine"] == report["combine"]
    assert (remembering / "memory.safetensors").is_file() and not (remembering / ".branches.json").exists()


def test_memory_without_validation_is_one_line(digits, tmp_path):
    out = tmp_path / "run"
    r = invoke("fit-cascade", digits / "train.safetensors", "-o", out, *FAST, "--memory-k", "10")
    assert_clean_failure(r, out, "--memory-k")


@pytest.mark.parametrize(("combine", "needle"), [
    ({"weights": [1.0], "floors": [0.01], "temperatures": [0.0, 0.0]}, "memory weights"),
    ({"weights": "x", "temperatures": []}, '"combine" is not'),
    ({"memory": "../elsewhere.safetensors", "k": 10}, "outside the cascade folder"),
])
def test_a_tampered_combine_is_one_line(remembering, digits, tmp_path, combine, needle):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(remembering, run, symlinks=True)
    m = json.loads((run / "cascade.json").read_text())
    m["combine"] = combine
    (run / "cascade.json").write_text(json.dumps(m))
    out = tmp_path / "p.parquet"
    r = invoke("predict", run, digits / "test.safetensors", "-o", out)
    assert_clean_failure(r, out, needle)


def test_memory_on_hard_routes_scores_each_branch_on_its_own_rows_only(remembering, digits, tmp_path):
    """Without a soft temperature the cascade runs each branch on the rows routed to it and adds that branch's
    memory term: the same logits as every branch mixed at probabilities 0 and 1."""
    import shutil

    run = tmp_path / "hard"
    shutil.copytree(remembering, run, symlinks=True)
    m = json.loads((run / "cascade.json").read_text())
    m["combine"]["temperatures"] = [0.0] * len(m["combine"]["temperatures"])
    (run / "cascade.json").write_text(json.dumps(m))
    cascade = Cascade.load(run)
    assert not cascade.soft and cascade.memory is not None and any(cascade.combine.weights)
    x = np.asarray(read_features(digits / "test.safetensors").features, dtype=np.float32)
    got, route = cascade.logits(x, batch_size=97)  # several batches, one search each
    p = parts(cascade, x)
    expected = mix(p, route_probabilities(p, cascade.combine.temperatures), cascade.memory.vote(x), cascade.combine)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert np.array_equal(route, hard_route(p))
