"""Routing scores: which samples a filter sends to its cluster-aided classifier.

A filter routes a sample when its routing score is at or above the filter's
threshold, the (1 - share) quantile of the score over the filter's training
samples. The scores:

- `likelihood` (the paper's rule, the default): log p(x) under the
  class-weighted flow.
- `ratio`: log p(x) - log p_ref(x), where p_ref is the same flow trained with
  unweighted likelihood (q = 0, the `reference`). The ratio cancels how typical
  a sample is in feature space and keeps what the class weights add: it is
  large where the weighted density puts more mass than the plain one, i.e.
  near tail classes.
- `cluster-tail`: the tail share of the sample's cluster among the filter's
  training samples, P(tail | cluster(x)); samples of equally tailed clusters
  are ordered by log p(x) (a term below 1e-7 breaks the ties), so the routed
  share of training samples is `share`.

Controls for the benchmarks (not filter scores): the baseline classifier's
expected class weight `sum_y p(y|x) w_y` and a random route. `RoutedBy` wraps a
filter so that a cascade routes by any such score while keeping the filter's
clusters and prior.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from dlsa_cli.errors import DlsaError
from dlsa_cli.evaluation.metrics import tail_classes

__all__ = [
    "ROUTINGS",
    "check_routing",
    "cluster_tail_share",
    "routing_score",
    "quantile_threshold",
    "set_routing",
    "separation",
    "expected_class_weight",
    "random_score",
    "RoutedBy",
]

ROUTINGS = ("likelihood", "ratio", "cluster-tail")


def check_routing(name: str) -> None:
    """Raise a one-line error for an unknown routing score."""
    if name not in ROUTINGS:
        raise DlsaError(f"--routing {name}: unknown routing score", hint=f"use one of {', '.join(ROUTINGS)}")


def cluster_tail_share(cluster_counts: torch.Tensor | np.ndarray, train_counts: np.ndarray) -> np.ndarray:
    """P(tail | cluster k) over the filter's training samples, (K,); 0 for an empty cluster."""
    table = np.asarray(cluster_counts, dtype=np.float64)  # (K, C)
    tail = tail_classes(np.asarray(train_counts))  # (C,) bool
    return table[:, tail].sum(1) / np.maximum(table.sum(1), 1.0)


def routing_score(
    name: str,
    log_likelihood: np.ndarray,
    cluster: np.ndarray,
    *,
    reference_log_likelihood: np.ndarray | None = None,
    cluster_tail: np.ndarray | None = None,
) -> np.ndarray:
    """The routing score (N,) float64 of samples with the given filter outputs."""
    check_routing(name)
    if name == "likelihood":
        return np.asarray(log_likelihood, dtype=np.float64)
    if name == "ratio":
        if reference_log_likelihood is None:
            raise DlsaError("routing 'ratio' needs the reference flow's log-likelihoods")
        return np.asarray(log_likelihood, dtype=np.float64) - reference_log_likelihood
    if cluster_tail is None:
        raise DlsaError("routing 'cluster-tail' needs the clusters' tail shares")
    tie_break = 1e-12 * np.clip(np.asarray(log_likelihood, dtype=np.float64), -1e5, 1e5)  # |.| <= 1e-7
    return np.asarray(cluster_tail, dtype=np.float64)[cluster] + tie_break


def quantile_threshold(score: np.ndarray, share: float) -> float:
    """The score of the round(share * N)-th best sample: `score >= it` routes that many (ties aside)."""
    n = len(score)
    n_route = min(max(int(round(share * n)), 1), n)
    return float(np.sort(score)[::-1][n_route - 1])


def set_routing(
    filt: Any,
    x: np.ndarray | torch.Tensor,
    labels: np.ndarray,
    *,
    routing: str,
    fit_reference: Callable[[], torch.nn.Module] | None = None,
) -> None:
    """Make `filt` route by `routing`: train its reference flow if needed, set the threshold and stats.

    x (N, D), labels (N,) are the filter's own training samples;
    `fit_reference()` returns the q = 0 flow ("ratio" only).
    """
    check_routing(routing)
    filt.routing = routing
    if routing == "ratio" and filt.reference is None:
        if fit_reference is None:
            raise DlsaError("routing 'ratio' needs a reference flow and no way to train one was given")
        filt.reference = fit_reference().to(filt.device).eval()
    filt.threshold = float("-inf")  # score() with every sample routed, then the quantile
    sc = filt.score(x, batch_size=filt.config.eval_batch_size)
    filt.threshold = quantile_threshold(sc.route_score, filt.share)
    routed = sc.route_score >= filt.threshold
    tail = tail_classes(filt.train_counts)
    filt.stats = {
        **filt.stats,
        "routing": routing,
        "routed": int(routed.sum()),
        "routed_tail_share": float(tail[labels[routed]].mean()) if routed.any() else None,
    }


def separation(routed: np.ndarray, labels: np.ndarray, train_counts: np.ndarray) -> dict[str, float | None]:
    """Routed share, tail share among routed samples (paper Fig. 7) and the split's tail share."""
    tail = tail_classes(np.asarray(train_counts))[labels]  # (N,) bool
    return {
        "routed_share": float(routed.mean()) if len(routed) else 0.0,
        "separation": float(tail[routed].mean()) if routed.any() else None,
        "chance": float(tail.mean()) if len(tail) else None,
    }


def expected_class_weight(logits: np.ndarray, train_counts: np.ndarray, q: float = 2.0) -> np.ndarray:
    """The posterior control's score: sum_y softmax(logits)_y w_y (N,), w the filter's q-weights."""
    from dlsa_cli.flow.losses import class_weights

    w = class_weights(np.asarray(train_counts), q).double()  # (C,)
    p = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1)  # (N, C)
    return (p @ w).numpy()


def random_score(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """A route score (N,) in [0, 1) that ignores the class: a hash of each row, so it repeats for a row."""
    r = np.random.default_rng(seed).standard_normal(x.shape[1])  # (D,)
    proj = np.asarray(x, dtype=np.float64) @ r  # (N,)
    return np.modf(np.abs(proj) * 1e4)[0]


class RoutedBy:
    """A filter whose route is decided by `score_fn(x) >= threshold` instead of its own score.

    Clusters, prior, latent and everything else come from the wrapped filter,
    so a cascade built on it differs from the filter's own only in which
    samples take the cluster-aided branch (the controls of the benchmarks).
    """

    def __init__(self, filt: Any, score_fn: Callable[[np.ndarray], np.ndarray], threshold: float):
        self.filt = filt
        self.score_fn = score_fn
        self.threshold = float(threshold)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.filt, name)

    def score(self, x: Any, **kw: Any) -> Any:
        sc = self.filt.score(x, **kw)
        s = self.score_fn(np.asarray(x))
        return replace(sc, routed=s >= self.threshold, route_score=s)
