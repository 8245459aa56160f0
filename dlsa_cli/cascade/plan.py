"""What `fit_cascade` fits (`CascadePlan`), its settings declared once, and how config tables make one.

A cascade's settings come in four tables: the plan's own (top level), `[filter]`
(every flow filter), `[baseline]` (the classifier on all of TRAIN) and `[branch]`
(the cluster-aided and final classifiers). A branch takes the baseline's settings
but its learning rate (3e-4 fine-tuning, 0.03 from scratch, unless given), then its
own table's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from dlsa_cli.classify.config import TrainConfig
from dlsa_cli.errors import DlsaError
from dlsa_cli.flow.config import FilterConfig, preset_settings
from dlsa_cli.settings import Rule, at_least, check_settings, resolve, setting, to_table

__all__ = ["BRANCH_TOKEN", "NOT_IN_TABLES", "CascadePlan", "as_branch", "plan_from_dict", "plan_from_layers", "renamed",
           "with_defaults"]

BRANCH_TOKEN = "CascadePlan.branch"  # how errors name a branch classifier's settings (`CascadePlan.branch.lr`)
NOT_IN_TABLES = ("seed", "allow_missing_val_classes")  # the plan sets these on every stage


@dataclass
class CascadePlan:
    """What `fit_cascade` fits. Every field is recorded in report.json; `resume` checks them.

    `filter`: the flow filters' settings (its `seed` is replaced by `seed`).
    `baseline`: the classifier settings of the baseline; `branch`: those of the
    cluster-aided and final classifiers (None: the baseline's, with the learning
    rate left to fit-classifier's default: 3e-4 fine-tuning, 0.03 from scratch).
    """

    num_depths: int = setting(3, "How many depths the cascade has: filters, each with its cluster-aided classifier.",
                              rule=at_least(1), alias="--depth")
    seed: int = setting(0, "Random seed of every stage; the same seed on the same device repeats a run.",
                        rule=Rule(lambda v: 0 <= v < 2**63, "must be in [0, 2^63)"))
    filter: FilterConfig = field(default_factory=FilterConfig)
    baseline: TrainConfig = field(default_factory=TrainConfig)
    branch: TrainConfig | None = None
    baseline_init: str | None = setting(
        None, "Start the baseline from a backbone's own head (weight (C, D), bias (C,); .safetensors or .pt), as the "
        "paper does for PaCo.", shown="")
    from_scratch: bool = setting(False, "Train branch classifiers from scratch on their subsets (the authors' way) "
                                 "instead of from the baseline.")
    val_weights: bool = setting(True, "A branch's epoch maximises the whole validation set's balanced accuracy "
                                "(off: its own part's).", switch="no-val-weights")
    memory_k: int = setting(0, "Memory in the branches: each adds w * log of the class-balanced vote of the sample's "
                            "k nearest training samples to its logits, w chosen per branch on validation "
                            "(0: no memory).", rule=at_least(0))
    soft_routing: bool = setting(False, "Soft routing: a depth takes a sample with probability sigmoid((score - "
                                 "threshold) / T), T chosen per depth on validation (T = 0, the hard route, "
                                 "included); the branches' logits are mixed by those probabilities.")
    allow_singletons: bool = setting(False, "Let every filter train with classes of a single training sample "
                                     "(without it only the filters of depth > 1 do).")
    split_batch_size: int = setting(4096, "Samples each split scores at once (memory is bounded by it).",
                                    rule=at_least(1))

    def filter_config(self) -> FilterConfig:
        return replace(self.filter, seed=self.seed)

    def baseline_config(self) -> TrainConfig:
        return replace(self.baseline, seed=self.seed)

    def branch_config(self) -> TrainConfig:
        """A branch sees part of the validation set, which may lack some classes."""
        b = self.branch if self.branch is not None else replace(self.baseline, lr=None)
        return replace(b, allow_missing_val_classes=True, seed=self.seed)

    def check(self) -> None:
        """A setting out of range is one line naming it (`CascadePlan.num_depths`, `FilterConfig.lr`,
        `TrainConfig.lr` for the baseline's, `CascadePlan.branch.lr` for the branches')."""
        from dlsa_cli.io.files import require_file

        check_settings(self)
        if self.baseline_init is not None and self.from_scratch:  # the branches would never start from it
            raise DlsaError("CascadePlan.baseline_init starts the baseline the branches start from, but "
                            "CascadePlan.from_scratch trains them without it", hint="drop one of the two")
        if self.baseline_init is not None:
            require_file(self.baseline_init, "--baseline-init head")
        self.baseline_config().check()
        with as_branch():
            self.branch_config().check()
        self.filter_config().check()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["filter"], d["baseline"], d["branch"] = (
            asdict(self.filter_config()), asdict(self.baseline_config()), asdict(self.branch_config())
        )
        return d

    def to_tables(self) -> dict[str, dict[str, Any]]:
        """The config-file tables that repeat this plan (what `dlsa inspect RUN --config` prints)."""
        def without(table: dict[str, Any]) -> dict[str, Any]:
            return {k: v for k, v in table.items() if k not in NOT_IN_TABLES}

        return {"": to_table(self), "filter": without(to_table(self.filter_config())),
                "baseline": without(to_table(self.baseline_config())),
                "branch": without(to_table(self.branch_config()))}


class renamed:
    """Inside it, an error naming setting `old` (`FilterRun.allow_singletons`) names `new` instead."""

    def __init__(self, old: str, new: str):
        self.old, self.new = old, new

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, err: Any, tb: Any) -> None:  # the error (renamed) goes on
        if isinstance(err, DlsaError) and err.args:
            err.args = (str(err.args[0]).replace(self.old, self.new), *err.args[1:])


def as_branch() -> renamed:
    """Inside it, an error naming a classifier setting (`TrainConfig.lr`) names the branches'
    (`CascadePlan.branch.lr`)."""
    return renamed("TrainConfig.", f"{BRANCH_TOKEN}.")


def plan_from_layers(top: Sequence[Mapping[str, Any]], filter_: Sequence[Mapping[str, Any]], *,
                     baseline_table: Mapping[str, Any] | None = None, branch_table: Mapping[str, Any] | None = None,
                     classifier_flags: Mapping[str, Any] | None = None,
                     branch_flags: Mapping[str, Any] | None = None) -> CascadePlan:
    """A checked plan from the plan's and the filter's layers (lowest first: a config file's table, then
    flags) and the classifiers' tables and flags.

    `filter_` layers may name a paper `preset`, applied under them. `classifier_flags`: classifier
    settings given on the command line, which set the baseline's and the branches' alike, except `lr`
    (the baseline's alone). A branch takes, lowest first: the baseline's table but its `lr`, its own
    table, the classifier flags but `lr`, its own flags (`--branch-lr`).
    """
    base_table, flags = dict(baseline_table or {}), dict(classifier_flags or {})
    preset = next((layer["preset"] for layer in reversed(filter_) if layer.get("preset") is not None), None)
    filter_cfg = resolve(FilterConfig, preset_settings(preset), *filter_)
    base = resolve(TrainConfig, base_table, flags)
    with as_branch():
        branch_cfg = resolve(TrainConfig, {k: v for k, v in base_table.items() if k != "lr"}, branch_table or {},
                             {k: v for k, v in flags.items() if k != "lr"}, branch_flags or {})
    plan = resolve(CascadePlan, *top)
    plan = replace(plan, filter=filter_cfg, baseline=base, branch=branch_cfg)
    plan.check()
    return plan


def with_defaults(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded `to_dict()` with every setting it lacks at its default: a run recorded before a setting
    existed ran with the default (what resuming it compares)."""
    now = CascadePlan().to_dict()
    out = {**{k: v for k, v in now.items() if k not in ("filter", "baseline", "branch")}, **recorded}
    for table in ("filter", "baseline", "branch"):
        if isinstance(recorded.get(table), Mapping):
            out[table] = {**now[table], **recorded[table]}
    return out


def plan_from_dict(d: Mapping[str, Any]) -> CascadePlan:
    """The plan that `CascadePlan.to_dict` recorded (report.json's `plan`)."""
    from dataclasses import fields

    def pick(cls: type, table: Mapping[str, Any] | None) -> Any:
        names = {f.name for f in fields(cls) if f.init}
        return None if table is None else cls(**{k: v for k, v in table.items() if k in names})

    own = {("num_depths" if k == "depth" else k): v for k, v in d.items() if k not in ("filter", "baseline", "branch")}
    return replace(pick(CascadePlan, own), filter=pick(FilterConfig, d.get("filter")),
                   baseline=pick(TrainConfig, d.get("baseline")), branch=pick(TrainConfig, d.get("branch")))
