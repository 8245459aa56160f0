"""Long-tail metrics: class-count profiles, shot groups, accuracies, MCC, NMI.

Shot groups follow the field's convention (Liu et al. 2019): many-shot classes
have more than 100 training samples, few-shot fewer than 20, medium the rest.
A class with no training sample (count 0) is therefore few-shot.
Group accuracy is the mean of the per-class accuracies of the group's classes
that have evaluation samples; a group with no such class has no accuracy
(None, shown as n/a), never 0.
Head/tail for separation accuracy (paper Fig. 7): tail = at most 50 training
samples. Every threshold is a parameter.

Everything is numpy, computed from counts (`bincount`), never a per-sample
Python loop. MCC is the multiclass form of Gorodkin (2004) and NMI uses the
arithmetic mean of the entropies, as scikit-learn's `matthews_corrcoef` and
`normalized_mutual_info_score` (their edge cases included).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "FEW_BELOW",
    "MANY_ABOVE",
    "TAIL_AT_MOST",
    "accuracy_from_counts",
    "balanced_row_weights",
    "binned_confusion",
    "class_counts",
    "group_accuracies",
    "matthews_corrcoef",
    "mcc_from_counts",
    "nmi_from_cells",
    "normalized_mutual_info",
    "per_class_accuracy",
    "separation_accuracy",
    "shot_groups",
    "tail_classes",
    "tail_mass",
    "top1_accuracy",
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


def balanced_row_weights(labels: np.ndarray) -> np.ndarray:
    """(N,) 1 / (the row's class count in `labels`): summed over the rows predicted right, the balanced
    accuracy times the number of classes present."""
    labels = np.asarray(labels)
    return 1.0 / np.bincount(labels)[labels]


def tail_mass(logits: np.ndarray, is_tail: np.ndarray) -> np.ndarray:
    """Softmax mass (N,) of logits (N, C) on the classes `is_tail` (C,) marks."""
    z = np.asarray(logits, dtype=np.float64)
    p = np.exp(z - z.max(1, keepdims=True))  # (N, C)
    return p[:, is_tail].sum(1) / p.sum(1)




def top1_accuracy(labels: np.ndarray, predictions: np.ndarray) -> float | None:
    """Share of samples predicted right; None for no samples."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    return float(np.mean(labels == predictions)) if labels.size else None


def per_class_accuracy(
    labels: np.ndarray, predictions: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class (accuracy, correct, support), each (C,); accuracy is NaN where support is 0."""
    labels = np.asarray(labels, dtype=np.int64)
    right = labels == np.asarray(predictions)
    support = np.bincount(labels, minlength=num_classes)  # (C,)
    correct = np.bincount(labels[right], minlength=num_classes)  # (C,)
    return accuracy_from_counts(correct, support), correct, support


def accuracy_from_counts(correct: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Per-class accuracy (C,) from correct and evaluated counts; NaN where a class has no evaluation sample."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, correct / np.maximum(support, 1), np.nan)


def group_accuracies(
    class_acc: np.ndarray,
    counts: np.ndarray,
    many_above: int = MANY_ABOVE,
    few_below: int = FEW_BELOW,
) -> dict[str, float | None]:
    """Mean per-class accuracy in each shot group; None where no class of the group was evaluated.

    `class_acc` (C,) holds NaN for classes without evaluation samples; those are left out.
    """
    groups = shot_groups(counts, many_above, few_below)
    out: dict[str, float | None] = {}
    for g in ("many", "medium", "few"):
        vals = class_acc[(groups == g) & ~np.isnan(class_acc)]
        out[g] = float(vals.mean()) if vals.size else None
    return out


def matthews_corrcoef(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Multiclass MCC (Gorodkin 2004) of two label arrays; see `mcc_from_counts`."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(predictions, dtype=np.int64)
    if y.size == 0:
        return 0.0
    k = int(max(y.max(), p.max())) + 1
    return mcc_from_counts(np.bincount(y, minlength=k), np.bincount(p, minlength=k), int(np.sum(y == p)))


def mcc_from_counts(true_counts: np.ndarray, pred_counts: np.ndarray, correct: int) -> float:
    """Multiclass MCC from per-class true counts t (K,), predicted counts p (K,) and the correct count c.

    (c * s - t.p) / sqrt((s^2 - p.p) (s^2 - t.t)), s the number of samples; 0 when undefined.
    """
    t = np.asarray(true_counts, dtype=np.float64)
    q = np.asarray(pred_counts, dtype=np.float64)
    s = float(t.sum())
    if s == 0:
        return 0.0
    cov_tp = float(correct) * s - t @ q
    cov_pp = s * s - q @ q
    cov_tt = s * s - t @ t
    if cov_pp * cov_tt == 0:
        return 0.0
    return float(cov_tp / np.sqrt(cov_pp * cov_tt))


def _entropy(counts: np.ndarray) -> float:
    counts = counts[counts > 0].astype(np.float64)
    if counts.size <= 1:
        return 0.0
    total = counts.sum()
    return float(-np.sum((counts / total) * (np.log(counts) - np.log(total))))


def normalized_mutual_info(labels: np.ndarray, predictions: np.ndarray) -> float:
    """NMI with the arithmetic mean of the two entropies as normaliser (natural log); see `nmi_from_cells`."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(predictions, dtype=np.int64)
    if y.size == 0:
        return 1.0
    k = int(max(y.max(), p.max())) + 1
    cells, nij = np.unique(y * k + p, return_counts=True)
    return nmi_from_cells(cells // k, cells % k, nij)


def nmi_from_cells(rows: np.ndarray, cols: np.ndarray, counts: np.ndarray) -> float:
    """NMI from the non-zero cells of a contingency table: (row class, column class, count) each (M,).

    Cells in row-major order give the same floating-point sum as the arrays they count.
    """
    nij = np.asarray(counts, dtype=np.float64)
    if nij.size == 0:
        return 1.0
    _, i = np.unique(rows, return_inverse=True)
    _, j = np.unique(cols, return_inverse=True)
    a = np.bincount(i, weights=nij)  # (Cy,) row sums of the classes present
    b = np.bincount(j, weights=nij)  # (Cp,) column sums
    if len(a) == len(b) == 1:
        return 1.0  # both labellings put everything in one group: a perfect match
    if len(a) == 1 or len(b) == 1:
        return 0.0
    n = float(nij.sum())
    mi = (nij / n) * (np.log(nij) + np.log(n) - np.log(a[i]) - np.log(b[j]))  # p_ij log(p_ij / (p_i p_j))
    mi = np.where(np.abs(mi) < np.finfo(np.float64).eps, 0.0, mi)
    mi_sum = float(max(mi.sum(), 0.0))
    if mi_sum == 0.0:
        return 0.0
    norm = (_entropy(a) + _entropy(b)) / 2.0
    return float(mi_sum / max(norm, np.finfo(np.float64).eps))


def separation_accuracy(
    labels: np.ndarray, counts: np.ndarray, tail_at_most: int = TAIL_AT_MOST
) -> float | None:
    """Share of the given (routed) samples whose TRUE class is tail (paper Fig. 7); None for none."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size == 0:
        return None
    return float(np.mean(tail_classes(counts, tail_at_most)[labels]))


def binned_confusion(
    labels: np.ndarray, predictions: np.ndarray, counts: np.ndarray, bins: int = 20
) -> np.ndarray:
    """Mistakes only, classes ordered by training count (most first) and merged into bins: (B, B).

    Row = bin of the true class, column = bin of the predicted class. Correct
    predictions (the per-class diagonal) are left out before binning, so a
    mistake between two classes of the same bin still counts on the diagonal.
    """
    counts = np.asarray(counts)
    c = len(counts)
    b = max(1, min(int(bins), c))
    order = np.argsort(-counts, kind="stable")  # class ids, most frequent first
    rank = np.empty(c, dtype=np.int64)
    rank[order] = np.arange(c)
    bin_of = rank * b // c  # (C,) near-equal contiguous bins
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(predictions, dtype=np.int64)
    wrong = y != p
    cells = bin_of[y[wrong]] * b + bin_of[p[wrong]]
    return np.bincount(cells, minlength=b * b).reshape(b, b)
