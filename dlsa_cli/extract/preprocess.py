"""Preprocessing: resize the shorter side, centre-crop, normalise with ImageNet's mean and std.

With the defaults `Preprocess` reproduces, step for step, the preprocessing
that made `shared/data/caltech101_lite0.npz`. `ImageDataset` decodes in
DataLoader worker processes; a file that cannot be read becomes a per-image
error the extraction loop reports.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from dlsa_cli.errors import DlsaError
from dlsa_cli.extract.config import INTERPOLATIONS

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS", "ImageDataset", "Preprocess"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side, centre-crop, normalise: what the backbone expects.

    Decoding, resizing and cropping happen in worker processes (`load`, uint8);
    scaling to [0, 1] and normalising happen on the device for the whole batch
    (`normalise`).
    """

    resize: int = 256
    crop: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN  # R,G,B: three, checked below
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.resize < 1 or self.crop < 1:
            raise DlsaError(f"ExtractConfig.resize {self.resize} / ExtractConfig.crop {self.crop}: both "
                            "must be positive")
        if self.interpolation not in INTERPOLATIONS:
            raise DlsaError(f"ExtractConfig.interpolation {self.interpolation}: unknown",
                            hint=f"use one of {', '.join(INTERPOLATIONS)}")
        for what, v in (("mean", self.mean), ("std", self.std)):
            if len(v) != 3:
                raise DlsaError(f"ExtractConfig.{what} needs 3 numbers (R,G,B), got {len(v)}")
        if min(self.std) <= 0:
            raise DlsaError("ExtractConfig.std values must be positive")

    def to_meta(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std), "resize_side": "shorter",
                "crop_at": "centre"}

    def load(self, path: str) -> np.ndarray:
        """Decode one image and return the centre crop, (crop, crop, 3) uint8."""
        from PIL import Image

        resample = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}[self.interpolation]
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
