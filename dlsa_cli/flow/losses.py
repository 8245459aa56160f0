"""The filter's three losses (weighted likelihood, purity, balance) and the class-uniform pair sampler."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from dlsa_cli.errors import TrainingError

# ----------------------------------------------------------------------------- losses


def class_weights(counts: np.ndarray | torch.Tensor, q: float) -> torch.Tensor:
    """w_c = (n_max / n_c)^q / sum_j (n_max / n_j)^q over present classes; 0 for absent ones. (C,)"""
    n = torch.as_tensor(np.asarray(counts) if not isinstance(counts, torch.Tensor) else counts).double()
    present = n > 0
    w = torch.zeros_like(n)
    w[present] = (n.max() / n[present]) ** q
    return (w / w.sum()).float()


def _mean(v: torch.Tensor) -> torch.Tensor:
    return v.mean()


def mle_loss(log_p: torch.Tensor, weights: torch.Tensor, lam: float,
             mean: Callable[[torch.Tensor], torch.Tensor] = _mean) -> torch.Tensor:
    """-lam * mean(w * log p): log_p (B,), weights (B,) (already indexed by label).

    `mean` is the batch mean; under DDP `dlsa_cli.runtime.ddp.ddp_mean` over the global batch.
    """
    return -lam * mean(weights * log_p)


def purity_loss(l_pos: torch.Tensor, l_neg: torch.Tensor, lam: float,
                mean: Callable[[torch.Tensor], torch.Tensor] = _mean) -> torch.Tensor:
    """lam * mean_batch sum_k softmax(l_pos)_k log_softmax(l_neg)_k, l_pos detached. (B, K) each."""
    p_pos = torch.softmax(l_pos.detach(), dim=1)  # (B, K)
    return lam * mean((p_pos * torch.log_softmax(l_neg, dim=1)).sum(1))


class BalanceLoss:
    """Cluster-balance loss with the bias-corrected moving estimate of P(h | X).

    Step t: `p_t = mean_batch softmax(l) + 1e-7`,
    `p~_t = eta p~_{t-1} + (1 - eta) p_t` (p~_0 = 0; the history is detached,
    so the gradient flows through the current batch only),
    `p^ = p~_t / (1 - eta^t)`, loss `lam * (sum_k p^_k log p^_k + log K)`,
    which is >= 0 (up to the 1e-7 smoothing) and 0 for perfectly even clusters.
    """

    def __init__(self, num_clusters: int, eta: float, lam: float,
                 batch_mean: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.batch_mean = batch_mean or (lambda v: v.mean(0))  # (B, K) -> (K,); under DDP the global batch's
        self.k = int(num_clusters)
        self.eta = float(eta)
        self.lam = float(lam)
        self.t = 0
        self.p_tilde: torch.Tensor | None = None  # (K,), detached

    def __call__(self, l_pos: torch.Tensor) -> torch.Tensor:
        self.t += 1
        p_t = self.batch_mean(torch.softmax(l_pos, dim=1)) + 1e-7  # (K,)
        prev = torch.zeros_like(p_t) if self.p_tilde is None else self.p_tilde
        p_tilde = self.eta * prev + (1 - self.eta) * p_t
        self.p_tilde = p_tilde.detach()
        p_hat = p_tilde / (1 - self.eta**self.t)
        return self.lam * ((p_hat * torch.log(p_hat)).sum() + math.log(self.k))


class PairSampler:
    """Draws (pos, neg) index pairs: pos from a uniformly drawn class, neg from a
    uniformly drawn OTHER class, each sample uniform within its class.

    Everything is an index tensor on the labels' device, drawn from `generator`.
    """

    def __init__(self, labels: torch.Tensor, generator: torch.Generator):
        y = labels.long()
        self.g = generator
        counts = torch.bincount(y)  # (C,)
        self.classes = torch.nonzero(counts > 0).flatten()  # (Cp,) present classes
        if self.classes.numel() < 2:
            raise TrainingError("pairs need samples of at least 2 classes")
        self.counts = counts[self.classes]  # (Cp,)
        self.order = torch.argsort(y, stable=True)  # sample indices grouped by class
        self.starts = torch.cumsum(counts, 0)[self.classes] - self.counts  # (Cp,)

    def _sample_in(self, cls_idx: torch.Tensor) -> torch.Tensor:
        n = self.counts[cls_idx]
        u = torch.rand(cls_idx.shape[0], generator=self.g, device=cls_idx.device)
        off = torch.minimum((u * n).long(), n - 1)
        return self.order[self.starts[cls_idx] + off]

    def draw(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(pos, neg) sample indices, each (batch,)."""
        cp = self.classes.numel()
        dev = self.order.device
        i = torch.randint(0, cp, (batch,), generator=self.g, device=dev)
        j = (i + 1 + torch.randint(0, cp - 1, (batch,), generator=self.g, device=dev)) % cp
        return self._sample_in(i), self._sample_in(j)


