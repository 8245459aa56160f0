"""`dlsa compare`'s own settings (`CompareConfig`), declared once and without torch, and its run names.

The classifier, filter and cascade settings compare fits with are a `CascadePlan`
(`dlsa_cli.cascade.plan`), taken through the same tables and flags as fit-cascade.
"""

from __future__ import annotations

from dataclasses import dataclass

from dlsa_cli.evaluation.metrics import TAIL_AT_MOST
from dlsa_cli.settings import Rule, SettingError, at_least, check_settings, setting, setting_token

__all__ = ["BASELINES", "CONTROLS", "OPTIMISTIC", "RUNS", "SELECT_ON", "CompareConfig", "parse_seeds"]

BASELINES = ("baseline", "la-loss", "posthoc-la", "posthoc-tau", "crt", "lws", "ncm")
CONTROLS = ("random-routes", "posterior-routes", "ensemble", "tail-bias", "memory-vote")
RUNS = (*BASELINES, "dlsa", *CONTROLS)  # compare.json's run names, in its order

SELECT_ON = ("val", "test", "both")
OPTIMISTIC = "selected on the test set: optimistic"  # every output of `--select-on test` says it


def parse_seeds(text: str) -> tuple[int, ...] | None:
    """'0,1,2' as (0, 1, 2); None when it is not a list of distinct seeds in [0, 2^63)."""
    try:
        seeds = tuple(int(s) for s in text.replace(" ", "").split(","))
    except ValueError:
        return None
    if len(set(seeds)) != len(seeds) or any(not 0 <= s < 2**63 for s in seeds):
        return None
    return seeds


@dataclass
class CompareConfig:
    """What `compare` runs beside the cascade's own settings."""

    seeds: str = setting("0,1,2", "Seeds to run, comma-separated; each repeats every run (mean and sd over them).",
                         rule=Rule(lambda v: parse_seeds(v) is not None,
                                   "must be distinct integers in [0, 2^63) separated by commas, e.g. 0,1,2"))
    tail_at_most: int = setting(TAIL_AT_MOST, "Head/tail boundary: a tail class has at most this many training "
                                "samples (separation, the ceiling and the controls' tail mass).", rule=at_least(0))
    select_on: str = setting("val", "Which split chooses every epoch, strength and the best baseline: val, test "
                             "(the authors' protocol; every output then says it is optimistic), or both: val's "
                             "compare in OUT, test's in OUT/select-on-test, and how much choosing on test adds.",
                             choices=SELECT_ON)
    ceiling: bool = setting(False, "Also compute the separation ceiling (the paper's Fig. 2) on VAL and TEST and "
                            "place on it the cascade's routing, a depth-1 filter of every other routing score, and "
                            "the baseline's own tail signal at the same share.")
    vote_k: int = setting(50, "k of the memory-vote control (the baseline plus the class vote of its k nearest "
                          "training samples) when the cascade has no memory of its own (CascadePlan.memory_k 0); "
                          "else the cascade's k.", rule=at_least(1))
    resamples: int = setting(10_000, "Paired bootstrap draws over test samples (used with one seed).",
                             rule=at_least(1))

    def check(self) -> None:
        check_settings(self)

    def seed_list(self) -> tuple[int, ...]:
        seeds = parse_seeds(self.seeds)
        if seeds is None:
            raise SettingError(setting_token(self, "seeds"), self.seeds,
                               "must be distinct integers separated by commas")
        return seeds

    @property
    def optimistic(self) -> bool:
        return self.select_on == "test"
