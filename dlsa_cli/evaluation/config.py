"""The settings of `evaluate`, declared once (default, range, help) and without torch."""

from __future__ import annotations

from dataclasses import dataclass

from dlsa_cli.evaluation.metrics import FEW_BELOW, MANY_ABOVE, TAIL_AT_MOST
from dlsa_cli.settings import at_least, check_settings, setting

__all__ = ["EvaluateConfig"]

_COUNT = at_least(0, "a count bound must be >= 0")


@dataclass(frozen=True)
class EvaluateConfig:
    """The class groups `evaluate` reports, and what it adds (per-class accuracy, the plot's bins)."""

    many_above: int = setting(MANY_ABOVE, "Many-shot: more than this many training samples.", rule=_COUNT)
    few_below: int = setting(FEW_BELOW, "Few-shot: fewer than this many training samples (a class absent from "
                             "training is few-shot).", rule=_COUNT)
    tail_at_most: int = setting(TAIL_AT_MOST, "Tail class for head-tail separation accuracy: at most this many "
                                "training samples.", rule=_COUNT)
    per_class: bool = setting(False, "Also report the accuracy of every class.")
    bins: int = setting(20, "Bins of classes in --plot.", rule=at_least(1))

    def check(self) -> None:
        check_settings(self)
