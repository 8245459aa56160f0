"""Every registered feature format passes the same checks (`dlsa_cli.io.formats`).

For each format, a file written the way a user of that framework writes it
(the library's own writer for a writable format) must: read back bit for bit;
have a header (`feature_info`) that agrees with the data; give batches that
concatenate to the whole read, for any row range; give labels and ids alone
equal to those of the whole read; and, under a suffix that is not its own,
be refused with one clear line. A new format gets all of this by adding a
writer to WRITERS (the first test fails until it does).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from dlsa_cli.errors import InputError, OutputError
from dlsa_cli.io.features import (
    FeatureSet,
    feature_info,
    iter_feature_batches,
    iter_rows,
    read_features,
    read_labels,
    write_features,
)
from dlsa_cli.io.formats import FORMATS, SUFFIXES, format_for, strip_suffix

N, D, C = 29, 4, 3


@dataclass(frozen=True)
class Writer:
    """How a file of one format is made here, and what that file stores."""

    write: Callable[[Path, np.ndarray, np.ndarray, np.ndarray], None]
    labels: bool = True
    ids: bool = True


def _w_safetensors(p, x, y, ids):
    write_features(p, FeatureSet(x, y, ids))


def _w_parquet(p, x, y, ids):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ids, "label": y, "features": list(x)}), p, row_group_size=10)  # ranges cross groups


def _w_npz(p, x, y, ids):
    np.savez(p, features=x, labels=y, ids=ids)


def _w_npy(p, x, y, ids):
    np.save(p, x)


def _w_pt(p, x, y, ids):
    import torch

    obj = {"features": torch.from_numpy(x), "labels": torch.from_numpy(y)}
    obj["ids"] = torch.from_numpy(ids) if ids.dtype.kind == "i" else [str(i) for i in ids]
    torch.save(obj, p)


def _w_h5(p, x, y, ids):
    h5py = pytest.importorskip("h5py")
    with h5py.File(p, "w") as f:
        f.create_dataset("features", data=x)
        f.create_dataset("labels", data=y)
        f.create_dataset("ids", data=ids if ids.dtype.kind == "i" else ids.astype(h5py.string_dtype()))


WRITERS = {
    "safetensors": Writer(_w_safetensors),
    "parquet": Writer(_w_parquet),
    "npz": Writer(_w_npz),
    "npy": Writer(_w_npy, labels=False, ids=False),
    "pt": Writer(_w_pt),
    "h5": Writer(_w_h5),
}


def _data(dtype: str, id_kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((N, D)).astype(dtype)
    y = rng.integers(0, C, N).astype(np.int64)
    ids = np.array([f"img/é{i:03d}.jpg" for i in range(N)]) if id_kind == "str" else np.arange(N, dtype=np.int64) * 5 + 11
    return x, y, ids


@dataclass
class Case:
    name: str
    path: Path
    x: np.ndarray
    y: np.ndarray | None
    ids: np.ndarray | None
    id_kind: str | None


@pytest.fixture(params=[(f, dt, ik) for f in FORMATS for dt in ("float32", "float16") for ik in ("str", "int")],
                ids=lambda t: "-".join(t))
def case(request, tmp_path) -> Case:
    name, dtype, id_kind = request.param
    w = WRITERS[name]
    x, y, ids = _data(dtype, id_kind)
    p = tmp_path / f"feats{FORMATS[name].SUFFIXES[0]}"
    w.write(p, x, y, ids)
    return Case(name, p, x, y if w.labels else None, ids if w.ids else None, id_kind if w.ids else None)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def test_every_registered_format_is_written_here_and_has_its_own_suffixes():
    assert set(WRITERS) == set(FORMATS)
    suffixes = [s for f in FORMATS.values() for s in f.SUFFIXES]
    assert sorted(suffixes) == sorted(SUFFIXES) and len(set(suffixes)) == len(suffixes)
    for name, fmt in FORMATS.items():
        assert name == fmt.NAME
        for sfx in fmt.SUFFIXES:
            assert format_for(f"a/b.c{sfx.upper()}") is fmt
            assert strip_suffix(f"b.c{sfx}") == "b.c"


def test_round_trip_is_bit_for_bit(case):
    fs = read_features(case.path)
    assert _same_bits(fs.features, case.x)
    if case.y is None:
        assert fs.labels is None
    else:
        assert _same_bits(fs.labels, case.y)
    if case.ids is None:
        assert fs.ids is None
    else:
        np.testing.assert_array_equal(fs.ids, case.ids)
        assert fs.ids.dtype.kind == ("U" if case.id_kind == "str" else "i")
    mapped = read_features(case.path, mmap=True)  # mapped where the format can be, read otherwise: the same values
    assert _same_bits(np.asarray(mapped.features), case.x)


def test_writable_formats_write_again_what_they_read(case, tmp_path):
    fmt = FORMATS[case.name]
    if fmt.write is None:
        out = tmp_path / f"again{fmt.SUFFIXES[0]}"
        with pytest.raises(OutputError, match=f"not written as '{fmt.SUFFIXES[0]}'.*safetensors"):
            write_features(out, read_features(case.path))
        assert not out.exists()
        return
    again = tmp_path / f"again{fmt.SUFFIXES[0]}"
    first = read_features(case.path)
    write_features(again, first)
    second = read_features(again)
    assert _same_bits(second.features, first.features) and _same_bits(second.labels, first.labels)
    np.testing.assert_array_equal(second.ids, first.ids)
    assert second.meta == first.meta
    a, b = feature_info(case.path), feature_info(again)
    assert (a.n, a.dim, a.dtype, a.has_labels, a.ids, a.kind, a.meta) == (b.n, b.dim, b.dtype, b.has_labels, b.ids, b.kind, b.meta)


def test_header_agrees_with_the_data(case):
    info = feature_info(case.path)
    assert info.path == case.path and info.format == case.name
    assert (info.n, info.dim, info.dtype) == (N, D, case.x.dtype.name)
    assert info.has_labels == (case.y is not None)
    assert info.ids == case.id_kind


@pytest.mark.parametrize("start,stop,bs", [(0, None, 7), (5, 23, 4), (10, 11, 64), (N, N, 3)])
def test_batches_concatenate_to_the_whole_read(case, start, stop, bs):
    whole = read_features(case.path)
    stop_ = N if stop is None else stop
    batches = list(iter_rows(case.path, bs, start, stop))
    assert [b.start for b in batches] == list(range(start, stop_, bs))
    assert all(0 < len(b.features) <= bs for b in batches)
    if not batches:
        return
    assert _same_bits(np.concatenate([b.features for b in batches]), whole.features[start:stop_])
    for part in ("labels", "ids"):
        got = [getattr(b, part) for b in batches]
        want = getattr(whole, part)
        if want is None:
            assert all(g is None for g in got)
        else:
            np.testing.assert_array_equal(np.concatenate(got), want[start:stop_])
    if start == 0 and stop is None:
        old = list(iter_feature_batches(case.path, batch_size=bs))
        assert [s for s, _, _ in old] == [b.start for b in batches]
        assert _same_bits(np.concatenate([x for _, x, _ in old]), whole.features)


def test_labels_alone_equal_those_of_the_whole_read(case):
    whole = read_features(case.path)
    ls = read_labels(case.path)
    assert ls.n == whole.n and ls.path == case.path
    for part in ("labels", "ids"):
        got, want = getattr(ls, part), getattr(whole, part)
        if want is None:
            assert got is None
        else:
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)
    assert (ls.meta.get("provenance") or {}) == (whole.meta.get("provenance") or {})


def _one_line(e: pytest.ExceptionInfo, path: Path) -> str:
    text = str(e.value)
    assert "\n" not in text and path.name in text, text
    return text


@pytest.mark.parametrize("name", list(FORMATS))
def test_an_unknown_suffix_is_refused_with_one_line_everywhere(tmp_path, name):
    x, y, ids = _data("float32", "int")
    src = tmp_path / f"f{FORMATS[name].SUFFIXES[0]}"
    WRITERS[name].write(src, x, y, ids)
    p = src.with_suffix(".csv")
    src.rename(p)
    readers = [read_features, feature_info, read_labels, lambda q: list(iter_rows(q, 8)),
               lambda q: list(iter_feature_batches(q, 8))]
    for read in readers:
        with pytest.raises(InputError) as e:
            read(p)
        text = _one_line(e, p)
        assert "unknown feature file extension '.csv'" in text and ", ".join(SUFFIXES) in text
    with pytest.raises(InputError, match=r"unknown feature file extension '\.csv'"):
        write_features(tmp_path / "out.csv", FeatureSet(x, y, ids))
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("name", list(FORMATS))
@pytest.mark.parametrize("other", list(FORMATS))
def test_a_file_under_another_formats_suffix_is_one_clear_line(tmp_path, name, other):
    if name == other:
        pytest.skip("its own suffix")
    x, y, ids = _data("float32", "int")
    src = tmp_path / f"f{FORMATS[name].SUFFIXES[0]}"
    WRITERS[name].write(src, x, y, ids)
    p = tmp_path / f"g{FORMATS[other].SUFFIXES[0]}"
    shutil.copyfile(src, p)
    for read in (read_features, feature_info, read_labels):
        with pytest.raises(InputError) as e:
            read(p)
        _one_line(e, p)
