"""`dlsa extract`: real photos through the real backbone, TorchScript models, input layouts, bad input.

Runs that decode images in worker processes use the CLI in a subprocess (`run_cli`:
real exit codes); bad input and decoding in the main process (`--workers 0`) use the
same app in this process (`invoke`), which is much cheaper on a shared 2-core machine.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    CALTECH_NPZ,
    CALTECH_SAMPLE,
    assert_clean_failure,
    invoke,
    requires_caltech,
    requires_caltech_sample,
    run_cli,
)

from dlsa_cli.errors import DlsaError, InputError
from dlsa_cli.extract import Preprocess, load_backbone, read_image_list
from dlsa_cli.io.features import read_features

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")

# --------------------------------------------------------------------------- helpers


def manifest_rows() -> list[dict[str, str]]:
    with open(CALTECH_SAMPLE / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def reference_rows(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Features (float32) and labels of caltech101_lite0.npz for the given `files` entries."""
    with np.load(CALTECH_NPZ) as d:
        index = {f: i for i, f in enumerate(d["files"])}
        rows = [index[i] for i in ids]
        return d["F"][rows].astype(np.float32), d["y"][rows]


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def make_images(folder: Path) -> list[str]:
    """Write a small class-per-folder image set of mixed sizes and modes; return the relative paths."""
    from PIL import Image

    rng = np.random.default_rng(0)
    spec = [
        ("cat/a.jpg", (300, 200), "RGB"),
        ("cat/b.png", (180, 260), "L"),
        ("cat/sub/c.jpeg", (224, 224), "RGB"),
        ("dog/d.png", (400, 150), "RGBA"),
        ("dog/e.JPG", (256, 320), "RGB"),
    ]
    for rel, (w, h), mode in spec:
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        arr = rng.integers(0, 256, size=(h, w, len(mode)), dtype=np.uint8)
        Image.fromarray(arr[..., 0] if mode == "L" else arr).save(p)  # mode from the shape: L, RGB, RGBA
    return [s[0] for s in spec]


class TinyConv(torch.nn.Module):
    """A 3 -> 8 channel convolution net whose output is a 4-D map (pooled by extract)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, kernel_size=5, stride=4)
        self.conv2 = torch.nn.Conv2d(8, 8, kernel_size=3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.relu(self.conv(x)))  # (B, 8, h, w)


@pytest.fixture
def tiny_script(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    model = TinyConv().eval()
    path = tmp_path / "tiny.pt"
    torch.jit.script(model).save(str(path))
    return path, model


def preprocessed(paths: list[str], pre: Preprocess) -> torch.Tensor:
    """The same crops extract makes, normalised: (N, 3, crop, crop) float32."""
    x = torch.stack([torch.from_numpy(pre.load(p)) for p in paths]).permute(0, 3, 1, 2)
    return pre.normalise(x)


# --------------------------------------------------------------------------- real photos, real backbone


@pytest.mark.slow
@requires_caltech
@requires_caltech_sample
def test_lite0_on_50_listed_photos_matches_reference_features(tmp_path):
    """The fixed point: `dlsa extract LIST.csv --root DIR -o OUT.safetensors --backbone efficientnet-lite0`."""
    rows = manifest_rows()[::20][:50]
    listing = tmp_path / "list.csv"
    with open(listing, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([r["path"], r["label"]] for r in rows)
    out = tmp_path / "out.safetensors"
    r = run_cli("extract", listing, "--root", CALTECH_SAMPLE, "-o", out, "--backbone", "efficientnet-lite0", "--batch-size", "16")
    assert r.returncode == 0, r.stderr
    fs = read_features(out)
    assert list(fs.ids) == [r["path"] for r in rows]
    assert fs.labels.tolist() == [int(r["label"]) for r in rows]
    ref, ref_y = reference_rows(fs.ids)
    assert (fs.labels == ref_y).all()
    assert fs.features.shape == (50, 1280) and fs.features.dtype == np.float32
    assert cosine(fs.features, ref).min() >= 0.999
    meta = fs.meta
    assert meta["backbone"] == "efficientnet-lite0"
    assert meta["weights"]["file"] == "efficientnet-lite0-57934424.pth" and len(meta["weights"]["sha256"]) == 64
    assert meta["preprocessing"] == {
        "resize": 256, "crop": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
        "interpolation": "bilinear", "resize_side": "shorter", "crop_at": "centre",
    }
    assert meta["images"] == 50 and meta["skipped"] == []
    assert meta["provenance"]["command"] == "extract"


@pytest.mark.slow
@requires_caltech
@requires_caltech_sample
def test_lite0_on_all_1010_photos_matches_every_reference_row(tmp_path):
    out = tmp_path / "all.safetensors"
    r = run_cli("extract", CALTECH_SAMPLE, "-o", out, "--dtype", "float16", "--json")
    assert r.returncode == 0, r.stderr
    fs = read_features(out)
    assert fs.n == 1010 and fs.features.dtype == np.float16
    assert sorted(fs.ids) == sorted(r["path"] for r in manifest_rows())
    ref, ref_y = reference_rows(fs.ids)
    assert (fs.labels == ref_y).all()
    with np.load(CALTECH_NPZ) as d:
        assert fs.meta["class_names"] == [str(c) for c in d["classes"]]
    cos = cosine(fs.features.astype(np.float32), ref)
    assert cos.min() >= 0.999, f"worst row {fs.ids[int(np.argmin(cos))]}: {cos.min()}"


# --------------------------------------------------------------------------- TorchScript backbones


@requires_caltech_sample
def test_torchscript_features_equal_the_models_own_output(tmp_path, tiny_script):
    path, model = tiny_script
    rows = manifest_rows()[::101][:8]
    listing = tmp_path / "few.txt"
    listing.write_text("".join(f"{r['path']} {r['label']}\n" for r in rows))
    out = tmp_path / "tiny.safetensors"
    # batch 3 over 8 images: partial last batch; 2 workers: decoding in other processes
    r = run_cli("extract", listing, "--root", CALTECH_SAMPLE, "-o", out, "--backbone", path,
                "--batch-size", "3", "--workers", "2", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    fs = read_features(out)
    assert list(fs.ids) == [r["path"] for r in rows]
    with torch.inference_mode():
        expected = model(preprocessed([str(CALTECH_SAMPLE / r["path"]) for r in rows], Preprocess())).mean(dim=(2, 3))
    assert fs.dim == 8
    np.testing.assert_allclose(fs.features, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert fs.meta["backbone"] == str(path)
    assert fs.meta["weights"]["file"] == "tiny.pt"


@requires_caltech_sample
def test_torchscript_with_2d_output_and_custom_preprocessing(tmp_path):
    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(1)
            self.conv = torch.nn.Conv2d(3, 4, kernel_size=7, stride=7)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.conv(x)).flatten(1)  # (B, 4 * 16 * 16)

    model = Pooled().eval()
    path = tmp_path / "traced.pt"
    torch.jit.trace(model, torch.zeros(1, 3, 112, 112)).save(str(path))
    rows = manifest_rows()[5:9]
    listing = tmp_path / "l.csv"
    listing.write_text("path\n" + "".join(f"{r['path']}\n" for r in rows))  # no label column: unlabelled
    out = tmp_path / "o.safetensors"
    r = invoke("extract", listing, "--root", CALTECH_SAMPLE, "-o", out, "--backbone", path, "--resize", "128",
                "--crop", "112", "--interpolation", "bicubic", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25",
                "--workers", "0")
    assert r.returncode == 0, r.stderr
    fs = read_features(out)
    assert fs.labels is None
    pre = Preprocess(resize=128, crop=112, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), interpolation="bicubic")
    with torch.inference_mode():
        expected = model(preprocessed([str(CALTECH_SAMPLE / r["path"]) for r in rows], pre)).numpy()
    np.testing.assert_allclose(fs.features, expected, rtol=1e-5, atol=1e-6)
    assert fs.meta["preprocessing"]["crop"] == 112 and fs.meta["preprocessing"]["interpolation"] == "bicubic"
    assert fs.meta["preprocessing"]["mean"] == [0.5, 0.5, 0.5]


def test_preprocess_follows_the_documented_recipe(tmp_path):
    """Shorter side to 256 with round(), floor-halved centre crop: checked by hand on one odd-sized image."""
    from PIL import Image

    arr = np.random.default_rng(3).integers(0, 256, size=(301, 457, 3), dtype=np.uint8)
    p = tmp_path / "odd.png"
    Image.fromarray(arr).save(p)
    got = Preprocess().load(str(p))
    s = 256 / 301
    big = Image.fromarray(arr).resize((round(457 * s), 256), Image.BILINEAR)  # (389, 256)
    left, top = (389 - 224) // 2, (256 - 224) // 2
    assert got.shape == (224, 224, 3)
    np.testing.assert_array_equal(got, np.asarray(big)[top : top + 224, left : left + 224])


# --------------------------------------------------------------------------- input layouts


def test_folder_csv_and_list_file_give_the_same_features_and_ids(tmp_path, tiny_script):
    path, _ = tiny_script
    images = tmp_path / "images"
    rel = make_images(images)
    label_of = {"cat": 0, "dog": 1}
    csv_file = tmp_path / "list.csv"
    csv_file.write_text("path,label\n" + "".join(f"{p},{label_of[p.split('/')[0]]}\n" for p in rel))
    list_file = tmp_path / "list.txt"
    list_file.write_text("".join(f"{p} {label_of[p.split('/')[0]]}\n" for p in rel))

    results = {}
    for name, args in {
        "folder": [images, "--workers", "0"],
        "csv": [csv_file, "--root", images, "--workers", "0"],
        "list": [list_file, "--root", images, "--workers", "2", "--batch-size", "2"],
    }.items():
        out = tmp_path / f"{name}.safetensors"
        cli = run_cli if name == "list" else invoke  # decoding worker processes: a real process
        r = cli("extract", *args, "-o", out, "--backbone", path)
        assert r.returncode == 0, (name, r.stderr)
        results[name] = read_features(out)
    base = results["folder"]
    assert list(base.ids) == rel  # sorted class folders, then sorted files, sub-folders included
    assert base.labels.tolist() == [0, 0, 0, 1, 1]
    assert base.meta["class_names"] == ["cat", "dog"]
    for name in ("csv", "list"):
        fs = results[name]
        assert list(fs.ids) == list(base.ids), name
        assert (fs.labels == base.labels).all(), name
        np.testing.assert_array_equal(fs.features, base.features, err_msg=name)


def test_csv_and_list_reading_rules(tmp_path):
    make_images(tmp_path / "im")
    names = tmp_path / "named.csv"
    names.write_text("label,path\ndog,dog/d.png\ncat,cat/a.jpg\n")  # any column order; class names as labels
    il = read_image_list(names, root=tmp_path / "im")
    assert il.ids == ["dog/d.png", "cat/a.jpg"]
    assert il.class_names == ["cat", "dog"] and il.labels.tolist() == [1, 0]
    assert il.paths[0] == str(tmp_path / "im" / "dog" / "d.png")

    lst = tmp_path / "lst.txt"
    lst.write_text("# comment\n\ncat/a.jpg 3\n  dog/d.png\t7  \n")
    il = read_image_list(lst, root=tmp_path / "im")
    assert il.ids == ["cat/a.jpg", "dog/d.png"] and il.labels.tolist() == [3, 7] and il.class_names is None

    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "notes.txt").write_text("not an image")
    (tmp_path / "im" / "cat" / "a.jpg").rename(flat / "x.jpg")
    il = read_image_list(flat)
    assert il.ids == ["x.jpg"] and il.labels is None

    dup = tmp_path / "dup.txt"
    dup.write_text("a.jpg 0\nb.jpg 1\na.jpg 2\n")
    with pytest.raises(InputError, match=r"line 3 lists 'a.jpg' again"):
        read_image_list(dup)
    bad = tmp_path / "bad.csv"
    bad.write_text("cat/a.jpg,0\n")
    with pytest.raises(InputError, match="no 'path' column"):
        read_image_list(bad)
    with pytest.raises(InputError, match="a folder is its own root"):
        read_image_list(flat, root=tmp_path)


# --------------------------------------------------------------------------- bad input


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    make_images(folder)
    return folder


def test_missing_root_is_one_clear_line(tmp_path, image_dir):
    listing = tmp_path / "l.csv"
    listing.write_text("path,label\ncat/a.jpg,0\n")
    out = tmp_path / "o.safetensors"
    r = invoke("extract", listing, "--root", tmp_path / "nowhere", "-o", out)
    assert_clean_failure(r, out, str(tmp_path / "nowhere"))
    assert "image root does not exist" in r.stderr


def test_empty_folder_is_one_clear_line(tmp_path):
    empty = tmp_path / "empty"
    (empty / "some_class").mkdir(parents=True)
    out = tmp_path / "o.safetensors"
    r = invoke("extract", empty, "-o", out)
    assert_clean_failure(r, out, str(empty))
    assert "no images found" in r.stderr


def test_corrupt_jpeg_is_one_clear_line_naming_it(tmp_path, image_dir, tiny_script):
    bad = image_dir / "dog" / "f.jpg"
    bad.write_bytes((image_dir / "cat" / "a.jpg").read_bytes()[:600])  # a truncated JPEG
    out = tmp_path / "o.safetensors"
    for workers in ("0", "2"):
        r = (invoke if workers == "0" else run_cli)("extract", image_dir, "-o", out, "--backbone", tiny_script[0], "--workers", workers)
        assert_clean_failure(r, out, str(bad))
        assert "cannot read image" in r.stderr and "--skip-bad" in r.stderr


@pytest.mark.slow
def test_corrupt_jpeg_with_real_backbone_writes_nothing(tmp_path, image_dir):
    (image_dir / "cat" / "zz.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "o.safetensors"
    r = run_cli("extract", image_dir, "-o", out, "--batch-size", "2", "--workers", "1")
    assert_clean_failure(r, out, str(image_dir / "cat" / "zz.jpg"))


def test_list_line_without_label_names_file_and_line(tmp_path, image_dir):
    listing = tmp_path / "train.txt"
    listing.write_text("cat/a.jpg 0\ndog/d.png\n")
    out = tmp_path / "o.safetensors"
    r = invoke("extract", listing, "--root", image_dir, "-o", out)
    assert_clean_failure(r, out, str(listing))
    assert "line 2 has no label" in r.stderr


def test_unknown_backbone_lists_the_choices(tmp_path, image_dir):
    out = tmp_path / "o.safetensors"
    r = invoke("extract", image_dir, "-o", out, "--backbone", "resnet-9000")
    assert_clean_failure(r, out, "unknown backbone 'resnet-9000'")
    assert "efficientnet-lite0" in r.stderr and "TorchScript" in r.stderr


@pytest.mark.parametrize(
    "case",
    ["missing image", "not torchscript", "wrong output suffix", "half on cpu", "bad mean"],
)
def test_other_bad_input_is_one_clear_line(tmp_path, image_dir, tiny_script, case):
    out = tmp_path / "o.safetensors"
    args: list = [image_dir, "-o", out, "--backbone", tiny_script[0]]
    names = None
    if case == "missing image":
        listing = tmp_path / "l.txt"
        listing.write_text("cat/a.jpg 0\ncat/gone.jpg 0\n")
        args[0:1] = [listing, "--root", image_dir]
        names = str(image_dir / "cat" / "gone.jpg")
    elif case == "not torchscript":
        fake = tmp_path / "fake.pt"
        fake.write_bytes(b"not a model")
        args[-1] = fake
        names = str(fake)
    elif case == "wrong output suffix":
        out = tmp_path / "o.npz"
        args[2] = out
        names = str(out)
    elif case == "half on cpu":
        args += ["--half", "--device", "cpu"]
        names = "--half"
    elif case == "bad mean":
        args += ["--mean", "0.5,0.5"]
        names = "--mean"
    r = invoke("extract", *args)
    assert_clean_failure(r, out, names)


def test_skip_bad_leaves_out_and_lists_unreadable_images(tmp_path, image_dir, tiny_script):
    (image_dir / "dog" / "f.jpg").write_bytes(b"garbage")
    listing = tmp_path / "l.txt"
    listing.write_text("cat/a.jpg 0\ndog/f.jpg 1\ncat/missing.jpg 0\ndog/d.png 1\n")
    out = tmp_path / "o.safetensors"
    r = run_cli("extract", listing, "--root", image_dir, "-o", out, "--backbone", tiny_script[0], "--skip-bad",
                "--batch-size", "2", "--dtype", "float16")
    assert r.returncode == 0, r.stderr
    assert "skipped dog/f.jpg" in r.stderr and "skipped cat/missing.jpg" in r.stderr
    fs = read_features(out)
    assert list(fs.ids) == ["cat/a.jpg", "dog/d.png"] and fs.labels.tolist() == [0, 1]
    assert fs.features.dtype == np.float16
    skipped = {s["id"]: s["reason"] for s in fs.meta["skipped"]}
    assert set(skipped) == {"dog/f.jpg", "cat/missing.jpg"}
    assert skipped["cat/missing.jpg"] == "file not found" and "UnidentifiedImageError" in skipped["dog/f.jpg"]
    assert fs.meta["images"] == 2


def test_extract_file_writes_the_file_the_command_writes(tmp_path, image_dir, tiny_script):
    from dlsa_cli.extract import ExtractConfig, extract_file
    from dlsa_cli.io.files import read_safetensors

    cli_out, lib_out = tmp_path / "cli.safetensors", tmp_path / "lib.safetensors"
    r = invoke("extract", image_dir, "-o", cli_out, "--backbone", tiny_script[0], "--batch-size", "2", "--workers", "0",
               "--device", "cpu", "--crop", "64", "--chunk-size", "3")
    assert r.returncode == 0, r.stderr
    cfg = ExtractConfig(backbone=str(tiny_script[0]), batch_size=2, workers=0, device="cpu", crop=64, chunk_size=3)
    started, done = [], []
    rep = extract_file(image_dir, lib_out, cfg, on_start=started.append, progress=done.append)
    assert rep is not None and (rep.images, rep.dim, rep.classes, rep.images_run) == (5, 8, 2, 5)
    assert started[0].images == 5 and sum(done) == 5
    assert not (tmp_path / "lib.safetensors.resume").exists()  # the chunks go once the file is written
    cli, lib = read_safetensors(cli_out), read_safetensors(lib_out)
    assert np.array_equal(cli[0]["features"].numpy(), lib[0]["features"].numpy())
    assert cli[2] == lib[2]  # meta: ids, labels' class names, backbone, preprocessing, skipped
    skip = {"created", "argv"}
    assert {k: v for k, v in cli[3].items() if k not in skip} == {k: v for k, v in lib[3].items() if k not in skip}


def test_library_errors_are_dlsa_errors():
    with pytest.raises(DlsaError, match="unknown backbone"):
        load_backbone("no-such-net")
    with pytest.raises(DlsaError, match=r"ExtractConfig\.interpolation"):  # the library names the setting
        Preprocess(interpolation="nearest-ish")


# --------------------------------------------------------------------------- optional packages


def test_torchvision_backbone_is_the_penultimate_layer(tmp_path, image_dir):
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18()
    weights = tmp_path / "rn18.pth"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "o.safetensors"
    r = run_cli("extract", image_dir, "-o", out, "--backbone", "torchvision:resnet18", "--weights", weights, "--workers", "0")
    assert r.returncode == 0, r.stderr
    fs = read_features(out)
    model.fc = torch.nn.Identity()
    with torch.inference_mode():
        expected = model.eval()(preprocessed([str(image_dir / i) for i in fs.ids], Preprocess())).numpy()
    np.testing.assert_allclose(fs.features, expected, rtol=1e-4, atol=1e-5)


def test_timm_backbone_is_the_pooled_pre_logits(tmp_path, image_dir):
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", pretrained=False)
    weights = tmp_path / "rn18.pth"
    torch.save(model.state_dict(), weights)
    out = tmp_path / "o.safetensors"
    r = run_cli("extract", image_dir, "-o", out, "--backbone", "timm:resnet18", "--weights", weights, "--workers", "0")
    assert r.returncode == 0, r.stderr
    fs = read_features(out)
    p = fs.meta["preprocessing"]
    pre = Preprocess(resize=p["resize"], crop=p["crop"], mean=tuple(p["mean"]), std=tuple(p["std"]), interpolation=p["interpolation"])
    with torch.inference_mode():
        m = model.eval()
        expected = m.forward_head(m.forward_features(preprocessed([str(image_dir / i) for i in fs.ids], pre)), pre_logits=True)
    np.testing.assert_allclose(fs.features, expected.numpy(), rtol=1e-4, atol=1e-5)


def test_optional_backbone_without_its_package_is_a_clear_error(tmp_path, image_dir):
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed here")
    out = tmp_path / "o.safetensors"
    r = invoke("extract", image_dir, "-o", out, "--backbone", "torchvision:resnet50", "--weights", "w.pth")
    assert_clean_failure(r, out, "needs torchvision, which is not installed")
