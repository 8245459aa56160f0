"""Routing controls: scores that are not a filter's, and a filter that routes by one of them.

- `random_score`: a route that ignores the class (a seeded hash of the sample's row);
- `tail_bias`: the baseline classifier's own tail signal (`evaluation.metrics.tail_mass`) as a bias on
  the tail classes' logits;
- `RoutedBy`: a filter whose route is decided by such a score, keeping the filter's
  clusters and prior, so a cascade built on it differs from the filter's own only in
  which samples take the cluster-aided branch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from dlsa_cli.evaluation.metrics import tail_mass

__all__ = ["TAIL_BIAS_WEIGHTS", "RoutedBy", "memory_vote", "random_score", "tail_bias"]

TAIL_BIAS_WEIGHTS = (0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)  # the tail-bias control's weights, chosen on validation


def random_score(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """A route score (N,) in [0, 1) that ignores the class: a hash of each row, so it repeats for a row."""
    r = np.random.default_rng(seed).standard_normal(x.shape[1])  # (D,)
    proj = np.asarray(x, dtype=np.float64) @ r  # (N,)
    return np.modf(np.abs(proj) * 1e4)[0]


def tail_bias(logits: np.ndarray, is_tail: np.ndarray, mean: float, sd: float) -> np.ndarray:
    """(N, C): the standardised tail mass, (tail_mass - mean) / sd, on each tail class's logit and 0 elsewhere;
    a weight times it, added to the logits, is the post-hoc tail bias (control (a) of `compare`)."""
    t = (tail_mass(logits, is_tail) - mean) / max(sd, 1e-12)  # (N,)
    return (t[:, None] * np.asarray(is_tail, dtype=np.float64)[None, :]).astype(np.float32)


def memory_vote(base: Any, train: Any, sel: Any, test: Any, k: int, *,
                device: Any = "cpu") -> tuple[np.ndarray, np.ndarray, float, float]:
    """Control (b) of `compare`: classifier `base`'s logits plus w x log(vote + floor), the class-balanced
    vote of the k nearest TRAIN samples (`classify/memory.py`), w and floor chosen on `sel` (labelled
    FeatureSets). Returns the predictions on `test` and on `sel`, w and the floor."""
    from dlsa_cli.classify.memory import MemoryBank, choose_memory, log_vote

    bank = MemoryBank.build(train.features, train.require_labels(), base.num_classes, k)
    (v_sel, v_test), (z_sel, z_test) = ((bank.vote(fs.features, device=device) for fs in (sel, test)),
                                        (base.logits(fs.features) for fs in (sel, test)))
    w, floor, _ = choose_memory(z_sel, v_sel, sel.require_labels())
    return ((z_test + w * log_vote(v_test, floor)).argmax(1), (z_sel + w * log_vote(v_sel, floor)).argmax(1),
            w, floor)


class RoutedBy:
    """A filter whose route is `score_fn(x) >= threshold` instead of its own; all else is the wrapped filter's."""

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
