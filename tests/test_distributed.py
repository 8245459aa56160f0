"""Past one process: shards, collectives, agreed errors and global-batch DDP, under real torchrun (2 gloo processes on CPU)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dlsa_cli.runtime import distributed as d

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("dist_worker.py")


# A run to compare with torchrun's: one thread, as each rank has (a matrix product's last bits depend on the
# thread count, and a route near the threshold with them).
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


def torchrun(*args: str, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node N ARGS` with one thread per process, output captured."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", COLUMNS="200", DLSA_DIST_TIMEOUT="120")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def _worker(scenario: str, out: Path) -> list[dict]:
    r = torchrun(WORKER, scenario, out)
    assert r.returncode == 0, r.stderr[-3000:]
    return [json.loads((out / f"{scenario}.{rank}.json").read_text()) for rank in (0, 1)]


@pytest.mark.parametrize("n", [0, 1, 2, 3, 10, 11, 437_513])
@pytest.mark.parametrize("w", [1, 2, 3, 8])
def test_shard_ranges_are_contiguous_disjoint_covering_and_balanced(n, w):
    ranges = d.shard_ranges(n, w)
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))  # contiguous, hence disjoint and covering
    sizes = [b - a for a, b in ranges]
    assert min(sizes) >= 0 and max(sizes) - min(sizes) <= 1
    assert [d.shard_range(n, r, w) for r in range(w)] == ranges


def test_alone_everything_is_a_world_of_one(monkeypatch):
    for k in d.TORCHRUN_VARS:
        monkeypatch.delenv(k, raising=False)
    info, dev = d.setup("cpu")
    assert (info.rank, info.world_size, info.active, str(dev)) == (0, 1, False, "cpu")
    assert d.shard_range(7) == (0, 7)
    assert d.all_gather_object("x") == ["x"] and d.gather_object(3) == [3] and d.broadcast_object(5) == 5
    assert d.provenance_fields(7) == {"world_size": 1, "row_ranges": [[0, 7]]}
    assert d.collective(lambda: 4) == 4
    from dlsa_cli.errors import InputError

    with pytest.raises(InputError):
        d.collective(lambda: (_ for _ in ()).throw(InputError("bad")))
    from dlsa_cli.io.files import provenance

    assert provenance("x")["world_size"] == 1


def test_launched_by_torchrun_needs_the_rendezvous_variables():
    full = {k: "0" for k in d.TORCHRUN_VARS}
    assert d.launched_by_torchrun(full)
    assert not d.launched_by_torchrun({k: v for k, v in full.items() if k != "MASTER_PORT"})


def test_collectives_under_torchrun(tmp_path):
    r0, r1 = _worker("collectives", tmp_path)
    assert (r0["world_size"], r0["backend"], r0["device"]) == (2, "gloo", "cpu")
    assert (r0["threads"], r1["threads"]) == (1, 1)  # equal threads per process
    assert (r0["range"], r1["range"]) == ([0, 5], [5, 11])
    assert r0["gathered"] == r1["gathered"] == [list(range(5)), list(range(5, 11))]  # rank order = input order
    assert r0["at_zero"] == [{"rank": 0}, {"rank": 1}] and r1["at_zero"] is None
    assert r0["broadcast"] == r1["broadcast"] == "from 0"
    assert r0["sum"] == r1["sum"] == 2 * 1 + 2 * 2
    assert r0["grad"] == r1["grad"] == 2 * 2  # the backward of the sum sums the ranks' gradients
    assert r0["prov"] == {"world_size": 2, "row_ranges": [[0, 5], [5, 11]]}


@pytest.mark.slow
def test_one_ranks_error_is_every_ranks_error(tmp_path):
    r0, r1 = _worker("error", tmp_path)
    assert r0["raised"] == r1["raised"] == "x.safetensors: row 7 holds NaN (repair it)"
    assert r0["agreed"] and r1["agreed"] and r0["code"] == r1["code"] == 1
    assert r0["after"] == r1["after"] == "ok"  # no rank was left waiting in a collective


@pytest.mark.slow
def test_extract_write_sends_rank_1s_rows_in_pieces_and_keeps_order(tmp_path):
    """101 rows over 2 ranks, sent in pieces of 3 rows, string ids as tensors: the file a single write gives."""
    from dlsa_cli.io.features import read_features
    from dlsa_cli.io.files import read_safetensors_header
    from dlsa_cli.io.stream import IDS_OFFSETS_KEY

    r0, r1 = _worker("write_extracted", tmp_path)
    assert r1["written"] is None and r0["written"][:3] == [101, 6, True]
    assert r0["written"][3]["skipped"] == [{"id": "bad0", "reason": "test"}, {"id": "bad1", "reason": "test"}]
    assert r0["written"][3]["images"] == 101
    fs = read_features(tmp_path / "extracted.safetensors")
    np.testing.assert_array_equal(fs.features, np.arange(101 * 6, dtype=np.float32).reshape(101, 6) / 7)
    assert list(fs.ids) == [f"img/ø{i:03d}.jpg" for i in range(101)]
    assert (fs.labels == np.arange(101) % 5).all()
    header, _, meta, prov = read_safetensors_header(tmp_path / "extracted.safetensors")
    assert IDS_OFFSETS_KEY in header and prov["world_size"] == 2 and meta["backbone"] == "toy"


@pytest.mark.slow
def test_ddp_step_with_global_batch_statistics_equals_one_process(tmp_path):
    """Three SGD steps of the filter's losses (likelihood, purity, balance through nflows' batch norm)
    on an odd global batch of 63 split 31 / 32: DDP with global statistics lands where one process does."""
    r0, r1 = _worker("ddp_flow", tmp_path)
    assert (r0["share"], r1["share"]) == ([0, 31], [31, 63])
    assert r0["moved"] > 0.05  # the steps did move the parameters
    assert r0["max_diff"] < 1e-5 and r1["max_diff"] < 1e-5


TINY = Path(os.environ.get("DLSA_SHARED_DATA", REPO.parent / "shared" / "data")) / "tinyimagenet-lt"
requires_tiny = pytest.mark.skipif(not (TINY / "test.safetensors").exists(), reason=f"Tiny-ImageNet-LT features not found at {TINY}")


@pytest.fixture(scope="module")
def tiny_filter(tmp_path_factory) -> Path:
    """A small filter on the real Tiny-ImageNet-LT validation features (1280-d)."""
    if not (TINY / "val.safetensors").exists():
        pytest.skip(f"Tiny-ImageNet-LT features not found at {TINY}")
    from conftest import run_cli

    out = tmp_path_factory.mktemp("tiny") / "filter.safetensors"
    r = run_cli("fit-filter", TINY / "val.safetensors", "-o", out, "--clusters", "20", "--epochs", "1",
                "--batch-size", "256", "--hidden", "64", "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    return out


@requires_tiny
@pytest.mark.slow
def test_split_under_torchrun_writes_what_one_process_writes(tiny_filter, tmp_path):
    """5,000 real test rows with string ids, batches of 700: the ranks' rows 0..2500 and 2500..5000."""
    from conftest import run_cli

    from dlsa_cli.io.features import read_features
    from dlsa_cli.io.files import read_table

    args = ["split", tiny_filter, TINY / "test.safetensors", "--batch-size", "700", "--device", "cpu", "--latent", "--json"]
    one = run_cli(*args, "-o", tmp_path / "one", env=ONE_THREAD)  # torchrun's ranks run one thread each
    two = torchrun("-m", "dlsa_cli", *args, "-o", tmp_path / "two")
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    assert two.stdout == one.stdout and len(two.stdout.splitlines()) == 1  # rank 0 alone prints, the same report
    t1, _, _, p1 = read_table(tmp_path / "one" / "test.parquet")
    t2, _, _, p2 = read_table(tmp_path / "two" / "test.parquet")
    for c in ("id", "label", "cluster", "routed", "depth"):
        assert t1.column(c).to_pylist() == t2.column(c).to_pylist(), c
    ll1, ll2 = (t.column("log_likelihood").to_numpy() for t in (t1, t2))
    assert abs(ll1 - ll2).max() <= 1e-5 * max(1.0, abs(ll1).max())
    assert (p1["world_size"], p2["world_size"]) == (1, 2)
    assert p1["row_ranges"] == [[0, 5000]] and p2["row_ranges"] == [[0, 2500], [2500, 5000]]
    for part in ("routed", "rest"):
        a, b = (read_features(tmp_path / d / f"test.{part}.safetensors") for d in ("one", "two"))
        assert list(a.ids) == list(b.ids) and (a.labels == b.labels).all()
        assert abs(a.features - b.features).max() == 0  # copied from the input, never recomputed
    assert read_features(tmp_path / "two" / "test.routed.safetensors").n + read_features(tmp_path / "two" / "test.rest.safetensors").n == 5000


@requires_tiny
@pytest.mark.slow
def test_a_bad_row_in_one_ranks_shard_fails_every_rank_with_one_line(tiny_filter, tmp_path):
    import numpy as np

    from dlsa_cli.io.features import read_features, write_features

    fs = read_features(TINY / "test.safetensors")
    fs.features = fs.features.copy()
    fs.features[4000, 3] = np.nan  # in rank 1's rows
    write_features(tmp_path / "nan.safetensors", fs)
    out = tmp_path / "out"
    r = torchrun("-m", "dlsa_cli", "split", tiny_filter, tmp_path / "nan.safetensors", "-o", out, "--batch-size", "700", "--device", "cpu")
    assert r.returncode != 0
    ours = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert ours == [f"error: {tmp_path / 'nan.safetensors'}: row 4000 of features holds NaN or infinity "
                    "(1 such row(s) in rows 3900..4599) (remove or repair those rows)"]
    assert "exitcode  : 1" in r.stderr  # both ranks exited 1 (torchrun's own summary follows our line)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.fixture(scope="module")
def digits_cascade(digits) -> Path:
    """A real one-depth cascade on digits-LT (baseline, filter, split, cluster-aided and final classifiers)."""
    from conftest import invoke

    from dlsa_cli.cascade import write_manifest

    def ok(*args) -> None:
        r = invoke(*args)
        assert r.returncode == 0, r.stderr

    d, clf = digits, ["--epochs", "5", "--device", "cpu", "--quiet"]
    ok("fit-classifier", d / "train.safetensors", "--val", d / "val.safetensors", "-o", d / "base.safetensors", *clf)
    ok("fit-filter", d / "train.safetensors", "-o", d / "filter.safetensors", "-k", "8", "--epochs", "2", "--batch-size", "64",
       "--hidden", "32", "--lr", "0.01", "--max-cluster-share", "0.9", "--device", "cpu", "--quiet")
    ok("split", d / "filter.safetensors", d / "train.safetensors", d / "val.safetensors", "-o", d / "s1", "--quiet")
    ok("fit-classifier", d / "s1" / "train.routed.safetensors", "--val", d / "s1" / "val.routed.safetensors",
       "--allow-missing-val-classes", "--filter", d / "filter.safetensors", "--init", d / "base.safetensors",
       "-o", d / "cluster.safetensors", *clf)
    ok("fit-classifier", d / "s1" / "train.rest.safetensors", "--val", d / "s1" / "val.rest.safetensors",
       "--allow-missing-val-classes", "--init", d / "base.safetensors", "-o", d / "final.safetensors", *clf)
    write_manifest(d, [(d / "filter.safetensors", d / "cluster.safetensors")], d / "final.safetensors")
    return d


@pytest.mark.slow
@pytest.mark.parametrize("model", ["cascade.json", "base.safetensors"])
def test_predict_under_torchrun_writes_what_one_process_writes(digits_cascade, tmp_path, model):
    from conftest import run_cli

    from dlsa_cli.io.files import read_table

    d = digits_cascade
    args = ["predict", d / model, d / "test.safetensors", "--batch-size", "37", "--device", "cpu", "--json"]
    one = run_cli(*args, "-o", tmp_path / "one.parquet")
    two = torchrun("-m", "dlsa_cli", *args, "-o", tmp_path / "two.parquet")
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    r1, r2 = json.loads(one.stdout), json.loads(two.stdout)
    assert len(two.stdout.splitlines()) == 1
    assert {k: v for k, v in r1.items() if k not in ("output", "seconds")} == {k: v for k, v in r2.items() if k not in ("output", "seconds")}
    t1, _, m1, p1 = read_table(tmp_path / "one.parquet")
    t2, _, m2, p2 = read_table(tmp_path / "two.parquet")
    assert t1.column_names == t2.column_names and m1 == m2
    for c in t1.column_names:
        a, b = t1.column(c).to_pylist(), t2.column(c).to_pylist()
        if c in ("score", "topk_scores"):
            assert np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), atol=1e-5), c
        else:
            assert a == b, c
    n = t1.num_rows
    assert (p1["world_size"], p2["world_size"]) == (1, 2)
    assert p2["row_ranges"] == [[0, n // 2], [n // 2, n]]
    if model == "cascade.json":
        assert set(r2["routes"]) == {"cluster@1", "regular"}


@requires_tiny
@pytest.mark.slow
def test_fit_filter_under_torchrun_is_repeatable_and_matches_one_process(tmp_path):
    """Real Tiny-ImageNet-LT validation features (2,000 x 1280), 2 epochs of batch 256 on 2 ranks."""
    from conftest import run_cli
    from safetensors.numpy import load_file

    from dlsa_cli.flow import FlowFilter
    from dlsa_cli.io.files import read_safetensors_header

    args = ["fit-filter", TINY / "val.safetensors", "--clusters", "20", "--epochs", "2", "--batch-size", "256",
            "--hidden", "64", "--device", "cpu", "--json", "--quiet"]
    one = run_cli(*args, "-o", tmp_path / "one.safetensors")
    runs = [torchrun("-m", "dlsa_cli", *args, "-o", tmp_path / f"two{i}.safetensors") for i in (0, 1)]
    assert one.returncode == 0 and all(r.returncode == 0 for r in runs), runs[0].stderr[-2000:]
    a, b, c = (load_file(str(tmp_path / f"{n}.safetensors")) for n in ("one", "two0", "two1"))
    assert all((b[k] == c[k]).all() for k in b)  # repeatable for a given world size, bit for bit
    assert max(float(abs(a[k].astype(float) - b[k].astype(float)).max()) for k in a if a[k].size) < 1e-3
    f = FlowFilter.load(tmp_path / "two0.safetensors")  # valid: loads, routes its share of the training rows
    assert int(f.cluster_counts.sum()) == 2000 and f.stats["routed"] == 600
    assert read_safetensors_header(tmp_path / "two0.safetensors")[3]["world_size"] == 2
    assert read_safetensors_header(tmp_path / "one.safetensors")[3]["world_size"] == 1
    r1, r2 = json.loads(one.stdout), json.loads(runs[0].stdout)
    assert abs(r1["threshold"] - r2["threshold"]) < 1e-2 * abs(r1["threshold"])


@requires_tiny
@pytest.mark.slow
def test_fit_classifier_under_torchrun_lands_within_a_point_of_one_process(tmp_path):
    """Real Tiny-ImageNet-LT (21,199 training rows, 200 classes), epochs chosen on the validation split."""
    from conftest import run_cli
    from safetensors.numpy import load_file

    from dlsa_cli.io.files import read_safetensors_header

    args = ["fit-classifier", TINY / "train.safetensors", "--val", TINY / "val.safetensors", "--epochs", "3",
            "--device", "cpu", "--json", "--quiet"]
    one = run_cli(*args, "-o", tmp_path / "one.safetensors")
    two = torchrun("-m", "dlsa_cli", *args, "-o", tmp_path / "two.safetensors")
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    assert len(two.stdout.splitlines()) == 1
    r1, r2 = json.loads(one.stdout), json.loads(two.stdout)
    assert abs(r1["val_balanced_accuracy"] - r2["val_balanced_accuracy"]) <= 0.01
    acc = {}
    for n in ("one", "two"):
        p = run_cli("predict", tmp_path / f"{n}.safetensors", TINY / "test.safetensors", "-o", tmp_path / f"{n}.parquet",
                    "--device", "cpu", "--json")
        acc[n] = json.loads(p.stdout)["accuracy"]
    assert abs(acc["one"] - acc["two"]) <= 0.01, acc  # within 1 point on the test split
    a, b = load_file(str(tmp_path / "one.safetensors")), load_file(str(tmp_path / "two.safetensors"))
    assert max(float(abs(a[k].astype(float) - b[k].astype(float)).max()) for k in a) < 1e-3  # the same global batches
    assert read_safetensors_header(tmp_path / "two.safetensors")[3]["world_size"] == 2


CALTECH_SAMPLE = Path(os.environ.get("DLSA_SHARED_DATA", REPO.parent / "shared" / "data")) / "caltech101-sample"
requires_photos = pytest.mark.skipif(not (CALTECH_SAMPLE / "manifest.csv").exists(), reason=f"photo sample not found at {CALTECH_SAMPLE}")


def _photo_list(tmp_path: Path, every: int = 25) -> Path:
    rows = (CALTECH_SAMPLE / "manifest.csv").read_text().splitlines()
    listing = tmp_path / "list.csv"
    listing.write_text("\n".join([rows[0], *rows[1::every]]) + "\n")
    return listing


@requires_photos
@pytest.mark.slow
def test_extract_under_torchrun_writes_what_one_process_writes(tmp_path):
    """The fixed point: `torchrun --standalone --nproc-per-node 2 -m dlsa_cli extract LIST.csv --root DIR -o OUT.safetensors`."""
    pytest.importorskip("efficientnet_lite_pytorch")
    from conftest import run_cli

    from dlsa_cli.io.features import read_features
    from dlsa_cli.io.files import read_safetensors_header

    listing = _photo_list(tmp_path)  # 41 real photos
    opts = ["--batch-size", "8", "--workers", "0"]
    one = run_cli("extract", listing, "--root", CALTECH_SAMPLE, "-o", tmp_path / "one.safetensors", *opts)
    two = torchrun("-m", "dlsa_cli", "extract", listing, "--root", CALTECH_SAMPLE, "-o", tmp_path / "two.safetensors", *opts)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    assert len(two.stdout.splitlines()) == 1
    a, b = read_features(tmp_path / "one.safetensors"), read_features(tmp_path / "two.safetensors")
    assert a.n == b.n == 41 and list(a.ids) == list(b.ids) and (a.labels == b.labels).all()
    assert abs(a.features - b.features).max() <= 1e-4 * max(1.0, float(abs(a.features).max()))
    prov = read_safetensors_header(tmp_path / "two.safetensors")[3]
    assert prov["world_size"] == 2 and prov["row_ranges"] == [[0, 20], [20, 41]]


@requires_photos
@pytest.mark.slow
def test_extract_a_corrupt_photo_in_rank_1s_share_is_one_line_everywhere(tmp_path):
    pytest.importorskip("efficientnet_lite_pytorch")
    import shutil

    rows = (CALTECH_SAMPLE / "manifest.csv").read_text().splitlines()[1:9]
    root = tmp_path / "img"
    for r in rows:
        (root / Path(r.split(",")[0]).parent).mkdir(parents=True, exist_ok=True)
        shutil.copy(CALTECH_SAMPLE / r.split(",")[0], root / r.split(",")[0])
    bad = root / rows[6].split(",")[0]  # in rank 1's share (rows 4..8)
    bad.write_bytes(bad.read_bytes()[:200])
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out.safetensors"
    r = torchrun("-m", "dlsa_cli", "extract", listing, "--root", root, "-o", out, "--batch-size", "2", "--workers", "0")
    assert r.returncode != 0
    ours = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(ours) == 1 and str(bad) in ours[0] and "cannot read image" in ours[0], r.stderr[-2000:]
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


@pytest.mark.slow
def test_fit_cascade_under_torchrun_builds_the_cascade_one_process_builds(digits, tmp_path):
    """digits-LT, depth 2: every filter and classifier by DDP, every split sharded, rank 0 writing the run folder."""
    from conftest import run_cli

    from dlsa_cli.io.files import read_safetensors_header, read_table

    args = ["fit-cascade", digits / "train.safetensors", "--val", digits / "val.safetensors", "--depth", "2", "--clusters", "8",
            "--hidden", "16", "--max-cluster-share", "0.9", "--filter-epochs", "2", "--filter-batch-size", "64",
            "--epochs", "3", "--device", "cpu", "--json", "--quiet"]
    one = run_cli(*args, "-o", tmp_path / "one", env=ONE_THREAD)  # torchrun's ranks run one thread each
    two = torchrun("-m", "dlsa_cli", *args, "-o", tmp_path / "two")
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    assert len(two.stdout.splitlines()) == 1
    r1, r2 = json.loads(one.stdout), json.loads(two.stdout)
    for d1, d2 in zip(r1["depths"], r2["depths"], strict=False):
        assert d1["train"] == d2["train"]  # the same routed / rest training counts at every depth
        # DDP sums each step's gradient over the ranks in another order than one process does, so the filters
        # differ in their last bits: a validation sample at the threshold may fall on the other side, no more.
        depth = d1["depth"]  # a sample can fall at the threshold at each depth: at most one more per depth
        assert abs(d1["val"]["samples"] - d2["val"]["samples"]) <= depth - 1
        assert abs(d1["val"]["routed"] - d2["val"]["routed"]) <= depth
    preds = {}
    for n in ("one", "two"):
        p = run_cli("predict", tmp_path / n, digits / "test.safetensors", "-o", tmp_path / f"{n}.parquet", "--device", "cpu")
        assert p.returncode == 0, p.stderr
        preds[n] = read_table(tmp_path / f"{n}.parquet")[0]
    assert preds["one"].column("route").to_pylist() == preds["two"].column("route").to_pylist()
    agree = np.mean(np.asarray(preds["one"].column("prediction")) == np.asarray(preds["two"].column("prediction")))
    assert agree >= 0.99
    assert read_safetensors_header(tmp_path / "two" / "depth2" / "filter.safetensors")[3]["world_size"] == 2
    assert read_safetensors_header(tmp_path / "two" / "final.safetensors")[3]["world_size"] == 2


# Runs the CLI under torchrun; every rank logs the checkpoint files it writes, and all
# ranks stop (after a barrier, so rank 0's file is complete) once epoch STOP_AT is saved.
CHECKPOINT_SPY = """
import os, sys
from pathlib import Path
import dlsa_cli.flow.checkpoint as ck
from dlsa_cli.runtime import distributed as d
write, save = ck.write_safetensors, ck.save_checkpoint
def logged_write(path, *a, **k):
    with open(Path(os.environ["SPY_DIR"]) / f"writes.{os.environ['RANK']}", "a") as f:
        f.write(str(path) + "\\n")
    write(path, *a, **k)
def save_then_stop(path, st, fp):
    save(path, st, fp)
    if st.epoch == int(os.environ.get("STOP_AT", "0")):
        d.barrier()
        raise SystemExit(3)
ck.write_safetensors, ck.save_checkpoint = logged_write, save_then_stop
from dlsa_cli.cli import main
sys.argv = ["dlsa"] + sys.argv[1:]
main()
"""


@pytest.mark.slow
def test_fit_filter_resume_under_torchrun_rank_0_alone_writes_the_checkpoint(digits, tmp_path):
    """Stopped after epoch 2 of 4, then resumed: rank 0 alone wrote the checkpoint, and the filter is the uninterrupted one."""
    spy = tmp_path / "spy.py"
    spy.write_text(CHECKPOINT_SPY)
    args = ["fit-filter", digits / "train.safetensors", "--clusters", "8", "--epochs", "4", "--batch-size", "64",
            "--hidden", "16", "--max-cluster-share", "0.9", "--device", "cpu", "--quiet"]
    os.environ["SPY_DIR"] = str(tmp_path)
    try:
        whole = torchrun(spy, *args, "-o", tmp_path / "whole.safetensors")
        assert whole.returncode == 0, whole.stderr[-2000:]
        assert not (tmp_path / "writes.1").exists()  # rank 1 never wrote a checkpoint
        assert len((tmp_path / "writes.0").read_text().splitlines()) == 3  # after epochs 1-3, none after the last
        os.environ["STOP_AT"] = "2"
        stopped = torchrun(spy, *args, "-o", tmp_path / "f.safetensors")
        assert stopped.returncode != 0 and (tmp_path / "f.safetensors.resume").exists()
        os.environ["STOP_AT"] = "0"
        resumed = torchrun(spy, *args, "--resume", "-o", tmp_path / "f.safetensors")
        assert resumed.returncode == 0, resumed.stderr[-2000:]
    finally:
        for k in ("SPY_DIR", "STOP_AT"):
            os.environ.pop(k, None)
    assert not (tmp_path / "writes.1").exists()
    assert not (tmp_path / "f.safetensors.resume").exists()  # removed on success
    from safetensors.numpy import load_file

    a, b = load_file(str(tmp_path / "whole.safetensors")), load_file(str(tmp_path / "f.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_knn_tail_split_under_torchrun_routes_what_one_process_routes(digits, tmp_path):
    """A knn-tail filter: each rank scores its shard against every training latent, the training file's own rows included."""
    from conftest import run_cli

    from dlsa_cli.io.files import read_table

    flt = tmp_path / "knn.safetensors"
    fit = ["fit-filter", digits / "train.safetensors", "-k", "8", "--epochs", "2", "--batch-size", "64", "--hidden", "16",
           "--max-cluster-share", "0.9", "--routing", "knn-tail", "--neighbours", "5", "--device", "cpu", "--quiet"]
    r = run_cli(*fit, "-o", flt)
    assert r.returncode == 0, r.stderr
    # fitted under torchrun, each rank scores its share of the training rows for the threshold
    r = torchrun("-m", "dlsa_cli", *fit, "-o", tmp_path / "knn2.safetensors")
    assert r.returncode == 0, r.stderr[-2000:]
    from dlsa_cli.flow import FlowFilter

    fitted = FlowFilter.load(tmp_path / "knn2.safetensors")
    assert fitted.routing == "knn-tail" and fitted.neighbours.latents.shape[0] == fitted.stats["train_samples"]
    assert abs(fitted.stats["routed"] - 0.3 * fitted.stats["train_samples"]) <= 1
    args = ["split", flt, digits / "train.safetensors", digits / "test.safetensors", "--batch-size", "50", "--device", "cpu", "--json"]
    one = run_cli(*args, "-o", tmp_path / "one", env=ONE_THREAD)  # torchrun's ranks run one thread each
    two = torchrun("-m", "dlsa_cli", *args, "-o", tmp_path / "two")
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    assert json.loads(two.stdout)["routing"] == "knn-tail"
    for name in ("train", "test"):
        t1, t2 = (read_table(tmp_path / d / f"{name}.parquet")[0] for d in ("one", "two"))
        assert t1.column("routed").to_pylist() == t2.column("routed").to_pylist(), name
    routed = np.array(read_table(tmp_path / "two" / "train.parquet")[0].column("routed").to_pylist())
    assert abs(routed.sum() - 0.3 * len(routed)) <= 1  # the training rows are scored by the others on every rank
