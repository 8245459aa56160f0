"""RIDE (`--model ride`) and M2M (`--sampler m2m`): the diversity term, experts, translations, the
cascade, reproducibility and bad options."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import assert_clean_failure, invoke

from dlsa_cli.cascade import Cascade, write_manifest
from dlsa_cli.classify import (
    Classifier,
    LinearHead,
    TrainConfig,
    expert_logits,
    fit_classifier,
    m2m_fill,
    ride_diversity,
    ride_temperatures,
)
from dlsa_cli.classify.m2m import source_probabilities
from dlsa_cli.classify.start import starting_point
from dlsa_cli.io.features import read_features
from dlsa_cli.io.files import read_safetensors

CPU = ["--device", "cpu", "--quiet"]


def ok(*args) -> SimpleNamespace:
    r = invoke(*args)
    assert r.returncode == 0, r.stderr
    return r


def fit(digits: Path, out: Path, *opts) -> Classifier:
    ok("fit-classifier", digits / "train.safetensors", "--val", digits / "val.safetensors", "-o", out, *opts, *CPU)
    return Classifier.load(out)


# ----------------------------------------------------------------------------- RIDE


def test_ride_diversity_is_the_hand_computed_temperature_scaled_kl():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 5, 4, generator=g)  # (E, B, C)
    y = torch.tensor([0, 1, 2, 3, 1])
    temps = ride_temperatures(np.array([40, 10, 5, 1]), base=1.5, mix=0.5)
    # T_k = 1.5 * (0.5 + 0.5 * 4 * n_k / 56)
    np.testing.assert_allclose(temps.numpy(), 1.5 * (0.5 + 0.5 * 4 * np.array([40, 10, 5, 1]) / 56), rtol=1e-6)
    total = 0.0
    zn = z.double().numpy()
    for e in range(3):
        for i in range(5):
            t = float(temps[y[i]])
            mean = zn[:, i].mean(0) / t
            p = np.exp(mean - mean.max())
            p /= p.sum()
            q = np.exp(zn[e, i] / t - (zn[e, i] / t).max())
            q /= q.sum()
            total += t * t * float((p * np.log(p / q)).sum())
    assert float(ride_diversity(z, y, temps)) == pytest.approx(total / 15, rel=1e-5)
    assert float(ride_diversity(z[:1].expand(3, -1, -1), y, temps)) == pytest.approx(0.0, abs=1e-7)  # equal experts


def _disagreement(clf: Classifier, x: np.ndarray) -> float:
    with torch.no_grad():
        z = expert_logits(clf.module, torch.as_tensor(x))  # (E, B, C)
    return float((z - z.mean(0)).pow(2).sum(2).mean())


def test_a_larger_diversity_weight_makes_the_experts_disagree_more(digits, tmp_path):
    test = read_features(digits / "test.safetensors").features
    spread = {}
    for w in ("0", "0.5", "2"):
        clf = fit(digits, tmp_path / f"ride{w}.safetensors", "--model", "ride", "--epochs", "8", "--select", "last",
                  "--ride-diversity", w, "--seed", "3")
        spread[w] = _disagreement(clf, test)
    assert spread["0"] < spread["0.5"] < spread["2"], spread


def test_ride_experts_differ_predict_their_mean_and_round_trip(digits, tmp_path):
    out = tmp_path / "ride.safetensors"
    r = ok("fit-classifier", digits / "train.safetensors", "--val", digits / "val.safetensors", "-o", out,
           "--model", "ride", "--experts", "3", "--expert-hidden", "16", "--epochs", "10", "--json", *CPU)
    rep = json.loads(r.stdout)
    assert rep["model"] == "ride" and rep["experts"] == 3
    clf = Classifier.load(out)
    w = [e.out.weight.detach() for e in clf.module.experts]
    assert len(w) == 3 and all(not torch.allclose(w[i], w[j]) for i in range(3) for j in range(i + 1, 3))
    x = read_features(digits / "test.safetensors").features
    with torch.no_grad():
        z = expert_logits(clf.module, torch.as_tensor(x))  # (3, N, C)
    assert z.shape == (3, len(x), 10)
    np.testing.assert_allclose(clf.logits(x), z.mean(0).numpy(), atol=1e-5)
    tensors, _, meta, _ = read_safetensors(out)
    assert meta["experts"] == 3 and meta["expert_hidden"] == 16 and "experts.2.hidden.weight" in tensors
    search = meta["ride_diversity_search"]  # no --ride-diversity: the weight is chosen on validation
    assert list(search) == ["0.0", "0.05", "0.2"]
    assert meta["hyper"]["ride_diversity"] == float(max(search, key=search.get))
    assert meta["val"]["balanced_accuracy"] == max(search.values())
    pred = tmp_path / "pred.parquet"
    r = ok("predict", out, digits / "test.safetensors", "-o", pred, "--json", *CPU)
    assert json.loads(r.stdout)["model"] == "ride"
    r = ok("inspect", out, "--json")
    assert json.loads(r.stdout)["fields"]["experts"] == 3


def test_router_of_hidden_layer_experts_is_chosen_on_validation_and_used(digits, tmp_path):
    from dlsa_cli.classify.model import routed_logits

    out = tmp_path / "ride.safetensors"
    r = ok("fit-classifier", digits / "train.safetensors", "--val", digits / "val.safetensors", "-o", out,
           "--model", "ride", "--experts", "3", "--expert-hidden", "32", "--epochs", "15", "--json", *CPU)
    clf = Classifier.load(out)
    router = clf.meta["router"]
    assert json.loads(r.stdout)["router"]["saving"] == router["saving"]
    assert router["threshold"] is not None and 0 < router["saving"] < 1  # digits: most samples are easy
    assert router["val_balanced"] >= router["val_balanced_all_experts"]
    x = torch.as_tensor(read_features(digits / "test.safetensors").features)
    logits, used = routed_logits(clf.module, x, router["threshold"])
    np.testing.assert_allclose(clf.logits(x.numpy()), logits.numpy(), atol=1e-5)
    with torch.no_grad():
        first = clf.module.experts[0](x)
    easy = used == 1
    assert easy.any() and torch.allclose(logits[easy], first[easy])  # a confident sample saw one expert
    assert "router" not in fit(digits, tmp_path / "linear.safetensors", "--model", "ride", "--epochs", "2").meta


def test_ride_from_a_linear_baseline_is_the_baseline_plus_seeded_noise(digits, tmp_path):
    base = fit(digits, tmp_path / "base.safetensors", "--epochs", "5")
    cfg = TrainConfig(model="ride", experts=2, ride_init_noise=0.1, seed=7)
    a = starting_point(cfg, base.path, base.dim, 10).head
    b = starting_point(cfg, base.path, base.dim, 10).head
    w0 = base.module.weight.detach()
    d0, d1 = (e.out.weight.detach() - w0 for e in a.experts)
    assert not torch.allclose(d0, d1)  # the experts start apart
    for d in (d0, d1):
        assert float(d.std()) == pytest.approx(0.1 * float(w0.std()), rel=0.1)
    assert all(torch.equal(e.out.weight, f.out.weight) for e, f in zip(a.experts, b.experts, strict=False))  # seeded


def test_ride_branches_serve_in_a_cascade(digits, tmp_path):
    """A cluster-aided RIDE branch adds one FC_b term to every expert, and the cascade routes through it."""
    d = digits
    base = tmp_path / "base.safetensors"
    fit(d, base, "--model", "ride", "--epochs", "6")
    dk = tmp_path / "depth1"
    dk.mkdir()
    ok("fit-filter", d / "train.safetensors", "-o", dk / "filter.safetensors", "-k", "8", "--epochs", "3",
       "--batch-size", "64", "--hidden", "32", "--lr", "0.01", "--max-cluster-share", "0.9", *CPU)
    ok("split", dk / "filter.safetensors", d / "train.safetensors", d / "val.safetensors", "-o", dk, "--quiet")
    ok("fit-classifier", dk / "train.routed.safetensors", "--val", dk / "val.routed.safetensors", "--allow-missing-val-classes",
       "--filter", dk / "filter.safetensors", "--init", base, "--lr", "0.01", "-o", dk / "cluster.safetensors", "--epochs", "4", *CPU)
    ok("fit-classifier", dk / "train.rest.safetensors", "--val", dk / "val.rest.safetensors", "--allow-missing-val-classes",
       "--init", base, "-o", tmp_path / "final.safetensors", "--epochs", "4", *CPU)
    branch = Classifier.load(dk / "cluster.safetensors")
    assert branch.kind == "cluster-aided" and branch.base_kind == "ride"
    x = torch.as_tensor(read_features(d / "test.safetensors").features[:20])
    side, prior = x, torch.full((20, 10), 0.1)
    with torch.no_grad():
        z = expert_logits(branch.module, x, side, prior)
        fc_b = z - branch.module.a.expert_logits(x)
    torch.testing.assert_close(fc_b[0], fc_b[1])
    write_manifest(tmp_path, [(dk / "filter.safetensors", dk / "cluster.safetensors")], tmp_path / "final.safetensors")
    r = ok("predict", tmp_path, d / "test.safetensors", "-o", tmp_path / "pred.parquet", "--json", *CPU)
    routes = json.loads(r.stdout)["routes"]
    assert routes.get("cluster@1", 0) > 0 and routes.get("regular", 0) > 0
    assert Cascade.load(tmp_path).final.base_kind == "ride"


# ----------------------------------------------------------------------------- M2M


def test_m2m_source_classes_are_larger_ones_with_the_beta_rule():
    counts = torch.tensor([100, 50, 10, 10])
    p = source_probabilities(counts, beta=0.99)
    assert torch.all(p[0] == 0)  # the largest class has no source
    w = 1 - 0.99 ** torch.tensor([90.0, 40.0])
    torch.testing.assert_close(p[2, :2], w / w.sum())
    assert p[2, 2] == 0 and p[2, 3] == 0  # never a class of the same size


@pytest.fixture(scope="module")
def caltech_part(caltech_lt):
    """Caltech-101-LT restricted to its first 30 classes (real features, a quicker M2M round)."""
    def part(fs):
        keep = fs.labels < 30
        return torch.as_tensor(fs.features[keep]).float(), torch.as_tensor(fs.labels[keep])
    return part(caltech_lt.train), part(caltech_lt.val)


def test_m2m_fill_on_real_data(caltech_part):
    (x, y), _ = caltech_part
    gen = torch.Generator().manual_seed(0)
    g = LinearHead(x.shape[1], 30)
    opt = torch.optim.SGD(g.parameters(), lr=0.05, momentum=0.9)
    for _ in range(150):  # g: plain CE on the imbalanced data, full batch
        opt.zero_grad()
        torch.nn.functional.cross_entropy(g(x), y).backward()
        opt.step()
    for p in g.parameters():
        p.requires_grad_(False)
    step = 0.05 * float(x.norm(dim=1).mean())
    tr = m2m_fill(g, None, x, y, 30, beta=0.999, lam=0.1, gamma=0.9, steps=10, step=step, gen=gen)
    counts = torch.bincount(y, minlength=30)
    assert torch.equal(counts + torch.bincount(tr.y, minlength=30), torch.full((30,), int(counts.max())))
    assert 0 < tr.acceptance < 1
    acc = tr.accepted
    assert torch.equal(g(tr.x[acc]).argmax(1), tr.y[acc])  # g assigns every kept translation to its target
    dist = (tr.x[acc] - x[tr.source[acc]]).norm(dim=1)
    assert float(dist.max()) <= 11 * step * (1 + 1e-4)  # noise + 10 steps, each one step long
    assert torch.all(counts[y[tr.source[acc]]] > counts[tr.y[acc]])  # from larger classes
    assert torch.equal(tr.x[~acc], x[tr.source[~acc]]) and torch.equal(y[tr.source[~acc]], tr.y[~acc])  # oversampled


@pytest.mark.slow
def test_m2m_fit_records_its_acceptance_and_repeats_with_a_seed(caltech_lt, tmp_path):
    from dlsa_cli.io.features import FeatureSet

    keep = caltech_lt.train.labels < 30
    train = caltech_lt.train.subset(keep)
    train = FeatureSet(features=train.features, labels=train.labels, ids=train.ids, meta={"num_classes": 30})
    val = caltech_lt.val.subset(caltech_lt.val.labels < 30)
    cfg = TrainConfig(loss="ce", sampler="m2m", epochs=3, m2m_warmup=5, m2m_start=2, m2m_every=5, seed=1)
    a, rep = fit_classifier(train, val, cfg)
    b, _ = fit_classifier(train, val, cfg)
    assert a.meta["m2m"]["acceptance"] > 0 and rep.m2m["rounds"][0]["epoch"] == 2 and len(rep.m2m["rounds"]) == 1
    assert all(torch.equal(a.tensors()[k], b.tensors()[k]) for k in a.tensors())


def test_m2m_through_the_cli_with_a_given_g(digits, tmp_path):
    g = fit(digits, tmp_path / "g.safetensors", "--loss", "ce", "--epochs", "10")
    out = tmp_path / "m2m.safetensors"
    r = ok("fit-classifier", digits / "train.safetensors", "--val", digits / "val.safetensors", "-o", out, "--sampler", "m2m",
           "--loss", "ce", "--m2m-from", g.path, "--epochs", "3", "--m2m-every", "2", "--json", *CPU)
    rep = json.loads(r.stdout)
    meta = Classifier.load(out).meta
    assert meta["m2m"]["from"] == str(g.path) and [r["epoch"] for r in meta["m2m"]["rounds"]] == [1, 3]
    assert rep["m2m_acceptance"] == meta["m2m"]["acceptance"] > 0
    r2 = ok("fit-classifier", digits / "train.safetensors", "--val", digits / "val.safetensors", "-o", tmp_path / "again.safetensors",
            "--sampler", "m2m", "--loss", "ce", "--m2m-from", g.path, "--epochs", "3", "--m2m-every", "2", *CPU)
    assert r2.returncode == 0
    a, b = read_safetensors(out)[0], read_safetensors(tmp_path / "again.safetensors")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- bad options


@pytest.mark.parametrize(
    "opts, needle",
    [
        (["--model", "ride", "--experts", "0"], "--experts 0: must be at least 1"),
        (["--experts", "3"], "--experts applies to --model ride"),
        (["--model", "ride", "--posthoc", "tau"], "--posthoc tau applies to linear classifiers"),
        (["--m2m-from", "x.safetensors"], "--m2m-from applies to --sampler m2m"),
        (["--sampler", "m2m", "--m2m-beta", "1.5"], "--m2m-beta 1.5: must be between 0 and 1"),
        (["--sampler", "m2m", "--m2m-every", "-1"], "--m2m-every -1: must be zero or more"),
        (["--sampler", "m2m", "--m2m-start", "0"], "--m2m-start 0: must be at least 1"),
        (["--model", "ride", "--ride-diversity", "-1"], "--ride-diversity -1.0: must be zero or more"),
        (["--ride-diversity", "0.1"], "--ride-diversity applies to --model ride"),
        (["--sampler", "m2m", "--m2m-from", "missing.safetensors"], "missing.safetensors"),
        (["--model", "ridge"], "--model ridge: use one of linear, cosine, ride, ncm, lws"),
        (["--input", "zz"], "--input zz: use one of features, latent, none"),
        (["--loss-counts", "zz"], "--loss-counts zz: use one of all, subset"),
    ],
)
def test_bad_options_give_one_line(digits, tmp_path, opts, needle):
    out = tmp_path / "out.safetensors"
    r = invoke("fit-classifier", digits / "train.safetensors", "--val", digits / "val.safetensors", "-o", out, *opts, *CPU)
    assert_clean_failure(r, out, needle)


def test_ride_expert_hidden_cannot_start_from_a_linear_head(digits, tmp_path):
    base = fit(digits, tmp_path / "base.safetensors", "--epochs", "3")
    out = tmp_path / "out.safetensors"
    r = invoke("fit-classifier", digits / "train.safetensors", "--val", digits / "val.safetensors", "-o", out, "--init", base.path,
               "--model", "ride", "--expert-hidden", "8", *CPU)
    assert_clean_failure(r, out, "cannot start from a linear head")


def test_val_weights_from_without_val_is_a_library_error(digits):
    train = read_features(digits / "train.safetensors", require_labels=True)
    from dlsa_cli.errors import InputError

    with pytest.raises(InputError, match="--val-weights-from needs --val"):
        fit_classifier(train, None, TrainConfig(epochs=1), val_weights_from=digits / "val.safetensors")


def test_fit_classifier_help_lists_every_documented_input_and_the_new_options():
    r = invoke("fit-classifier", "--help")
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if "--input " in ln)
    for value in ("features", "latent", "none"):  # the values the README's table documents
        assert value in line, line
    for opt in ("--experts", "--expert-hidden", "--m2m-from", "--ride-diversity", "--m2m-start", "--m2m-every", "m2m (major"):
        assert opt in r.stdout, opt


def test_branch_rules_hold_for_library_callers(digits):
    """The rules the CLI used to apply itself now come from the library, so fit_classifier callers get them."""
    from dlsa_cli.errors import InputError
    from dlsa_cli.io.features import FeatureSet

    train = read_features(digits / "train.safetensors", require_labels=True)
    rest = FeatureSet(features=train.features, labels=train.labels, ids=train.ids, meta={**train.meta, "part": "rest"})
    with pytest.raises(InputError, match=r"rest of a split.*--init BASELINE"):
        fit_classifier(rest, None, TrainConfig(epochs=1))
    with pytest.raises(InputError, match="--init and --from-scratch exclude each other"):
        fit_classifier(train, None, TrainConfig(epochs=1), init=digits / "x.safetensors", from_scratch=True)
    clf, _ = fit_classifier(rest, None, TrainConfig(epochs=1), from_scratch=True)
    assert clf.kind == "linear"


def test_m2m_schedule_rounds():
    from dlsa_cli.classify.train import _m2m_round

    rounds = lambda start, every: [e for e in range(1, 11) if _m2m_round(e, start, every)]
    assert rounds(1, 0) == [1] and rounds(6, 0) == [6]
    assert rounds(1, 5) == [1, 6] and rounds(3, 2) == [3, 5, 7, 9]


@pytest.mark.parametrize("opts", [["--model", "ride", "--experts", "3", "--ride-diversity", "0.05"],
                                  ["--sampler", "m2m", "--loss", "ce", "--m2m-steps", "3", "--m2m-warmup", "2"]])
def test_fit_cascade_runs_ride_and_m2m_classifiers(digits, tmp_path, opts):
    """fit-cascade passes RIDE's and M2M's own options on to every classifier of the cascade."""
    run = tmp_path / "run"
    ok("fit-cascade", digits / "train.safetensors", "--val", digits / "val.safetensors", "-o", run, "--depth", "1",
       "--clusters", "6", "--filter-epochs", "3", "--filter-batch-size", "64", "--filter-lr", "0.01", "--hidden", "32",
       "--max-cluster-share", "0.9", "--epochs", "4", *opts, *CPU)
    cas = Cascade.load(run)
    for clf in (Classifier.load(run / "baseline.safetensors"), *cas.classifiers, cas.final):
        if opts[1] == "ride":
            assert clf.base_kind == "ride" and clf.meta["experts"] == 3
            assert clf.meta["hyper"]["ride_diversity"] == 0.05
        else:
            assert clf.meta["sampler"] == "m2m" and clf.meta["m2m"]["rounds"]
            assert clf.meta["hyper"]["m2m_steps"] == 3 and clf.meta["hyper"]["m2m_warmup"] == 2
    assert cas.classifiers[0].kind == "cluster-aided"
    r = ok("predict", run, digits / "test.safetensors", "-o", tmp_path / "pred.parquet", "--json", *CPU)
    assert json.loads(r.stdout)["model"] == "cascade"
