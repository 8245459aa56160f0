"""Cluster statistics of a filter: the (cluster, class) count table, sizes and purities."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

# ----------------------------------------------------------------------------- cluster statistics


def cluster_table(cluster: torch.Tensor, labels: torch.Tensor, k: int, c: int) -> torch.Tensor:
    """Counts (K, C) of samples per (cluster, class), from one bincount."""
    return torch.bincount(cluster.long() * c + labels.long(), minlength=k * c).view(k, c)


def cluster_stats(table: np.ndarray | torch.Tensor, purity_threshold: float = 0.7,
                  min_size: int = 10) -> dict[str, Any]:
    """Sizes, purities and the good-cluster count of a (K, C) count table."""
    t = torch.as_tensor(table).cpu().numpy() if isinstance(table, torch.Tensor) else np.asarray(table)
    sizes = t.sum(1)
    n = int(sizes.sum())
    nonempty = sizes > 0
    purity = np.where(nonempty, t.max(1) / np.maximum(sizes, 1), 0.0)
    q = np.percentile(sizes, [0, 25, 50, 75, 100]) if sizes.size else np.zeros(5)
    return {
        "samples": n,
        "size_min": int(q[0]),
        "size_q1": float(q[1]),
        "size_median": float(q[2]),
        "size_q3": float(q[3]),
        "size_max": int(q[4]),
        "largest_share": float(sizes.max() / n) if n else 0.0,
        "empty": int((~nonempty).sum()),
        "purity_above_0.9": int((purity > 0.9).sum()),
        "purity_above_0.7": int((purity > 0.7).sum()),
        "purity_above_0.5": int((purity > 0.5).sum()),
        "good_clusters": int(((purity > purity_threshold) & (sizes > min_size)).sum()),
    }


