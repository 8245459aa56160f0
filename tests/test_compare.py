"""`dlsa compare` on the digits split with tiny epochs: compare.json's shape and fixed points, the paired
intervals against hand computations, resume, `--select-on test` only when asked, and the refusals."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from dlsa_cli.compare.config import OPTIMISTIC
from dlsa_cli.compare.run import RUNS
from dlsa_cli.compare.stats import paired_bootstrap, t_quantile
from dlsa_cli.io.files import read_table, read_table_metadata
from tests.conftest import assert_clean_failure, invoke

FAST = ["--depth", "1", "--clusters", "6", "--filter-epochs", "3", "--filter-batch-size", "64", "--filter-lr", "0.01",
        "--hidden", "32", "--max-cluster-share", "0.9", "--epochs", "8", "--device", "cpu", "--quiet"]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _compare(digits: Path, out: Path, *extra: str):
    return invoke("compare", digits / "train.safetensors", "--val", digits / "val.safetensors",
                  "--test", digits / "test.safetensors", "-o", out, *FAST, *extra)


@pytest.fixture(scope="module")
def two_seeds(digits, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("cmp") / "two"
    r = _compare(digits, out, "--seeds", "1,0")
    assert r.returncode == 0, r.stderr
    return out, r


@pytest.fixture(scope="module")
def one_seed(digits, tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("cmp") / "one"
    r = _compare(digits, out, "--seeds", "3", "--ceiling", "--plot", out.parent / "ceiling.png")
    assert r.returncode == 0, r.stderr
    return out, r


def _json(out: Path) -> dict:
    return json.loads((out / "compare.json").read_text())


def test_compare_json_lists_every_run_per_seed_in_the_order_of_seeds(two_seeds):
    out, r = two_seeds
    cmp, progress = _json(out), json.loads((out / "progress.json").read_text())
    assert list(cmp["runs"]) == list(RUNS)
    assert cmp["seeds"] == [1, 0]
    for name, rows in cmp["runs"].items():
        assert rows == [progress["runs"]["1"][name], progress["runs"]["0"][name]]
        for row in rows:
            assert {"overall", "many", "medium", "few", "mcc", "nmi"} <= set(row)
            assert ("separation" in row) == (name in ("dlsa", "random-routes", "posterior-routes"))
    for s in (0, 1):
        table = read_table(out / f"seed{s}" / "dlsa.parquet")[0]
        assert {"route", "label", "prediction"} <= set(table.column_names)
    assert cmp["note"] is None and cmp["selected_on"] == "val"
    assert cmp["best_baseline"] in RUNS[:7]
    assert "distinguishable from zero" in cmp["verdict"] and cmp["verdict"] in r.stdout


def test_the_cascade_metrics_are_dlsa_evaluate_of_its_predictions(two_seeds, digits):
    out, _ = two_seeds
    cmp = _json(out)
    for i, s in enumerate((1, 0)):
        r = invoke("evaluate", out / f"seed{s}" / "dlsa.parquet", "--train", digits / "train.safetensors", "--json")
        assert r.returncode == 0, r.stderr
        ev = next(iter(json.loads(r.stdout).values()))
        for k in ("overall", "many", "medium", "few", "mcc", "nmi", "separation"):
            assert cmp["runs"]["dlsa"][i][k] == pytest.approx(ev[k], abs=1e-12), k


def test_the_baseline_run_is_the_cascades_own_baseline_fitted_once(two_seeds, digits, tmp_path):
    out, _ = two_seeds
    pred = tmp_path / "base.parquet"
    r = invoke("predict", out / "seed0" / "cascade" / "baseline.safetensors", digits / "test.safetensors", "-o", pred)
    assert r.returncode == 0, r.stderr
    table = read_table(pred)[0]
    acc = np.mean(table.column("prediction").to_numpy() == table.column("label").to_numpy())
    assert _json(out)["runs"]["baseline"][1]["overall"] == pytest.approx(acc, abs=1e-12)
    assert not list((out / "seed0").glob("baseline*.safetensors")), "the baseline was fitted a second time"


def test_the_paired_interval_over_seeds_is_the_t_interval_by_hand(two_seeds):
    cmp = _json(two_seeds[0])
    for other in ("baseline", "ncm", "random-routes"):
        d = np.array([a["overall"] - b["overall"] for a, b in zip(cmp["runs"]["dlsa"], cmp["runs"][other], strict=True)])
        half = t_quantile(0.975, 1) * d.std(ddof=1) / math.sqrt(2)
        got = cmp["differences"][other]["overall"]
        assert got["method"] == "paired t over seeds"
        assert got["mean"] == pytest.approx(d.mean(), abs=1e-12)
        assert (got["low"], got["high"]) == (pytest.approx(d.mean() - half, abs=1e-12),
                                              pytest.approx(d.mean() + half, abs=1e-12))
    assert t_quantile(0.975, 1) == pytest.approx(12.7062047, abs=1e-6)  # the table's value


def test_one_seed_gets_a_paired_bootstrap_over_test_samples(one_seed):
    out, _ = one_seed
    cmp = _json(out)

    def correct(name: str) -> np.ndarray:
        t = read_table(out / "seed3" / f"{name}.parquet")[0]
        return (t.column("prediction").to_numpy() == t.column("label").to_numpy()).astype(float)

    for other in ("baseline", "lws", "ensemble"):
        want = paired_bootstrap(correct("dlsa"), correct(other), resamples=10_000, seed=3).to_json()
        got = cmp["differences"][other]["overall"]
        assert got["method"] == "paired bootstrap over test samples"
        for k in ("mean", "low", "high", "n"):
            assert got[k] == pytest.approx(want[k], abs=1e-12), k
        assert got["mean"] == pytest.approx(cmp["runs"]["dlsa"][0]["overall"] - cmp["runs"][other][0]["overall"],
                                            abs=1e-12)


def test_ceiling_places_the_cascades_routing_on_val_and_test(one_seed, digits):
    out, _ = one_seed
    ceiling = _json(out)["ceiling"]
    assert {"val", "test", "placements"} <= set(ceiling)
    assert ceiling["val"]["split"] == "val" and ceiling["test"]["split"] == "test"
    t = read_table(out / "seed3" / "dlsa.parquet")[0]
    y, routed = t.column("label").to_numpy(), t.column("route").to_numpy(zero_copy_only=False) != "regular"
    counts = np.asarray(read_table_metadata(out / "seed3" / "dlsa.parquet")[3]["train_counts"])  # (C,)
    place = ceiling["placements"]["dlsa/test"]
    assert place["group_accuracy"] == pytest.approx(np.mean(routed == (counts[y] <= 50)), abs=1e-12)
    assert place["routed_share"] == pytest.approx(routed.mean(), abs=1e-12)
    assert (out.parent / "ceiling.png").stat().st_size > 0


def test_the_ceiling_places_every_other_routing_score_beside_the_cascades(one_seed, digits):
    """Each routing score the cascade does not use gets a depth-1 filter of the cascade's settings, placed on both
    curves (the placement's arithmetic is checked against a hand count for the cascade's routing above)."""
    from dlsa_cli.flow.config import ROUTINGS

    out, _ = one_seed
    ceiling = _json(out)["ceiling"]
    own = json.loads((out / "seed3" / "cascade" / "report.json").read_text())["plan"]["filter"]["routing"]
    others = [r for r in ROUTINGS if r != own]
    assert {f"{r}@depth1/{s}" for r in others for s in ("val", "test")} | {"dlsa/val", "dlsa/test"} == set(
        ceiling["placements"])
    for r in others:
        p = ceiling["placements"][f"{r}@depth1/test"]
        assert 0 < p["routed_share"] < 1 and 0 <= p["group_accuracy"] <= 1
        assert p["soft_overall_at"] is not None and p["baseline_soft_overall_at"] is not None


def _stamps(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix in (".parquet", ".safetensors")}


def test_resume_reuses_finished_runs_and_refits_only_the_missing_ones(one_seed, digits, tmp_path):
    src, _ = one_seed
    out = tmp_path / "cut"
    shutil.copytree(src, out, symlinks=True)
    progress = json.loads((out / "progress.json").read_text())
    for name in ("crt", "ensemble"):  # interrupted before these two were recorded
        progress["runs"]["3"].pop(name)
        (out / "seed3" / f"{name}.parquet").unlink()
    (out / "progress.json").write_text(json.dumps(progress))
    (out / "compare.json").unlink()
    before = _stamps(out)
    r = _compare(digits, out, "--seeds", "3")
    assert r.returncode != 0 and "--resume" in r.stderr  # a non-empty folder needs --resume
    r = _compare(digits, out, "--seeds", "3", "--resume", "--ceiling", "--json")
    assert r.returncode == 0, r.stderr
    after = _stamps(out)
    assert {k: v for k, v in after.items() if k in before} == before, "a finished run was refitted"
    assert {"seed3/crt.parquet", "seed3/ensemble.parquet"} <= set(after)
    whole = _json(src)
    assert json.loads(r.stdout)["runs"] == whole["runs"]  # the same runs, the same numbers


def test_a_compare_recorded_before_newer_settings_and_runs_resumes_with_them(one_seed, digits, tmp_path):
    """A progress.json written before vote_k, memory_k, soft_routing and tail_at_most existed (their defaults
    then) and before the tail-bias and memory-vote controls: resuming adds only those two runs."""
    src, _ = one_seed
    out = tmp_path / "old"
    shutil.copytree(src, out, symlinks=True)
    progress = json.loads((out / "progress.json").read_text())
    settings = progress["settings"]
    settings["compare"].pop("vote_k")
    for key in ("memory_k", "soft_routing"):
        settings["plan"].pop(key)
    settings["plan"]["filter"].pop("tail_at_most")
    for name in ("tail-bias", "memory-vote"):
        progress["runs"]["3"].pop(name)
        (out / "seed3" / f"{name}.parquet").unlink()
    (out / "progress.json").write_text(json.dumps(progress))
    before = _stamps(out)
    r = _compare(digits, out, "--seeds", "3", "--resume", "--ceiling", "--json")
    assert r.returncode == 0, r.stderr
    after = _stamps(out)
    assert {k: v for k, v in after.items() if k in before} == before, "a finished run was refitted"
    assert json.loads(r.stdout)["runs"] == _json(src)["runs"]


def test_the_tuned_controls_never_lose_to_the_baseline_on_the_split_that_tunes_them(two_seeds):
    """tail-bias and memory-vote have weight 0 (the baseline itself) on their grid, so on the selection split
    they are at least the baseline."""
    runs = _json(two_seeds[0])["runs"]
    for name in ("tail-bias", "memory-vote"):
        for seed_row, base in zip(runs[name], runs["baseline"], strict=True):
            assert seed_row["select_balanced"] >= base["select_balanced"] - 1e-12, name


def test_select_on_test_is_recorded_in_every_output(digits, tmp_path):
    out = tmp_path / "authors"
    r = _compare(digits, out, "--seeds", "0", "--select-on", "test")
    assert r.returncode == 0, r.stderr
    cmp = _json(out)
    assert cmp["selected_on"] == "test" and cmp["note"] == OPTIMISTIC
    assert OPTIMISTIC in cmp["verdict"]
    assert OPTIMISTIC in " ".join(r.stdout.split())  # the printed table says it
    assert json.loads((out / "progress.json").read_text())["settings"]["note"] == OPTIMISTIC
    for table in (out / "seed0").glob("*.parquet"):
        assert read_table_metadata(table)[3]["note"] == OPTIMISTIC, table.name
    report = json.loads((out / "seed0" / "cascade" / "report.json").read_text())
    assert Path(report["val"]).name == "test.safetensors"  # the cascade chose on TEST


def test_select_on_both_runs_each_protocol_in_its_own_folder_and_reports_the_difference(digits, tmp_path):
    out = tmp_path / "both"
    r = _compare(digits, out, "--seeds", "0", "--select-on", "both")
    assert r.returncode == 0, r.stderr
    honest, authors = _json(out), _json(out / "select-on-test")
    assert honest["selected_on"] == "val" and honest["note"] is None  # OUT's own compare chose on VAL
    assert authors["selected_on"] == "test" and authors["note"] == OPTIMISTIC
    p = honest["protocols"]
    val_gain = honest["differences"]["baseline"]["overall"]["mean"]
    test_gain = authors["differences"]["baseline"]["overall"]["mean"]
    assert p["val"]["dlsa_minus_baseline"] == val_gain and p["test"]["dlsa_minus_baseline"] == test_gain
    assert p["inflation"] == pytest.approx(test_gain - val_gain) and p["test"]["note"] == OPTIMISTIC
    assert "choosing on the test set adds" in " ".join(r.stdout.split())
    report = json.loads((out / "seed0" / "cascade" / "report.json").read_text())
    assert Path(report["val"]).name == "val.safetensors"  # the honest cascade never saw TEST's labels


def test_select_on_test_never_happens_unless_asked(two_seeds):
    out, r = two_seeds
    assert "optimistic" not in r.stdout and "optimistic" not in (out / "compare.json").read_text()
    for table in out.glob("seed*/*.parquet"):
        meta = read_table_metadata(table)[3]
        assert "note" not in meta and meta.get("selected_on", "val") == "val", table.name
    for s in (0, 1):
        report = json.loads((out / f"seed{s}" / "cascade" / "report.json").read_text())
        assert Path(report["val"]).name == "val.safetensors"
        for f in (out / f"seed{s}" / "cascade").rglob("*.safetensors"):
            assert "test.safetensors" not in f.read_bytes()[:200_000].decode("utf-8", "replace"), f


@pytest.mark.parametrize("seeds", ["0,x", "1,1", "-1", ""])
def test_a_bad_seed_list_is_one_line_and_writes_nothing(digits, tmp_path, seeds):
    out = tmp_path / "out"
    r = _compare(digits, out, "--seeds", seeds)
    assert_clean_failure(r, out, "--seeds")


def test_a_missing_val_is_one_line_and_writes_nothing(digits, tmp_path):
    out = tmp_path / "out"
    r = invoke("compare", digits / "train.safetensors", "--test", digits / "test.safetensors", "-o", out, *FAST)
    assert_clean_failure(r, out, "--val")


def test_a_test_file_without_labels_is_one_line_and_writes_nothing(digits, tmp_path):
    from dlsa_cli.io.features import FeatureSet, read_features, write_features

    test = read_features(digits / "test.safetensors")
    bare = tmp_path / "bare.safetensors"
    write_features(bare, FeatureSet(test.features, None, test.ids, {}))
    out = tmp_path / "out"
    r = invoke("compare", digits / "train.safetensors", "--val", digits / "val.safetensors", "--test", bare,
               "-o", out, *FAST)
    assert_clean_failure(r, out, "has no labels")


def test_the_results_page_script_writes_compare_json_s_numbers(one_seed, tmp_path):
    """benchmarks/compare_page.py: a page whose every row is compare.json's, headed by the command and commit."""
    import subprocess
    import sys

    from conftest import REPO

    out, _ = one_seed
    page = tmp_path / "page.md"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "compare_page.py"), str(out), "--markdown", str(page),
                        "--title", "digits", "--command", "dlsa compare ...", "--commit", "abc1234"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = page.read_text()
    report = _json(out)
    assert "`dlsa compare ...`" in text and "commit abc1234" in text and report["verdict"] in text
    for name, s in report["summary"].items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {name}"))
        assert f"{100 * s['overall']['mean']:.2f}" in row, name
    assert "paired bootstrap over test samples" in text  # one seed: the interval's method is named


def test_the_memory_study_scores_each_seeds_cascade_beside_compare_json_s_controls(two_seeds, digits, tmp_path):
    """benchmarks/memory_study.py: compare.json's runs as they are, and every memory / soft variant per seed;
    a variant without memory and with hard routes is the cascade itself."""
    import subprocess
    import sys

    from conftest import REPO

    out, _ = two_seeds
    page, numbers = tmp_path / "page.md", tmp_path / "study.json"
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "memory_study.py"), str(out),
                        *(f"--{n}={digits / f'{n}.safetensors'}" for n in ("train", "val", "test")),
                        "--markdown", str(page), "--json", str(numbers), "--title", "digits",
                        "--command", "dlsa compare ..."], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    study, report = json.loads(numbers.read_text()), _json(out)
    for name in ("baseline", "dlsa", "tail-bias", "random-routes", "ensemble"):
        assert study["runs"][name] == report["runs"][name], name
    for mine, theirs in zip(study["runs"]["memory-vote"], report["runs"]["memory-vote"], strict=True):
        for key in ("overall", "few", "select_balanced"):  # recomputed by the study as compare makes it
            assert mine[key] == pytest.approx(theirs[key]), key
    for name in ("dlsa +memory k20", "dlsa +memory k50 +soft"):
        assert len(study["runs"][name]) == 2 and all(0 <= row["overall"] <= 1 for row in study["runs"][name])
    soft = study["runs"]["dlsa +soft"]
    for row, dlsa in zip(soft, report["runs"]["dlsa"], strict=True):
        if not any(row["temperatures"]):  # VAL kept the hard route: the cascade's own predictions
            assert row["overall"] == pytest.approx(dlsa["overall"])
    text = page.read_text()
    assert "**Goal**" in text and "`dlsa compare ...`" in text


def test_inspect_config_of_a_compare_folder_repeats_it(one_seed, digits, tmp_path):
    """`dlsa inspect OUT --config` on a compare folder gives a file that a second compare runs to the same numbers."""
    out, _ = one_seed
    r = invoke("inspect", out, "--config")
    assert r.returncode == 0, r.stderr
    cfg = tmp_path / "again.toml"
    cfg.write_text(r.stdout)
    assert 'seeds = "3"' in r.stdout and "ceiling = true" in r.stdout and "[filter]" in r.stdout
    again = tmp_path / "again"
    r = invoke("compare", digits / "train.safetensors", "--val", digits / "val.safetensors", "--test",
               digits / "test.safetensors", "-o", again, "--config", cfg, "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    assert _json(again)["runs"] == _json(out)["runs"]
