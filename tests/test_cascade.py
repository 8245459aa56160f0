"""The cascade: manifest, routes, predictions through it, and files that do not belong together."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import assert_clean_failure, invoke

from dlsa_cli.cascade import Cascade, read_manifest, write_manifest
from dlsa_cli.datasets import digits_lt
from dlsa_cli.flow import FlowFilter
from dlsa_cli.io.features import read_features, write_features
from dlsa_cli.io.files import read_table

FILTER = ["-k", "8", "--epochs", "3", "--batch-size", "64", "--hidden", "32", "--lr", "0.01",
          "--max-cluster-share", "0.9", "--device", "cpu", "--quiet"]
CLF = ["--epochs", "10", "--device", "cpu", "--quiet"]


def ok(*args) -> SimpleNamespace:
    r = invoke(*args)
    assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def cascade(digits) -> SimpleNamespace:
    """A real two-depth cascade on digits-LT, built with the CLI as the recipe does, beside the data."""
    d = digits
    ok("fit-classifier", d / "train.safetensors", "--val", d / "val.safetensors", "-o", d / "baseline.safetensors", *CLF)
    cur = {"train": d / "train.safetensors", "val": d / "val.safetensors", "test": d / "test.safetensors"}
    depths = []
    for k in (1, 2):
        dk = d / f"depth{k}"
        dk.mkdir()
        ok("fit-filter", cur["train"], "-o", dk / "filter.safetensors", "--depth", k, *FILTER)
        ok("split", dk / "filter.safetensors", *cur.values(), "-o", dk, "--quiet")
        stem = {n: p.name[: -len(".safetensors")] for n, p in cur.items()}
        ok("fit-classifier", dk / f"{stem['train']}.routed.safetensors", "--val", dk / f"{stem['val']}.routed.safetensors",
           "--allow-missing-val-classes", "--filter", dk / "filter.safetensors", "--init", d / "baseline.safetensors",
           "-o", dk / "cluster.safetensors", *CLF)
        depths.append((dk / "filter.safetensors", dk / "cluster.safetensors"))
        cur = {n: dk / f"{stem[n]}.rest.safetensors" for n in cur}
    ok("fit-classifier", cur["train"], "--val", cur["val"], "--allow-missing-val-classes", "--init",
       d / "baseline.safetensors", "-o", d / "final.safetensors", *CLF)
    write_manifest(d, depths, d / "final.safetensors")
    return SimpleNamespace(dir=d, depths=depths, final=d / "final.safetensors")


def test_manifest_is_relative_and_round_trips(cascade):
    raw = json.loads((cascade.dir / "cascade.json").read_text())
    assert raw["depths"][0] == {"filter": "depth1/filter.safetensors", "classifier": "depth1/cluster.safetensors"}
    assert raw["final"] == "final.safetensors"
    spec = read_manifest(cascade.dir)
    assert spec.filters == [f for f, _ in cascade.depths] and spec.final == cascade.final


def test_routes_are_exhaustive_disjoint_and_follow_the_filters(cascade, tmp_path):
    out = tmp_path / "pred.parquet"
    r = ok("predict", cascade.dir, cascade.dir / "test.safetensors", "-o", out, "--json")
    assert json.loads(r.stdout)["model"] == "cascade"
    table, kind, meta, _ = read_table(out)
    test = read_features(cascade.dir / "test.safetensors")
    assert kind == "predictions" and table.num_rows == test.n
    assert np.array_equal(table.column("id").to_numpy(zero_copy_only=False), test.ids)  # one row per sample, in order
    assert meta["num_classes"] == 10 and len(meta["train_counts"]) == 10
    route = table.column("route").to_numpy(zero_copy_only=False)
    depth = table.column("depth").to_numpy()
    branch = table.column("branch").to_numpy(zero_copy_only=False)
    assert set(route) <= {"cluster@1", "cluster@2", "regular"}

    # recompute the routing from the filters themselves
    f1, f2 = (FlowFilter.load(f) for f, _ in cascade.depths)
    r1 = f1.score(test.features).routed
    r2 = f2.score(test.features).routed & ~r1
    expect = np.where(r1, "cluster@1", np.where(r2, "cluster@2", "regular"))
    assert np.array_equal(route, expect)
    assert r1.any() and (~r1).any()
    assert np.array_equal(depth, np.where(r1, 1, 2))  # regular samples passed both filters: depth 2
    assert np.array_equal(branch, np.where(r1 | r2, "cluster", "regular"))

    # the routed samples are predicted by their depth's classifier, the rest by the final one
    cas = Cascade.load(cascade.dir)
    logits, rd = cas.logits(test.features, batch_size=37)  # batches that cut across routes
    assert np.array_equal(rd, np.where(r1, 1, np.where(r2, 2, 0)))
    assert np.array_equal(table.column("prediction").to_numpy(), logits.argmax(1))
    alone = cas.final.logits(test.features[rd == 0])
    np.testing.assert_allclose(logits[rd == 0], alone, atol=1e-5)


def test_single_classifier_predictions_have_no_route_columns(cascade, tmp_path):
    out = tmp_path / "pred.parquet"
    ok("predict", cascade.dir / "baseline.safetensors", cascade.dir / "test.safetensors", "-o", out, "--topk", "3", "--quiet")
    table, _, _, _ = read_table(out)
    assert table.column_names == ["id", "label", "prediction", "score", "topk_labels", "topk_scores"]
    assert all(len(v) == 3 for v in table.column("topk_labels").to_pylist())
    top = np.array(table.column("topk_scores").to_pylist())
    assert np.all(np.diff(top, axis=1) <= 0) and np.allclose(top[:, 0], table.column("score").to_numpy())


def test_cluster_aided_classifier_alone_needs_its_filter(cascade, tmp_path):
    out = tmp_path / "pred.parquet"
    f1, c1 = cascade.depths[0]
    assert_clean_failure(invoke("predict", c1, cascade.dir / "test.safetensors", "-o", out), out, "--filter")
    ok("predict", c1, cascade.dir / "test.safetensors", "-o", out, "--filter", f1, "--quiet")
    assert read_table(out)[0].num_rows == read_features(cascade.dir / "test.safetensors").n


def _copy_with(cascade, tmp_path: Path, depths, final) -> Path:
    d = tmp_path / "bad"
    d.mkdir()
    write_manifest(d, depths, final)
    return d


def test_cascade_whose_files_do_not_belong_together(cascade, tmp_path):
    (f1, c1), (f2, c2) = cascade.depths
    out = tmp_path / "pred.parquet"
    test = cascade.dir / "test.safetensors"
    # filters swapped: depth order and recorded filter hashes disagree
    bad = _copy_with(cascade, tmp_path, [(f2, c1), (f1, c2)], cascade.final)
    assert_clean_failure(invoke("predict", bad, test, "-o", out, "--allow-outside-paths"), out, "do not belong together")
    # a classifier behind another filter than the one it was trained with (same data, other seed)
    other = tmp_path / "other_filter.safetensors"
    ok("fit-filter", cascade.dir / "train.safetensors", "-o", other, "--seed", "5", *FILTER)
    bad2 = tmp_path / "bad2"
    bad2.mkdir()
    write_manifest(bad2, [(other, c1)], cascade.final)
    assert_clean_failure(invoke("predict", bad2, test, "-o", out, "--allow-outside-paths"), out, "trained with another filter")
    # a regular classifier where a cluster-aided one belongs, and a cluster-aided one as final
    bad3 = tmp_path / "bad3"
    bad3.mkdir()
    write_manifest(bad3, [(f1, cascade.final)], c1)
    assert_clean_failure(invoke("predict", bad3, test, "-o", out, "--allow-outside-paths"), out, "do not belong together")


def test_cascade_from_another_class_set_is_refused(cascade, tmp_path):
    """A final classifier trained on another label set (12 classes) cannot join."""
    s = digits_lt()
    train = s.train
    write_features(tmp_path / "train12.safetensors", train, meta={"class_names": [str(i) for i in range(12)]})
    ok("fit-classifier", tmp_path / "train12.safetensors", "-o", tmp_path / "final12.safetensors", "--epochs", "2", "--device", "cpu", "--quiet")
    d = tmp_path / "c12"
    d.mkdir()
    write_manifest(d, cascade.depths[:1], tmp_path / "final12.safetensors")
    out = tmp_path / "pred.parquet"
    assert_clean_failure(invoke("predict", d, cascade.dir / "test.safetensors", "-o", out, "--allow-outside-paths"), out, "do not belong together")


def test_missing_manifest_entry_is_a_clean_error(cascade, tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "cascade.json").write_text(json.dumps({"depths": [{"filter": "nope.safetensors", "classifier": "x"}], "final": "f"}))
    out = tmp_path / "pred.parquet"
    assert_clean_failure(invoke("predict", d, cascade.dir / "test.safetensors", "-o", out), out, "does not exist")


def test_inspect_summary_of_a_cascade(cascade):
    from dlsa_cli.cascade import summary

    s = summary(cascade.dir)
    assert s["kind"] == "cascade" and s["fields"]["depths"] == 2
    assert s["fields"]["files belong together"] == "yes"
    assert [row[0] for row in s["tables"][0]["rows"]] == [1, 2]
