"""A classifier fit's settings (TrainConfig), the names each setting accepts, and their CLI flags."""

from __future__ import annotations

import math
from dataclasses import InitVar, dataclass, fields

import numpy as np

from dlsa_cli.errors import InputError
from dlsa_cli.settings import Rule, check_settings, setting

__all__ = [
    "LOSSES",
    "LOSS_COUNTS",
    "MODELS",
    "POSTHOC",
    "PRIOR_TRAIN",
    "SAMPLERS",
    "SIDE_INPUTS",
    "TrainConfig",
    "flag",
]

MODELS = ("linear", "cosine", "ride", "ncm", "lws", "cluster-aided")
LOSSES = ("ce", "bsm", "la")
SAMPLERS = ("uniform", "balanced", "m2m")
POSTHOC = ("none", "la", "tau")
SIDE_INPUTS = ("features", "latent", "none")
LOSS_COUNTS = ("all", "subset")
PRIOR_TRAIN = ("plain", "loo")

DEFAULT_LR_SCRATCH = 0.03
DEFAULT_LR_FINETUNE = 3e-4
LA_GRID = tuple(np.round(np.arange(0.0, 2.01, 0.25), 2).tolist())
SMALL_WORK = 1 << 27  # batch x D x C below which CPU training uses one thread
RIDE_GRID = (0.0, 0.05, 0.2)  # diversity weights tried on validation when none is given (0.2: RIDE's)
TAU_GRID = tuple(np.round(np.arange(0.0, 1.51, 0.1), 2).tolist())

def flag(name: str) -> str:
    """How errors name a TrainConfig setting, or a fit_classifier argument that is not one."""
    return _ARGS.get(name, f"TrainConfig.{name}")


# fit_classifier's arguments that errors name, as fit-classifier's flags
_ARGS = {"filter_path": "--filter", "val_class_counts": "--val-weights-from"}

_MIN1 = Rule(lambda v: v >= 1, "must be at least 1")
_POS = Rule(lambda v: v > 0 and math.isfinite(v), "must be a positive number")
_NONNEG = Rule(lambda v: v >= 0 and math.isfinite(v), "must be zero or more")
_OPEN01 = Rule(lambda v: 0 < v < 1, "must be between 0 and 1")


@dataclass
class TrainConfig:
    """Hyperparameters of one classifier fit (all recorded in the output file).

    `lr=None` means 0.03 from scratch and 3e-4 when starting from `init`
    (fine-tuning). `lr_side=None` means the same as `lr` (FC_b of the
    cluster-aided kind). A filter makes the classifier cluster-aided. Each
    field's help says the rest.
    """

    model: str | None = setting(
        None, "linear, cosine, ride (RIDE's `experts` heads), ncm (nearest class mean: cosine similarity to the "
        "class means of L2-normalised training features; nothing is trained) or lws (learnable weight scaling: "
        "only a per-class scale of the init classifier's weight rows is learned, on class-balanced batches; "
        "Kang et al. use TrainConfig.loss ce) (default: the init classifier's kind, else linear).",
        choices=("linear", "cosine", "ride", "ncm", "lws"), shown="")
    loss: str = setting("bsm", "ce, bsm (Balanced Softmax) or la (logit-adjusted CE); RIDE: each expert's loss.",
                        choices=LOSSES)
    sampler: str = setting("uniform", "uniform, balanced (CBS: classes drawn uniformly) or m2m (major-to-minor "
                           "translation, see the m2m settings).", choices=SAMPLERS)
    epochs: int = setting(150, "Classifier training epochs; the best on validation is kept.", rule=_MIN1)
    batch_size: int = setting(128, "Classifier samples per SGD step.", rule=_MIN1)
    lr: float | None = setting(None, "Classifier learning rate (default 0.03 from scratch, 3e-4 when fine-tuning "
                               "from an init classifier).", rule=_POS, shown="")
    lr_side: float | None = setting(None, "Cluster-aided only: learning rate of FC_b(\\[side, prior]) (default: `lr`).",
                                    rule=_POS, shown="")
    momentum: float = setting(0.9, "SGD momentum.", rule=Rule(lambda v: 0 <= v < 1, "must be in [0, 1)"))
    weight_decay: float = setting(0.0, "SGD weight decay.", rule=_NONNEG)
    la_tau: float = setting(1.0, "Strength of the logit-adjusted loss (1 = Balanced Softmax).", rule=_NONNEG)
    cosine_scale: float = setting(16.0, "Scale of a cosine (or ncm) classifier's logits.", rule=_POS)
    loss_counts: str = setting("all", "n_j of bsm/la on a subset: all (original training counts) or subset "
                               "(its own counts).", choices=LOSS_COUNTS)
    side_input: str = setting("features", "Cluster-aided: what FC_b sees besides the cluster prior: features, "
                              "latent (the flow's z) or none (the prior alone).", choices=SIDE_INPUTS, flag="input")
    prior_train: str = setting("plain", "Cluster-aided: the prior a training sample sees: plain (the filter's "
                               "table) or loo (without itself).", choices=PRIOR_TRAIN)
    posthoc: str = setting("none", "none, la (logit adjustment) or tau (tau-normalisation); strength chosen on "
                           "validation.", choices=POSTHOC)
    val_fraction: float = setting(0.2, "Share of each class carved for validation when there is no validation "
                                  "file.", rule=_OPEN01)
    allow_missing_val_classes: bool = setting(False, "Accept a validation file that lacks some training classes "
                                              "(routed subsets do).")
    select: str = setting("best", "Which classifier epoch to keep: best (on validation, the start included) or "
                          "last.", choices=("best", "last"))
    seed: int = setting(0, "Random seed; the same seed on the same device repeats a run.",
                        rule=Rule(lambda v: 0 <= v < 2**63, "must be in [0, 2^63)"))
    experts: int = setting(2, "RIDE: number of expert heads, trained jointly.", rule=_MIN1)
    expert_hidden: int = setting(0, "RIDE: a hidden layer of this width per expert (0: none).", rule=_NONNEG)
    ride_diversity: float | None = setting(
        None, "RIDE: weight of the diversity term subtracted from each expert's loss (default: chosen on "
        "validation from 0, 0.05, 0.2; RIDE's own is 0.2).", rule=_NONNEG, shown="")
    ride_temperature: float = setting(1.5, "RIDE: base temperature of the diversity term (per class, growing "
                                      "with its count).", rule=_POS)
    ride_init_noise: float = setting(0.1, "RIDE from a linear init: noise added to each expert, times the "
                                     "weights' std.", rule=_NONNEG)
    m2m_from: str | None = setting(None, "M2M: the classifier g that translates (trained on the imbalanced "
                                   "data; default: a CE warm-up).", shown="")
    m2m_warmup: int = setting(30, "M2M without m2m_from: epochs of g's CE warm-up.", rule=_MIN1)
    m2m_beta: float = setting(0.999, "M2M: source class k0 drawn with weight 1 - beta^(n_k0 - n_k).", rule=_OPEN01)
    m2m_lambda: float = setting(0.1, "M2M: weight of the source-class logit penalty.", rule=_NONNEG)
    m2m_gamma: float = setting(0.9, "M2M: keep a translation when g's loss for the target is at most this.",
                               rule=_NONNEG)
    m2m_steps: int = setting(10, "M2M: gradient steps per translation.", rule=_MIN1)
    m2m_step: float = setting(0.05, "M2M: length of a step, times the mean feature norm.", rule=_POS)
    m2m_start: int = setting(1, "M2M: first epoch that trains on translations.", rule=_MIN1)
    m2m_every: int = setting(0, "M2M: regenerate the translations every this many epochs (0: make them once).",
                             rule=_NONNEG)
    bsm_counts: InitVar[str | None] = None  # the old name of loss_counts, still accepted

    def __post_init__(self, bsm_counts: str | None) -> None:
        if bsm_counts is not None:
            self.loss_counts = bsm_counts

    def check(self) -> None:
        """Raise a one-line error (naming the setting, `TrainConfig.lr`) for a value out of range or a contradiction."""
        check_settings(self)
        self._check_combinations()

    def _check_combinations(self) -> None:
        self._check_decoupled()
        if self.model != "ride":
            for name, default in (("experts", 2), ("expert_hidden", 0), ("ride_diversity", None)):
                if getattr(self, name) != default:
                    raise InputError(f"{flag(name)} applies to {flag('model')} ride",
                                     hint=f"add {flag('model')} ride or drop it")
        if self.sampler != "m2m" and self.m2m_from is not None:
            raise InputError(f"{flag('m2m_from')} applies to {flag('sampler')} m2m",
                             hint=f"add {flag('sampler')} m2m or drop it")
        if self.model == "ride" and self.posthoc == "tau":
            raise InputError(f"{flag('posthoc')} tau applies to linear classifiers, not to {flag('model')} ride",
                             hint=f"use {flag('posthoc')} la")

    def _check_decoupled(self) -> None:
        """NCM trains nothing, so no training setting applies to it; LWS learns on class-balanced batches."""
        if self.model == "ncm":
            given = [name for name in _TRAINING if getattr(self, name) != _DEFAULTS[name]]
            if given:
                raise InputError(f"{flag(given[0])} does not apply to {flag('model')} ncm (nothing is trained)",
                                 hint="drop it")
        if self.model == "lws" and self.sampler != "balanced":
            raise InputError(f"{flag('model')} lws learns its scales on class-balanced batches",
                             hint=f"add {flag('sampler')} balanced")


# what a trained classifier uses and NCM does not (posthoc and the cluster-aided settings included)
_TRAINING = ("loss", "sampler", "epochs", "batch_size", "lr", "lr_side", "momentum", "weight_decay", "la_tau",
             "loss_counts", "side_input", "prior_train", "posthoc", "select", "m2m_from")
_DEFAULTS = {f.name: f.default for f in fields(TrainConfig) if f.name in _TRAINING}
