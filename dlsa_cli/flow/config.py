"""Every hyperparameter of a flow filter, the paper's presets, and their range checks."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from dlsa_cli.errors import DlsaError

# The routing scores (flow/routing.py documents each); here so that settings are checked without torch.
ROUTINGS = ("likelihood", "ratio", "cluster-tail", "knn-tail")

__all__ = ["FLAGS", "PRESETS", "SELECTS", "VAL_SELECTS", "FilterConfig", "check_select", "flag_of"]

# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class FilterConfig:
    """Every hyperparameter of a flow filter; defaults are the paper's ImageNet-LT ones."""

    clusters: int = 500
    epochs: int = 50
    batch_size: int = 1024
    lr: float = 0.2
    lambda_lh: float = 2.0
    lambda_bal: float = 1.0
    lambda_pure: float = 0.02
    q: float = 2.0
    center_std: float = 0.05
    ema: float = 0.7
    share: float = 0.3
    hidden: int | None = None  # None: D
    blocks: int = 2
    made_blocks: int = 1
    purity_threshold: float = 0.7
    min_cluster_size: int = 10
    max_cluster_share: float = 0.05
    select: str = "good-clusters"  # or "last", "val-separation", "val-likelihood" (SELECTS)
    seed: int = 0
    eval_batch_size: int = 4096
    routing: str = "likelihood"  # the routing score (flow/routing.py): likelihood, ratio, cluster-tail or knn-tail
    neighbours: int = 30  # k of the knn-tail routing score
    input_noise: float = 0.0  # Gaussian noise on training inputs, std times each feature's std; 0: off
    weight_decay: float = 0.0  # SGD weight decay of the flow

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_preset(cls, preset: str | None = None, **settings: Any) -> FilterConfig:
        """The paper's `preset` (or the defaults) with the `settings` that are not None on top, range-checked."""
        if preset is not None and preset not in PRESETS:
            raise DlsaError(f"--preset {preset}: unknown preset", hint=f"use one of {', '.join(PRESETS)}")
        cfg = cls(**{**(PRESETS[preset] if preset else {}), **{k: v for k, v in settings.items() if v is not None}})
        _check_config(cfg)
        return cfg

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FilterConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# Where each setting comes from on the command line (`dlsa fit-filter`): every error that
# names a setting names it through this map, so it names a flag that exists. A setting
# with no flag (None) is named as the library keyword it is.
FLAGS: dict[str, str | None] = {
    "clusters": "--clusters",
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "lambda_lh": "--lambda-lh",
    "lambda_bal": "--lambda-bal",
    "lambda_pure": "--lambda-pure",
    "q": "--q",
    "center_std": "--center-std",
    "ema": "--ema",
    "share": "--share",
    "hidden": "--hidden",
    "blocks": "--blocks",
    "made_blocks": None,
    "purity_threshold": "--purity-threshold",
    "min_cluster_size": "--min-cluster-size",
    "max_cluster_share": "--max-cluster-share",
    "select": "--select",
    "seed": "--seed",
    "eval_batch_size": None,
    "routing": "--routing",
    "neighbours": "--neighbours",
    "input_noise": "--input-noise",
    "weight_decay": "--weight-decay",
}

# How `select` keeps an epoch: the paper's count of good training clusters, the last
# epoch, or on validation samples (fit_filter's `val`): the tail share of the samples
# the epoch would route, or their mean log p(x) (early stopping on held-out likelihood).
SELECTS = ("good-clusters", "last", "val-separation", "val-likelihood")
VAL_SELECTS = ("val-separation", "val-likelihood")


def check_select(cfg: FilterConfig, has_val: bool, *, select_flag: str | None = None) -> None:
    """A selection rule on validation samples needs them: one line naming the flags, before any work."""
    if cfg.select in VAL_SELECTS and not has_val:
        raise DlsaError(f"{select_flag or flag_of('select')} {cfg.select}: needs validation samples", hint="pass --val VAL")


def flag_of(name: str) -> str:
    """The CLI flag of a FilterConfig field, or `FilterConfig.NAME` for a library-only setting."""
    flag = FLAGS[name]
    return flag if flag is not None else f"FilterConfig.{name}"


# The paper's configurations (reference notes, from the authors' config files).
PRESETS: dict[str, dict[str, Any]] = {
    "imagenet-lt": dict(clusters=500, epochs=50, batch_size=1024, lambda_lh=2.0, lambda_bal=1.0, lambda_pure=0.02, q=2.0),
    "places-lt": dict(clusters=500, epochs=60, batch_size=512, lambda_lh=1.0, lambda_bal=2.0, lambda_pure=0.03, q=2.0),
    "inat18": dict(clusters=500, epochs=30, batch_size=1024, lambda_lh=1.0, lambda_bal=1.0, lambda_pure=0.02, q=2.0),
}


def _check_config(cfg: FilterConfig) -> None:
    """Refuse settings out of their range, naming the flag (or the library setting) at fault."""
    for name, ok, msg in _RULES:
        value = getattr(cfg, name)
        if value is not None and not ok(value):
            raise DlsaError(f"{flag_of(name)} {value}: {msg}")


_RULES: tuple[tuple[str, Any, str], ...] = (
    ("clusters", lambda v: v >= 1, "need at least 1 cluster"),
    ("epochs", lambda v: v >= 1, "need at least 1 epoch"),
    ("batch_size", lambda v: v >= 2, "batch norm needs at least 2 samples per batch"),
    ("lr", lambda v: v > 0 and math.isfinite(v), "the learning rate must be a finite number > 0"),
    ("lambda_lh", lambda v: 0 <= v < math.inf, "must be a finite number >= 0"),
    ("lambda_bal", lambda v: 0 <= v < math.inf, "must be a finite number >= 0"),
    ("lambda_pure", lambda v: 0 <= v < math.inf, "must be a finite number >= 0"),
    ("q", lambda v: 0 <= v < math.inf, "must be a finite number >= 0"),
    ("center_std", lambda v: 0 <= v < math.inf, "must be a finite number >= 0"),
    ("ema", lambda v: 0 <= v < 1, "the decay must be in [0, 1)"),
    ("share", lambda v: 0 < v < 1, "the routed share must be in (0, 1)"),
    ("hidden", lambda v: v >= 1, "need at least 1 hidden unit"),
    ("blocks", lambda v: v >= 1, "need at least 1 flow block"),
    ("made_blocks", lambda v: v >= 0, "must be >= 0"),
    ("purity_threshold", lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    ("min_cluster_size", lambda v: v >= 0, "must be >= 0"),
    ("max_cluster_share", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    ("select", lambda v: v in SELECTS, f"use one of {', '.join(SELECTS)}"),
    ("seed", lambda v: 0 <= v < 2**63, "must be in [0, 2^63)"),
    ("eval_batch_size", lambda v: v >= 1, "must be >= 1"),
    ("routing", lambda v: v in ROUTINGS, f"unknown routing score (use {', '.join(ROUTINGS)})"),
    ("neighbours", lambda v: v >= 1, "knn-tail needs at least 1 neighbour"),
    ("input_noise", lambda v: 0 <= v < math.inf, "the noise std (times each feature's std) must be a finite number >= 0"),
    ("weight_decay", lambda v: 0 <= v < math.inf, "must be a finite number >= 0"),
)
