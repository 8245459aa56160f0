"""Every setting of an extraction (`dlsa extract`), in one place and without torch.

A preprocessing setting left at None takes the backbone's own value
(ImageNet's resize 256, crop 224, mean and std, bilinear, unless a timm model
records others); `workers` at None takes `default_workers()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DTYPES", "ExtractConfig"]

DTYPES = ("float32", "float16")  # how the features are stored


@dataclass(frozen=True)
class ExtractConfig:
    """What `dlsa extract` runs: the backbone, its preprocessing, batching, device and resume."""

    backbone: str = "efficientnet-lite0"  # built in, a TorchScript file, torchvision:ARCH or timm:ARCH
    weights: Path | None = None  # a local state dict for torchvision/timm, or to replace efficientnet-lite0's
    resize: int | None = None  # shorter side after resizing
    crop: int | None = None  # centre crop size
    mean: tuple[float, float, float] | None = None  # per-channel mean, R, G, B
    std: tuple[float, float, float] | None = None  # per-channel std, R, G, B
    interpolation: str | None = None  # bilinear or bicubic
    batch_size: int = 64  # images per forward pass
    workers: int | None = None  # decoding processes (0: in this process)
    device: str = "auto"
    half: bool = False  # run the model in float16 (CUDA only)
    dtype: str = "float32"  # stored feature type (DTYPES)
    skip_bad: bool = False  # leave out unreadable images, and list them, instead of stopping
    resume: bool = False  # reuse the finished chunks of an interrupted run
    chunk_size: int = 4096  # images per chunk file in OUT.resume/
