"""`dlsa inspect`: feature files of every format, predictions, counts, and the generic fallback."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import PROFILES, invoke

from dlsa_cli import inspect as inspection
from dlsa_cli.evaluation.metrics import shot_groups
from dlsa_cli.inspect import kinds
from dlsa_cli.io.features import FeatureSet, write_features
from dlsa_cli.io.files import write_safetensors, write_table


@pytest.fixture(scope="module")
def caltech_train(caltech_lt, tmp_path_factory):
    d = tmp_path_factory.mktemp("inspect")
    p = d / "train.safetensors"
    write_features(p, caltech_lt.train, meta={"class_names": caltech_lt.class_names}, prov={"command": "make-dataset", "created": "2026-11-27T00:00:00+00:00", "dlsa_cli": "0.1.0"})
    return p, caltech_lt.train, caltech_lt.class_names


def test_feature_file_shows_n_d_classes_and_groups(caltech_train):
    p, fs, names = caltech_train
    counts = np.bincount(fs.labels, minlength=101)
    groups = shot_groups(counts)
    r = invoke("inspect", str(p), "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    f = s["fields"]
    assert s["kind"] == "features"
    assert (f["samples (N)"], f["dimensions (D)"], f["classes"], f["dtype"]) == (fs.n, 1280, 101, "float16")
    assert f["many-shot classes"] == int((groups == "many").sum())
    assert f["medium-shot classes"] == int((groups == "medium").sum())
    assert f["few-shot classes"] == int((groups == "few").sum())
    assert f["max count"] == counts.max() and f["min count"] == counts.min()
    assert f["imbalance (max / min)"] == pytest.approx(counts.max() / counts.min())
    assert f["non-finite rows"] == 0 and f["ids"] == "str"
    assert f["made by"] == "dlsa make-dataset"
    chart = s["charts"][0]
    assert chart["values"] == sorted(counts.astype(float).tolist(), reverse=True)
    largest = s["tables"][1]["rows"][0]
    assert largest[1] == names[counts.argmax()] and largest[2] == counts.max()

    text = invoke("inspect", str(p))
    assert text.returncode == 0, text.stderr
    for needle in (str(fs.n), "1280", "many-shot classes", "few-shot classes", "float16", "▁"):
        assert needle in text.stdout


@pytest.mark.parametrize("ext", [".npz", ".h5", ".parquet"])
def test_other_formats_summarise_the_same(tmp_path, ext):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((150, 6)).astype(np.float32)
    y = np.repeat([0, 1, 2], [120, 25, 5])
    p = tmp_path / f"f{ext}"
    if ext == ".npz":
        np.savez(p, features=x, labels=y)
    elif ext == ".h5":
        import h5py

        with h5py.File(p, "w") as f:
            f["features"] = x
            f["label"] = y
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"label": y} | {f"d{j}": x[:, j] for j in range(6)}), p)
    s = inspection.summarize(p)
    f = s["fields"]
    assert (f["samples (N)"], f["dimensions (D)"], f["classes"]) == (150, 6, 3)
    assert (f["many-shot classes"], f["medium-shot classes"], f["few-shot classes"]) == (1, 1, 1)
    assert f["imbalance (max / min)"] == pytest.approx(24.0)
    assert f["made by"].startswith("another tool")


def test_predictions_summary(tmp_path):
    y = np.array([0, 1, 1, 2, 2, 2])
    p = np.array([0, 1, 0, 2, 2, 1])
    route = np.array(["cluster@1", "cluster@1", "regular", "regular", "regular", "cluster@1"])
    path = tmp_path / "pred.parquet"
    write_table(path, {"id": np.arange(6), "label": y, "prediction": p, "route": route}, kind="predictions", meta={"num_classes": 3})
    r = invoke("inspect", str(path), "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["kind"] == "predictions"
    assert s["fields"]["rows"] == 6 and s["fields"]["accuracy"] == pytest.approx(4 / 6)
    routes = {row[0]: row for row in s["tables"][0]["rows"]}
    assert routes["cluster@1"][1] == 3 and routes["cluster@1"][3] == pytest.approx(2 / 3)
    assert routes["regular"][3] == pytest.approx(2 / 3)


def test_counts_profile_of_the_real_benchmarks():
    path = PROFILES / "places_lt_train_counts.json"
    if not path.exists():
        pytest.skip(f"profiles not found at {PROFILES}")
    r = invoke("inspect", str(path), "--json")
    assert r.returncode == 0, r.stderr
    f = json.loads(r.stdout)["fields"]
    assert (f["classes"], f["samples"], f["max count"], f["min count"]) == (365, 62500, 4980, 5)
    assert (f["many-shot classes"], f["medium-shot classes"], f["few-shot classes"]) == (131, 163, 71)


def test_generic_fallback_for_unknown_kinds_and_missing_summaries(tmp_path, monkeypatch):
    path = tmp_path / "weights.safetensors"
    write_safetensors(path, {"w": np.zeros((3, 4), np.float32), "b": np.zeros(4, np.float32)}, kind="mystery", meta={"lr": 0.1, "history": [1, 2]})
    s = inspection.summarize(path)
    assert s["kind"] == "mystery"
    assert sorted(s["tables"][0]["rows"]) == [["b", "F32", "4"], ["w", "F32", "3x4"]]
    assert s["fields"]["meta: lr"] == 0.1 and s["fields"]["meta: history"] == "list of 2"
    # a registered kind whose summary function is not there (yet) falls back too
    monkeypatch.setitem(inspection.REGISTRY, "mystery", "dlsa_cli.not_a_module:summary")
    assert inspection.summarize(path)["tables"][0]["title"] == "tensors"
    monkeypatch.setitem(inspection.REGISTRY, "mystery", "dlsa_cli.inspect.features:no_such_function")
    assert inspection.summarize(path)["tables"][0]["title"] == "tensors"
    r = invoke("inspect", str(path))
    assert r.returncode == 0 and "3x4" in r.stdout


def test_registry_names_every_kind_of_the_pipeline():
    for kind in ("features", "filter", "split", "classifier", "cascade", "predictions"):
        module, _, fn = inspection.REGISTRY[kind].partition(":")
        assert module.startswith("dlsa_cli.") and fn


def test_renderer_draws_every_part():
    from rich.console import Console

    summary = {
        "kind": "demo",
        "path": "x",
        "fields": {"a": 1.23456789, "b": None},
        "tables": [{"title": "t", "columns": ["c1", "c2"], "rows": [[1, "two"]]}],
        "charts": [
            {"title": "long", "values": list(range(100, 0, -1)), "labels": None},
            {"title": "short", "values": [3.0, 1.0], "labels": ["p", "q"]},
        ],
        "problems": ["bad rows"],
    }
    con = Console(record=True, width=120)
    con.print(inspection.render(summary))
    out = con.export_text()
    for needle in ("1.235", "n/a", "two", "problem: bad rows", "100 values, 1..100", "p ", "█"):
        assert needle in out
    line = inspection.sparkline(list(range(100, 0, -1)))
    assert len(line) == 48 and line[0] == "█" and line[-1] == "▁"


def test_feature_file_without_labels(tmp_path):
    p = tmp_path / "x.npy"
    np.save(p, np.ones((4, 3), np.float32))
    s = inspection.summarize(p)
    assert s["fields"]["labels"] == "no" and "classes" not in s["fields"]


def test_unlabelled_canonical_file_has_no_profile(tmp_path):
    p = tmp_path / "u.safetensors"
    write_features(p, FeatureSet(np.ones((4, 3), np.float32)))
    s = inspection.summarize(p)
    assert s["fields"]["samples (N)"] == 4 and s["tables"] == []


def test_a_folder_is_a_cascade_or_a_clear_error(tmp_path, monkeypatch):
    from dlsa_cli.errors import InputError

    monkeypatch.setitem(inspection.REGISTRY, "cascade", "dlsa_cli.not_a_module:summary")
    with pytest.raises(InputError, match="is a folder"):
        inspection.summarize(tmp_path)
    seen = []
    monkeypatch.setattr(kinds, "resolve", lambda kind: (lambda p: seen.append((kind, p)) or {"kind": kind}))
    assert inspection.summarize(tmp_path) == {"kind": "cascade"} and seen == [("cascade", tmp_path)]
