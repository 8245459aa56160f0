"""Misuse, faults and absurd input, through the real CLI in a subprocess (issue 8).

Every refusal is checked the same way: a non-zero exit, exactly one line on
stderr that says what is wrong, no traceback, nothing written, and every input
file byte-for-byte unchanged (SHA-256 before and after). Each case here failed
on commit 38124f6 (it was written over, exited 0, or printed a traceback).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import REPO, invoke, run_cli

from dlsa_cli.io.features import FeatureSet, read_features, write_features
from dlsa_cli.io.files import read_table

FILTER = ("-k", "8", "--epochs", "2", "--batch-size", "64", "--hidden", "32", "--device", "cpu", "--quiet")
CLASSIFIER = ("--epochs", "2", "--device", "cpu", "--quiet")


def _sha(p: Path) -> dict[str, str]:
    files = sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p]
    return {str(q): hashlib.sha256(q.read_bytes()).hexdigest() for q in files}


def refused(args: list, inputs: list[Path], needle: str, *, out: Path | None = None, env: dict | None = None, preexec=None,
            sub: bool = True):
    """Run the CLI (a subprocess; in this process with sub=False, for the further cases of a kind
    already covered by a subprocess); assert a clean refusal that leaves the inputs and `out` alone."""
    before = {k: v for p in inputs for k, v in _sha(p).items()}
    out_before = None if out is None or not out.exists() else _sha(out)
    if not sub:
        r = invoke(*args)
    elif env is None and preexec is None:
        r = run_cli(*args)
    else:
        r = subprocess.run(
            [sys.executable, "-m", "dlsa_cli", *map(str, args)], capture_output=True, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200", **(env or {})}, preexec_fn=preexec, timeout=600,
        )
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1, r.stderr
    assert needle in lines[0], lines[0]
    assert {k: v for p in inputs for k, v in _sha(p).items()} == before, "an input changed"
    if out is not None:
        assert (None if not out.exists() else _sha(out)) == out_before, "the output was written"
    return lines[0]


def ok(*args) -> None:
    r = invoke(*args)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def run(digits, tmp_path_factory) -> Path:
    """digits-lt train/val/test, a filter, a baseline and a one-depth cascade folder."""
    d = tmp_path_factory.mktemp("safety")
    for name in ("train", "val", "test"):
        shutil.copy(digits / f"{name}.safetensors", d / f"{name}.safetensors")
    ok("fit-filter", d / "train.safetensors", "-o", d / "filter.safetensors", *FILTER)
    ok("fit-classifier", d / "train.safetensors", "--val", d / "val.safetensors", "-o", d / "baseline.safetensors", *CLASSIFIER)
    c = d / "cascade"
    ok("split", d / "filter.safetensors", d / "train.safetensors", d / "val.safetensors", "-o", c, "--quiet", "--device", "cpu")
    shutil.copy(d / "filter.safetensors", c / "filter.safetensors")
    ok("fit-classifier", c / "train.routed.safetensors", "--val", c / "val.routed.safetensors", "--filter", c / "filter.safetensors",
       "--init", d / "baseline.safetensors", "--allow-missing-val-classes", "-o", c / "cluster.safetensors", *CLASSIFIER)
    ok("fit-classifier", c / "train.rest.safetensors", "--val", c / "val.rest.safetensors", "--init", d / "baseline.safetensors",
       "--allow-missing-val-classes", "-o", c / "final.safetensors", *CLASSIFIER)
    manifest = {"dlsa_kind": "cascade", "depths": [{"filter": "filter.safetensors", "classifier": "cluster.safetensors"}],
                "final": "final.safetensors"}
    (c / "cascade.json").write_text(json.dumps(manifest))
    ok("predict", d / "baseline.safetensors", d / "test.safetensors", "-o", d / "baseline.parquet", "--quiet", "--device", "cpu")
    return d


# ----------------------------------------------------------------------------- 1. data loss


def test_no_command_writes_over_its_input(run):
    train, base, test = run / "train.safetensors", run / "baseline.safetensors", run / "test.safetensors"
    refused(["fit-classifier", train, "-o", train, *CLASSIFIER], [train], "inputs")
    refused(["predict", base, test, "-o", base], [base, test], "must end", sub=False)  # the extension says it first
    pq_in = run / "test.parquet"
    pq.write_table(pa.table({"features": pa.array(read_features(test).features.tolist()), "label": read_features(test).labels}), pq_in)
    refused(["predict", base, pq_in, "-o", pq_in, "--device", "cpu"], [base, pq_in], "inputs")
    refused(["fit-filter", train, "-o", train, *FILTER], [train], "inputs", sub=False)
    refused(["fit-classifier", train, "--init", base, "-o", base, *CLASSIFIER], [train, base], "inputs", sub=False)
    refused(["split", run / "filter.safetensors", pq_in, "-o", run, "--device", "cpu"], [pq_in, run / "filter.safetensors"], "inputs", sub=False)


def test_a_link_to_an_input_is_that_input(run, tmp_path):
    train = run / "train.safetensors"
    link = tmp_path / "link.safetensors"
    link.symlink_to(train)
    refused(["fit-classifier", train, "-o", link, *CLASSIFIER], [train], "inputs")
    hard = tmp_path / "hard.safetensors"
    os.link(train, hard)
    refused(["fit-classifier", hard, "-o", train, *CLASSIFIER], [train], "inputs", sub=False)


def test_split_never_removes_an_input_listed_by_the_previous_split(run):
    """`split F2 C/train.rest.safetensors -o C`: the previous split.json in C lists that very input."""
    c = run / "cascade"
    rest = c / "train.rest.safetensors"
    refused(["split", run / "filter.safetensors", rest, "-o", c, "--device", "cpu"], [rest, c], "inputs", sub=False)


def test_make_dataset_never_replaces_a_folder_holding_its_source(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    src = d / "source.npz"
    np.savez(src, features=np.zeros((4, 3), "float32"), labels=np.arange(4))
    refused(["make-dataset", "caltech101-lt", "--source", src, "-o", d], [src], "inputs", sub=False)


# ----------------------------------------------------------------------------- 2. silent wrong numbers


def _huge(run: Path, tmp_path: Path) -> Path:
    fs = read_features(run / "test.safetensors")
    x = fs.features.copy()
    x[3] *= 1e30
    x[7] = 1e19
    p = tmp_path / "huge.safetensors"
    write_features(p, FeatureSet(x, fs.labels, None, {}, None))
    return p


def test_huge_features_stop_split_predict_and_fit_filter_naming_the_rows(run, tmp_path):
    huge = _huge(run, tmp_path)
    f = run / "filter.safetensors"
    out = tmp_path / "split"
    line = refused(["split", f, huge, "-o", out, "--device", "cpu"], [f, huge], "rows 3, 7", out=out)
    assert str(huge) in line and "log p(x)" in line
    pred = tmp_path / "p.parquet"
    line = refused(["predict", run / "cascade", huge, "-o", pred, "--device", "cpu"], [run / "cascade", huge], "rows 3, 7", out=pred, sub=False)
    assert str(huge) in line
    flt = tmp_path / "f.safetensors"
    line = refused(["fit-filter", huge, "-o", flt, *FILTER], [huge], "rows 3, 7", out=flt, sub=False)
    assert "--lr" not in line  # not a learning-rate problem


def test_repeated_ids_joined_to_labels_are_refused(run, tmp_path):
    t = read_table(run / "baseline.parquet")[0].drop_columns(["label"])
    dup = pa.concat_tables([t, t.slice(0, 3)])
    p = tmp_path / "dup.parquet"
    pq.write_table(dup, p)
    refused(["evaluate", p, "--labels", run / "test.safetensors", "--train", run / "train.safetensors"],
            [p, run / "test.safetensors"], "repeat an id")


def test_overlapping_groups_and_out_of_range_options_are_refused(run, tmp_path):
    p, train = run / "baseline.parquet", run / "train.safetensors"
    refused(["evaluate", p, "--train", train, "--few-below", "50", "--many-above", "20"], [p, train], "overlap")
    out = tmp_path / "x.safetensors"
    refused(["fit-filter", train, "-o", out, "--share", "1.0", *FILTER], [train], "--share", out=out, sub=False)
    refused(["fit-classifier", train, "-o", out, "--val-fraction", "1.0", *CLASSIFIER], [train], "--val-fraction", out=out, sub=False)
    refused(["split", run / "filter.safetensors", train, "-o", tmp_path / "s", "--batch-size", "0"], [train], "--batch-size", sub=False)
    refused(["make-dataset", "digits-lt", "-o", tmp_path / "m", "--val-fraction", "1"], [], "--val-fraction", out=tmp_path / "m", sub=False)


def test_output_name_must_match_what_is_written(run, tmp_path):
    out = tmp_path / "x.csv"
    refused(["predict", run / "baseline.safetensors", run / "test.safetensors", "-o", out], [run / "test.safetensors"], ".parquet", out=out)
    out2 = tmp_path / "f.parquet"
    refused(["fit-filter", run / "train.safetensors", "-o", out2, *FILTER], [run / "train.safetensors"], ".safetensors", out=out2, sub=False)


def test_json_is_strict():
    from dlsa_cli.errors import DlsaError
    from dlsa_cli.io.files import strict_json

    assert strict_json({"a": [1.5, None]}) == '{"a": [1.5, null]}'
    with pytest.raises(DlsaError, match=r"a\[1\].b is NaN"):
        strict_json({"a": [0, {"b": float("nan")}]})


# ----------------------------------------------------------------------------- 3. one line, not a traceback


def test_output_that_is_a_folder_is_refused_before_training(run, tmp_path):
    d = tmp_path / "existing"
    d.mkdir()
    before = os.listdir(d)
    refused(["fit-filter", run / "train.safetensors", "-o", d, "--epochs", "50"], [run / "train.safetensors"], "is a folder")
    assert os.listdir(d) == before


def test_unwritable_folder_is_refused_before_work(run):
    target = Path("/sys/dlsa-test.safetensors")  # sysfs: no one, root included, may create files there
    if not Path("/sys").is_dir():
        pytest.skip("no /sys here to stand for a folder nobody can write")
    refused(["fit-classifier", run / "train.safetensors", "-o", target, *CLASSIFIER], [run / "train.safetensors"], "cannot write")


def test_file_size_limit_while_writing_is_one_line(run, tmp_path):
    out = tmp_path / "big.safetensors"

    def limit() -> None:  # in the child: a 2,000-byte file-size limit (a classifier of digits is larger)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2_000, 2_000))

    line = refused(["fit-classifier", run / "train.safetensors", "-o", out, *CLASSIFIER], [run / "train.safetensors"], str(out),
                   out=out, preexec=limit)
    assert "cannot write" in line
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".big")], "a temporary file was left"


def test_inspect_of_a_zero_row_file_is_a_summary(tmp_path):
    p = tmp_path / "zero.parquet"
    pq.write_table(pa.table({"features": pa.array([], pa.list_(pa.float32())), "label": pa.array([], pa.int64())}), p)
    r = invoke("inspect", p, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["fields"]["samples (N)"] == 0


# ----------------------------------------------------------------------------- 4. trust boundaries


@pytest.mark.parametrize("where", ["../outside.safetensors", "ABSOLUTE"])
def test_manifest_paths_stay_in_the_cascade_folder(run, tmp_path, where):
    c = tmp_path / "c"
    shutil.copytree(run / "cascade", c)
    outside = tmp_path / "outside.safetensors"
    shutil.copy(c / "final.safetensors", outside)
    raw = json.loads((c / "cascade.json").read_text())
    raw["final"] = str(outside) if where == "ABSOLUTE" else where
    (c / "cascade.json").write_text(json.dumps(raw))
    pred = tmp_path / "p.parquet"
    refused(["predict", c, run / "test.safetensors", "-o", pred, "--device", "cpu"], [c, outside], "outside the cascade folder", out=pred,
            sub=where != "ABSOLUTE")
    r = invoke("predict", c, run / "test.safetensors", "-o", pred, "--device", "cpu", "--quiet", "--allow-outside-paths")
    assert r.returncode == 0, r.stderr
    assert pred.exists()


# ----------------------------------------------------------------------------- 5. leftovers


SPLIT_KILLER = """
import importlib, os, signal, sys
sp = importlib.import_module("dlsa_cli.flow.split")  # the module, not the function dlsa_cli.flow.split
one = sp._split_file
def one_then_die(*a, **k):
    rep = one(*a, **k)
    os.kill(os.getpid(), signal.SIGKILL)
sp._split_file = one_then_die
from dlsa_cli.cli import main
sys.argv = ["dlsa"] + sys.argv[1:]
main()
"""


def test_staging_of_a_sigkilled_split_is_removed_by_the_next(run, tmp_path):
    out = tmp_path / "s"
    args = ["split", str(run / "filter.safetensors"), str(run / "train.safetensors"), str(run / "test.safetensors"), "-o", str(out),
            "--device", "cpu", "--quiet"]
    r = subprocess.run([sys.executable, "-c", SPLIT_KILLER, *args], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == -9, r.stderr  # killed after its first input was staged
    stale = [p for p in tmp_path.iterdir() if p.name.startswith(".s.")]
    assert len(stale) == 1 and (stale[0] / "train.parquet").exists() and not out.exists()
    alive = tmp_path / f".s.{os.getpid()}-abcd1234.tmp"  # a writer that is still running keeps its staging
    alive.mkdir()
    r = run_cli(*args[:2], str(run / "test.safetensors"), *args[4:])
    assert r.returncode == 0, r.stderr
    assert not stale[0].exists()
    assert alive.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".s." + alive.name[3:], "s"])


def test_second_split_removes_only_what_the_first_listed(run, tmp_path):
    out = tmp_path / "s"
    f = run / "filter.safetensors"
    assert invoke("split", f, run / "train.safetensors", run / "val.safetensors", "-o", out, "--quiet", "--device", "cpu").returncode == 0
    shutil.copy(f, out / "filter.safetensors")  # the depth's own files live there too
    (out / "notes.txt").write_text("mine")
    assert invoke("split", f, run / "test.safetensors", "-o", out, "--quiet", "--device", "cpu").returncode == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["filter.safetensors", "notes.txt", "split.json", "test.parquet",
                            *[f"test.{part}.safetensors" for part in ("routed", "rest")
                              if json.loads((out / "split.json").read_text())["files"]["test"]["outputs"][part]]])


# ----------------------------------------------------------------------------- 7. words


def test_misleading_words_are_gone(run, tmp_path):
    train = run / "train.safetensors"
    out = tmp_path / "c.safetensors"
    line = refused(["fit-classifier", train, "--init", run / "filter.safetensors", "-o", out, *CLASSIFIER], [train], "'filter' file", out=out)
    assert "(64" not in line
    import datetime

    import torch

    pt = tmp_path / "pickled.pt"  # a date is a pickled object that weights_only refuses
    torch.save({"features": torch.zeros(4, 3), "labels": torch.arange(4), "extra": datetime.date(2020, 1, 1)}, pt)
    line = refused(["inspect", pt], [pt], "pickled Python objects", sub=False)
    assert line.rstrip().endswith(")") and "[1m" not in line  # one whole sentence, no terminal codes
    nul = tmp_path / "null.parquet"
    pq.write_table(pa.table({"features": pa.array([[1.0, 2.0], None, [3.0, 4.0]]), "label": [0, 1, 0]}), nul)
    line = refused(["fit-filter", nul, "-o", out, *FILTER], [nul], "null", out=out, sub=False)
    assert "nan" not in line
    obj = tmp_path / "obj.npz"
    np.savez(obj, features=np.array([object()] * 5, dtype=object))
    line = refused(["inspect", obj], [obj], "object", sub=False)
    assert "(5,)" not in line


def test_filter_settings_errors_name_real_flags():
    """The library names a setting as its field (`FilterConfig.made_blocks`); fit-filter names it by its flag."""
    from dlsa_cli.cli.derive import flag_map, name_flags
    from dlsa_cli.cli.filter import FIT_FILTER
    from dlsa_cli.errors import DlsaError
    from dlsa_cli.flow import FilterConfig

    with pytest.raises(DlsaError) as e:
        FilterConfig(made_blocks=-1).check()
    assert "--made-blocks" not in str(e.value) and "FilterConfig.made_blocks" in str(e.value)
    flags = flag_map(FIT_FILTER)
    assert set(flags) == {f"FilterConfig.{n}" for n in FilterConfig.__dataclass_fields__} | {
        "FilterRun.depth", "FilterRun.allow_singletons", "FilterRun.router", "FilterRun.tf32", "FilterConfig.preset"}
    assert name_flags(str(e.value), flags).startswith("--made-blocks -1:")
    r = invoke("fit-filter", "--help")
    for flag in flags.values():
        assert flag in r.stdout, flag


@pytest.mark.parametrize("batch", [None, "3"])
def test_split_goes_on_past_nonfinite_rows_only_when_asked(run, tmp_path, batch):
    """--allow-nonfinite: the rows go to the rest, flagged in a `finite` column and counted; split.json stays JSON.

    Streamed like every split: in batches of 3 rows the two rows fall in different batches.
    """
    huge = _huge(run, tmp_path)
    out = tmp_path / "s"
    more = [] if batch is None else ["--batch-size", batch]
    r = invoke("split", run / "filter.safetensors", huge, "-o", out, "--allow-nonfinite", "--device", "cpu", "--json", *more)
    assert r.returncode == 0, r.stderr
    assert "2 sample(s) have a NaN or infinite log p(x)" in r.stderr
    report = json.loads((out / "split.json").read_text())  # strict: json.loads would accept NaN, so check the text too
    assert "NaN" not in (out / "split.json").read_text() and "Infinity" not in (out / "split.json").read_text()
    assert report["files"]["huge"]["nonfinite"] == 2
    t = read_table(out / "huge.parquet")[0]
    finite = np.asarray(t.column("finite").to_pylist())
    assert np.flatnonzero(~finite).tolist() == [3, 7]
    assert not np.asarray(t.column("routed").to_pylist())[[3, 7]].any()
    ll = np.asarray(t.column("log_likelihood").to_pylist(), dtype=float)
    mean = report["files"]["huge"]["mean_log_likelihood"]["all"]
    assert mean == pytest.approx(ll[finite].mean(), rel=1e-9)  # the mean leaves the non-finite rows out
    rest = read_features(out / "huge.rest.safetensors")
    assert rest.n == len(finite) - int(np.asarray(t.column("routed").to_pylist()).sum())
