"""Streaming files: safetensors filled by offset, Parquet by row groups, row ranges of every feature format, ids at scale."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import load_file

from dlsa_cli.io.features import FeatureSet, feature_info, read_features, read_labels, write_features
from dlsa_cli.io.files import read_safetensors_header, read_table
from dlsa_cli.io.stream import (
    IDS_BYTES_KEY,
    IDS_OFFSETS_KEY,
    decode_ids,
    encode_ids,
    ids_nbytes,
    iter_rows,
    memmap_features,
    read_id_range,
    stream_features,
    stream_safetensors,
    stream_table,
)

N, D = 103, 6


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D)).astype(np.float32)
    y = rng.integers(0, 5, N).astype(np.int64)
    ids = np.array([f"img/é{i:04d}.jpg" for i in range(N)])  # non-ASCII: byte offsets, not character offsets
    return x, y, ids


def _leftovers(folder, name):
    return [p for p in folder.iterdir() if p.name.startswith(f".{name}")]


def test_safetensors_filled_out_of_order_reads_back_bit_for_bit(tmp_path):
    x, y, _ = _data()
    out = tmp_path / "a.safetensors"
    spec = {"features": (np.float32, x.shape), "labels": (np.int64, y.shape), "flag": (np.bool_, (N,)), "h": (np.float16, (N, 2))}
    h = x[:, :2].astype(np.float16)
    with stream_safetensors(out, spec, kind="features", meta={"a": 1}, prov={"command": "t"}) as sink:
        for a in reversed(range(0, N, 10)):  # the last rows first
            sink.write("features", a, x[a : a + 10])
            sink.write("labels", a, y[a : a + 10])
            sink.write("flag", a, y[a : a + 10] > 2)
            sink.write("h", a, h[a : a + 10])
    back = load_file(str(out))  # safetensors' own reader validates offsets and coverage
    np.testing.assert_array_equal(back["features"], x)
    np.testing.assert_array_equal(back["labels"], y)
    np.testing.assert_array_equal(back["flag"], y > 2)
    np.testing.assert_array_equal(back["h"], h)
    _, kind, meta, prov = read_safetensors_header(out)
    assert (kind, meta, prov) == ("features", {"a": 1}, {"command": "t"})
    assert not _leftovers(tmp_path, out.name)


def test_safetensors_left_unfinished_or_failing_writes_nothing(tmp_path):
    out = tmp_path / "b.safetensors"
    spec = {"features": (np.float32, (N, D))}
    with pytest.raises(RuntimeError, match="not filled"), stream_safetensors(out, spec, kind="features") as sink:
        sink.write("features", 0, np.zeros((N - 1, D)))
    with pytest.raises(KeyError), stream_safetensors(out, spec, kind="features") as sink:
        raise KeyError("boom")
    with pytest.raises(ValueError, match="do not fit"), stream_safetensors(out, spec, kind="features") as sink:
        sink.write("features", N - 1, np.zeros((2, D)))
    assert not out.exists() and not _leftovers(tmp_path, out.name)


def test_ids_bytes_round_trip_any_slice():
    _, _, ids = _data()
    off, data = encode_ids(ids)
    assert off[-1] == data.size == ids_nbytes(ids)
    np.testing.assert_array_equal(decode_ids(off, data), ids)
    np.testing.assert_array_equal(decode_ids(off[17:41], data[off[17] : off[40]]), ids[17:40])


@pytest.mark.parametrize("layout", ["tensor", "header", "int"])
def test_streamed_feature_file_reads_as_written(tmp_path, layout):
    x, y, ids = _data()
    if layout == "int":
        ids = np.arange(N, dtype=np.int64) * 7 + 3
    out = tmp_path / "f.safetensors"
    kwargs = {"header_ids": list(ids)} if layout == "header" else {"ids": "int" if layout == "int" else "str", "ids_bytes": ids_nbytes(ids)}
    extra = {"cluster": (np.int64, ()), "latent": (np.float32, (2,))}
    with stream_features(out, N, D, extra=extra, meta={"num_classes": 5}, **kwargs) as sink:
        for a in range(0, N, 16):
            b = min(a + 16, N)
            sink.append(x[a:b], y[a:b], None if layout == "header" else ids[a:b], cluster=y[a:b] * 2, latent=x[a:b, :2])
    header = read_safetensors_header(out)[0]
    assert (IDS_OFFSETS_KEY in header) == (layout == "tensor") and (IDS_BYTES_KEY in header) == (layout == "tensor")
    fs = read_features(out, require_labels=True)
    np.testing.assert_array_equal(fs.features, x)
    np.testing.assert_array_equal(fs.labels, y)
    np.testing.assert_array_equal(fs.ids, ids)
    assert "ids" not in fs.meta and fs.meta["num_classes"] == 5
    info = feature_info(out)
    assert (info.n, info.dim, info.ids) == (N, D, "int" if layout == "int" else "str")
    np.testing.assert_array_equal(read_labels(out).ids, ids)
    np.testing.assert_array_equal(read_id_range(out, 20, 31), ids[20:31])
    np.testing.assert_array_equal(load_file(str(out))["cluster"], y * 2)


def test_stream_features_rejects_a_short_file(tmp_path):
    out = tmp_path / "g.safetensors"
    with pytest.raises(RuntimeError, match="rows written"), stream_features(out, N, D, labels=False) as sink:
        sink.append(np.zeros((5, D), np.float32))
    assert not out.exists()


def test_table_parts_join_in_part_order_with_late_metadata(tmp_path):
    out = tmp_path / "t.parquet"
    with stream_table(out, kind="split", meta={"a": 1}, prov={"command": "t"}, parts=3) as sink:
        for i in range(4):  # interleaved arrivals: part 2, 0, 1 each round
            for part in (2, 0, 1):
                rows = np.arange(part * 100 + i * 10, part * 100 + i * 10 + 10)
                sink.write({"id": rows, "z": np.stack([rows, rows], 1).astype(np.float32)}, part=part)
        sink.meta["report"] = {"rows": sink.rows}
    table, kind, meta, prov = read_table(out)
    expect = np.concatenate([np.arange(p * 100, p * 100 + 40) for p in range(3)])
    np.testing.assert_array_equal(table.column("id").to_numpy(), expect)
    assert table.column("z").type == pa.list_(pa.float32(), 2)
    assert (kind, meta, prov) == ("split", {"a": 1, "report": {"rows": 120}}, {"command": "t"})
    assert pq.ParquetFile(str(out)).num_row_groups == 12
    assert not _leftovers(tmp_path, out.name)


def test_table_failure_leaves_nothing(tmp_path):
    out = tmp_path / "u.parquet"
    with pytest.raises(ZeroDivisionError), stream_table(out, kind="split") as sink:
        sink.write({"id": np.arange(5)})
        raise ZeroDivisionError("a writer that fails half way")
    assert not out.exists() and not _leftovers(tmp_path, out.name)


def test_streamed_writers_refuse_nan_metadata_as_every_writer_does(tmp_path):
    """One metadata encoder: a NaN in settings or a report is refused (strict JSON), never written bare."""
    from dlsa_cli.errors import DlsaError

    out = tmp_path / "n.safetensors"
    nan_meta = {"report": {"loss": float("nan")}}
    with pytest.raises(DlsaError, match=r"report\.loss is NaN"), \
            stream_safetensors(out, {"features": (np.float32, (2, 2))}, kind="features", meta=nan_meta):
        pass
    table = tmp_path / "n.parquet"
    with pytest.raises(DlsaError, match="separation is NaN"), stream_table(table, kind="split") as sink:
        sink.write({"id": np.arange(3)})
        sink.meta["separation"] = float("nan")  # completed late, as split's report is
    assert not out.exists() and not table.exists()
    assert not _leftovers(tmp_path, out.name) and not _leftovers(tmp_path, table.name)


def test_table_parts_are_staged_as_every_output_is(tmp_path):
    """The parts folder is a staging entry beside the target: a killed writer's is swept by the next write there."""
    out = tmp_path / "t.parquet"
    dead = tmp_path / f".{out.name}.999999999-abcdefgh.tmp"  # no such pid
    (dead / "x").mkdir(parents=True)
    seen = []
    with stream_table(out, kind="split") as sink:
        sink.write({"id": np.arange(4)})
        seen = _leftovers(tmp_path, out.name)
    assert not dead.exists()
    assert len(seen) == 1 and seen[0].name.startswith(f".{out.name}.") and seen[0].name.endswith(".tmp")
    assert not _leftovers(tmp_path, out.name)


def _write(fmt, p, x, y, ids):
    if fmt in ("safetensors", "safetensors-int"):
        write_features(p, FeatureSet(x, y, ids if fmt == "safetensors" else np.arange(N) + 500))
    elif fmt == "parquet":  # several row groups, so ranges cross them
        pq.write_table(pa.table({"id": ids, "label": y, "features": list(x)}), p, row_group_size=17)
    elif fmt == "parquet-columns":
        pq.write_table(pa.table({"id": ids, "label": y} | {f"f{j}": x[:, j] for j in range(D)}), p, row_group_size=40)
    elif fmt == "npy":
        np.save(p, x)
    elif fmt == "npz":
        np.savez(p, features=x, labels=y, ids=ids)
    elif fmt == "h5":
        h5py = pytest.importorskip("h5py")
        with h5py.File(p, "w") as f:
            f.create_dataset("features", data=x)
            f.create_dataset("labels", data=y)
            f.create_dataset("ids", data=ids.astype(h5py.string_dtype()))


_EXT = {"safetensors": ".safetensors", "safetensors-int": ".safetensors", "parquet": ".parquet",
        "parquet-columns": ".parquet", "npy": ".npy", "npz": ".npz", "h5": ".h5"}


@pytest.mark.parametrize("fmt", list(_EXT))
@pytest.mark.parametrize("start,stop,bs", [(0, None, 10), (7, 53, 10), (16, 17, 4), (50, 103, 64), (30, 30, 5)])
def test_iter_rows_gives_exactly_the_range(tmp_path, fmt, start, stop, bs):
    x, y, ids = _data()
    p = tmp_path / f"f{_EXT[fmt]}"
    _write(fmt, p, x, y, ids)
    whole = read_features(p)
    stop_ = N if stop is None else stop
    batches = list(iter_rows(p, bs, start, stop))
    assert all(len(b.features) <= bs for b in batches)
    assert [b.start for b in batches] == list(range(start, stop_, bs))
    got = np.concatenate([b.features for b in batches]) if batches else np.zeros((0, D), np.float32)
    np.testing.assert_array_equal(got, whole.features[start:stop_])
    if whole.labels is not None and batches:
        np.testing.assert_array_equal(np.concatenate([b.labels for b in batches]), whole.labels[start:stop_])
    if whole.ids is not None and batches:
        np.testing.assert_array_equal(np.concatenate([b.ids for b in batches]), whole.ids[start:stop_])


def test_iter_rows_names_the_rows_with_nan(tmp_path):
    x, y, ids = _data()
    x[61, 2] = np.nan
    p = tmp_path / "nan.safetensors"
    write_features(p, FeatureSet(x, y, ids))
    from dlsa_cli.errors import InputError

    with pytest.raises(InputError, match=r"row 61 of features holds NaN .* in rows 60\.\.79"):
        list(iter_rows(p, 20))
    assert sum(len(b.features) for b in iter_rows(p, 20, check_finite=False)) == N


@pytest.mark.parametrize("ext", [".safetensors", ".npy"])
def test_memmap_features_maps_the_matrix(tmp_path, ext):
    x, y, ids = _data()
    x16 = x.astype(np.float16)
    p = tmp_path / f"m{ext}"
    if ext == ".npy":
        np.save(p, x16)
    else:
        write_features(p, FeatureSet(x16, y, ids))
    m = memmap_features(p)
    assert isinstance(m, np.memmap) and m.dtype == np.float16
    np.testing.assert_array_equal(np.asarray(m), x16)
    assert memmap_features(tmp_path / "none.npz") is None


@pytest.mark.slow
def test_string_ids_past_the_header_cap_go_to_tensors(tmp_path):
    """Ids whose JSON list would pass safetensors' 100 MB header cap are written and read back (as byte tensors)."""
    n, prefix = 600_000, "train/" + "x" * 180 + "/img_"

    def ids(a: int, b: int) -> np.ndarray:
        return np.char.add(prefix, np.arange(a, b).astype(str))

    nbytes = len(prefix) * n + sum(len(str(i)) for i in range(n))
    assert nbytes + 4 * n > 100 * 2**20  # as a JSON list in the header: quotes, comma, space per id
    out = tmp_path / "big.safetensors"
    with stream_features(out, n, 1, labels=False, ids="str", ids_bytes=nbytes) as sink:
        for a in range(0, n, 100_000):
            sink.append(np.zeros((100_000, 1), np.float32), ids=ids(a, a + 100_000))
    assert feature_info(out).ids == "str"
    np.testing.assert_array_equal(read_id_range(out, n - 3, n), ids(n - 3, n))
    np.testing.assert_array_equal(read_id_range(out, 0, 2), ids(0, 2))
    got = [b.ids for b in iter_rows(out, 150_000, 250_000, 250_010)]
    np.testing.assert_array_equal(np.concatenate(got), ids(250_000, 250_010))


@pytest.fixture(scope="module")
def digits_filter(digits) -> object:
    from conftest import invoke

    out = digits / "stream_filter.safetensors"
    r = invoke("fit-filter", digits / "train.safetensors", "-o", out, "-k", "8", "--epochs", "2", "--batch-size", "64",
               "--hidden", "32", "--lr", "0.01", "--max-cluster-share", "0.9", "--device", "cpu", "--quiet")
    assert r.returncode == 0, r.stderr
    return out


@pytest.mark.parametrize("ids_in_header_max", [None, 50])
def test_split_streams_in_small_batches_and_keeps_string_ids_either_way(digits, digits_filter, tmp_path, monkeypatch, ids_in_header_max):
    """Batches of 7 rows; string ids in the part files' header, or (past the size limit) in byte tensors."""
    from conftest import invoke

    src = read_features(digits / "val.safetensors")
    ids = np.array([f"scans/é{i:03d}.png" for i in range(src.n)])
    write_features(tmp_path / "v.safetensors", FeatureSet(src.features, src.labels, ids))
    if ids_in_header_max is not None:
        monkeypatch.setattr("dlsa_cli.flow.split_stream.IDS_IN_HEADER_MAX", ids_in_header_max)
    out = tmp_path / "s"
    r = invoke("split", digits_filter, tmp_path / "v.safetensors", "-o", out, "--batch-size", "7", "--device", "cpu", "--json")
    assert r.returncode == 0, r.stderr
    table = read_table(out / "v.parquet")[0]
    assert table.column("id").to_pylist() == list(ids)
    routed = table.column("routed").to_numpy(zero_copy_only=False)
    for part, m in (("routed", routed), ("rest", ~routed)):
        p = out / f"v.{part}.safetensors"
        header = read_safetensors_header(p)[0]
        assert (IDS_OFFSETS_KEY in header) == (ids_in_header_max is not None)
        fs = read_features(p)
        assert list(fs.ids) == list(ids[m])
        np.testing.assert_array_equal(fs.features, src.features[m])
        np.testing.assert_array_equal(fs.labels, src.labels[m])
        np.testing.assert_array_equal(load_file(str(p))["log_likelihood"], table.column("log_likelihood").to_numpy()[m])
    assert not [q for q in out.iterdir() if q.name.startswith(".")]  # no temporary columns left behind


def test_write_features_keeps_string_ids_past_the_header_limit_in_tensors(tmp_path, monkeypatch):
    """Past IDS_IN_HEADER_MAX bytes (here 50), write_features stores ids as byte tensors; they read back whole and by range."""
    from dlsa_cli.io.stream import IDS_BYTES_KEY, read_id_range

    ids = np.array([f"photos/ünï{i:04d}.jpg" for i in range(30)])
    fs = FeatureSet(np.arange(60, dtype=np.float32).reshape(30, 2), np.arange(30) % 3, ids)
    write_features(tmp_path / "small.safetensors", fs)
    assert IDS_OFFSETS_KEY not in read_safetensors_header(tmp_path / "small.safetensors")[0]
    monkeypatch.setattr("dlsa_cli.io.formats.safetensors.IDS_IN_HEADER_MAX", 50)
    write_features(tmp_path / "big.safetensors", fs)
    header, _, meta, _ = read_safetensors_header(tmp_path / "big.safetensors")
    assert IDS_OFFSETS_KEY in header and IDS_BYTES_KEY in header and "ids" not in meta
    back = read_features(tmp_path / "big.safetensors")
    assert list(back.ids) == list(ids)
    np.testing.assert_array_equal(back.features, fs.features)
    assert list(read_id_range(tmp_path / "big.safetensors", 7, 11)) == list(ids[7:11])


def _mapped(a: np.ndarray) -> bool:
    """True when the array's memory is a mapped file (somewhere down its chain of bases)."""
    import mmap

    while a is not None:
        if isinstance(a, mmap.mmap):
            return True
        a = getattr(a, "base", None)
    return False


def test_training_reads_a_mapped_matrix_and_never_writes_the_file(digits, tmp_path):
    """read_features(mmap=True): the same data, mapped copy-on-write; fit-filter and fit-classifier train on it
    (to the same filter as from memory) and leave the file byte-identical."""
    import hashlib

    from conftest import invoke

    from dlsa_cli.flow import fit_filter

    src = read_features(digits / "train.safetensors")
    write_features(tmp_path / "t.safetensors", FeatureSet(src.features.astype(np.float32), src.labels, src.ids))
    path = tmp_path / "t.safetensors"
    mapped = read_features(path, mmap=True)
    assert _mapped(mapped.features) and not _mapped(read_features(path).features)
    np.testing.assert_array_equal(mapped.features, src.features)
    opts = dict(clusters=8, epochs=2, batch_size=64, hidden=16, max_cluster_share=0.9, seed=2)
    a, b = fit_filter(mapped, **opts), fit_filter(read_features(path), **opts)
    assert a.threshold == b.threshold
    for k, v in a.flow.state_dict().items():
        assert np.array_equal(v.numpy(), b.flow.state_dict()[k].numpy()), k
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    for args in (["fit-filter", path, "-o", tmp_path / "f.safetensors", "-k", "8", "--epochs", "1", "--batch-size", "64",
                  "--hidden", "16", "--max-cluster-share", "0.9"],
                 ["fit-classifier", path, "-o", tmp_path / "c.safetensors", "--epochs", "2"]):
        r = invoke(*args, "--device", "cpu", "--quiet")
        assert r.returncode == 0 and r.stderr == "", r.stderr
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
