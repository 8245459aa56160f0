"""Long-tail metrics: class-count profiles, shot groups, accuracies, MCC, NMI.

Shot groups follow the field's convention (Liu et al. 2019): many-shot classes
have more than 100 training samples, few-shot fewer than 20, medium the rest.
Head/tail for separation accuracy (paper Fig. 7): tail = at most 50 training
samples. Every threshold is a parameter.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "MANY_ABOVE",
    "FEW_BELOW",
    "TAIL_AT_MOST",
    "class_counts",
    "shot_groups",
    "tail_classes",
]

MANY_ABOVE = 100
FEW_BELOW = 20
TAIL_AT_MOST = 50


def class_counts(labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """Samples per class (C,), int64; C = max(label) + 1 unless given."""
    labels = np.asarray(labels, dtype=np.int64)
    c = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    return np.bincount(labels, minlength=c).astype(np.int64)


def shot_groups(counts: np.ndarray, many_above: int = MANY_ABOVE, few_below: int = FEW_BELOW) -> np.ndarray:
    """Per-class group name, 'many' / 'medium' / 'few', from training counts (C,)."""
    counts = np.asarray(counts)
    out = np.full(counts.shape, "medium", dtype=object)
    out[counts > many_above] = "many"
    out[counts < few_below] = "few"
    return out.astype(str)


def tail_classes(counts: np.ndarray, tail_at_most: int = TAIL_AT_MOST) -> np.ndarray:
    """Boolean (C,): True for tail classes (at most `tail_at_most` training samples)."""
    return np.asarray(counts) <= tail_at_most
