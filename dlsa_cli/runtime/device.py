"""Choosing the torch device from `--device auto|cpu|cuda|cuda:N` and seeding."""

from __future__ import annotations

import random

import numpy as np
import torch

from dlsa_cli.errors import DlsaError

__all__ = ["as_device", "resolve_device", "seed_everything"]


def as_device(device: str | torch.device | None) -> torch.device:
    """`device` as a torch.device: a name resolved (auto, cpu, cuda, cuda:N), None meaning the CPU."""
    if isinstance(device, torch.device):
        return device
    return resolve_device(device or "cpu")


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn a `--device` value into a torch.device, with a clear error if unusable."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DlsaError(f"--device {spec}: no CUDA device is available here", hint="use --device cpu or auto")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DlsaError(
                f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s) here",
                hint=f"pick cuda:0..cuda:{torch.cuda.device_count() - 1}",
            )
        return dev
    raise DlsaError(f"--device {spec}: not a device", hint="use auto, cpu, cuda or cuda:N")


def seed_everything(seed: int) -> torch.Generator:
    """Seed python, numpy and torch; return a CPU generator seeded the same."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g
