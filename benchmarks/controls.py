"""Routing controls for the benchmarks: scores that are not filter scores, and a filter that routes by one.

- `expected_class_weight`: the posterior control, the baseline classifier's
  expected class weight sum_y p(y|x) w_y under the filter's q-weights;
- `random_score`: a route that ignores the class (a hash of the sample's row);
- `RoutedBy`: a filter whose route is decided by any such score, keeping the
  filter's clusters and prior, so a cascade built on it differs from the
  filter's own only in which samples take the cluster-aided branch.

`tinyimagenet_lt.py` measures the routing scores beside these; the library
and the CLI do not use them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

__all__ = ["RoutedBy", "expected_class_weight", "random_score"]


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
