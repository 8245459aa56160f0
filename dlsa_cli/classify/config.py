"""A classifier fit's settings (TrainConfig), the names each setting accepts, and their CLI flags."""

from __future__ import annotations

import math
from dataclasses import InitVar, dataclass

import numpy as np

from dlsa_cli.errors import InputError

__all__ = [
    "MODELS",
    "LOSSES",
    "SAMPLERS",
    "POSTHOC",
    "SIDE_INPUTS",
    "LOSS_COUNTS",
    "PRIOR_TRAIN",
    "FLAGS",
    "flag",
    "TrainConfig",
]

MODELS = ("linear", "cosine", "ride", "cluster-aided")
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

# The one place where a library name differs from its `fit-classifier` flag; every other
# setting `name` is the flag `--name` with dashes. Errors name settings through `flag()`.
FLAGS = {
    "side_input": "--input",
    "filter_path": "--filter",
    "val_class_counts": "--val-weights-from",
}


def flag(name: str) -> str:
    """The `fit-classifier` flag of a TrainConfig field or fit_classifier argument."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


@dataclass
class TrainConfig:
    """Hyperparameters of one classifier fit (all recorded in the output file).

    `lr=None` means 0.03 from scratch and 3e-4 when starting from `init`
    (fine-tuning). `lr_side=None` means the same as `lr` (FC_b of the
    cluster-aided kind). `loss_counts`: the n_j of BSM/LA for a classifier
    trained on a subset: `all` = the original training set's counts (carried
    in the subset file's metadata), `subset` = the subset's own counts.
    `prior_train`: the prior row a TRAINING sample sees: `plain` = the filter's
    table, `loo` = its cluster's counts without the sample itself.
    `select`: `best` keeps the epoch with the best validation balanced accuracy
    (epoch 0, the starting point, included); `last` keeps the last epoch.
    `model`: the kind of the (FC_a) head: linear, cosine or ride (RIDE's
    `experts` heads); None = the init classifier's kind, else linear. A filter
    makes the classifier cluster-aided.
    RIDE: `ride_diversity` weighs the diversity term subtracted from each
    expert's loss (None: chosen on validation from RIDE_GRID), `ride_temperature` is its base temperature, `expert_hidden`
    (0 = none) a hidden layer per expert, `ride_init_noise` the relative noise
    added to each expert when started from a linear baseline.
    M2M (`sampler="m2m"`): `m2m_from` the classifier g (None: a CE warm-up of
    `m2m_warmup` epochs), `m2m_beta` / `m2m_lambda` / `m2m_gamma` the paper's
    beta, lambda and gamma, `m2m_steps` gradient steps of `m2m_step` times the
    mean feature norm each, translated samples used from epoch `m2m_start`
    and regenerated every `m2m_every` epochs (0: made once and kept).
    """

    model: str | None = None
    loss: str = "bsm"
    sampler: str = "uniform"
    epochs: int = 150
    batch_size: int = 128
    lr: float | None = None
    lr_side: float | None = None
    momentum: float = 0.9
    weight_decay: float = 0.0
    la_tau: float = 1.0
    cosine_scale: float = 16.0
    loss_counts: str = "all"
    side_input: str = "features"
    prior_train: str = "plain"
    posthoc: str = "none"
    val_fraction: float = 0.2
    allow_missing_val_classes: bool = False
    select: str = "best"
    seed: int = 0
    experts: int = 2
    expert_hidden: int = 0
    ride_diversity: float | None = None
    ride_temperature: float = 1.5
    ride_init_noise: float = 0.1
    m2m_from: str | None = None
    m2m_warmup: int = 30
    m2m_beta: float = 0.999
    m2m_lambda: float = 0.1
    m2m_gamma: float = 0.9
    m2m_steps: int = 10
    m2m_step: float = 0.05
    m2m_start: int = 1
    m2m_every: int = 0
    bsm_counts: InitVar[str | None] = None  # the old name of loss_counts, still accepted

    def __post_init__(self, bsm_counts: str | None) -> None:
        if bsm_counts is not None:
            self.loss_counts = bsm_counts

    def check(self) -> None:
        """Raise a one-line error (naming the flag) for an out-of-range setting."""
        if self.model not in (None, "linear", "cosine", "ride"):
            raise InputError(f"--model {self.model}: use linear, cosine or ride (a --filter makes it cluster-aided)")
        for name, allowed in (
            ("loss", LOSSES),
            ("sampler", SAMPLERS),
            ("posthoc", POSTHOC),
            ("side_input", SIDE_INPUTS),
            ("loss_counts", LOSS_COUNTS),
            ("prior_train", PRIOR_TRAIN),
            ("select", ("best", "last")),
        ):
            if getattr(self, name) not in allowed:
                raise InputError(f"{flag(name)} {getattr(self, name)}: use one of {', '.join(allowed)}")
        for name in ("epochs", "batch_size", "experts", "m2m_steps", "m2m_start", "m2m_warmup"):
            if getattr(self, name) < 1:
                raise InputError(f"{flag(name)} {getattr(self, name)}: must be at least 1")
        for name in ("lr", "lr_side", "ride_temperature", "m2m_step", "cosine_scale"):
            v = getattr(self, name)
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise InputError(f"{flag(name)} {v}: must be a positive number")
        if self.ride_diversity is not None and not (self.ride_diversity >= 0 and math.isfinite(self.ride_diversity)):
            raise InputError(f"--ride-diversity {self.ride_diversity}: must be zero or more")
        for name in ("ride_init_noise", "m2m_lambda", "m2m_gamma", "expert_hidden", "weight_decay", "m2m_every"):
            v = getattr(self, name)
            if not (v >= 0 and math.isfinite(v)):
                raise InputError(f"{flag(name)} {v}: must be zero or more")
        if not 0 < self.val_fraction < 1:
            raise InputError(f"{flag('val_fraction')} {self.val_fraction}: must be between 0 and 1")
        if not 0 < self.m2m_beta < 1:
            raise InputError(f"{flag('m2m_beta')} {self.m2m_beta}: must be between 0 and 1")
        self._check_combinations()

    def _check_combinations(self) -> None:
        if self.model != "ride":
            for name, default in (("experts", 2), ("expert_hidden", 0), ("ride_diversity", None)):
                if getattr(self, name) != default:
                    raise InputError(f"{flag(name)} applies to --model ride", hint="add --model ride or drop it")
        if self.sampler != "m2m" and self.m2m_from is not None:
            raise InputError("--m2m-from applies to --sampler m2m", hint="add --sampler m2m or drop it")
        if self.model == "ride" and self.posthoc == "tau":
            raise InputError("--posthoc tau applies to linear classifiers, not to --model ride", hint="use --posthoc la")
