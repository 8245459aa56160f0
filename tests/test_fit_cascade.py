"""`dlsa fit-cascade`: the same cascade as the stages run by hand, resuming, bad options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dlsa_cli.io.files import read_table
from tests.conftest import CALTECH_NPZ, SHARED_DATA, assert_clean_failure, invoke, run_cli

TINY = SHARED_DATA / "tinyimagenet-lt"
# A small configuration: few epochs, small K, small MADEs.
FILTER = ["--clusters", "8", "--hidden", "16", "--max-cluster-share", "0.9", "--seed", "1"]
FILTER_HAND = [*FILTER, "--epochs", "2", "--batch-size", "256"]  # fit-filter's names ...
FILTER_CASCADE = [*FILTER, "--filter-epochs", "2", "--filter-batch-size", "256"]  # ... and fit-cascade's
CLF = ["--epochs", "3", "--seed", "1"]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """Every subprocess at one thread, so the hand-run chain and fit-cascade compute alike."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")


def ok(r) -> None:
    assert r.returncode == 0, r.stderr[-3000:]


def by_hand(train: Path, val: Path, out: Path, depth: int, filter_opts: list[str], clf_opts: list[str]) -> Path:
    """The reference: DLSA's loop as a chain of fit-filter / split / fit-classifier subprocesses."""
    out.mkdir()
    base = out / "baseline.safetensors"
    ok(run_cli("fit-classifier", train, "--val", val, "-o", base, *clf_opts, "--device", "cpu", "--quiet"))
    branch = [*clf_opts, "--init", base, "--allow-missing-val-classes", "--device", "cpu", "--quiet"]
    cur_train, cur_val, depths = train, val, []
    for d in range(1, depth + 1):
        ddir = out / f"d{d}"
        ok(run_cli("fit-filter", cur_train, "-o", out / f"f{d}.safetensors", "--depth", d, *filter_opts, "--device", "cpu", "--quiet"))
        ok(run_cli("split", out / f"f{d}.safetensors", cur_train, cur_val, "-o", ddir, "--device", "cpu", "--quiet"))
        tr, va = _stem(cur_train), _stem(cur_val)
        routed_val = ddir / f"{va}.routed.safetensors"
        val_opts = ["--val", routed_val, "--val-weights-from", val] if routed_val.exists() else []
        ok(run_cli("fit-classifier", ddir / f"{tr}.routed.safetensors", *val_opts, "--filter", out / f"f{d}.safetensors",
                   "-o", out / f"c{d}.safetensors", *branch))
        depths.append({"filter": f"f{d}.safetensors", "classifier": f"c{d}.safetensors"})
        cur_train, cur_val = ddir / f"{tr}.rest.safetensors", ddir / f"{va}.rest.safetensors"
    val_opts = ["--val", cur_val, "--val-weights-from", val] if cur_val.exists() else []
    ok(run_cli("fit-classifier", cur_train, *val_opts, "-o", out / "final.safetensors", *branch))
    (out / "cascade.json").write_text(json.dumps({"dlsa_kind": "cascade", "depths": depths, "final": "final.safetensors"}))
    return out


def _stem(p: Path) -> str:
    return p.name[: -len(".safetensors")] if p.name.endswith(".safetensors") else p.stem


def predictions(model: Path, test: Path, out: Path) -> dict[str, np.ndarray]:
    ok(invoke("predict", model, test, "-o", out, "--device", "cpu", "--quiet"))
    t = read_table(out)[0]
    return {c: t.column(c).to_numpy(zero_copy_only=False) for c in ("prediction", "route", "depth") if c in t.column_names}


def assert_same_cascade(run: Path, ref: Path, test: Path, tmp: Path) -> None:
    a, b = predictions(run, test, tmp / "a.parquet"), predictions(ref, test, tmp / "b.parquet")
    for col in ("prediction", "route", "depth"):
        assert np.array_equal(a[col], b[col]), col
    assert len(set(a["route"])) > 1, "the small configuration should route some test samples"


def check_against_hand(train: Path, val: Path, test: Path, tmp: Path, depth: int) -> dict:
    run = tmp / "run"
    ok(run_cli("fit-cascade", train, "--val", val, "-o", run, "--depth", depth, *FILTER_CASCADE, *CLF, "--device", "cpu", "--quiet"))
    ref = by_hand(train, val, tmp / "ref", depth, FILTER_HAND, CLF)
    assert_same_cascade(run, ref, test, tmp)
    report = json.loads((run / "report.json").read_text())
    # routed counts of train and val as the hand-run split reports them
    for d in range(1, depth + 1):
        split = json.loads((ref / f"d{d}" / "split.json").read_text())["files"]
        got = report["depths"][d - 1]
        for name in ("train", "val"):
            ref_name = next(k for k in split if k.split(".")[0] == name)
            assert got[name]["routed"] == split[ref_name]["routed"], (d, name)
    return report


@pytest.mark.slow
def test_caltech_lt_fit_cascade_equals_the_stages_run_by_hand(tmp_path):
    if not CALTECH_NPZ.exists():
        pytest.skip(f"real Caltech-101 features not found at {CALTECH_NPZ}")
    data = tmp_path / "caltech"
    ok(run_cli("make-dataset", "caltech101-lt", "--source", CALTECH_NPZ, "-o", data))
    report = check_against_hand(data / "train.safetensors", data / "val.safetensors", data / "test.safetensors",
                                tmp_path, depth=2)
    assert [d["depth"] for d in report["depths"]] == [1, 2]
    assert report["baseline"]["classifier"]["train_samples"] > 0


@pytest.mark.slow
def test_tinyimagenet_lt_fit_cascade_equals_the_stages_run_by_hand(tmp_path):
    if not (TINY / "train.safetensors").exists():
        pytest.skip(f"Tiny-ImageNet-LT features not found at {TINY}")
    data = tinyimagenet_subset(tmp_path / "tiny", classes=60)
    check_against_hand(data / "train.safetensors", data / "val.safetensors", data / "test.safetensors", tmp_path, depth=1)


def tinyimagenet_subset(out: Path, classes: int) -> Path:
    """Tiny-ImageNet-LT's first `classes` classes (every row of them, the real features), to keep the test small."""
    from dlsa_cli.io.features import read_features, write_features

    out.mkdir()
    for name in ("train", "val", "test"):
        fs = read_features(TINY / f"{name}.safetensors")
        part = fs.subset(np.flatnonzero(fs.labels < classes))
        part.meta = {"num_classes": classes}
        write_features(out / f"{name}.safetensors", part)
    return out


DIGITS_FAST = ["--depth", "2", "--clusters", "6", "--filter-epochs", "3", "--filter-batch-size", "64", "--filter-lr", "0.01",
               "--hidden", "32", "--max-cluster-share", "0.9", "--epochs", "8", "--device", "cpu", "--quiet"]


def _stamps(run: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(run)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(run.rglob("*.safetensors"))
            if not p.is_symlink() and "inputs" not in p.parts}


def test_resume_refits_only_what_is_missing_and_gives_the_same_cascade(digits, tmp_path):
    train, val, test = digits / "train.safetensors", digits / "val.safetensors", digits / "test.safetensors"
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    for run in (whole, cut):
        r = invoke("fit-cascade", train, "--val", val, "-o", run, *DIGITS_FAST)
        assert r.returncode == 0, r.stderr
    # interrupt `cut` as if killed during depth 2: its classifier, the final one and the manifest never written
    progress = json.loads((cut / "progress.json").read_text())
    for stage in ("depth2", "final"):
        progress["stages"].pop(stage)
    (cut / "progress.json").write_text(json.dumps(progress))
    for f in ("depth2/cluster.safetensors", "final.safetensors", "cascade.json", "report.json"):
        (cut / f).unlink()
    before = _stamps(cut)
    r = invoke("fit-cascade", train, "--val", val, "-o", cut, *DIGITS_FAST, "--resume", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert [report["baseline"]["reused"], *[d["reused"] for d in report["depths"]], report["final"]["reused"]] == [
        True, True, False, False]
    after = _stamps(cut)
    for f in ("baseline.safetensors", "depth1/filter.safetensors", "depth1/cluster.safetensors", "depth1/train.rest.safetensors"):
        assert after[f] == before[f], f"{f} was rewritten"
    assert after["depth2/filter.safetensors"][0] != before["depth2/filter.safetensors"][0], "depth 2 was refitted whole"
    assert report["resumed"] is True
    assert_same_cascade(cut, whole, test, tmp_path)


def test_resume_of_a_finished_run_fits_nothing(digits, tmp_path):
    run = tmp_path / "run"
    args = [digits / "train.safetensors", "--val", digits / "val.safetensors", "-o", run, *DIGITS_FAST]
    assert invoke("fit-cascade", *args).returncode == 0
    before = _stamps(run)
    r = invoke("fit-cascade", *args, "--resume", "--json")
    assert r.returncode == 0, r.stderr
    assert _stamps(run) == before
    assert all(d["reused"] for d in json.loads(r.stdout)["depths"])


def test_a_branch_that_keeps_its_start_is_said_in_words(digits, tmp_path):
    run = tmp_path / "run"
    # --branch-lr tiny: no branch moves enough to beat its start on validation
    r = invoke("fit-cascade", digits / "train.safetensors", "--val", digits / "val.safetensors", "-o", run, *DIGITS_FAST[:-1],
               "--branch-lr", "1e-12")
    assert r.returncode == 0, r.stderr
    report = json.loads((run / "report.json").read_text())
    assert report["unchanged"] is True
    assert all(d["classifier"]["epoch"] == 0 for d in report["depths"])
    assert "DLSA changed nothing" in r.stdout
    base = predictions(run / "baseline.safetensors", digits / "test.safetensors", tmp_path / "b.parquet")
    dlsa = predictions(run, digits / "test.safetensors", tmp_path / "d.parquet")
    assert np.array_equal(base["prediction"], dlsa["prediction"])


def test_without_validation_each_classifier_carves_its_own(digits, tmp_path):
    run = tmp_path / "run"
    r = invoke("fit-cascade", digits / "train.safetensors", "-o", run, *DIGITS_FAST, "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert all(d["val"] is None for d in report["depths"])
    for c in [report["baseline"]["classifier"], *[d["classifier"] for d in report["depths"]], report["final"]["classifier"]]:
        assert c["val_source"].startswith("carved from train") and not c["val_weighted"]


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--depth", "0"], "--num-depths 0"),  # the old spelling --depth is named by the rule name
        (["--preset", "cifar"], "--filter-preset cifar"),  # the alias --preset is named by its rule name
        (["--loss", "hinge"], "--loss hinge"),
        (["--filter-select", "best"], "--filter-select best"),
        (["--filter-epochs", "0"], "--filter-epochs 0"),
        (["--val", "missing.safetensors"], "missing.safetensors"),
        (["--device", "cuda:7"], "--device cuda:7"),
        (["--baseline-init", "nohead.safetensors"], "nohead.safetensors"),
    ],
)
def test_bad_options_give_one_line_and_write_nothing(digits, tmp_path, extra, needle):
    out = tmp_path / "run"
    r = invoke("fit-cascade", digits / "train.safetensors", "-o", out, *DIGITS_FAST, *extra)
    assert_clean_failure(r, out, needle)


def test_a_folder_holding_something_else_is_not_overwritten(digits, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = invoke("fit-cascade", digits / "train.safetensors", "-o", out, *DIGITS_FAST)
    assert r.returncode == 1 and "not empty" in r.stderr and "--resume" in r.stderr
    r = invoke("fit-cascade", digits / "train.safetensors", "-o", out, *DIGITS_FAST, "--resume")
    assert r.returncode == 1 and "not a fit-cascade run" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_resume_with_other_settings_names_the_difference(digits, tmp_path):
    out = tmp_path / "run"
    args = [digits / "train.safetensors", "-o", out, *DIGITS_FAST]
    assert invoke("fit-cascade", *args).returncode == 0
    r = invoke("fit-cascade", *args, "--epochs", "9", "--resume")
    assert r.returncode == 1 and "other settings" in r.stderr and "epochs: 8 then, 9 now" in r.stderr


def test_given_filters_are_used_as_they_are_and_serve_other_classifier_settings(digits, tmp_path):
    from dlsa_cli.cascade import CascadePlan, fit_cascade
    from dlsa_cli.classify import TrainConfig
    from dlsa_cli.flow import FilterConfig
    from dlsa_cli.io.files import file_sha256

    train, val, test = digits / "train.safetensors", digits / "val.safetensors", digits / "test.safetensors"
    fcfg = FilterConfig(clusters=6, epochs=3, batch_size=64, lr=0.01, hidden=32, max_cluster_share=0.9)
    plan = CascadePlan(num_depths=2, filter=fcfg, baseline=TrainConfig(epochs=8))
    first = fit_cascade(train, tmp_path / "first", plan, val=val)
    filters = {d: tmp_path / "first" / f"depth{d}" / "filter.safetensors" for d in (1, 2)}
    # the same settings with the filters given: the same cascade, the filters copied byte for byte
    again = fit_cascade(train, tmp_path / "again", plan, val=val, filters=filters)
    for d in (1, 2):
        assert file_sha256(tmp_path / "again" / f"depth{d}" / "filter.safetensors") == file_sha256(filters[d])
        assert again.report.depths[d - 1].filter.given == str(filters[d])
    assert_same_cascade(tmp_path / "again", tmp_path / "first", test, tmp_path)
    # other classifier settings on the same filters: the same routes, other classifiers
    ce = fit_cascade(train, tmp_path / "ce", CascadePlan(num_depths=2, filter=fcfg, baseline=TrainConfig(epochs=8, loss="ce")),
                     val=val, filters=filters)
    a = predictions(tmp_path / "ce", test, tmp_path / "ce.parquet")
    b = predictions(tmp_path / "first", test, tmp_path / "first.parquet")
    assert np.array_equal(a["route"], b["route"])
    assert ce.report.plan["baseline"]["loss"] == "ce" and first.report.plan["baseline"]["loss"] == "bsm"
    # a filter given for the wrong depth is refused before anything is fitted
    with pytest.raises(Exception, match="trained at depth 1, but is given for depth 2"):
        fit_cascade(train, tmp_path / "bad", plan, val=val, filters={1: filters[1], 2: filters[1]})
    assert not (tmp_path / "bad").exists()
