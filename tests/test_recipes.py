"""The recipes: `recipes/dlsa.sh` on feature files it has never seen, and that it never learns from TEST."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dlsa_cli.io.files import read_safetensors, read_table
from tests.conftest import CALTECH_NPZ, REPO, requires_caltech

RECIPES = REPO / "recipes"
FAST = [
    "--depth", "2", "--clusters", "6", "--filter-epochs", "3", "--filter-batch", "64", "--filter-lr", "0.01",
    "--filter-opts", "--hidden 32 --max-cluster-share 0.9", "--epochs", "8", "--device", "cpu",
]


def run_recipe(script: str, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a recipe with this interpreter's `dlsa` and `python` first on PATH."""
    bindir = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ.get("PATH", ""), PYTHON=sys.executable,
               PYTHONPATH=str(REPO), COLUMNS="200", OMP_NUM_THREADS="1")
    return subprocess.run(["bash", str(RECIPES / script), *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def unseen(tmp_path_factory) -> Path:
    """Never-seen files: 15 Caltech-101-LT classes, a 96-dim slice of the real features, as .npz."""
    if not CALTECH_NPZ.exists():
        pytest.skip(f"real Caltech-101 features not found at {CALTECH_NPZ}")
    from dlsa_cli.datasets import caltech101_lt

    d = tmp_path_factory.mktemp("unseen")
    s = caltech101_lt(CALTECH_NPZ, seed=3)
    keep = np.arange(0, 101, 7)[:15]  # 15 classes spread over the frequency ranks
    remap = -np.ones(101, dtype=np.int64)
    remap[keep] = np.arange(len(keep))
    for name in ("train", "val", "test"):
        fs = getattr(s, name)
        m = remap[fs.labels] >= 0
        np.savez(d / f"{name}.npz", features=fs.features[m][:, 200:296].astype(np.float32), labels=remap[fs.labels[m]], ids=fs.ids[m])
    return d


@pytest.mark.slow
@requires_caltech
def test_dlsa_recipe_on_unseen_files_and_test_labels_change_nothing(unseen, tmp_path):
    out = tmp_path / "run"
    r = run_recipe("dlsa.sh", unseen / "train.npz", unseen / "val.npz", unseen / "test.npz", out, *FAST)
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    for entry in ("baseline", "dlsa"):
        for key in ("overall", "many", "medium", "few", "mcc", "nmi"):
            assert key in metrics[entry], (entry, key)
        assert 0.0 < metrics[entry]["overall"] <= 1.0
    assert metrics["dlsa"]["routes"], "the cascade's routes are reported"
    assert "overall" in r.stdout  # the side-by-side table
    cascade = json.loads((out / "cascade.json").read_text())
    assert [d["filter"] for d in cascade["depths"]] == ["depth1/filter.safetensors", "depth2/filter.safetensors"]
    test_n = int(np.load(unseen / "test.npz")["labels"].shape[0])
    routes = read_table(out / "dlsa.parquet")[0].column("route").to_numpy(zero_copy_only=False)
    assert len(routes) == test_n

    # The same run with the TEST labels scrambled: every model and prediction is identical,
    # so nothing was chosen on the test set; only the scores change.
    with np.load(unseen / "test.npz") as z:
        bad = dict(z)
    bad["labels"] = np.random.default_rng(0).permutation(bad["labels"])
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    np.savez(wrong / "test.npz", **bad)
    out2 = tmp_path / "run_wrong"
    r2 = run_recipe("dlsa.sh", unseen / "train.npz", unseen / "val.npz", wrong / "test.npz", out2, *FAST)
    assert r2.returncode == 0, r2.stderr[-3000:]
    for f in ("baseline.safetensors", "final.safetensors", "depth1/filter.safetensors", "depth1/cluster.safetensors",
              "depth2/filter.safetensors", "depth2/cluster.safetensors"):
        a, b = read_safetensors(out / f)[0], read_safetensors(out2 / f)[0]
        assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a), f
    for f in ("baseline.parquet", "dlsa.parquet"):
        ta, tb = read_table(out / f)[0], read_table(out2 / f)[0]
        assert ta.column("prediction").equals(tb.column("prediction")) and ta.column("topk_scores").equals(tb.column("topk_scores"))
    assert json.loads((out2 / "metrics.json").read_text())["baseline"]["overall"] != metrics["baseline"]["overall"]


def test_dlsa_recipe_rejects_missing_inputs_and_unknown_options(tmp_path):
    r = run_recipe("dlsa.sh", tmp_path / "nope.npz", tmp_path / "v.npz", tmp_path / "t.npz", tmp_path / "out")
    assert r.returncode != 0 and "no such file" in r.stderr
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.npz").write_bytes(b"")
    r = run_recipe("dlsa.sh", tmp_path / "a.npz", tmp_path / "b.npz", tmp_path / "c.npz", tmp_path / "out", "--bogus", "1")
    assert r.returncode != 0 and "unknown option --bogus" in r.stderr
    assert not (tmp_path / "out").exists()


def test_recipes_are_valid_bash():
    for script in sorted(RECIPES.glob("*.sh")):
        r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert r.returncode == 0, (script.name, r.stderr)
        assert "set -euo pipefail" in script.read_text(), script.name


def test_compare_recipe_runs_both_protocols_and_continues_an_interrupted_compare(digits, tmp_path):
    """recipes/compare.sh: seeds, the ceiling and both protocols; run again, it resumes and refits nothing."""
    out = tmp_path / "cmp"
    small = ("--seeds", "0", "--config", RECIPES / "quickstart.toml", "--epochs", "3", "--filter-epochs", "2",
             "--device", "cpu", "--quiet")
    r = run_recipe("compare.sh", digits / "train.safetensors", digits / "val.safetensors", digits / "test.safetensors",
                   out, *small)
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "compare.json").read_text())
    assert report["selected_on"] == "val" and report["ceiling"] is not None
    assert report["protocols"]["test"]["selected_on"] == "test"
    assert json.loads((out / "select-on-test" / "compare.json").read_text())["note"] is not None
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    r = run_recipe("compare.sh", digits / "train.safetensors", digits / "val.safetensors", digits / "test.safetensors",
                   out, *small)
    assert r.returncode == 0, r.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")} == stamps  # resumed: nothing refitted
