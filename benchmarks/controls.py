"""Routing controls for the benchmarks: scores that are not filter scores, and a filter that routes by one.

- `expected_class_weight`: the posterior control, the baseline classifier's
  expected class weight sum_y p(y|x) w_y under the filter's q-weights;
- `random_score`: a route that ignores the class (a hash of the sample's row);
- `RoutedBy`: a filter whose route is decided by any such score, keeping the
  filter's clusters and prior, so a cascade built on it differs from the
  filter's own only in which samples take the cluster-aided branch.

`random_score` and `RoutedBy` live in the library (`dlsa_cli.compare.controls`,
which `dlsa compare` uses); `tinyimagenet_lt.py` measures the routing scores
beside these.
"""

from __future__ import annotations

import numpy as np
import torch

from dlsa_cli.compare.controls import RoutedBy, random_score

__all__ = ["RoutedBy", "expected_class_weight", "random_score"]


def expected_class_weight(logits: np.ndarray, train_counts: np.ndarray, q: float = 2.0) -> np.ndarray:
    """The posterior control's score: sum_y softmax(logits)_y w_y (N,), w the filter's q-weights."""
    from dlsa_cli.flow.losses import class_weights

    w = class_weights(np.asarray(train_counts), q).double()  # (C,)
    p = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), dim=1)  # (N, C)
    return (p @ w).numpy()
