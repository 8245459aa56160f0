"""The `posterior` routing score's classifier: the routing classifier's softmax mass on the tail classes.

`posterior` routes a sample by P(tail | x) as the classifier itself sees it: the
softmax of its logits (before any post-hoc adjustment) summed over the tail
classes (at most `FilterConfig.tail_at_most` training samples). The classifier,
a linear or cosine head, is kept in the filter file (`router.weight` (C, D),
`router.bias` (C,)), so `split` and `predict` route with the filter alone. In
`fit-cascade` it is the baseline; `fit-filter --router CLF` names one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlsa_cli.errors import ModelMismatchError

__all__ = ["Router"]


class Router:
    """A linear or cosine head (its logits before post-hoc adjustment) and the tail classes it sums over."""

    def __init__(self, head: Any, is_tail: np.ndarray):
        self.head = head.eval()
        self.is_tail = np.asarray(is_tail, dtype=bool)

    @classmethod
    def from_classifier(cls, path: str | Path, train_counts: np.ndarray, tail_at_most: int) -> Router:
        """The router of classifier file `path` for a filter trained with `train_counts` (C,)."""
        from dlsa_cli.classify.model import Classifier, LinearHead
        from dlsa_cli.evaluation.metrics import tail_classes

        clf = Classifier.load(path)
        if clf.kind not in ("linear", "cosine") or not isinstance(clf.module, LinearHead):
            raise ModelMismatchError(f"is a {clf.kind} classifier; routing by posterior needs a linear or cosine one",
                                     path=path, hint="pass a classifier fitted with --model linear or cosine")
        if clf.num_classes != len(train_counts):
            raise ModelMismatchError(f"has {clf.num_classes} classes, the filter's training data "
                                     f"{len(train_counts)}", path=path)
        return cls(clf.module, tail_classes(np.asarray(train_counts), tail_at_most))

    def tail_mass(self, x: torch.Tensor) -> np.ndarray:
        """P(tail | x) (B,) float64 of features x (B, D) (`evaluation.metrics.tail_mass` of the head's logits)."""
        from dlsa_cli.evaluation.metrics import tail_mass

        with torch.inference_mode():
            self.head.to(x.device)
            return tail_mass(self.head(x.float()).cpu().numpy(), self.is_tail)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"router.weight": self.head.weight.detach().cpu(), "router.bias": self.head.bias.detach().cpu(),
                "router.tail": torch.as_tensor(self.is_tail).to(torch.uint8)}

    def meta(self) -> dict[str, Any]:
        return {"cosine": bool(self.head.cosine), "scale": float(self.head.scale)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], path: str | Path) -> Router:
        from dlsa_cli.classify.model import LinearHead

        if "router.weight" not in tensors or "router.tail" not in tensors:
            raise ModelMismatchError("filter routes by 'posterior' but holds no routing classifier", path=path,
                                     hint="re-create it with FilterConfig.routing posterior")
        w = tensors["router.weight"].float()
        head = LinearHead(int(w.shape[1]), int(w.shape[0]), cosine=bool(meta.get("cosine", False)),
                          scale=float(meta.get("scale", 16.0)))
        head.load_state_dict({"weight": w, "bias": tensors["router.bias"].float()})
        return cls(head, tensors["router.tail"].bool().numpy())
