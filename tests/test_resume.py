"""`fit-filter --resume` after a SIGKILL, and bitwise repeatability at a fixed thread count (issue 8)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, invoke

from dlsa_cli.io.files import read_safetensors

SETTINGS = ("-k", "8", "--epochs", "6", "--batch-size", "64", "--hidden", "32", "--device", "cpu", "--seed", "3")
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

# Runs fit-filter in this child and SIGKILLs it right after the checkpoint of epoch KILL_AT is on disk.
KILLER = """
import os, signal, sys
import dlsa_cli.flow.checkpoint as ck
save = ck.save_checkpoint
def save_then_die(path, st, fp):
    save(path, st, fp)
    if st.epoch == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
ck.save_checkpoint = save_then_die
from dlsa_cli.cli import app
sys.argv = ["dlsa"] + sys.argv[1:]
app()
"""


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dlsa_cli", *map(str, args)], capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", **ENV, **(env or {})},
    )


def _tensors(p: Path) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in read_safetensors(p)[0].items()}


def _same(a: Path, b: Path) -> None:
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and np.array_equal(ta[k], tb[k]), k


@pytest.fixture(scope="module")
def whole(digits, tmp_path_factory) -> Path:
    """An uninterrupted run, one thread."""
    out = tmp_path_factory.mktemp("whole") / "filter.safetensors"
    r = _cli("fit-filter", digits / "train.safetensors", "-o", out, *SETTINGS, "--quiet")
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_tensors(digits, whole, tmp_path):
    out = tmp_path / "filter.safetensors"
    ckpt = tmp_path / "filter.safetensors.resume"
    r = subprocess.run(
        [sys.executable, "-c", KILLER, "fit-filter", str(digits / "train.safetensors"), "-o", str(out), *SETTINGS, "--quiet"],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO), **ENV, "KILL_AT": "2"},
    )
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not out.exists() and ckpt.exists()
    assert read_safetensors(ckpt)[2]["epoch"] == 2

    r = _cli("fit-filter", digits / "train.safetensors", "-o", out, *SETTINGS, "--resume", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["resumed_from"] == 2
    assert res["epochs_run"] == [3, 4, 5, 6]  # only the remaining epochs ran
    assert [h["epoch"] for h in res["history"]] == [1, 2, 3, 4, 5, 6]
    assert not ckpt.exists(), "the checkpoint is removed on success"
    assert read_safetensors(out)[3]["resumed_from"] == 2
    _same(out, whole)
    whole_meta, meta = read_safetensors(whole)[2], read_safetensors(out)[2]
    assert meta["threshold"] == whole_meta["threshold"] and meta["chosen_epoch"] == whole_meta["chosen_epoch"]


@pytest.mark.slow
def test_two_runs_at_one_thread_are_bitwise_identical(digits, whole, tmp_path):
    again = tmp_path / "again.safetensors"
    r = _cli("fit-filter", digits / "train.safetensors", "-o", again, *SETTINGS, "--quiet")
    assert r.returncode == 0, r.stderr
    _same(again, whole)
    prov = read_safetensors(again)[3]
    assert prov["torch_threads"] == 1 and prov["cpu_capability"]
    assert prov["resumed_from"] is None


def test_resume_refuses_a_checkpoint_of_other_settings(digits, tmp_path):
    out = tmp_path / "filter.safetensors"
    ckpt = tmp_path / "filter.safetensors.resume"
    r = subprocess.run(
        [sys.executable, "-c", KILLER, "fit-filter", str(digits / "train.safetensors"), "-o", str(out), *SETTINGS, "--quiet"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO), **ENV, "KILL_AT": "1"},
    )
    assert r.returncode == -signal.SIGKILL
    before = ckpt.read_bytes()
    r = invoke("fit-filter", digits / "train.safetensors", "-o", out, *SETTINGS, "--lr", "0.1", "--resume")
    assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "other training data or other settings" in r.stderr
    assert ckpt.read_bytes() == before and not out.exists()


def test_library_resume_runs_only_the_remaining_epochs(digits, tmp_path):
    """In the library: an interruption after epoch 2, then `resume=True` calls on_epoch for 3..4 only."""
    from dlsa_cli.flow import fit_filter
    from dlsa_cli.io.features import read_features

    fs = read_features(digits / "train.safetensors")
    opts = dict(clusters=8, epochs=4, batch_size=64, hidden=32, seed=1)
    ckpt = tmp_path / "ck"

    def stop_after_2(rec):
        if rec["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit_filter(fs, checkpoint=ckpt, on_epoch=stop_after_2, **opts)
    seen: list[int] = []
    resumed = fit_filter(fs, checkpoint=ckpt, resume=True, on_epoch=lambda r: seen.append(r["epoch"]), **opts)
    assert seen == [3, 4] and resumed.resumed_from == 2
    plain = fit_filter(fs, **opts)
    assert resumed.threshold == plain.threshold
    for k, v in plain.flow.state_dict().items():
        assert np.array_equal(v.numpy(), resumed.flow.state_dict()[k].numpy()), k


# ----------------------------------------------------------------------------- extract --resume

EXTRACT_KILLER = """
import os, signal, sys
import dlsa_cli.extract.chunks as ex
save = ex.save_chunk
def save_then_die(store, c, *rest):
    save(store, c, *rest)
    if c == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
ex.save_chunk = save_then_die
from dlsa_cli.cli import main
sys.argv = ["dlsa"] + sys.argv[1:]
main()
"""


@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
def test_extract_sigkill_then_resume_gives_the_uninterrupted_features(tmp_path):
    pytest.importorskip("PIL")
    import torch
    from test_extract import TinyConv, make_images

    images = tmp_path / "images"
    make_images(images)  # 5 images: chunks of 2, 2 and 1
    tiny = tmp_path / "tiny.pt"
    torch.jit.script(TinyConv().eval()).save(str(tiny))
    args = ["extract", str(images), "--backbone", str(tiny), "--chunk-size", "2", "--batch-size", "2", "--workers", "0", "--device", "cpu"]
    whole = tmp_path / "whole.safetensors"
    r = _cli(*args, "-o", whole, "--quiet")
    assert r.returncode == 0, r.stderr

    out = tmp_path / "out.safetensors"
    chunks = tmp_path / "out.safetensors.resume"
    r = subprocess.run(
        [sys.executable, "-c", EXTRACT_KILLER, *args, "-o", str(out), "--quiet"], capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(REPO), **ENV, "KILL_AT": "1"},
    )
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert not out.exists()
    assert sorted(p.name for p in chunks.iterdir()) == ["chunk-000000.safetensors", "chunk-000001.safetensors", "run.json"]

    r = _cli(*args, "-o", out, "--resume", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["resumed_from"] == 4 and res["images_run"] == 1  # only the fifth image ran
    assert not chunks.exists()
    assert read_safetensors(out)[3]["resumed_from"] == 4
    _same(out, whole)
    assert read_safetensors(out)[2]["ids"] == read_safetensors(whole)[2]["ids"]


def test_resume_under_another_thread_count_says_so(digits, tmp_path):
    import torch

    from dlsa_cli.flow import fit_filter
    from dlsa_cli.io.features import read_features

    fs = read_features(digits / "train.safetensors")
    opts = dict(clusters=8, epochs=2, batch_size=64, hidden=32, seed=1)
    ckpt = tmp_path / "ck"

    def stop(rec):
        raise KeyboardInterrupt

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with pytest.raises(KeyboardInterrupt):
            fit_filter(fs, checkpoint=ckpt, on_epoch=stop, **opts)
        torch.set_num_threads(2)
        notes: list[str] = []
        fit_filter(fs, checkpoint=ckpt, resume=True, on_warning=notes.append, **opts)
    finally:
        torch.set_num_threads(threads)
    assert any("torch_threads 1, this one 2" in n for n in notes), notes
