"""RIDE's expert router, in its confidence form: experts are consulted one after another and a
sample stops as soon as the ensemble so far is confident enough.

Only where it saves real work: RIDE experts with a hidden layer (each costs D*H + H*C
multiply-adds per sample). Linear experts on frozen features cost one row of a
matrix product each, which a router's bookkeeping would not pay back, so they get none.
The threshold is chosen on validation: the lowest (the most experts skipped) whose
balanced accuracy is not below all experts'. RIDE learns a router per expert from
whether the next expert would fix the sample; this one uses the ensemble's own
confidence and needs no training (a departure, stated in the README).
"""

from __future__ import annotations

from typing import Any

import torch

from dlsa_cli.classify.data import balanced_accuracy
from dlsa_cli.classify.model import RideHead, routed_logits

__all__ = ["THRESHOLDS", "choose_router"]

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


@torch.no_grad()
def choose_router(head: RideHead, xv: torch.Tensor, yv: torch.Tensor, num_classes: int,
                  weights: torch.Tensor | None = None) -> dict[str, Any] | None:
    """The router setting for `head` on validation (None when its experts are linear)."""
    if head.experts[0].hidden is None or len(head.experts) < 2:
        return None
    n = len(head.experts)
    full = balanced_accuracy(head(xv).argmax(1), yv, num_classes, weights)[0]
    for t in THRESHOLDS:  # lowest first: the most saving
        logits, used = routed_logits(head, xv, t)
        bal = balanced_accuracy(logits.argmax(1), yv, num_classes, weights)[0]
        if bal >= full:
            share = float(used.mean()) / n
            return {"threshold": t, "val_balanced": bal, "val_balanced_all_experts": full,
                    "expert_share": share, "saving": 1.0 - share}
    return {"threshold": None, "val_balanced_all_experts": full, "expert_share": 1.0, "saving": 0.0}
