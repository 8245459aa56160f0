"""A filter's epoch chosen on validation (select val-separation / val-likelihood) and its density regularised."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_clean_failure, invoke

from dlsa_cli.errors import DlsaError
from dlsa_cli.flow import fit_filter
from dlsa_cli.io.features import read_features

FAST = ["-k", "8", "--epochs", "5", "--batch-size", "64", "--hidden", "32", "--max-cluster-share", "0.9", "--seed", "1",
        "--device", "cpu"]
LIB = {"clusters": 8, "epochs": 4, "batch_size": 64, "hidden": 32, "max_cluster_share": 0.9, "seed": 1}


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _best(history: list[dict], key: str) -> int:
    """The epoch with the highest recorded `key` (ties: the later one), as the rule promises."""
    best, value = 0, -np.inf
    for h in history:
        v = -np.inf if h[key] is None else h[key]
        if v >= value:
            best, value = h["epoch"], v
    return best


@pytest.mark.parametrize("select,key", [("val-separation", "val_separation"), ("val-likelihood", "val_mean_log_likelihood")])
@pytest.mark.parametrize("routing", ["likelihood", "cluster-tail"])
def test_val_rule_keeps_the_best_recorded_epoch(digits, tmp_path, select, key, routing):
    out = tmp_path / "f.safetensors"
    r = invoke("fit-filter", digits / "train.safetensors", "--val", digits / "val.safetensors", "--select", select,
                "--routing", routing, "-o", out, *FAST, "--json", "--quiet")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    hist = rep["history"]
    assert len(hist) == 5 and rep["val"].endswith("val.safetensors")
    for h in hist:  # every record carries the validation numbers; the rule's score is the filter's routing's
        assert 0 <= h["val_routed_share"] <= 1 and h["val_tail_share"] > 0
        assert h["val_separation"] == h["val_separation_by"][routing]
    assert rep["chosen_epoch"] == _best(hist, key)
    if select == "val-separation" and routing == "likelihood":  # the kept epoch routes val as its record says
        from dlsa_cli.flow import FlowFilter
        from dlsa_cli.flow.routing import separation

        val = read_features(digits / "val.safetensors")
        filt = FlowFilter.load(out)
        sep = separation(filt.score(val.features).routed, val.labels, np.asarray(filt.train_counts))
        assert sep["separation"] == pytest.approx(hist[rep["chosen_epoch"] - 1]["val_separation"], abs=1e-9)
    shown = json.loads(invoke("inspect", out, "--json").stdout)  # `dlsa inspect` lists what the rule chose from
    table = next(t for t in shown["tables"] if t["title"] == "history")
    col = table["columns"].index("val separation" if key == "val_separation" else "val mean log p")
    assert [row[col] for row in table["rows"]] == [round(h[key], 4) for h in hist]


def test_paper_rule_stays_the_default_and_val_only_records(digits):
    fs, val = read_features(digits / "train.safetensors"), read_features(digits / "val.safetensors")
    plain = fit_filter(fs, **LIB)
    watched = fit_filter(fs, val=val, **LIB)  # val given, default rule: same training, same kept epoch
    assert plain.config.select == "good-clusters" and watched.chosen_epoch == plain.chosen_epoch
    assert watched.threshold == plain.threshold
    assert "val_separation" in watched.history[0] and "val_separation" not in plain.history[0]


@pytest.mark.parametrize("select", ["val-separation", "val-likelihood"])
def test_val_rule_without_val_is_one_line(digits, tmp_path, select):
    out = tmp_path / "f.safetensors"
    r = invoke("fit-filter", digits / "train.safetensors", "--select", select, "-o", out, *FAST)
    assert_clean_failure(r, out, f"--select {select}: needs validation samples")
    assert "--val" in r.stderr
    run = tmp_path / "run"
    r = invoke("fit-cascade", digits / "train.safetensors", "-o", run, "--filter-select", select, "--depth", "1")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"--filter-select {select}: needs validation samples" in r.stderr and "--val" in r.stderr
    assert not run.exists()
    with pytest.raises(DlsaError, match="needs validation samples"):
        fit_filter(read_features(digits / "train.safetensors"), **{**LIB, "select": select})


@pytest.mark.parametrize("args,needle", [
    (["--input-noise", "-0.1"], "--input-noise -0.1: the noise std"),
    (["--input-noise", "inf"], "--input-noise inf:"),
    (["--weight-decay", "-1"], "--weight-decay -1.0: must be a finite number >= 0"),
    (["--select", "best"], "--select best: use one of good-clusters, last, val-separation, val-likelihood"),
])
def test_new_flags_out_of_range(digits, tmp_path, args, needle):
    out = tmp_path / "f.safetensors"
    assert_clean_failure(invoke("fit-filter", digits / "train.safetensors", "-o", out, *args), out, needle)


def test_cascade_names_its_own_weight_decay_flag(digits, tmp_path):
    run = tmp_path / "run"
    r = invoke("fit-cascade", digits / "train.safetensors", "-o", run, "--filter-weight-decay", "-1")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "--filter-weight-decay -1.0:" in r.stderr
    assert not run.exists()


def test_regularisers_change_training_and_repeat(digits):
    fs = read_features(digits / "train.safetensors")
    plain = fit_filter(fs, **LIB)
    for opt in ({"input_noise": 0.3}, {"weight_decay": 0.05}):
        a, b = fit_filter(fs, **LIB, **opt), fit_filter(fs, **LIB, **opt)
        assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]  # same seed, same run
        assert a.threshold == b.threshold
        assert [h["loss"] for h in a.history] != [h["loss"] for h in plain.history], opt
        assert a.config.to_dict() == {**plain.config.to_dict(), **opt}


def test_resume_keeps_the_val_choice_and_checks_the_val_file(digits, tmp_path):
    """Interrupted after epoch 2, resumed: the same kept epoch and tensors; another val file is refused."""
    fs, val = read_features(digits / "train.safetensors"), read_features(digits / "val.safetensors")
    opts = {**LIB, "select": "val-separation", "input_noise": 0.2, "weight_decay": 1e-3}
    ckpt = tmp_path / "ck"

    def stop_after_2(rec):
        if rec["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_filter(fs, val=val, checkpoint=ckpt, on_epoch=stop_after_2, **opts)
    other = read_features(digits / "test.safetensors")
    with pytest.raises(DlsaError, match="other training data or other settings"):
        fit_filter(fs, val=other, checkpoint=ckpt, resume=True, **opts)
    resumed = fit_filter(fs, val=val, checkpoint=ckpt, resume=True, **opts)
    plain = fit_filter(fs, val=val, **opts)
    assert resumed.resumed_from == 2
    assert resumed.chosen_epoch == plain.chosen_epoch and resumed.history == [
        {**h, "seconds": r["seconds"]} for h, r in zip(plain.history, resumed.history, strict=False)
    ]
    assert resumed.threshold == plain.threshold


def test_fit_cascade_gives_each_depth_its_val_part(digits, tmp_path):
    run = tmp_path / "run"
    r = invoke("fit-cascade", digits / "train.safetensors", "--val", digits / "val.safetensors", "-o", run,
                "--depth", "2", "--clusters", "8", "--hidden", "16", "--max-cluster-share", "0.9", "--filter-epochs", "3",
                "--filter-batch-size", "64", "--filter-select", "val-separation", "--input-noise", "0.1",
                "--filter-weight-decay", "1e-3", "--epochs", "2", "--seed", "1", "--device", "cpu", "--quiet", "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(r.stdout)
    assert rep["plan"]["filter"]["select"] == "val-separation" and rep["plan"]["filter"]["weight_decay"] == 1e-3
    from dlsa_cli.flow import FlowFilter

    for d in rep["depths"]:
        f = FlowFilter.load(run / d["files"]["filter"])
        assert f.chosen_epoch == _best(f.history, "val_separation") == d["filter"]["chosen_epoch"]
        assert d["filter"]["val_separation"] == f.history[f.chosen_epoch - 1]["val_separation"]
        # the filter saw this depth's validation part: its routed share is a whole number of those samples
        n_val = d["val"]["samples"]
        assert all(abs(h["val_routed_share"] * n_val - round(h["val_routed_share"] * n_val)) < 1e-6 for h in f.history)
