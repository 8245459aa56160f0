"""`dlsa evaluate` through the real CLI, on real Caltech-101-LT labels and simple classifiers' predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import invoke
from test_metrics import real_predictions

from dlsa_cli.io.features import write_features
from dlsa_cli.io.files import write_table


@pytest.fixture(scope="module")
def files(caltech_lt, tmp_path_factory):
    """train.safetensors, test.safetensors and two predictions tables (one with cascade routes)."""
    d = tmp_path_factory.mktemp("evaluate")
    s = caltech_lt
    write_features(d / "train.safetensors", s.train)
    write_features(d / "test.safetensors", s.test)
    preds = real_predictions(s)
    y = s.test.labels
    write_table(d / "ncm.parquet", {"id": s.test.ids, "label": y, "prediction": preds["ncm"]}, kind="predictions")
    # A cascade-shaped table: routes by a fixed rule, so per-route numbers can be checked by hand.
    counts = np.bincount(s.train.labels, minlength=101)
    route = np.where(counts[y] <= 50, "cluster@1", "regular")
    route[::7] = "cluster@2"
    depth = np.where(route == "cluster@2", 2, 1).astype(np.int32)
    branch = np.where(route == "regular", "regular", "cluster")
    write_table(
        d / "nn1.parquet",
        {"id": s.test.ids, "label": y, "prediction": preds["1nn"], "route": route, "depth": depth, "branch": branch},
        kind="predictions",
        meta={"num_classes": 101, "train_counts": counts.tolist()},
    )
    write_table(d / "nolabel.parquet", {"id": s.test.ids, "prediction": preds["ncm"]}, kind="predictions")
    return d, y, preds, counts, route


def _one_line_error(r, *needles):
    assert r.returncode != 0, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0, r.stderr
    for n in needles:
        assert n in r.stderr, r.stderr
    assert r.stdout == ""


def test_json_two_files_side_by_side(files):
    from sklearn.metrics import matthews_corrcoef, normalized_mutual_info_score

    d, y, preds, counts, route = files
    a, b = str(d / "ncm.parquet"), str(d / "nn1.parquet")
    r = invoke("evaluate", a, b, "--train", str(d / "train.safetensors"), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert list(out) == [a, b]  # keyed by the paths exactly as given
    for key, name in ((a, "ncm"), (b, "1nn")):
        res, p = out[key], preds[name]
        for k in ("overall", "many", "medium", "few", "mcc", "nmi"):
            assert 0.0 <= res[k] <= 1.0
        assert res["overall"] == pytest.approx(np.mean(p == y))
        assert res["mcc"] == pytest.approx(matthews_corrcoef(y, p), abs=1e-12)
        assert res["nmi"] == pytest.approx(normalized_mutual_info_score(y, p), abs=1e-12)
        few = [np.mean(p[y == k] == k) for k in np.flatnonzero(counts < 20)]
        assert res["few"] == pytest.approx(np.mean(few), abs=1e-12)
        assert res["samples"] == len(y)
    assert out[a]["routes"] == {} and out[a]["separation"] is None
    routes = out[b]["routes"]
    assert list(routes) == ["cluster@1", "cluster@2", "regular"]
    assert routes["cluster@1"]["separation"] == pytest.approx(1.0)  # routed by the tail rule itself
    m2 = route == "cluster@2"
    assert routes["cluster@2"]["samples"] == int(m2.sum()) and routes["cluster@2"]["depth"] == 2
    assert routes["cluster@2"]["separation"] == pytest.approx(np.mean(counts[y[m2]] <= 50))
    assert routes["regular"]["overall"] == pytest.approx(np.mean(preds["1nn"][route == "regular"] == y[route == "regular"]))


def test_table_shows_differences_and_routes(files):
    d, y, preds, _counts, _route = files
    r = invoke("evaluate", str(d / "ncm.parquet"), str(d / "nn1.parquet"), "--train", str(d / "train.safetensors"))
    assert r.returncode == 0, r.stderr
    diff = 100 * (np.mean(preds["1nn"] == y) - np.mean(preds["ncm"] == y))
    assert "Δ nn1.parquet" in r.stdout
    assert f"{diff:+.2f}" in r.stdout
    assert "cluster@2" in r.stdout and "MCC" in r.stdout and "NMI" in r.stdout


def test_counts_file_and_recorded_counts_give_the_same_numbers(files, tmp_path):
    d, _y, _preds, counts, _route = files
    counts_json = tmp_path / "counts.json"
    counts_json.write_text(json.dumps(counts.tolist()))
    p = str(d / "nn1.parquet")
    with_feats = json.loads(invoke("evaluate", p, "--train", str(d / "train.safetensors"), "--json").stdout)[p]
    with_json = json.loads(invoke("evaluate", p, "--train", str(counts_json), "--json").stdout)[p]
    recorded = json.loads(invoke("evaluate", p, "--json").stdout)[p]  # train_counts in the table's metadata
    assert with_feats == with_json == recorded


def test_empty_group_is_null_and_na(files):
    d, *_ = files
    p = str(d / "ncm.parquet")
    args = ("evaluate", p, "--train", str(d / "train.safetensors"), "--many-above", "1000")
    res = json.loads(invoke(*args, "--json").stdout)[p]
    assert res["many"] is None and res["classes"]["many"] == 0
    table = invoke(*args)
    assert table.returncode == 0
    many_row = next(line for line in table.stdout.splitlines() if "many" in line)
    assert "n/a" in many_row


def test_per_class_and_labels_join(files):
    d, y, preds, _counts, _route = files
    p = str(d / "nolabel.parquet")
    r = invoke("evaluate", p, "--train", str(d / "train.safetensors"), "--labels", str(d / "test.safetensors"), "--json", "--per-class")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)[p]
    assert res["overall"] == pytest.approx(np.mean(preds["ncm"] == y))
    assert len(res["per_class"]) == 101
    assert sum(e["samples"] for e in res["per_class"]) == len(y)
    assert sum(e["correct"] for e in res["per_class"]) == int(np.sum(preds["ncm"] == y))


def test_plot_writes_a_png_with_one_panel_per_file(files, tmp_path):
    from PIL import Image

    d, *_ = files
    out = tmp_path / "fig1.png"
    r = invoke("evaluate", str(d / "ncm.parquet"), str(d / "nn1.parquet"), "--train", str(d / "train.safetensors"), "--plot", str(out), "--bins", "10")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out) as im:
        w, h = im.size
    assert w > 1.5 * h  # two panels side by side
    assert [p.name for p in tmp_path.iterdir()] == ["fig1.png"]  # no temporary file left
    assert f"plot -> {out}" in r.stderr  # says where the picture went, even when stderr is not a terminal


def test_plot_without_matplotlib_says_how_to_install(files, tmp_path):
    import os
    import subprocess
    import sys

    d, *_ = files
    fake = tmp_path / "fake"
    (fake / "matplotlib").mkdir(parents=True)
    (fake / "matplotlib" / "__init__.py").write_text("raise ImportError('no matplotlib here')\n")
    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=f"{fake}{os.pathsep}{repo}")
    out = tmp_path / "fig.png"
    r = subprocess.run(
        [sys.executable, "-m", "dlsa_cli", "evaluate", str(d / "ncm.parquet"), "--train", str(d / "train.safetensors"), "--plot", str(out)],
        capture_output=True, text=True, env=env,
    )
    _one_line_error(r, "pip install 'dlsa-cli[plot]'")
    assert not out.exists()


def _bad_cases(d: Path, tmp: Path) -> dict[str, tuple[list[str], list[str]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    train = str(d / "train.safetensors")
    pq.write_table(pa.table({"label": [1, 2], "pred": [1, 2]}), tmp / "nopred.parquet")
    pq.write_table(pa.table({"label": pa.array([], pa.int64()), "prediction": pa.array([], pa.int64())}), tmp / "empty.parquet")
    pq.write_table(pa.table({"label": [1, 200], "prediction": [1, 2]}), tmp / "outside.parquet")
    pq.write_table(pa.table({"id": ["nope/0.jpg", "nope/1.jpg"], "prediction": [1, 2]}), tmp / "strangers.parquet")
    (tmp / "counts.json").write_text("[3, -1]")
    (tmp / "pred.csv").write_text("label,prediction\n1,1\n")
    return {
        "missing file": ([str(tmp / "none.parquet"), "--train", train], ["none.parquet", "does not exist"]),
        "missing train": ([str(d / "ncm.parquet"), "--train", str(tmp / "none.safetensors")], ["none.safetensors", "does not exist"]),
        "no prediction column": ([str(tmp / "nopred.parquet"), "--train", train], ["nopred.parquet", "no 'prediction' column"]),
        "no label column": ([str(d / "nolabel.parquet"), "--train", train], ["nolabel.parquet", "no 'label' column", "--labels"]),
        "empty file": ([str(tmp / "empty.parquet"), "--train", train], ["empty.parquet", "has no rows"]),
        "label outside train classes": ([str(tmp / "outside.parquet"), "--train", train], ["outside.parquet", "label 200 is outside the 101 classes"]),
        "ids absent from labels": (
            [str(tmp / "strangers.parquet"), "--train", train, "--labels", str(d / "test.safetensors")],
            ["strangers.parquet", "2 of 2 predicted ids are absent from the labels", "nope/0.jpg"],
        ),
        "bad counts file": ([str(d / "ncm.parquet"), "--train", str(tmp / "counts.json")], ["counts.json", "JSON list of per-class training counts"]),
        "not parquet": ([str(tmp / "pred.csv"), "--train", train], ["pred.csv", "must be Parquet"]),
        "no recorded counts": ([str(d / "ncm.parquet")], ["ncm.parquet", "--train"]),
        "plot folder missing": ([str(d / "ncm.parquet"), "--train", train, "--plot", str(tmp / "no" / "f.png")], ["folder does not exist"]),
        "plot format": ([str(d / "ncm.parquet"), "--train", train, "--plot", str(tmp / "f.gif")], ["'.gif' is not supported"]),
    }


CASES = [
    "missing file", "missing train", "no prediction column", "no label column", "empty file",
    "label outside train classes", "ids absent from labels", "bad counts file", "not parquet",
    "no recorded counts", "plot folder missing", "plot format",
]


@pytest.fixture(scope="module")
def bad(files, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad-evaluate")
    return tmp, _bad_cases(files[0], tmp)


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_leaves_no_plot(bad, case):
    tmp, cases = bad
    args, needles = cases[case]
    plot = tmp / f"{case.replace(' ', '_')}.png"
    if "--plot" not in args:
        args = [*args, "--plot", str(plot)]
    before = set(tmp.iterdir())
    r = invoke("evaluate", *args)
    _one_line_error(r, *needles)
    assert set(tmp.iterdir()) == before  # no plot, no temporary file


def test_evaluate_streams_in_batches_with_the_same_metrics(files, monkeypatch):
    """Read 37 rows at a time, every metric (routes, per class, Fig. 1 counts) equals the whole-array one."""
    from dlsa_cli.evaluation import evaluate_files, evaluate_predictions, report
    from dlsa_cli.evaluation.metrics import binned_confusion
    from dlsa_cli.evaluation.tally import Tally
    from dlsa_cli.io.files import read_table

    d, y, preds, counts, route = files
    whole = read_table(d / "nn1.parquet")[0].to_pydict()
    want = evaluate_predictions(
        y, preds["1nn"], counts, routes=np.array(whole["route"]), depths=np.array(whole["depth"]),
        branches=np.array(whole["branch"]), per_class=True,
    )
    monkeypatch.setattr(report, "PREDICTION_BATCH", 37)
    assert len(y) > 3 * 37  # several batches, the last one short
    got = evaluate_files([str(d / "nn1.parquet")], str(d / "train.safetensors"), per_class=True).tables[str(d / "nn1.parquet")]
    assert got == want
    tally = report._tally_file(str(d / "nn1.parquet"), counts, "train", None, 50, 5)
    assert np.array_equal(tally.confusion, binned_confusion(y, preds["1nn"], counts, 5))
    assert tally.cells.size <= len(y)  # the NMI counts: non-zero cells only
    # Adding in pieces equals adding at once, route separation included.
    parts = Tally(counts)
    for a in range(0, len(y), 50):
        parts.add(y[a : a + 50], preds["1nn"][a : a + 50], routes=route[a : a + 50])
    assert parts.metrics() == Tally(counts).add(y, preds["1nn"], routes=route).metrics()


def test_evaluate_finds_a_repeated_id_across_batches(files, tmp_path, monkeypatch):
    """With --labels, an id repeated 100 rows later (another batch) is found and counted."""
    from dlsa_cli.evaluation import report

    d, _y, preds, _, _ = files
    from dlsa_cli.io.features import read_features

    ids = read_features(d / "test.safetensors").ids.astype(str).copy()
    ids[100] = ids[0]
    write_table(tmp_path / "rep.parquet", {"id": ids, "prediction": preds["ncm"]}, kind="predictions")
    monkeypatch.setattr(report, "PREDICTION_BATCH", 37)
    with pytest.raises(report.InputError, match=r"1 rows repeat an id \(first: "):
        report.evaluate_files([str(tmp_path / "rep.parquet")], str(d / "train.safetensors"), labels=str(d / "test.safetensors"))


def test_labels_join_string_ids_to_int_ids_in_string_order(tmp_path, monkeypatch):
    """Int ids in the labels file, the same ids as strings in the table: "10" sorts before "2", and every batch still finds its labels."""
    from dlsa_cli.evaluation import evaluate_files, report
    from dlsa_cli.io.features import FeatureSet

    write_features(tmp_path / "l.safetensors", FeatureSet(np.zeros((5, 2), np.float32), np.arange(5), np.array([2, 10, 33, 100, 7])))
    write_table(tmp_path / "p.parquet", {"id": np.array(["100", "2", "7", "10", "33"]), "prediction": np.array([3, 0, 4, 1, 0])},
                kind="predictions")
    args = ([str(tmp_path / "p.parquet")], str(tmp_path / "l.safetensors"))
    for batch in (65_536, 2):
        monkeypatch.setattr(report, "PREDICTION_BATCH", batch)
        res = evaluate_files(*args, labels=str(tmp_path / "l.safetensors"), per_class=True).tables[args[0][0]]
        assert res.overall == pytest.approx(0.8)  # id 33 (class 2) predicted 0, the other four right
        assert [c.correct for c in res.per_class] == [1, 1, 0, 1, 1]
