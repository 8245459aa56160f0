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
- `posterior`: the routing classifier's softmax mass on the tail classes,
  P(tail | x) as the classifier sees it (`flow/router.py`; kept in the filter file);
  ties ordered by log p(x).
- `knn-tail`: the tail share of the sample's k nearest training samples in the
  flow's latent space (cosine; `flow/neighbours.py`), the sample itself left
  out; ties are ordered by log p(x) as for cluster-tail. The filter file keeps
  the training latents for it.

The figures of routing are in `evaluation/figures.py`; the benchmarks' routing
controls (posterior, random) in `benchmarks/controls.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from dlsa_cli.errors import DlsaError
from dlsa_cli.evaluation.metrics import TAIL_AT_MOST, tail_classes
from dlsa_cli.flow.config import ROUTINGS

__all__ = [
    "ROUTINGS",
    "check_routing",
    "cluster_tail_share",
    "epoch_route_score",
    "quantile_threshold",
    "routing_score",
    "separation",
    "set_routing",
]


def check_routing(name: str) -> None:
    """Raise a one-line error for an unknown routing score."""
    if name not in ROUTINGS:
        raise DlsaError(f"FilterConfig.routing {name}: unknown routing score", hint=f"use one of {', '.join(ROUTINGS)}")


def cluster_tail_share(cluster_counts: torch.Tensor | np.ndarray, train_counts: np.ndarray,
                       tail_at_most: int = TAIL_AT_MOST) -> np.ndarray:
    """P(tail | cluster k) over the filter's training samples, (K,); 0 for an empty cluster."""
    table = np.asarray(cluster_counts, dtype=np.float64)  # (K, C)
    tail = tail_classes(np.asarray(train_counts), tail_at_most)  # (C,) bool
    return table[:, tail].sum(1) / np.maximum(table.sum(1), 1.0)


def routing_score(
    name: str,
    log_likelihood: np.ndarray,
    cluster: np.ndarray,
    *,
    reference_log_likelihood: np.ndarray | None = None,
    cluster_tail: np.ndarray | None = None,
    knn_tail: np.ndarray | None = None,
    posterior_tail: np.ndarray | None = None,
) -> np.ndarray:
    """The routing score (N,) float64 of samples with the given filter outputs.

    `cluster_tail` is per cluster (K,), `knn_tail` and `posterior_tail` per sample (N,).
    """
    check_routing(name)
    if name == "likelihood":
        return np.asarray(log_likelihood, dtype=np.float64)
    if name == "ratio":
        if reference_log_likelihood is None:
            raise DlsaError("routing 'ratio' needs the reference flow's log-likelihoods")
        return np.asarray(log_likelihood, dtype=np.float64) - reference_log_likelihood
    tie_break = 1e-12 * np.clip(np.asarray(log_likelihood, dtype=np.float64), -1e5, 1e5)  # |.| <= 1e-7
    if name == "knn-tail":
        if knn_tail is None:
            raise DlsaError("routing 'knn-tail' needs the neighbours' tail shares")
        return np.asarray(knn_tail, dtype=np.float64) + tie_break
    if name == "posterior":
        if posterior_tail is None:
            raise DlsaError("routing 'posterior' needs the routing classifier's tail mass")
        return np.asarray(posterior_tail, dtype=np.float64) + tie_break
    if cluster_tail is None:
        raise DlsaError("routing 'cluster-tail' needs the clusters' tail shares")
    return np.asarray(cluster_tail, dtype=np.float64)[cluster] + tie_break


def epoch_route_score(name: str, log_likelihood: np.ndarray, cluster: np.ndarray, cluster_counts: Any,
                      train_counts: np.ndarray, tail_at_most: int = TAIL_AT_MOST) -> np.ndarray:
    """The routing score (N,) during training, from one epoch's log p(x), clusters and training cluster table.

    `ratio` needs the reference flow, `knn-tail` the training latents and `posterior` the routing
    classifier, all set only after the epochs: they are scored as `likelihood` here.
    """
    check_routing(name)
    if name == "cluster-tail":
        tail = cluster_tail_share(cluster_counts, train_counts, tail_at_most)
        return routing_score(name, log_likelihood, cluster, cluster_tail=tail)
    return routing_score("likelihood", log_likelihood, cluster)


def quantile_threshold(score: np.ndarray, share: float) -> float:
    """The score of the round(share * N)-th best sample: `score >= it` routes that many (ties aside)."""
    n = len(score)
    n_route = min(max(int(round(share * n)), 1), n)  # noqa: RUF046 - numpy 1.x rounds to a float
    return float(np.sort(score)[::-1][n_route - 1])


def set_routing(
    filt: Any,
    x: np.ndarray | torch.Tensor,
    labels: np.ndarray,
    *,
    routing: str,
    fit_reference: Callable[[], torch.nn.Module] | None = None,
    router: Any = None,
) -> None:
    """Make `filt` route by `routing`: train its reference flow if needed, set the threshold and stats.

    x (N, D), labels (N,) are the filter's own training samples;
    `fit_reference()` returns the q = 0 flow ("ratio" only); "knn-tail" keeps
    their latents as the filter's neighbours; "posterior" keeps `router` (`flow/router.py`).
    """
    check_routing(routing)
    if routing == "posterior":
        if router is None:
            raise DlsaError("routing 'posterior' needs a routing classifier", hint="pass FilterRun.router")
        filt.router = router
    if routing == "knn-tail":
        _set_neighbours(filt, x, labels)
    filt.routing = routing
    filt.config = replace(filt.config, routing=routing)
    if routing == "ratio" and filt.reference is None:
        if fit_reference is None:
            raise DlsaError("routing 'ratio' needs a reference flow and no way to train one was given")
        filt.reference = fit_reference().to(filt.device).eval()
    filt.threshold = float("-inf")  # score() with every sample routed, then the quantile
    score = _training_route_scores(filt, x)
    filt.threshold = quantile_threshold(score, filt.share)
    routed = score >= filt.threshold
    tail = tail_classes(filt.train_counts, filt.config.tail_at_most)
    filt.stats = {
        **filt.stats,
        "routing": routing,
        "routed": int(routed.sum()),
        "separation": float(tail[labels[routed]].mean()) if routed.any() else None,
    }


def _training_route_scores(filt: Any, x: np.ndarray | torch.Tensor) -> np.ndarray:
    """The routing score (N,) of every training row; under torchrun each rank scores its share
    (knn-tail's N x N search included)."""
    from dlsa_cli.runtime import ddp

    def part(a: int, e: int) -> tuple[torch.Tensor]:
        return (torch.from_numpy(filt.score(x[a:e], batch_size=filt.config.eval_batch_size).route_score),)

    return ddp.sharded_rows(part, int(x.shape[0]))[0].numpy()


def _set_neighbours(filt: Any, x: np.ndarray | torch.Tensor, labels: np.ndarray) -> None:
    """Store the training samples' latents and tail flags in the filter, for `knn-tail`."""
    from dlsa_cli.flow.neighbours import NeighbourBank

    filt.routing, filt.threshold = "likelihood", float("-inf")  # a plain pass for the latents
    z = filt.score(x, batch_size=filt.config.eval_batch_size, latent=True).latent  # (N, D)
    tail = tail_classes(filt.train_counts, filt.config.tail_at_most)[np.asarray(labels)]  # (N,)
    filt.neighbours = NeighbourBank.build(z, tail, filt.config.neighbours).to(filt.device)


def separation(routed: np.ndarray, labels: np.ndarray, train_counts: np.ndarray) -> dict[str, float | None]:
    """Routed share, tail share among routed samples (paper Fig. 7) and the split's tail share."""
    tail = tail_classes(np.asarray(train_counts))[labels]  # (N,) bool
    return {
        "routed_share": float(routed.mean()) if len(routed) else 0.0,
        "separation": float(tail[routed].mean()) if routed.any() else None,
        "chance": float(tail.mean()) if len(tail) else None,
    }
