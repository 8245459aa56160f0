"""Memory: the class-balanced vote of a sample's k nearest training samples, added to logits as a log-prior.

A linear classifier summarises each class by one direction; it forgets which
training samples lie nearest a query. The vote puts that back:

    vote_c(x) = sum over the k nearest training samples j of [y_j = c] / n_c,  normalised to sum 1

(cosine similarity of L2-normalised features; n_c the training count of class c, so
a few-shot class's neighbours count as much as a many-shot class's). A classifier
with memory predicts from `logits + weight * log(vote + floor)`; the weight and
the floor are chosen on validation (`MEMORY_WEIGHTS` x `VOTE_FLOORS`, weight 0 =
no memory). The floor sets how hard memory vetoes a class no neighbour voted
for: log(0.001) ~ -6.9 all but forbids it, log(0.05) ~ -3.0 only leans against it. It generalises the
cluster-aided classifier's prior P(class | cluster) from K clusters to each
sample's own neighbourhood.

A training sample is voted on by the others: the query's own bank row (`rows`)
is left out, by index, so an exact duplicate elsewhere in TRAIN still counts.

The search is exact and batched in torch: queries in chunks of `QUERY_CHUNK`,
the bank in chunks of `BANK_CHUNK`, keeping a running top-k, so memory is bounded
by QUERY_CHUNK x BANK_CHUNK similarities whatever N. The bank is stored as
float16 unit rows (N x D x 2 bytes) with int64 labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlsa_cli.errors import InputError

__all__ = ["MEMORY_WEIGHTS", "VOTE_FLOORS", "MemoryBank", "choose_memory", "choose_weight", "log_vote"]

VOTE_FLOORS = (0.001, 0.01, 0.05)  # what a class no neighbour voted for gets before the log; validation chooses
MEMORY_WEIGHTS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)  # the weights validation chooses from
BANK_CHUNK = 16384
QUERY_CHUNK = 1024


@dataclass
class MemoryBank:
    """Unit-norm training features (N, D) float16, their labels (N,), the class count C and k."""

    features: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    k: int

    @classmethod
    def build(cls, x: np.ndarray | torch.Tensor, labels: np.ndarray, num_classes: int, k: int) -> MemoryBank:
        if k < 1:
            raise InputError(f"memory needs k >= 1 neighbours, got {k}")
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32)) if not isinstance(x, torch.Tensor) else x.float()
        unit = torch.nn.functional.normalize(xt, dim=1).to(torch.float16).contiguous()
        return cls(unit, torch.as_tensor(np.asarray(labels, dtype=np.int64)), int(num_classes), int(k))

    @property
    def class_weight(self) -> torch.Tensor:
        """1 / n_c (C,) float64 over the bank's own labels; 0 for a class it lacks."""
        n = torch.bincount(self.labels, minlength=self.num_classes).double()
        return torch.where(n > 0, 1.0 / n.clamp(min=1.0), torch.zeros_like(n))

    def vote(self, x: np.ndarray | torch.Tensor, *, rows: np.ndarray | None = None,
             device: torch.device | str = "cpu") -> np.ndarray:
        """The class-balanced vote (B, C) float32 of queries x (B, D); `rows` (B,): each query's own row
        in the bank, left out of its neighbours (-1 for a query that is not a bank sample)."""
        dev = torch.device(device)
        bank, labels = self.features.to(dev), self.labels.to(dev)
        q = torch.nn.functional.normalize(torch.as_tensor(np.asarray(x, dtype=np.float32)).to(dev), dim=1)
        own = torch.full((q.shape[0],), -1, dtype=torch.int64) if rows is None else torch.as_tensor(rows)
        cw = self.class_weight.to(dev)
        out = np.empty((q.shape[0], self.num_classes), dtype=np.float32)
        for s in range(0, q.shape[0], QUERY_CHUNK):
            idx = self._nearest(q[s : s + QUERY_CHUNK], bank, own[s : s + QUERY_CHUNK].to(dev))  # (b, k)
            w = cw[labels[idx]]  # (b, k): each neighbour's 1 / n_class
            v = torch.zeros((idx.shape[0], self.num_classes), dtype=torch.float64, device=dev)
            v.scatter_add_(1, labels[idx], w)
            out[s : s + len(idx)] = (v / v.sum(1, keepdim=True).clamp(min=1e-300)).float().cpu().numpy()
        return out

    def _nearest(self, q: torch.Tensor, bank: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        """Bank rows (b, k) of each query's k nearest bank samples, its own row left out."""
        k = min(self.k, bank.shape[0] - int((own >= 0).any()))
        best_sim = torch.full((q.shape[0], 0), float("-inf"), device=q.device)
        best_idx = torch.zeros((q.shape[0], 0), dtype=torch.int64, device=q.device)
        for s in range(0, bank.shape[0], BANK_CHUNK):
            sim = q @ bank[s : s + BANK_CHUNK].float().T  # (b, c)
            mine = (own >= s) & (own < s + sim.shape[1])
            sim[mine.nonzero().squeeze(1), (own[mine] - s)] = float("-inf")
            idx = torch.arange(s, s + sim.shape[1], device=q.device).expand(q.shape[0], -1)
            sim, idx = torch.cat([best_sim, sim], 1), torch.cat([best_idx, idx], 1)
            top = sim.topk(min(k, sim.shape[1]), dim=1)
            best_sim, best_idx = top.values, idx.gather(1, top.indices)
        return best_idx

    def save(self, path: str | Path, *, prov: dict[str, Any] | None = None) -> None:
        from dlsa_cli.io.files import write_safetensors

        write_safetensors(path, {"features": self.features, "labels": self.labels}, kind="memory",
                          meta={"num_classes": self.num_classes, "k": self.k, "samples": int(self.labels.shape[0]),
                                "vote_floors": list(VOTE_FLOORS)}, prov=prov)

    @classmethod
    def load(cls, path: str | Path) -> MemoryBank:
        from dlsa_cli.errors import ModelMismatchError
        from dlsa_cli.io.files import read_safetensors

        tensors, kind, meta, _ = read_safetensors(path)
        if kind != "memory" or "features" not in tensors or "labels" not in tensors:
            raise ModelMismatchError("is not a dlsa memory file (features, labels)", path=path,
                                     hint="refit the cascade with CascadePlan.memory_k")
        return cls(tensors["features"].to(torch.float16), tensors["labels"].long(), int(meta["num_classes"]),
                   int(meta["k"]))


def log_vote(vote: np.ndarray, floor: float) -> np.ndarray:
    """log(vote + floor) (B, C) float32: the log-prior a memory weight multiplies."""
    return np.log(np.asarray(vote, dtype=np.float32) + np.float32(floor))


def choose_memory(logits: np.ndarray, vote: np.ndarray, labels: np.ndarray,
                  row_weight: np.ndarray | None = None) -> tuple[float, float, list[float]]:
    """(weight, floor, every pair's score): the pair of `MEMORY_WEIGHTS` x `VOTE_FLOORS` that `choose_weight`
    scores best (floors in order, the first best kept: no memory at all when memory never helps)."""
    best, scores = (0.0, VOTE_FLOORS[0]), list[float]()
    for floor in VOTE_FLOORS:
        w, sc = choose_weight(logits, log_vote(vote, floor), labels, row_weight)
        if not scores or max(sc) > max(scores):
            best = (w, floor) if w > 0 else (0.0, VOTE_FLOORS[0])
        scores += sc
    return best[0], best[1], scores


def choose_weight(logits: np.ndarray, log_prior: np.ndarray, labels: np.ndarray,
                  row_weight: np.ndarray | None = None,
                  grid: tuple[float, ...] = MEMORY_WEIGHTS) -> tuple[float, list[float]]:
    """The grid weight w maximising sum(row_weight * [argmax(logits + w * log_prior) == label]) (the first,
    weakest, among ties), and every weight's score. With row_weight = 1 / (the row's class count in the
    whole validation set), the default for the rows being the whole set, the score is each row's share of
    the balanced accuracy, so routes can be chosen apart."""
    from dlsa_cli.evaluation.metrics import balanced_row_weights

    if row_weight is None:
        row_weight = balanced_row_weights(labels)
    scores = [float((row_weight * ((logits + w * log_prior).argmax(1) == labels)).sum()) for w in grid]
    return float(grid[int(np.argmax(scores))]), scores
