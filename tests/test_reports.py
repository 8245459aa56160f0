"""Every report has one JSON form: `to_json` then `from_json` gives it back, and the names earlier files used still read."""

from __future__ import annotations

import json

from dlsa_cli.cascade.predict_stream import PredictReport
from dlsa_cli.cascade.summary import (
    CascadeReport,
    ClassifierFit,
    ClassifierStage,
    DepthStage,
    FilterFit,
    RoutedCounts,
)
from dlsa_cli.evaluation.tally import ClassAccuracy, GroupCounts, TableMetrics
from dlsa_cli.flow.summary import EpochRecord, FilterStats


def _clf(epoch: int) -> ClassifierFit:
    return ClassifierFit("linear", "baseline.safetensors", epoch, 3, epoch == 0, 3e-4, 100, 20, "val.safetensors", True,
                         0.5, 0.6, 1.25)


def _cascade() -> CascadeReport:
    depth = DepthStage(1, RoutedCounts(100, 30, 70, 0.6, 0.4), None, FilterFit(None, 2, 3, 4.5, good_clusters=5),
                       _clf(1), 9.0, {"filter": "depth1/filter.safetensors", "val_routed": None}, reused=True)
    return CascadeReport("run", "cascade.json", "train.safetensors", None, 1, "cpu", {"num_depths": 1},
                         {"": {"num_depths": 1}}, ClassifierStage(_clf(2), {"classifier": "baseline.safetensors"}), [depth],
                         ClassifierStage(_clf(0), {"classifier": "final.safetensors"}), False, True, 12.0)


def test_cascade_report_round_trips_through_its_json():
    r = _cascade()
    text = json.dumps(r.to_json())
    assert CascadeReport.from_json(json.loads(text)) == r
    old = {k: v for k, v in json.loads(text).items() if k not in ("num_depths", "settings")}
    old["depth"] = 1  # report.json of a run written before the count was named num_depths, and before settings
    assert CascadeReport.from_json(old).num_depths == 1
    d = json.loads(text)["depths"][0]
    assert d["train"]["separation"] == 0.6 and d["val"] is None and d["filter"]["val_separation"] is None


def test_a_progress_record_of_an_earlier_run_reads():
    """progress.json's stages had no `reused`, and a given filter no good_clusters / val_separation."""
    old = _cascade().depths[0].to_json()
    del old["reused"], old["filter"]["good_clusters"], old["filter"]["val_separation"]
    stage = DepthStage.from_json(old)
    assert stage.reused is False and stage.filter.good_clusters is None and stage.train.separation == 0.6


def test_filter_stats_and_epochs_read_the_earlier_name_of_separation():
    stats = FilterStats.from_json({"purity_above_0.9": 3, "routed_tail_share": 0.7, "tail_share": 0.4, "routed": 9})
    assert stats.purity_above_0_9 == 3 and stats.separation == 0.7 and stats.routed == 9
    assert stats.to_json()["purity_above_0.9"] == 3 and "routed_tail_share" not in stats.to_json()
    assert FilterStats.from_json(stats.to_json()) == stats
    rec = EpochRecord.from_json({"epoch": 2, "good_clusters": 4, "routed_tail_share": 0.5, "future_key": 1})
    assert rec.separation == 0.5 and not rec.has_val
    assert "val_separation" not in rec.to_json() and EpochRecord.from_json(rec.to_json()) == rec
    watched = EpochRecord(1, val_separation=0.8, val_separation_by={"likelihood": 0.8, "cluster-tail": 0.7})
    assert watched.has_val and watched.to_json()["val_separation"] == 0.8


def test_optional_parts_are_left_out_of_the_json():
    assert PredictReport(5, "linear", output="p.parquet", seconds=0.1).to_json() == {
        "samples": 5, "model": "linear", "output": "p.parquet", "seconds": 0.1}
    assert PredictReport(5, "cascade", 0.8, {"regular": 5}).to_json()["routes"] == {"regular": 5}
    m = TableMetrics(2, 0.5, None, 0.5, None, 0.0, 0.0, GroupCounts(0, 1, 0), None)
    assert "per_class" not in m.to_json() and m.to_json()["classes"] == {"many": 0, "medium": 1, "few": 0}
    m.per_class = [ClassAccuracy(0, 30, "medium", 2, 1, 0.5)]
    assert m.to_json()["per_class"] == [{"class": 0, "train_count": 30, "group": "medium", "samples": 2, "correct": 1,
                                         "accuracy": 0.5}]
