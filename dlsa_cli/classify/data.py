"""What a classifier fit draws on: carved validation, batches, loss shifts, balanced accuracy, branch inputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlsa_cli.io.files import read_safetensors

__all__ = [
    "balanced_accuracy",
    "branch_inputs",
    "carve_validation",
    "cluster_inputs",
    "draw_batches",
    "leave_one_out_prior",
    "loss_logit_shift",
]


def carve_validation(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, val) row indices: each class with >= 2 samples gives
    `max(1, round(fraction * n))` (at most n - 1) to val; a class with one
    sample stays in train and is absent from val."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    tr, va = [], []
    for s, n in zip(starts, counts, strict=True):  # one step per class, not per sample
        rows = rng.permutation(order[s : s + n])
        k = 0 if n < 2 else int(min(max(1, round(fraction * n)), n - 1))
        va.append(rows[:k])
        tr.append(rows[k:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(va))


def draw_batches(
    labels: torch.Tensor, sampler: str, batch_size: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """One epoch of index batches (on the labels' device), `uniform` or `balanced` (CBS)."""
    n = labels.shape[0]
    device = labels.device
    if sampler == "uniform":
        perm = torch.randperm(n, generator=generator, device=generator.device).to(device)
    else:
        order = torch.argsort(labels, stable=True)  # (N,)
        counts = torch.bincount(labels)  # (C,)
        present = torch.nonzero(counts).squeeze(1)  # (C',)
        starts = torch.cumsum(counts, 0) - counts  # (C,)
        cls = present[torch.randint(len(present), (n,), generator=generator, device=generator.device).to(device)]
        u = torch.rand(n, generator=generator, device=generator.device).to(device)
        within = (u * counts[cls]).long().clamp_max(counts[cls] - 1)
        perm = order[starts[cls] + within]
    return list(perm.split(batch_size))


def loss_logit_shift(loss: str, counts: np.ndarray, la_tau: float = 1.0) -> np.ndarray | None:
    """The (C,) vector added to the logits during training only (None for CE).

    BSM: `log n_j`; LA: `tau * log(n_j / N)`. A class with no sample counts as 1.
    """
    if loss == "ce":
        return None
    c = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    if loss == "bsm":
        return np.log(c).astype(np.float32)
    return (la_tau * np.log(c / c.sum())).astype(np.float32)


def balanced_accuracy(
    pred: torch.Tensor, labels: torch.Tensor, num_classes: int, full_counts: torch.Tensor | None = None
) -> tuple[float, float]:
    """(mean per-class accuracy over classes present, plain accuracy).

    With `full_counts` (C,), the per-class counts of a whole validation set of
    which `labels` is a part, the first value is this part's contribution to
    the whole set's balanced accuracy: sum_i hit_i / full_counts[y_i] / #classes.
    """
    hit = (pred == labels).float()
    per_hit = torch.bincount(labels, weights=hit, minlength=num_classes)
    per_n = torch.bincount(labels, minlength=num_classes).float() if full_counts is None else full_counts.float()
    present = per_n > 0
    return float((per_hit[present] / per_n[present]).sum() / present.sum().clamp_min(1)), float(hit.mean())


def cluster_inputs(
    flt: Any, x: np.ndarray, *, side_input: str, device: torch.device | str = "cpu", batch_size: int = 4096
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cluster (N,), side input (N, S), prior rows (N, C)) of features under a filter.

    The prior row of a sample is the filter's `cluster_prior` row of its cluster.
    """
    scores = flt.score(x, batch_size=batch_size, device=device, latent=side_input == "latent")
    cluster = np.asarray(scores.cluster, dtype=np.int64)
    side, prior = branch_inputs(flt, x, cluster, scores.latent, side_input)
    return cluster, side, prior


def branch_inputs(
    flt: Any, x: np.ndarray, cluster: np.ndarray, latent: np.ndarray | None, side_input: str
) -> tuple[np.ndarray, np.ndarray]:
    """(side input (N, S), prior rows (N, C)) of already-scored samples: features x (N, D),
    their clusters (N,) and, for side_input "latent", their latents (N, D).

    The prior row of a sample is the filter's `cluster_prior` row of its cluster.
    """
    prior_table = np.asarray(torch.as_tensor(flt.cluster_prior).float().cpu().numpy())  # (K, C)
    if side_input == "latent":
        side = np.asarray(latent, dtype=np.float32)
    elif side_input == "none":  # FC_b sees the prior alone
        side = np.zeros((len(cluster), 0), dtype=np.float32)
    else:
        side = np.asarray(x, dtype=np.float32)
    return side, prior_table[cluster]


def leave_one_out_prior(flt: Any, filter_path: str | Path | None, cluster: np.ndarray, labels: np.ndarray,
                        plain: np.ndarray) -> np.ndarray:
    """Prior rows for training samples without the sample's own vote."""
    counts = getattr(flt, "cluster_counts", None)
    if counts is None and filter_path is not None:
        counts = read_safetensors(filter_path, ["cluster_counts"])[0]["cluster_counts"]
    if counts is None:
        return plain
    counts = np.asarray(torch.as_tensor(counts).cpu().numpy(), dtype=np.float64)  # (K, C)
    rows = counts[cluster].copy()  # (N, C)
    rows[np.arange(len(labels)), labels] -= 1.0
    rows = np.maximum(rows, 0.0)
    tot = rows.sum(1, keepdims=True)
    return np.where(tot > 0, rows / np.maximum(tot, 1.0), 0.0).astype(np.float32)


