"""Feature files: every input format round-trips; slices agree with the whole; bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import invoke

from dlsa_cli.errors import InputError
from dlsa_cli.io.features import (
    FeatureSet,
    feature_info,
    iter_feature_batches,
    read_features,
    read_labels,
    write_features,
)

N, D, C = 37, 5, 4


def _data(id_kind: str, dtype=np.float32):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((N, D)).astype(dtype)
    y = rng.integers(0, C, N).astype(np.int64)
    ids = np.array([f"img/{i:03d}.jpg" for i in range(N)]) if id_kind == "str" else (np.arange(N) * 3 + 1000).astype(np.int64)
    return x, y, ids


# One writer per format, each the way a user of that framework would write the file.


def _w_safetensors(p, x, y, ids):
    write_features(p, FeatureSet(x, y, ids))


def _w_parquet_list(p, x, y, ids):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ids, "label": y, "features": list(x)}), p)


def _w_parquet_columns(p, x, y, ids):
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {"id": ids, "label": y} | {f"f{j}": x[:, j] for j in range(x.shape[1])}
    pq.write_table(pa.table(cols), p)


def _w_npz(p, x, y, ids):
    np.savez(p, features=x, labels=y, ids=ids)


def _w_pt_dict(p, x, y, ids):
    import torch

    obj = {"features": torch.from_numpy(x), "labels": torch.from_numpy(y)}
    obj["ids"] = torch.from_numpy(ids) if ids.dtype.kind == "i" else [str(i) for i in ids]
    torch.save(obj, p)


def _w_h5(key):
    def w(p, x, y, ids):
        import h5py

        with h5py.File(p, "w") as f:
            f.create_dataset("features", data=x)
            f.create_dataset(key, data=y)
            f.create_dataset("ids", data=ids if ids.dtype.kind == "i" else ids.astype(h5py.string_dtype()))

    return w


WRITERS = {
    "safetensors": (".safetensors", _w_safetensors),
    "parquet-list": (".parquet", _w_parquet_list),
    "parquet-columns": (".parquet", _w_parquet_columns),
    "npz": (".npz", _w_npz),
    "pt-dict": (".pt", _w_pt_dict),
    "h5-labels": (".h5", _w_h5("labels")),
    "h5-label": (".h5", _w_h5("label")),
}


@pytest.mark.parametrize("id_kind", ["str", "int"])
@pytest.mark.parametrize("fmt", list(WRITERS))
def test_every_format_round_trips(tmp_path, fmt, id_kind):
    ext, write = WRITERS[fmt]
    x, y, ids = _data(id_kind)
    p = tmp_path / f"feats{ext}"
    write(p, x, y, ids)

    fs = read_features(p, require_labels=True)
    assert fs.features.dtype == np.float32
    np.testing.assert_array_equal(fs.features, x)
    np.testing.assert_array_equal(fs.labels, y)
    assert fs.labels.dtype == np.int64
    np.testing.assert_array_equal(fs.ids, ids)
    assert (fs.ids.dtype.kind == "U") == (id_kind == "str")

    info = feature_info(p)
    assert (info.n, info.dim, info.has_labels, info.ids) == (N, D, True, id_kind)

    ls = read_labels(p)
    np.testing.assert_array_equal(ls.labels, y)
    np.testing.assert_array_equal(ls.ids, ids)

    starts, xs, ys = [], [], []
    for start, xb, yb in iter_feature_batches(p, batch_size=10):
        starts.append(start)
        xs.append(xb)
        ys.append(yb)
    assert starts == [0, 10, 20, 30]
    np.testing.assert_array_equal(np.concatenate(xs), x)
    np.testing.assert_array_equal(np.concatenate(ys), y)


def test_canonical_file_keeps_float16_and_metadata(tmp_path):
    x, y, ids = _data("str", np.float16)
    p = tmp_path / "half.safetensors"
    write_features(p, FeatureSet(x, y, ids, meta={"class_names": ["a", "b", "c", "d"]}), prov={"command": "test"})
    fs = read_features(p)
    assert fs.features.dtype == np.float16
    np.testing.assert_array_equal(fs.features, x)
    assert fs.meta["class_names"] == ["a", "b", "c", "d"]
    assert fs.meta["provenance"]["command"] == "test"
    info = feature_info(p)
    assert info.dtype == "float16" and info.kind == "features"
    # Writing a file read from another keeps this file's provenance, not the source's.
    q = tmp_path / "copy.safetensors"
    write_features(q, fs, prov={"command": "copy"})
    assert read_features(q).meta["provenance"]["command"] == "copy"


def test_npy_and_bare_tensor_have_no_labels(tmp_path):
    import torch

    x, _, _ = _data("int")
    np.save(tmp_path / "x.npy", x)
    torch.save(torch.from_numpy(x), tmp_path / "x.pt")
    for name in ("x.npy", "x.pt"):
        fs = read_features(tmp_path / name)
        np.testing.assert_array_equal(fs.features, x)
        assert fs.labels is None and fs.ids is None
        info = feature_info(tmp_path / name)
        assert (info.n, info.dim, info.has_labels, info.ids) == (N, D, False, None)
    batches = list(iter_feature_batches(tmp_path / "x.npy", batch_size=16))
    assert [b[0] for b in batches] == [0, 16, 32] and batches[0][2] is None
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), x)
    with pytest.raises(InputError, match="has no labels"):
        read_features(tmp_path / "x.npy", require_labels=True)


def test_safetensors_batches_read_slices_not_the_whole(tmp_path, monkeypatch):
    """iter_feature_batches asks safetensors for slices; get_tensor (the whole) is never called."""
    import safetensors

    x, y, ids = _data("int")
    p = tmp_path / "f.safetensors"
    write_features(p, FeatureSet(x, y, ids))
    real_open = safetensors.safe_open

    class Spy:
        def __init__(self, *a, **k):
            self.f = real_open(*a, **k)

        def __enter__(self):
            self.inner = self.f.__enter__()
            return self

        def __exit__(self, *a):
            return self.f.__exit__(*a)

        def get_slice(self, name):
            return self.inner.get_slice(name)

        def get_tensor(self, name):  # pragma: no cover - the failure case
            raise AssertionError("read the whole tensor")

    monkeypatch.setattr(safetensors, "safe_open", Spy)
    got = np.concatenate([b[1] for b in iter_feature_batches(p, batch_size=8)])
    np.testing.assert_array_equal(got, x)


# Bad input through the real CLI: one line on stderr, exit non-zero, no traceback.


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    import torch

    x, y, _ = _data("int")
    out = {}
    out["missing"] = (tmp_path / "nope.safetensors", "does not exist")
    (tmp_path / "feats.csv").write_text("a,b\n1,2\n")
    out["extension"] = (tmp_path / "feats.csv", "unknown feature file extension '.csv'")
    np.savez(tmp_path / "mismatch.npz", features=x, labels=y[:-3])
    out["n-mismatch"] = (tmp_path / "mismatch.npz", f"{N} feature rows but {N - 3} labels")
    xn = x.copy()
    xn[[3, 9], 1] = np.nan
    xn[11, 0] = np.inf
    np.savez(tmp_path / "nan.npz", features=xn, labels=y)
    out["non-finite"] = (tmp_path / "nan.npz", "3 row(s) of features hold NaN or infinity (first: row 3)")
    np.savez(tmp_path / "floatlabels.npz", features=x, labels=y + 0.5)
    out["non-integer-labels"] = (tmp_path / "floatlabels.npz", "labels must be integers")
    np.savez(tmp_path / "strlabels.npz", features=x, labels=np.array(["cat"] * N))
    out["string-labels"] = (tmp_path / "strlabels.npz", "labels must be integers")
    torch.save({"features": torch.from_numpy(x), "labels": torch.from_numpy(y), "extra": Path("x")}, tmp_path / "pickled.pt")
    out["pt-pickle"] = (tmp_path / "pickled.pt", "holds pickled Python objects")
    return out


BAD = ["missing", "extension", "n-mismatch", "non-finite", "non-integer-labels", "string-labels", "pt-pickle"]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    return _bad_files(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("case", BAD)
def test_bad_feature_file_is_one_line_through_the_cli(bad_files, case):
    path, message = bad_files[case]
    r = invoke("inspect", str(path), "--json")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert message in r.stderr
    assert str(path.name) in r.stderr
    if case == "non-finite":
        # inspect still reports the file (counting bad rows), then fails on them.
        assert json.loads(r.stdout)["fields"]["non-finite rows"] == 3
    else:
        assert r.stdout == ""


@pytest.mark.parametrize("case", ["n-mismatch", "non-integer-labels", "pt-pickle"])
def test_bad_feature_file_raises_in_the_library(bad_files, case):
    path, message = bad_files[case]
    with pytest.raises(InputError, match=message.split("(")[0].strip()):
        read_features(path)


def test_duplicate_ids_and_ragged_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    x, y, _ = _data("int")
    np.savez(tmp_path / "dup.npz", features=x, labels=y, ids=np.zeros(N, dtype=np.int64))
    with pytest.raises(InputError, match="ids are not unique"):
        read_features(tmp_path / "dup.npz")
    pq.write_table(pa.table({"features": [[1.0, 2.0], [3.0]]}), tmp_path / "ragged.parquet")
    with pytest.raises(InputError, match="different lengths"):
        read_features(tmp_path / "ragged.parquet")


def test_bfloat16_safetensors_reads_as_float32(tmp_path):
    import torch
    from safetensors.torch import save_file

    x = torch.randn(N, D).to(torch.bfloat16)
    save_file({"features": x, "labels": torch.arange(N) % C}, str(tmp_path / "bf.safetensors"))
    want = x.float().numpy()
    np.testing.assert_array_equal(read_features(tmp_path / "bf.safetensors").features, want)
    assert feature_info(tmp_path / "bf.safetensors").dtype == "bfloat16"
    got = np.concatenate([b[1] for b in iter_feature_batches(tmp_path / "bf.safetensors", batch_size=16)])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
