"""Beyond the hard route: memory in the branches and soft routing, chosen on VAL once the branches are fitted.

A hard cascade sends each sample down one branch: the first depth whose filter
routes it, else the final classifier. Two settings of `CascadePlan` change how
the branches' outputs are combined (`cascade.json`'s "combine" records what VAL chose):

- memory (`memory_k` > 0): every branch adds `w_b * log(vote + floor_b)`, the
  class-balanced vote of the sample's k nearest training samples
  (`classify/memory.py`), with its own weight w_b and floor_b chosen on the VAL
  samples it takes (0 is on the grid: a branch that memory does not help keeps none). The
  training features are kept in the folder (`MEMORY_FILE`) and searched once per
  batch.
- soft routing (`soft_routing`): depth d takes a sample with probability
  p_d = sigmoid((score - threshold) / T_d); the prediction is
  sum_d p_d * prod_{e<d} (1 - p_e) * z_d + prod_d (1 - p_d) * z_final over the
  branches' logits z. T_d = 0 is the hard route (p in {0, 1}), and it is on the grid
  of `SOFT_SCALES` x the sd of depth d's VAL route scores, so VAL can keep it.

The route a sample is reported with stays the hard one (its first routing depth).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from dlsa_cli.classify.memory import MemoryBank

__all__ = ["MEMORY_FILE", "SOFT_SCALES", "Combine", "Parts", "choose_combine", "hard_route", "mix", "parts",
           "route_probabilities"]

MEMORY_FILE = "memory.safetensors"
SOFT_SCALES = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0)  # T_d / sd of depth d's VAL route scores; 0: the hard route


@dataclass
class Combine:
    """cascade.json's "combine": the memory file and weights (per depth, then the final classifier), and the
    soft-routing temperatures per depth (0: hard)."""

    memory: str | None = None
    k: int = 0
    weights: list[float] = field(default_factory=list)
    temperatures: list[float] = field(default_factory=list)
    floors: list[float] = field(default_factory=list)  # per branch, beside its weight
    val: dict[str, Any] = field(default_factory=dict)  # what VAL scored for each choice

    def log_prior(self, vote: np.ndarray | None, b: int) -> np.ndarray | None:
        """Branch b's memory term w_b * log(vote + floor_b) (N, C), or None without memory there."""
        from dlsa_cli.classify.memory import log_vote

        if vote is None or b >= len(self.weights) or not self.weights[b]:
            return None
        return self.weights[b] * log_vote(vote, self.floors[b])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Combine:
        return cls(d.get("memory"), int(d.get("k", 0)), [float(w) for w in d.get("weights", [])],
                   [float(t) for t in d.get("temperatures", [])], [float(f) for f in d.get("floors", [])],
                   dict(d.get("val", {})))


@dataclass
class Parts:
    """Every branch's view of every sample: per depth the route score (N,), threshold and whether it
    routes (N,) bool, and per branch (depths, then final) the logits (N, C)."""

    scores: list[np.ndarray]
    thresholds: list[float]
    routed: list[np.ndarray]
    logits: list[np.ndarray]


def parts(cascade: Any, x: np.ndarray, *, batch_size: int = 4096, device: Any = "cpu") -> Parts:
    """Every filter and every branch of `cascade` on every row of x (N, D) (one batch's worth of rows)."""
    from dlsa_cli.classify.data import branch_inputs

    scores, thresholds, routed, logits = [], [], [], []
    for flt, clf in zip(cascade.filters, cascade.classifiers, strict=True):
        sc = flt.score(x, batch_size=batch_size, device=device, latent=clf.side_input == "latent")
        side, prior = branch_inputs(flt, x, sc.cluster, sc.latent, clf.side_input or "features")
        scores.append(np.asarray(sc.route_score, dtype=np.float64))
        thresholds.append(float(flt.threshold))
        routed.append(np.asarray(sc.routed, dtype=bool))
        logits.append(clf.logits(x, side=side, prior=prior, device=device))
    logits.append(cascade.final.logits(x, device=device))
    return Parts(scores, thresholds, routed, logits)


def hard_route(p: Parts) -> np.ndarray:
    """(N,) int32: the first depth that routes each sample, 0 for none (the final classifier)."""
    n = p.logits[-1].shape[0]
    route = np.zeros(n, dtype=np.int32)
    for d in range(len(p.routed), 0, -1):  # the first routing depth wins: write the deepest first
        route[p.routed[d - 1]] = d
    return route


def route_probabilities(p: Parts, temperatures: list[float]) -> list[np.ndarray]:
    """p_d (N,) per depth: 1 / 0 by the hard route where T_d = 0, else sigmoid((score - threshold) / T_d);
    0 wherever the filter does not route on principle (a non-finite log-likelihood)."""
    out = []
    for d, routed in enumerate(p.routed):
        t = temperatures[d] if d < len(temperatures) else 0.0
        if t <= 0:
            out.append(routed.astype(np.float64))
            continue
        finite = np.isfinite(p.scores[d])
        z = np.clip((np.where(finite, p.scores[d], 0.0) - p.thresholds[d]) / t, -60.0, 60.0)
        out.append(np.where(finite, 1.0 / (1.0 + np.exp(-z)), 0.0))
    return out


def mix(p: Parts, probs: list[np.ndarray], vote: np.ndarray | None = None, comb: Combine | None = None) -> np.ndarray:
    """The combined logits (N, C): each branch's logits (plus its memory term, `Combine.log_prior`) weighted
    by the probability that the sample reaches and takes it. Where every probability is 0 or 1 it is exactly
    the hard route's branch (with its memory)."""
    out = np.zeros_like(p.logits[-1], dtype=np.float64)
    left = np.ones(out.shape[0])
    for b, z in enumerate(p.logits):
        take = left * probs[b] if b < len(probs) else left
        zb = z.astype(np.float64)
        extra = None if comb is None else comb.log_prior(vote, b)
        if extra is not None:
            zb = zb + extra
        nz = take > 0  # 0 x a branch's logits adds nothing, exactly
        out[nz] += take[nz, None] * zb[nz]
        if b < len(probs):
            left = left * (1.0 - probs[b])
    return out.astype(np.float32)


def choose_combine(cascade: Any, train: Any, val: Any, plan: Any, *, device: Any = "cpu",
                   event: Any = None) -> tuple[Combine, MemoryBank | None] | None:
    """The memory weights and soft temperatures VAL (a labelled FeatureSet) chooses for a fitted `cascade`,
    and the memory bank of TRAIN when `plan.memory_k` (to be saved as the combine's `memory` file, MEMORY_FILE).
    None when the plan asks for neither."""
    from dlsa_cli.classify.memory import VOTE_FLOORS, choose_memory
    from dlsa_cli.evaluation.metrics import balanced_row_weights

    if not plan.memory_k and not plan.soft_routing:
        return None
    y = val.require_labels()
    row_w = balanced_row_weights(y)  # each row's share of VAL's balanced accuracy
    pv = parts(cascade, np.asarray(val.features, dtype=np.float32), device=device)
    route, n_br = hard_route(pv), cascade.depth + 1
    comb = Combine(weights=[0.0] * n_br, temperatures=[0.0] * cascade.depth if plan.soft_routing else [],
                   floors=[VOTE_FLOORS[0]] * n_br)
    vote, bank = None, None
    if plan.memory_k:
        if event:
            event(f"memory: the {plan.memory_k} nearest training samples' vote, a weight per branch chosen on VAL")
        bank = MemoryBank.build(np.asarray(train.features, dtype=np.float32), train.require_labels(),
                                cascade.num_classes, plan.memory_k)
        comb.memory, comb.k = MEMORY_FILE, plan.memory_k
        vote = bank.vote(val.features, device=device)
        for b in range(n_br):
            rows = route == (b + 1 if b < cascade.depth else 0)
            if rows.any():
                comb.weights[b], comb.floors[b], sc = choose_memory(pv.logits[b][rows], vote[rows], y[rows],
                                                                    row_w[rows])
                comb.val[f"memory_branch{b + 1}"] = [v / row_w.sum() for v in sc]  # shares of balanced accuracy
    if plan.soft_routing:
        if event:
            event("soft routing: a temperature per depth chosen on VAL")
        for d in range(cascade.depth):
            finite = np.isfinite(pv.scores[d])
            sd = float(np.std(pv.scores[d][finite])) if finite.any() else 0.0
            tried = []
            for scale in SOFT_SCALES:
                comb.temperatures[d] = scale * sd
                pred = mix(pv, route_probabilities(pv, comb.temperatures), vote, comb).argmax(1)
                tried.append(float((row_w * (pred == y)).sum() / row_w.sum()))
            comb.temperatures[d] = SOFT_SCALES[int(np.argmax(tried))] * sd
            comb.val[f"soft_depth{d + 1}"] = tried
    return comb, bank
