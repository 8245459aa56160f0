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
- `knn-tail`: the tail share of the sample's k nearest training samples in the
  flow's latent space (cosine; `flow/neighbours.py`), the sample itself left
  out; ties are ordered by log p(x) as for cluster-tail. The filter file keeps
  the training latents for it.

Controls for the benchmarks (not filter scores): the baseline classifier's
expected class weight `sum_y p(y|x) w_y` and a random route. `RoutedBy` wraps a
filter so that a cascade routes by any such score while keeping the filter's
clusters and prior.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlsa_cli.errors import DlsaError, InputError
from dlsa_cli.flow.config import ROUTINGS
from dlsa_cli.evaluation.metrics import tail_classes

__all__ = [
    "ROUTINGS",
    "check_routing",
    "cluster_tail_share",
    "routing_score",
    "epoch_route_score",
    "quantile_threshold",
    "set_routing",
    "separation",
    "expected_class_weight",
    "random_score",
    "RoutedBy",
    "separation_rows",
    "route_map_inputs",
    "plot_routing",
]


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
    knn_tail: np.ndarray | None = None,
) -> np.ndarray:
    """The routing score (N,) float64 of samples with the given filter outputs.

    `cluster_tail` is per cluster (K,), `knn_tail` per sample (N,).
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
    if cluster_tail is None:
        raise DlsaError("routing 'cluster-tail' needs the clusters' tail shares")
    return np.asarray(cluster_tail, dtype=np.float64)[cluster] + tie_break


def epoch_route_score(name: str, log_likelihood: np.ndarray, cluster: np.ndarray, cluster_counts: Any,
                      train_counts: np.ndarray) -> np.ndarray:
    """The routing score (N,) during training, from one epoch's log p(x), clusters and training cluster table.

    `ratio` needs the reference flow and `knn-tail` the training latents, both made only after the
    epochs: they are scored as `likelihood` here.
    """
    check_routing(name)
    if name == "cluster-tail":
        tail = cluster_tail_share(cluster_counts, train_counts)
        return routing_score(name, log_likelihood, cluster, cluster_tail=tail)
    return routing_score("likelihood", log_likelihood, cluster)


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
    `fit_reference()` returns the q = 0 flow ("ratio" only); "knn-tail" keeps
    their latents as the filter's neighbours.
    """
    check_routing(routing)
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
    tail = tail_classes(filt.train_counts)
    filt.stats = {
        **filt.stats,
        "routing": routing,
        "routed": int(routed.sum()),
        "separation": float(tail[labels[routed]].mean()) if routed.any() else None,
    }


def _training_route_scores(filt: Any, x: np.ndarray | torch.Tensor) -> np.ndarray:
    """The routing score (N,) of every training row; under torchrun each rank scores its share (knn-tail's N x N search included)."""
    from dlsa_cli import ddp

    def part(a: int, e: int) -> tuple[torch.Tensor]:
        return (torch.from_numpy(filt.score(x[a:e], batch_size=filt.config.eval_batch_size).route_score),)

    return ddp.sharded_rows(part, int(x.shape[0]))[0].numpy()


def _set_neighbours(filt: Any, x: np.ndarray | torch.Tensor, labels: np.ndarray) -> None:
    """Store the training samples' latents and tail flags in the filter, for `knn-tail`."""
    from dlsa_cli.flow.neighbours import NeighbourBank

    filt.routing, filt.threshold = "likelihood", float("-inf")  # a plain pass for the latents
    z = filt.score(x, batch_size=filt.config.eval_batch_size, latent=True).latent  # (N, D)
    tail = tail_classes(filt.train_counts)[np.asarray(labels)]  # (N,)
    filt.neighbours = NeighbourBank.build(z, tail, filt.config.neighbours).to(filt.device)


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


# ----------------------------------------------------------------------------- figures of routing


def separation_rows(folder: str | Path) -> list[dict[str, Any]]:
    """Separation per depth and split from a split folder's split.json, or a cascade run's depth*/split.json.

    A row: depth, split (the input's name without '.rest' suffixes), separation
    (tail share of its routed samples) and chance (tail share of all its
    samples, what a random route at that depth gives).
    """
    root = Path(folder)
    reports = sorted(root.glob("depth*/split.json")) or sorted(root.glob("split.json"))
    if not reports:
        raise InputError("holds no split.json (nor depth*/split.json)", path=root, hint="pass a `dlsa split` output folder or a recipe's OUTDIR")
    rows = []
    for rp in reports:
        rep = json.loads(rp.read_text())
        for name, f in rep.get("files", {}).items():
            f.setdefault("separation", f.get("separation_accuracy"))  # the name split.json used before
            if f.get("separation") is None and "tail_share" not in f:
                continue  # no labels
            split = name.split(".")[0]
            rows.append({"depth": int(rep["depth"]), "split": split, "separation": f.get("separation"),
                         "chance": (f.get("tail_share") or {}).get("all"), "routed_share": f.get("routed_share")})
    if not rows:
        raise InputError("its split reports hold no labelled file", path=root, hint="split files with labels")
    return rows


def route_map_inputs(table: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(features (N, D), routed (N,), tail (N,), depth) of a split table and the feature file it was made from."""
    from dlsa_cli.io.features import read_features
    from dlsa_cli.io.files import read_table

    tab, kind, meta, _ = read_table(table)
    if kind != "split":
        raise InputError(f"is a '{kind}' file, not a split table", path=table, hint="pass NAME.parquet from `dlsa split`")
    if "label" not in tab.column_names:
        raise InputError("has no labels, so head and tail cannot be told apart", path=table)
    src = Path(str(meta.get("source", "")))
    if not src.is_file():
        raise InputError(f"its source features {src} are not found", path=table, hint="run from the folder `dlsa split` ran in")
    fs = read_features(src)
    if fs.n != tab.num_rows:
        raise InputError(f"has {tab.num_rows} rows but its source {src} has {fs.n}", path=table)
    tail = tail_classes(np.asarray(meta["train_counts"]))[tab.column("label").to_numpy()]
    routed = tab.column("routed").to_numpy(zero_copy_only=False).astype(bool)
    return fs.features, routed, tail, int(meta.get("depth", 1))


def plot_routing(path: str | Path, plot: str | Path) -> str:
    """Draw Fig. 7 (a split folder or a cascade run folder) or the Fig. 8-style map (a split table) of `path`."""
    from dlsa_cli.evaluation.plot import check_plot_target, pca_2d, plot_route_map, plot_separation

    check_plot_target(plot)
    p = Path(path)
    if p.is_dir():
        plot_separation(plot, separation_rows(p))
        return "separation per depth"
    x, routed, tail, depth = route_map_inputs(p)
    plot_route_map(plot, pca_2d(x), routed, tail, title=f"{p.name}: routed at depth {depth} and passed on (PCA)")
    return "route map"
