"""Nothing lost, nothing silent (issue 21): a user's folders, special files, ignored options, malformed files,
leftovers and usage errors, each through the real CLI.

Every refusal is asserted the same way (`refused`): a non-zero exit, exactly one line on stderr holding the
expected words, no traceback, every input and every unrelated file in the output folder byte-identical, and
no staging leftover beside the output.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import invoke, run_cli

CPU = ("--device", "cpu")
FAST_CASCADE = ("--num-depths", "1", "--clusters", "3", "--filter-epochs", "2", "--filter-batch-size", "64",
                "--hidden", "16", "--epochs", "2", "--device", "cpu", "--quiet")


def snapshot(*roots: Path) -> dict[str, bytes]:
    """Every file under `roots` (or the file itself), by path, with its bytes."""
    out: dict[str, bytes] = {}
    for root in roots:
        files = [root] if root.is_file() else [p for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()]
        out.update({str(p): p.read_bytes() for p in files})
    return out


def refused(r, needle: str, before: dict[str, bytes], *, out: Path | None = None, code: int | None = None) -> str:
    """One stderr line with `needle`, a non-zero exit (`code`), inputs unchanged, nothing stale at `out`."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and (code is None or r.returncode == code), (r.returncode, r.stderr)
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert needle in lines[0], lines[0]
    after = {k: Path(k).read_bytes() for k in before if Path(k).is_file()}
    assert after == before, "an input or an unrelated file changed"
    if out is not None:
        stale = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
        assert not stale, f"staging left behind: {stale}"
    return lines[0]


@pytest.fixture(scope="module")
def cascade(digits, tmp_path_factory) -> Path:
    """A fitted one-depth cascade of the digits data."""
    run = tmp_path_factory.mktemp("casc") / "run"
    r = invoke("fit-cascade", digits / "train.safetensors", "--val", digits / "val.safetensors", "-o", run, *FAST_CASCADE)
    assert r.returncode == 0, r.stderr
    return run


# ----------------------------------------------------------------------------- 1. data loss: the folder rule


def test_make_dataset_refuses_a_folder_holding_the_users_files(tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "data"
    (out / "raw").mkdir(parents=True)
    (out / "README").write_text("mine\n")
    (out / "raw" / "x.csv").write_text("1,2\n")
    before = snapshot(out)
    refused(invoke("make-dataset", "digits-lt", "-o", out), "did not write", before, out=out)
    assert sorted(p.name for p in out.iterdir()) == ["README", "raw"]


def test_make_dataset_writes_again_into_its_own_folder_and_keeps_what_the_user_added(tmp_path):
    pytest.importorskip("sklearn")
    out = tmp_path / "data"
    assert invoke("make-dataset", "digits-lt", "-o", out).returncode == 0
    (out / "notes.txt").write_text("mine\n")
    r = invoke("make-dataset", "digits-lt", "-o", out, "--seed", "1")
    assert r.returncode == 0, r.stderr
    assert (out / "notes.txt").read_text() == "mine\n" and (out / ".dlsa-make-dataset").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".data.")]


@pytest.mark.parametrize("manifest", ["folder", "other.json"])
def test_predict_never_writes_over_a_file_of_the_cascade_it_reads(cascade, digits, tmp_path, manifest):
    run = tmp_path / "run"
    shutil.copytree(cascade, run, symlinks=True)
    shutil.copyfile(run / "cascade.json", run / "other.json")
    model = run if manifest == "folder" else run / "other.json"
    before = snapshot(run, digits)
    for target in (run / "depth1" / "train.parquet", run / "depth1" / "val.parquet"):
        r = invoke("predict", model, digits / "test.safetensors", "-o", target, *CPU)
        refused(r, "inside one of this command's inputs", before, out=target)


def test_predict_replaces_its_own_earlier_predictions_inside_the_cascade_folder(cascade, digits, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(cascade, run, symlinks=True)
    for _ in range(2):  # recipes/dlsa.sh predicts into its run folder, and is rerun to resume
        r = invoke("predict", run, digits / "test.safetensors", "-o", run / "dlsa.parquet", *CPU, "--quiet")
        assert r.returncode == 0, r.stderr


def test_split_replaces_no_file_it_did_not_write(cascade, digits, tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    (out / "test.parquet").write_text("the user's table\n")
    before = snapshot(out, digits, cascade / "depth1" / "filter.safetensors")
    r = invoke("split", cascade / "depth1" / "filter.safetensors", digits / "test.safetensors", "-o", out, *CPU)
    refused(r, "no earlier split wrote it", before, out=out)
    assert sorted(p.name for p in out.iterdir()) == ["test.parquet"]


# ----------------------------------------------------------------------------- 2. hangs: special files


def test_a_fifo_as_features_is_refused_before_it_is_opened(cascade, tmp_path):
    fifo = tmp_path / "test.safetensors"
    os.mkfifo(fifo)
    out = tmp_path / "p.parquet"
    r = run_cli("predict", cascade, fifo, "-o", out, *CPU, timeout=120)  # a real process: a hang would time out
    refused(r, "not a regular file", snapshot(cascade), out=out)
    assert not out.exists()


# ----------------------------------------------------------------------------- 3. ignored options


IGNORED = [
    (["fit-classifier", "{train}", "--input", "latent"], "--input latent applies to cluster-aided"),
    (["fit-classifier", "{train}", "--prior-train", "loo"], "--prior-train loo applies to cluster-aided"),
    (["fit-classifier", "{train}", "--val", "{val}", "--val-weights-from", "{val}", "--select", "last"],
     "--val-weights-from weighs"),
    (["fit-classifier", "{train}", "--val-weights-from", "{val}"], "--val-weights-from needs --val"),
    (["fit-filter", "{train}", "--routing", "knn-tail", "--neighbours", "100000"], "--neighbours 100000: more than"),
    (["fit-filter", "{train}", "--depth", "0"], "--depth 0"),
    (["fit-filter", "{train}", "--clusters", "100000000"], "--clusters 100000000: the flow filter would take"),
    (["fit-filter", "{train}", "--hidden", "100000000"], "--hidden 100000000: the flow filter would take"),
    (["fit-filter", "{train}", "--blocks", "100000000"], "--blocks 100000000: the flow filter would take"),
    (["fit-classifier", "{train}", "--model", "ride", "--experts", "100000000"], "--experts 100000000: the classifier"),
    (["fit-classifier", "{train}", "--model", "ride", "--expert-hidden", "100000000"], "--expert-hidden 100000000"),
    (["fit-classifier", "{train}", "--momentum", "-1"], "--momentum -1"),
    (["fit-cascade", "{train}", "--from-scratch", "--baseline-init", "{head}"], "--baseline-init starts the baseline"),
    (["fit-cascade", "{train}", "--filter-clusters", "100000000"], "--filter-clusters 100000000"),
]


@pytest.mark.parametrize(("args", "needle"), IGNORED, ids=[" ".join(a[2:]) for a, _ in IGNORED])
def test_an_option_that_would_be_ignored_or_cannot_fit_is_refused_before_any_work(digits, tmp_path, args, needle):
    head = tmp_path / "head.safetensors"
    from dlsa_cli.io.files import write_safetensors

    write_safetensors(head, {"weight": np.zeros((10, 64), np.float32), "bias": np.zeros(10, np.float32)}, kind="head")
    out = tmp_path / ("run" if args[0] == "fit-cascade" else "out.safetensors")
    subs = {"{train}": str(digits / "train.safetensors"), "{val}": str(digits / "val.safetensors"), "{head}": str(head)}
    before = snapshot(digits, head)
    r = invoke(*[subs.get(a, a) for a in args], "-o", out, "--epochs", "1", *CPU)
    refused(r, needle, before, out=out)
    assert not out.exists()
    if "GiB" not in r.stderr and "would take" in needle:
        pytest.fail(r.stderr)


def test_resume_on_a_folder_with_no_run_says_it_starts_a_new_one(digits, tmp_path):
    out = tmp_path / "run"
    r = invoke("fit-cascade", digits / "train.safetensors", "-o", out, *FAST_CASCADE[:-1], "--resume")
    assert r.returncode == 0, r.stderr
    assert "holds no run to resume; starting a new one" in r.stderr


def _tiny_backbone(tmp_path: Path) -> tuple[Path, Path]:
    """Two real images in a class folder, and a TorchScript backbone that pools them."""
    image = pytest.importorskip("PIL.Image")
    torch = pytest.importorskip("torch")
    (tmp_path / "images" / "cat").mkdir(parents=True)
    for i in range(2):
        image.fromarray(np.full((40, 30, 3), 40 * i, np.uint8)).save(tmp_path / "images" / "cat" / f"{i}.png")
    net = torch.nn.Conv2d(3, 4, kernel_size=3)
    path = tmp_path / "tiny.pt"
    torch.jit.script(net).save(str(path))
    return tmp_path / "images", path


def test_extract_crop_larger_than_the_resize_is_refused(tmp_path):
    images, net = _tiny_backbone(tmp_path)
    out = tmp_path / "f.safetensors"
    before = snapshot(images, net)
    r = invoke("extract", images, "-o", out, "--backbone", net, "--resize", "32", "--crop", "300", *CPU)
    refused(r, "--crop 300 is larger than the resized shorter side 32", before, out=out)
    assert not out.exists()


@pytest.mark.parametrize("kind", ["symlink", "foreign"])
def test_extract_leaves_a_resume_folder_it_did_not_make_alone(tmp_path, kind):
    images, net = _tiny_backbone(tmp_path)
    out = tmp_path / "f.safetensors"
    resume = tmp_path / "f.safetensors.resume"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine\n")
    if kind == "symlink":
        resume.symlink_to(elsewhere, target_is_directory=True)
    else:
        resume.mkdir()
        (resume / "keep.txt").write_text("mine\n")
    before = snapshot(images, net, elsewhere, resume)
    r = invoke("extract", images, "-o", out, "--backbone", net, "--resize", "32", "--crop", "24", *CPU)
    refused(r, "extract would remove", before, out=out)
    assert not out.exists() and (resume.is_symlink() == (kind == "symlink"))


# ----------------------------------------------------------------------------- 4-5. malformed files


def _raw_safetensors(path: Path, header: object, data: bytes) -> Path:
    h = json.dumps(header).encode()
    path.write_bytes(len(h).to_bytes(8, "little") + h + data)
    return path


def _with_meta(digits: Path, path: Path, **meta: object) -> Path:
    from dlsa_cli.io.features import read_features, write_features

    fs = read_features(digits / "train.safetensors")
    fs.meta = {}
    write_features(path, fs, meta=meta)
    return path


def _parquet(path: Path, **cols: object) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({k: pa.array(v) for k, v in cols.items()}), str(path))
    return path


BROKEN = {
    "entry-is-a-list": (lambda d, p: _raw_safetensors(p / "a.safetensors", {"features": [1, 2]}, b"\0" * 24),
                        "is a JSON list"),
    "shape-lies": (lambda d, p: _raw_safetensors(
        p / "a.safetensors", {"features": {"dtype": "F32", "shape": [1000, 2], "data_offsets": [0, 24]}}, b"\0" * 24),
        "does not match its 24 bytes"),
    "offsets-past-end": (lambda d, p: _raw_safetensors(
        p / "a.safetensors", {"features": {"dtype": "F32", "shape": [3, 2], "data_offsets": [0, 24000]}}, b"\0" * 24),
        "truncated?"),
    "truncated": (lambda d, p: (p / "a.safetensors").write_bytes((d / "test.safetensors").read_bytes()[:50000])
                  and p / "a.safetensors", "truncated?"),
    "num-classes-string": (lambda d, p: _with_meta(d, p / "a.safetensors", num_classes="ten"),
                           "metadata 'num_classes' must be a whole number"),
    "class-names-number": (lambda d, p: _with_meta(d, p / "a.safetensors", class_names=5),
                           "metadata 'class_names' must be a list of strings"),
    "train-counts-strings": (lambda d, p: _with_meta(d, p / "a.safetensors", train_counts=["a"] * 10),
                             "metadata 'train_counts' must be a list"),
    "train-counts-negative": (lambda d, p: _with_meta(d, p / "a.safetensors", train_counts=[-1] * 10),
                              "metadata 'train_counts' must be a list"),
    "label-above-num-classes": (lambda d, p: _with_meta(d, p / "a.safetensors", num_classes=3),
                                "out of range for the 3 classes"),
}

PARQUET = {
    "null-row": (dict(features=[[1.0, 2.0], None, [3.0, 4.0]], label=[0, 1, 0]), "empty (null) row"),
    "ragged": (dict(features=[[1.0, 2.0], [1.0], [3.0, 4.0]], label=[0, 1, 0]), "different lengths"),
    "nested": (dict(features=[[[1.0], [2.0]]] * 3, label=[0, 1, 0]), "must be numbers"),
    "strings": (dict(features=[["a", "b"]] * 3, label=[0, 1, 0]), "must be numbers"),
    "null-label": (dict(features=[[1.0, 2.0]] * 3, label=[0, None, 0]), "labels must be integers"),
    "string-label": (dict(features=[[1.0, 2.0]] * 3, label=["a", "b", "a"]), "labels must be integers"),
    "duplicate-ids": (dict(features=[[1.0, 2.0]] * 3, label=[0, 1, 0], id=[1, 1, 2]), "ids are not unique"),
    "empty-lists": (dict(features=[[], [], []], label=[0, 1, 0]), "features are empty"),
}


@pytest.mark.parametrize("case", list(BROKEN))
@pytest.mark.parametrize("command", ["inspect", "fit-classifier", "split", "predict"])
def test_a_malformed_safetensors_file_is_one_line_in_every_command(digits, cascade, tmp_path, case, command):
    make, needle = BROKEN[case]
    bad = make(digits, tmp_path)
    out = tmp_path / {"inspect": "x", "fit-classifier": "k.safetensors", "split": "s", "predict": "p.parquet"}[command]
    args = {
        "inspect": ["inspect", bad],
        "fit-classifier": ["fit-classifier", bad, "-o", out, "--epochs", "1", "--batch-size", "2", *CPU],
        "split": ["split", cascade / "depth1" / "filter.safetensors", bad, "-o", out, *CPU],
        "predict": ["predict", cascade, bad, "-o", out, *CPU],
    }[command]
    refused(invoke(*args), needle, snapshot(bad, cascade), out=out)
    assert not out.exists()


@pytest.mark.parametrize("case", list(PARQUET))
def test_inspect_describes_a_broken_parquet_feature_table_then_says_what_is_broken(tmp_path, case):
    cols, needle = PARQUET[case]
    bad = _parquet(tmp_path / "t.parquet", **cols)
    before = snapshot(bad)
    r = invoke("inspect", bad)
    line = refused(r, needle, before)
    assert "does not read as a feature table" in line and r.stdout.strip(), "the table is still described"
    r = invoke("fit-classifier", bad, "-o", tmp_path / "k.safetensors", "--epochs", "1", *CPU)
    refused(r, needle, before, out=tmp_path / "k.safetensors")


def test_a_manifest_nested_50000_levels_deep_is_one_line(digits, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "cascade.json").write_text('{"depths": ' + "[" * 50000 + "]" * 50000 + ', "final": "f.safetensors"}')
    out = tmp_path / "p.parquet"
    refused(invoke("predict", run, digits / "test.safetensors", "-o", out, *CPU), "nested more than 64 levels",
            snapshot(run, digits), out=out)


# ----------------------------------------------------------------------------- 6-7. leftovers, messages


def test_a_killed_writers_staging_folder_is_swept_by_the_next_write(digits, cascade, tmp_path):
    out = tmp_path / "p.parquet"
    dead = tmp_path / ".p.parquet.999999999-abcdefgh.tmp"  # the staging name of a writer that no longer runs
    dead.mkdir()
    (dead / "part-0.parquet").write_text("half\n")
    r = invoke("predict", cascade, digits / "test.safetensors", "-o", out, *CPU, "--quiet")
    assert r.returncode == 0, r.stderr
    assert not dead.exists() and out.is_file()


def test_streamed_metadata_refuses_nan_like_every_writer(tmp_path):
    from dlsa_cli.errors import DlsaError
    from dlsa_cli.io.stream import stream_table

    with pytest.raises(DlsaError, match="NaN or infinite"), \
            stream_table(tmp_path / "t.parquet", kind="split", meta={"x": float("nan")}) as sink:
        sink.write({"a": np.arange(3)})
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(("args", "needle"), [
    (["fit-filter", "{train}", "--epochs", "abc"], "Invalid value for '--epochs'"),
    (["fit-filter"], "Missing argument"),
    (["fit-filter", "{train}", "--no-such-option"], "No such option"),
    (["no-such-command"], "No such command"),
])
def test_a_usage_error_is_one_line_with_the_usage_on_it(digits, args, needle):
    r = invoke(*[str(digits / "train.safetensors") if a == "{train}" else a for a in args])
    line = refused(r, needle, snapshot(digits), code=2)
    assert "(usage: python -m dlsa_cli" in line and "-h' for help" in line


def test_a_pickled_pt_file_is_one_line(tmp_path):
    torch = pytest.importorskip("torch")
    bad = tmp_path / "x.pt"
    torch.save({"features": torch.zeros(3, 2), "extra": Path("pickled")}, str(bad))
    refused(invoke("inspect", bad), "pickled Python objects", snapshot(bad))
