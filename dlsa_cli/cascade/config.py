"""The settings of `predict`, declared once (default, range, help) and without torch."""

from __future__ import annotations

from dataclasses import dataclass

from dlsa_cli.settings import at_least, check_settings, setting

__all__ = ["PredictConfig"]


@dataclass(frozen=True)
class PredictConfig:
    """How `predict` runs a classifier or a cascade over a feature file."""

    topk: int = setting(5, "How many top classes to keep per sample.", rule=at_least(1))
    batch_size: int = setting(4096, "Samples per forward pass.", rule=at_least(1))
    allow_outside_paths: bool = setting(False, "Trust a cascade.json whose paths leave its folder (absolute or ../); "
                                        "refused otherwise.")

    def check(self) -> None:
        check_settings(self)
