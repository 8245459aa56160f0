"""Every setting of an extraction (`dlsa extract`), declared once and without torch.

A preprocessing setting left at None takes the backbone's own value
(ImageNet's resize 256, crop 224, mean and std, bilinear, unless a timm model
records others); `workers` at None takes `default_workers()`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from dlsa_cli.settings import Rule, at_least, check_settings, setting

__all__ = ["DTYPES", "INTERPOLATIONS", "ExtractConfig"]

DTYPES = ("float32", "float16")  # how the features are stored
INTERPOLATIONS = ("bilinear", "bicubic")
_RGB = Rule(lambda v: len(v) == 3 and all(math.isfinite(x) for x in v), "needs 3 finite numbers (R,G,B)")
_RGB_POS = Rule(lambda v: len(v) == 3 and all(math.isfinite(x) and x > 0 for x in v),
                "needs 3 finite positive numbers (R,G,B)")


@dataclass(frozen=True)
class ExtractConfig:
    """What `dlsa extract` runs: the backbone, its preprocessing, batching, device and resume."""

    backbone: str = setting("efficientnet-lite0", "efficientnet-lite0 (built in), a TorchScript file, or "
                            "torchvision:ARCH / timm:ARCH when installed.")
    weights: Path | None = setting(None, "Local weights file (state dict) for torchvision/timm, or to replace "
                                   "efficientnet-lite0's.", shown="")
    resize: int | None = setting(None, "Shorter side after resizing.", rule=at_least(1), shown="256")
    crop: int | None = setting(None, "Centre crop size.", rule=at_least(1), shown="224")
    mean: tuple[float, ...] | None = setting(None, "Per-channel mean, R,G,B.", rule=_RGB, shown="ImageNet's")
    std: tuple[float, ...] | None = setting(None, "Per-channel std, R,G,B.", rule=_RGB_POS, shown="ImageNet's")
    interpolation: str | None = setting(None, "Resize filter: bilinear or bicubic.", choices=INTERPOLATIONS,
                                        shown="bilinear")
    batch_size: int = setting(64, "Images per forward pass.", rule=at_least(1))
    workers: int | None = setting(None, "Decoding processes (0: decode in the main process).", rule=at_least(0),
                                  shown="cores - 1, at most 8")
    device: str = setting("auto", "Where to compute: auto (CUDA when present), cpu, cuda or cuda:N.")
    half: bool = setting(False, "Run the model in float16 (CUDA only).")
    dtype: str = setting("float32", "Stored feature type: float32 or float16.", choices=DTYPES)
    skip_bad: bool = setting(False, "Leave out images that cannot be read, and list them, instead of stopping.")
    resume: bool = setting(False, "Continue an interrupted run: reuse the finished chunks in OUT.resume/ (same "
                           "images and options) and extract only the rest.")
    chunk_size: int = setting(4096, "Images per chunk file in OUT.resume/ (what an interrupted run keeps; the "
                              "folder is removed on success).", rule=at_least(1))

    def check(self) -> None:
        """A setting of the wrong type or out of its range: one line naming it (`ExtractConfig.crop`)."""
        check_settings(self)
