"""Learnable weight scaling (LWS; Kang et al. 2020): an init classifier's rows rescaled, `W_j <- f_j W_j`.

Only the per-class scales `f` (C,) are parameters; the init weights and the
bias are buffers, so an optimiser over `parameters()` can change nothing else.
`weight` is the rescaled matrix, so code that reads a linear head's `weight`
and `bias` (tau-normalisation, an `--init` for another fit) reads an LWS head
the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LwsHead"]


class LwsHead(nn.Module):
    """`(f_j W_j) x + b_j`: init weights `init_weight` (C, D) and `bias` (C,) fixed, scales `scale` (C,) learned."""

    cosine = False
    init_weight: torch.Tensor  # buffers, declared for the type checker
    bias: torch.Tensor

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.register_buffer("init_weight", torch.zeros(num_classes, dim))  # (C, D)
        self.register_buffer("bias", torch.zeros(num_classes))  # (C,)
        self.scale = nn.Parameter(torch.ones(num_classes))  # (C,)

    @classmethod
    def from_init(cls, weight: torch.Tensor, bias: torch.Tensor) -> LwsHead:
        """A head at its init classifier: scales 1."""
        head = cls(int(weight.shape[1]), int(weight.shape[0]))
        head.init_weight.copy_(weight)
        head.bias.copy_(bias)
        return head

    @property
    def weight(self) -> torch.Tensor:  # (C, D)
        return self.scale[:, None] * self.init_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, C)
        return F.linear(x, self.weight, self.bias)
