"""`dlsa fit-filter` and `dlsa split` end to end on real data, and their bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_clean_failure, invoke

from dlsa_cli.io.features import FeatureSet, read_features, write_features
from dlsa_cli.io.files import read_safetensors, read_table

FAST = ["-k", "8", "--epochs", "2", "--batch-size", "64", "--hidden", "32", "--max-cluster-share", "0.9", "--device", "cpu"]


@pytest.fixture(scope="module")
def fitted(digits, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fit") / "filter.safetensors"
    r = invoke("fit-filter", digits / "train.safetensors", "-o", out, *FAST, "--json")
    assert r.returncode == 0, r.stderr
    return out


def test_fit_filter_json_summary_and_file(fitted, digits):
    _, kind, meta, prov = read_safetensors(fitted, ["means"])
    assert kind == "filter"
    assert meta["dim"] == 64 and meta["num_clusters"] == 8 and meta["num_classes"] == 10 and meta["depth"] == 1
    assert meta["hidden"] == 32 and meta["batch_size"] == 64 and meta["lambda_lh"] == 2.0 and meta["q"] == 2.0
    assert len(meta["history"]) == 2 and meta["chosen_epoch"] in (1, 2)
    assert prov["command"] == "fit-filter" and prov["inputs"][0]["sha256"]
    train = read_features(digits / "train.safetensors")
    assert meta["train_counts"] == np.bincount(train.labels).tolist()


def test_fit_filter_table_reports_clusters_and_chosen_epoch(digits, tmp_path):
    r = invoke("fit-filter", digits / "train.safetensors", "-o", tmp_path / "f.safetensors", *FAST, "--epochs", "1")
    assert r.returncode == 0, r.stderr
    for text in ("chosen epoch", "cluster sizes", "purity", "good clusters", "threshold", "empty"):
        assert text in r.stdout


def test_preset_sets_paper_values_and_options_override(digits, tmp_path):
    out = tmp_path / "p.safetensors"
    args = ["-k", "4", "--epochs", "1", "--hidden", "16", "--max-cluster-share", "1", "--device", "cpu", "--json"]
    r = invoke("fit-filter", digits / "train.safetensors", "-o", out, "--preset", "places-lt", "--batch-size", "100", *args)
    assert r.returncode == 0, r.stderr
    cfg = json.loads(r.stdout)["config"]
    assert (cfg["lambda_lh"], cfg["lambda_bal"], cfg["lambda_pure"]) == (1.0, 2.0, 0.03)
    assert cfg["batch_size"] == 100 and cfg["epochs"] == 1 and cfg["clusters"] == 4


def test_split_end_to_end_and_chaining(fitted, digits, tmp_path):
    out = tmp_path / "split1"
    r = invoke("split", fitted, digits / "train.safetensors", digits / "test.safetensors", "-o", out, "--latent", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "head-tail separation accuracy" in r.stdout and "routed" in r.stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        ["split.json"] + [f"{n}{s}" for n in ("train", "test") for s in (".parquet", ".routed.safetensors", ".rest.safetensors")]
    )
    train = read_features(digits / "train.safetensors")
    table, kind, _meta, _ = read_table(out / "train.parquet")
    assert kind == "split" and table.num_rows == train.n
    assert table.column_names == ["id", "label", "cluster", "log_likelihood", "routed", "depth"]
    assert table.column("id").to_pylist() == list(train.ids)
    routed = table.column("routed").to_numpy()
    assert abs(int(routed.sum()) - 0.3 * train.n) <= 1  # the train routed share is the option's
    assert set(table.column("depth").to_pylist()) == {1}
    # routed / rest files are feature files whose ids trace back to the table
    parts = {p: read_features(out / f"train.{p}.safetensors") for p in ("routed", "rest")}
    assert parts["routed"].n == routed.sum() and parts["rest"].n == train.n - routed.sum()
    ids = np.array(table.column("id").to_pylist())
    assert list(parts["routed"].ids) == list(ids[routed])
    row = {i: k for k, i in enumerate(train.ids)}
    k = row[parts["routed"].ids[0]]
    assert np.array_equal(parts["routed"].features[0], train.features[k])
    tens, _, pmeta, _ = read_safetensors(out / "train.routed.safetensors")
    assert tens["latent"].shape == (parts["routed"].n, 64) and tens["cluster"].dtype == torch.int64
    assert np.allclose(tens["log_likelihood"].numpy(), table.column("log_likelihood").to_numpy()[routed])
    assert pmeta["depth"] == 1 and pmeta["part"] == "routed" and pmeta["num_classes"] == 10
    assert pmeta["train_counts"] == np.bincount(train.labels).tolist() and pmeta["class_names"][0] == "0"
    rep = json.loads((out / "split.json").read_text())
    t = rep["files"]["train"]
    tail = np.bincount(train.labels) <= 50
    assert t["routed"] == routed.sum()
    assert np.isclose(t["separation"], tail[table.column("label").to_numpy()[routed]].mean())
    # chaining: the rest file trains the next depth, which records depth 2
    f2 = tmp_path / "filter2.safetensors"
    r = invoke("fit-filter", out / "train.rest.safetensors", "-o", f2, *FAST, "--batch-size", "32", "--json")
    assert r.returncode == 0, r.stderr
    _, _, m2, _ = read_safetensors(f2, ["means"])
    assert m2["depth"] == 2 and m2["train_counts"] == pmeta["train_counts"] and m2["num_classes"] == 10
    r = invoke("split", f2, out / "test.rest.safetensors", "-o", tmp_path / "split2", "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    rep2 = json.loads(r.stdout)
    assert rep2["depth"] == 2 and rep2["files"]["test.rest"]["samples"] == rep["files"]["test"]["rest"]
    tab2, _, _, _ = read_table(tmp_path / "split2" / "test.rest.parquet")
    assert set(tab2.column("depth").to_pylist()) == {2}


def test_split_without_labels_or_ids_uses_row_index(fitted, digits, tmp_path):
    train = read_features(digits / "val.safetensors")
    np.save(tmp_path / "bare.npy", train.features)
    r = invoke("split", fitted, tmp_path / "bare.npy", "-o", tmp_path / "s", "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    table, _, _, _ = read_table(tmp_path / "s" / "bare.parquet")
    assert table.column_names == ["id", "cluster", "log_likelihood", "routed", "depth"]
    assert table.column("id").to_pylist() == list(range(train.n))
    assert json.loads(r.stdout)["files"]["bare"]["has_labels"] is False


def test_inspect_filter_and_split(fitted, digits, tmp_path):
    from dlsa_cli.flow import split_summary, summary

    s = summary(fitted)
    assert s["kind"] == "filter" and s["fields"]["clusters"] == 8
    assert {t["title"] for t in s["tables"]} >= {"hyperparameters", "history"}
    sizes = next(c for c in s["charts"] if c["title"].startswith("cluster sizes"))
    assert len(sizes["values"]) == 8 and sum(sizes["values"]) == read_features(digits / "train.safetensors").n
    r = invoke("split", fitted, digits / "val.safetensors", "-o", tmp_path / "s", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    ss = split_summary(tmp_path / "s" / "val.parquet")
    assert ss["kind"] == "split" and ss["fields"]["rows"] == read_features(digits / "val.safetensors").n
    r = invoke("inspect", fitted, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["kind"] == "filter"
    r = invoke("inspect", tmp_path / "s" / "val.parquet", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["fields"]["routed"] >= 0


def test_same_seed_same_filter_through_the_cli(digits, tmp_path):
    outs = []
    for name in ("a", "b"):
        out = tmp_path / f"{name}.safetensors"
        r = invoke("fit-filter", digits / "train.safetensors", "-o", out, *FAST, "--epochs", "1", "--seed", "3", "--quiet")
        assert r.returncode == 0, r.stderr
        outs.append(read_safetensors(out)[0])
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])


# --------------------------------------------------------------------------- bad input


def test_split_rejects_features_of_another_dim(fitted, tmp_path):
    write_features(tmp_path / "d5.safetensors", FeatureSet(np.zeros((4, 5), np.float32), np.zeros(4, np.int64)))
    out = tmp_path / "out"
    r = invoke("split", fitted, tmp_path / "d5.safetensors", "-o", out)
    assert_clean_failure(r, out, "expects 64-dim features, got 5-dim")
    assert "d5.safetensors" in r.stderr


def test_split_failure_in_a_later_file_leaves_no_output(fitted, digits, tmp_path):
    bad = FeatureSet(read_features(digits / "val.safetensors").features, np.full(94, 99, np.int64))
    write_features(tmp_path / "badlabels.safetensors", bad)
    out = tmp_path / "out"
    r = invoke("split", fitted, digits / "val.safetensors", tmp_path / "badlabels.safetensors", "-o", out)
    assert_clean_failure(r, out, "out of range")


def test_fit_filter_bad_inputs(digits, tmp_path):
    out = tmp_path / "f.safetensors"
    x = read_features(digits / "train.safetensors")
    write_features(tmp_path / "nolabels.safetensors", FeatureSet(x.features))
    assert_clean_failure(invoke("fit-filter", tmp_path / "nolabels.safetensors", "-o", out, *FAST), out, "no labels")

    y = x.labels.copy()
    y[np.flatnonzero(y == 9)[1:]] = 8  # class 9 keeps a single sample
    write_features(tmp_path / "single.safetensors", FeatureSet(x.features, y))
    r = invoke("fit-filter", tmp_path / "single.safetensors", "-o", out, *FAST)
    assert_clean_failure(r, out, "class 9 has a single training sample")
    assert "--allow-singletons" in r.stderr

    r = invoke("fit-filter", digits / "train.safetensors", "-o", out, *FAST, "--batch-size", "5000")
    assert_clean_failure(r, out, "fewer than the batch size 5000")
    assert "--batch-size" in r.stderr

    r = invoke("fit-filter", digits / "train.safetensors", "-o", out, *FAST, "--lr", "1e6")
    assert_clean_failure(r, out, "epoch 1")
    assert "lower --lr" in r.stderr

    r = invoke("fit-filter", digits / "train.safetensors", "-o", out, *FAST, "--preset", "cifar")
    assert_clean_failure(r, out, "unknown preset")

    r = invoke("fit-filter", digits / "train.safetensors", "-o", tmp_path / "missing" / "f.safetensors", *FAST)
    assert r.returncode != 0 and "does not exist" in r.stderr


def test_split_rejects_a_non_filter(digits, tmp_path):
    out = tmp_path / "out"
    r = invoke("split", digits / "val.safetensors", digits / "val.safetensors", "-o", out)
    assert_clean_failure(r, out, "not a filter")


# --------------------------------------------------------------------------- real long-tailed data


@pytest.mark.slow
def test_caltech_routed_set_is_richer_in_tail_than_the_whole_set(caltech_lt, tmp_path):
    """Caltech-101-LT training features (real 1280-D), small K, few epochs, on CPU.

    q = 1 (the paper's range is 1 to 2) and --select last: with so few SGD
    steps the good-cluster count is 0 to 3 in every epoch, so the paper's
    epoch rule picks nearly at random; the routed tail share grows with training.
    """
    train = tmp_path / "train.safetensors"
    write_features(train, caltech_lt.train)
    flt = tmp_path / "filter.safetensors"
    r = invoke(
        "fit-filter", train, "-o", flt, "-k", "50", "--epochs", "8", "--batch-size", "128", "--hidden", "128",
        "--q", "1", "--select", "last", "--device", "cpu", "--quiet",
    )
    assert r.returncode == 0, r.stderr
    out = tmp_path / "split"
    r = invoke("split", flt, train, "-o", out, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "head-tail separation accuracy" in r.stdout
    rep = json.loads((out / "split.json").read_text())["files"]["train"]
    whole, routed = rep["tail_share"]["all"], rep["separation"]
    assert abs(whole - 0.367) < 0.01  # 1,612 of 4,393 training samples are in classes of <= 50
    assert routed > whole + 0.05, (routed, whole)
    assert rep["tail_share"]["rest"] < whole
    few_routed = rep["groups"]["routed"]["few"] / rep["routed"]
    few_all = rep["groups"]["all"]["few"] / rep["samples"]
    assert few_routed > few_all
