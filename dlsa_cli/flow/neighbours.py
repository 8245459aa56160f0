"""The filter's training samples as neighbours in the flow's latent space: the `knn-tail` routing score.

`knn-tail` routes a sample by the tail share of its k nearest training samples
(cosine similarity of the flow's latents z), an estimate of P(tail | x) local
enough to follow the class boundaries that the K mixture clusters blur.

The filter file keeps its training latents (unit rows, float16: N x D x 2
bytes, 54 MB for 21k samples of 1280 dims) and their tail flags. A neighbour
at cosine similarity above `SELF_SIMILARITY` is the sample itself (or an exact
copy of it) and is not counted, so a training sample is scored by the others,
as an unseen one is; this also keeps the routing threshold, a quantile over
the training samples, fair to unseen samples.

The search goes through the bank in chunks of `BANK_CHUNK` rows and queries
in chunks of `QUERY_CHUNK` rows, so its memory is bounded by
QUERY_CHUNK x BANK_CHUNK similarities (64 MB) whatever the bank's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["SELF_SIMILARITY", "NeighbourBank"]

SELF_SIMILARITY = 0.999  # float16 storage puts a sample's similarity to itself within 1e-3 of 1
BANK_CHUNK = 16384
QUERY_CHUNK = 1024


@dataclass
class NeighbourBank:
    """Unit-norm training latents (N, D) float16, their tail flags (N,) bool, and k."""

    latents: torch.Tensor
    tail: torch.Tensor
    k: int

    @classmethod
    def build(cls, z: torch.Tensor | np.ndarray, tail: np.ndarray, k: int) -> NeighbourBank:
        """The bank of training latents z (N, D) with per-sample tail flags (N,)."""
        zt = torch.as_tensor(np.asarray(z) if not isinstance(z, torch.Tensor) else z, dtype=torch.float32)
        unit = torch.nn.functional.normalize(zt, dim=1).to(torch.float16)
        return cls(unit.contiguous(), torch.as_tensor(np.asarray(tail, dtype=bool)), int(k))

    def to(self, device: torch.device) -> NeighbourBank:
        self.latents = self.latents.to(device)
        self.tail = self.tail.to(device)
        return self

    def tail_share(self, z: torch.Tensor) -> torch.Tensor:
        """The tail share of each row's k nearest bank samples, itself excluded: (B,) float64 in [0, 1]."""
        q = torch.nn.functional.normalize(z.to(self.latents.device, torch.float32), dim=1)
        parts = [self._tail_share(q[s : s + QUERY_CHUNK]) for s in range(0, q.shape[0], QUERY_CHUNK)]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)

    def _tail_share(self, q: torch.Tensor) -> torch.Tensor:
        best_sim = torch.full((q.shape[0], 0), float("-inf"), device=q.device)  # (B, <=k)
        best_tail = torch.zeros((q.shape[0], 0), dtype=torch.bool, device=q.device)
        for s in range(0, self.latents.shape[0], BANK_CHUNK):
            sim = q @ self.latents[s : s + BANK_CHUNK].float().T  # (B, c)
            sim.masked_fill_(sim > SELF_SIMILARITY, float("-inf"))
            tail = self.tail[s : s + BANK_CHUNK].expand(q.shape[0], -1)  # (B, c)
            sim = torch.cat([best_sim, sim], 1)
            tail = torch.cat([best_tail, tail], 1)
            top = sim.topk(min(self.k, sim.shape[1]), dim=1)
            best_sim, best_tail = top.values, tail.gather(1, top.indices)
        found = torch.isfinite(best_sim)  # fewer than k others in a tiny bank: count those there are
        return (best_tail & found).sum(1).double() / found.sum(1).clamp(min=1).double()
