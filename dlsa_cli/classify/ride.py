"""RIDE (Wang et al., ICLR 2021) on frozen features: the distribution-aware diversity term.

Each expert i is trained with its classification loss MINUS `lambda * D_i`, where

    D_i = mean over the batch of  T_y^2 * KL( softmax(z_bar / T_y) || softmax(z_i / T_y) ),

z_i the expert's logits, z_bar the experts' mean logits (detached: a fixed target the
expert moves away from) and T_y the temperature of the sample's class,
`T_k = base * (1 - mix + mix * C * n_k / N)`: larger for classes with more
training samples, so the experts are pushed apart more on the head classes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["TEMPERATURE_MIX", "ride_diversity", "ride_temperatures"]

TEMPERATURE_MIX = 0.5  # share of the temperature that follows the class count (not tuned)


def ride_temperatures(counts: np.ndarray, base: float, mix: float = TEMPERATURE_MIX) -> torch.Tensor:
    """(C,) per-class temperatures, growing linearly with the class's training count."""
    n = np.maximum(np.asarray(counts, dtype=np.float64), 0.0)
    share = len(n) * n / max(n.sum(), 1.0)  # 1 for a class of average size
    return torch.as_tensor(base * (1.0 - mix + mix * share), dtype=torch.float32)


def ride_diversity(z: torch.Tensor, labels: torch.Tensor, temps: torch.Tensor) -> torch.Tensor:
    """The mean over experts of D_i (see the module docstring); z (E, B, C), labels (B,), temps (C,)."""
    t = temps.to(z.device)[labels][None, :, None]  # (1, B, 1)
    target = F.softmax(z.mean(0, keepdim=True).detach() / t, dim=2)  # (1, B, C)
    log_p = F.log_softmax(z / t, dim=2)  # (E, B, C)
    kl = (target * (torch.log(target.clamp_min(1e-30)) - log_p)).sum(2)  # (E, B)
    return (t[..., 0] ** 2 * kl).mean()
