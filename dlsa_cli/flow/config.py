"""Every hyperparameter of a flow filter, declared once (default, range, help), and the paper's presets."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from dlsa_cli.errors import DlsaError
from dlsa_cli.settings import Rule, at_least, check_settings, finite_at_least, in_range, setting, setting_token

# The routing scores (flow/routing.py documents each); here so that settings are checked without torch.
ROUTINGS = ("likelihood", "ratio", "cluster-tail", "knn-tail", "posterior")

# How `select` keeps an epoch: the paper's count of good training clusters, the last
# epoch, or on validation samples (fit_filter's `val`): the tail share of the samples
# the epoch would route, or their mean log p(x) (early stopping on held-out likelihood).
SELECTS = ("good-clusters", "last", "val-separation", "val-likelihood")
VAL_SELECTS = ("val-separation", "val-likelihood")

__all__ = ["PRESETS", "ROUTINGS", "SELECTS", "VAL_SELECTS", "FilterConfig", "FilterRun", "SplitConfig", "check_select",
           "preset_settings"]

_NONNEG = finite_at_least(0)


@dataclass(frozen=True)
class FilterConfig:
    """Every hyperparameter of a flow filter; defaults are the paper's ImageNet-LT ones."""

    clusters: int = setting(500, "Mixture components K.", rule=at_least(1, "need at least 1 cluster"), short="-k")
    epochs: int = setting(50, "Flow filter epochs (one epoch = N pairs).", rule=at_least(1, "need at least 1 epoch"))
    batch_size: int = setting(1024, "Flow filter pairs per step.",
                              rule=Rule(lambda v: v >= 2, "batch norm needs at least 2 samples per batch"))
    lr: float = setting(0.2, "Flow filter SGD learning rate, no momentum, no schedule.",
                        rule=Rule(lambda v: v > 0 and math.isfinite(v),
                                  "the learning rate must be a finite number > 0"))
    lambda_lh: float = setting(2.0, "Weight of the class-weighted likelihood loss; 0 turns it off.", rule=_NONNEG)
    lambda_bal: float = setting(1.0, "Weight of the cluster-balance loss; 0 turns it off.", rule=_NONNEG)
    lambda_pure: float = setting(0.02, "Weight of the purity loss; 0 turns it off.", rule=_NONNEG)
    q: float = setting(2.0, "Class weight exponent: w_c ~ (n_max / n_c)^q.", rule=_NONNEG)
    center_std: float = setting(0.05, "The fixed means are drawn from N(0, std^2 I).", rule=_NONNEG)
    ema: float = setting(0.7, "Decay of the balance loss's moving estimate.",
                         rule=Rule(lambda v: 0 <= v < 1, "the decay must be in [0, 1)"))
    share: float = setting(0.3, "Share of the training samples routed to the cluster-aided classifier.",
                           rule=Rule(lambda v: 0 < v < 1, "the routed share must be in (0, 1)"))
    hidden: int | None = setting(None, "Hidden units of each MADE.", rule=at_least(1, "need at least 1 hidden unit"),
                                shown="D")
    blocks: int = setting(2, "MAF blocks (each MADE + batch norm).", rule=at_least(1, "need at least 1 flow block"))
    made_blocks: int = setting(1, "Extra masked hidden layers inside each MADE.", rule=at_least(0, "must be >= 0"))
    purity_threshold: float = setting(0.7, "A good cluster's share of its largest class must exceed this.",
                                      rule=in_range(0, 1))
    min_cluster_size: int = setting(10, "A good cluster must hold more samples than this.",
                                    rule=at_least(0, "must be >= 0"))
    max_cluster_share: float = setting(
        0.05, "Filter epochs whose largest cluster holds this share of the samples or more are not kept "
        "(the paper's 5000 of 115,846 is 0.043).", rule=in_range(0, 1, lo_open=True))
    select: str = setting(
        "good-clusters", "Which filter epoch to keep: good-clusters (the paper's rule: most pure training clusters), "
        "last, or on the validation samples (need --val): val-separation (the highest tail share, <= 50 training "
        "samples, among the validation samples the epoch routes) or val-likelihood (the highest mean log p(x), "
        "early stopping).", choices=SELECTS)
    seed: int = setting(0, "Random seed; the same seed on the same device repeats a run.",
                        rule=Rule(lambda v: 0 <= v < 2**63, "must be in [0, 2^63)"))
    eval_batch_size: int = setting(4096, "Samples scored at once when the filter scores its training set.",
                                   rule=at_least(1, "must be >= 1"))
    routing: str = setting(
        "likelihood", "Routing score (flow/routing.py): likelihood (the paper's log p(x)), ratio (log p(x) minus "
        "log p(x) of the same flow trained with q = 0, trained alongside: twice the time), cluster-tail (the tail "
        "share of the sample's training cluster) or knn-tail (the tail share of its `neighbours` nearest training "
        "samples in the flow's latent space; the filter file keeps the training latents, N x D float16) or "
        "posterior (the routing classifier's softmax mass on the tail classes: fit-cascade's baseline, or "
        "fit-filter --router CLF; kept in the filter file).",
        rule=Rule(lambda v: v in ROUTINGS, f"unknown routing score (use {', '.join(ROUTINGS)})"))
    tail_at_most: int = setting(50, "Head/tail boundary of the tail-based routing scores (cluster-tail, knn-tail, "
                                "posterior) and of separation: a tail class has at most this many training samples.",
                                rule=at_least(0))
    neighbours: int = setting(30, "Routing knn-tail: how many nearest training samples vote.",
                              rule=Rule(lambda v: v >= 1, "knn-tail needs at least 1 neighbour"))
    input_noise: float = setting(
        0.0, "Gaussian noise added to the flow's training inputs, std times each feature's std over the training "
        "samples (0: none).",
        rule=Rule(lambda v: 0 <= v < math.inf, "the noise std (times each feature's std) must be a finite number >= 0"))
    weight_decay: float = setting(0.0, "Flow filter SGD weight decay (0: none).", rule=_NONNEG)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self) -> None:
        """Refuse a setting of the wrong type or out of its range, naming it (`FilterConfig.lr`)."""
        check_settings(self)

    @classmethod
    def from_preset(cls, preset: str | None = None, **settings: Any) -> FilterConfig:
        """The paper's `preset` (or the defaults) with the `settings` that are not None on top, range-checked."""
        cfg = cls(**{**preset_settings(preset), **{k: v for k, v in settings.items() if v is not None}})
        cfg.check()
        return cfg

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FilterConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def check_select(cfg: FilterConfig, has_val: bool) -> None:
    """A selection rule on validation samples needs them: one line naming the setting, before any work."""
    if cfg.select in VAL_SELECTS and not has_val:
        raise DlsaError(f"{setting_token(cfg, 'select')} {cfg.select}: needs validation samples", hint="pass --val VAL")


# The paper's configurations (reference notes, from the authors' config files).
PRESETS: dict[str, dict[str, Any]] = {
    "imagenet-lt": dict(clusters=500, epochs=50, batch_size=1024, lambda_lh=2.0, lambda_bal=1.0, lambda_pure=0.02,
                        q=2.0),
    "places-lt": dict(clusters=500, epochs=60, batch_size=512, lambda_lh=1.0, lambda_bal=2.0, lambda_pure=0.03, q=2.0),
    "inat18": dict(clusters=500, epochs=30, batch_size=1024, lambda_lh=1.0, lambda_bal=1.0, lambda_pure=0.02, q=2.0),
}


def preset_settings(preset: str | None) -> dict[str, Any]:
    """The settings of the paper's `preset` (None: none); an unknown name is one line."""
    if preset is None:
        return {}
    if preset not in PRESETS:
        raise DlsaError(f"FilterConfig.preset {preset}: unknown preset", hint=f"use one of {', '.join(PRESETS)}")
    return dict(PRESETS[preset])


@dataclass(frozen=True)
class FilterRun:
    """How `fit-filter` runs beside the filter's own settings: the depth it records, singletons, TF32."""

    depth: int | None = setting(None, "Depth to record.", rule=at_least(1),
                                shown="the input's depth + 1 for a split's rest file, else 1")
    allow_singletons: bool | None = setting(None, "Train with classes of a single sample.", shown="only at depth > 1",
                                            switch="no-singletons")
    router: str | None = setting(None, "Routing posterior: the classifier file (linear or cosine) whose softmax mass "
                                 "on the tail classes routes; kept in the filter file.", shown="")
    tf32: bool = setting(
        False, "On CUDA, let matrix products use TF32: faster on Ampere and newer (the reference speed figures use "
        "it) but log p(x) then differs slightly from `split`'s full-precision scores near the threshold. No effect "
        "on CPU.", switch="no-tf32")


@dataclass(frozen=True)
class SplitConfig:
    """How `split` scores and writes: batch size, latents, what a non-finite log p(x) does."""

    batch_size: int = setting(4096, "Samples scored at once (memory is bounded by it).", rule=at_least(1))
    latent: bool = setting(False, "Also store each sample's latent z in the routed/rest files.")
    allow_nonfinite: bool = setting(
        False, "Go on when a sample's log p(x) is NaN or infinite (features far too large for the filter): it goes "
        "to the rest, flagged in the table's 'finite' column and counted; without it the split stops naming the rows.")

    def check(self) -> None:
        check_settings(self)
