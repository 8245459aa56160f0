"""The nearest class mean classifier (NCM; Kang et al. 2020): cosine similarity to each class's mean.

The class means are taken over L2-normalised training features; a sample's
logit for class j is `scale * cos(x, m_j)`, so its prediction is the class
whose mean is nearest in angle. Nothing is trained.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["NcmHead", "class_means"]

CHUNK = 65_536  # rows normalised at a time


class NcmHead(nn.Module):
    """`scale * cos(x, m_j)` for the class means `means` (C, D) of normalised training features."""

    cosine = True
    means: torch.Tensor  # a buffer, declared for the type checker

    def __init__(self, dim: int, num_classes: int, *, scale: float = 16.0):
        super().__init__()
        self.scale = float(scale)
        self.register_buffer("means", torch.zeros(num_classes, dim))  # (C, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, C)
        return self.scale * F.normalize(x, dim=1) @ F.normalize(self.means, dim=1).T


def class_means(features: np.ndarray, labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """(C, D) float32: per class, the mean of its L2-normalised features (zeros for a class without samples)."""
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    n, dim = int(features.shape[0]), int(features.shape[1])
    sums = torch.zeros(num_classes, dim, dtype=torch.float64)
    for s in range(0, n, CHUNK):
        xb = torch.as_tensor(np.asarray(features[s : s + CHUNK]), dtype=torch.float64)  # (B, D)
        sums.index_add_(0, y[s : s + CHUNK], F.normalize(xb, dim=1))
    counts = torch.bincount(y, minlength=num_classes).clamp_min(1)  # (C,)
    return (sums / counts[:, None]).float()
