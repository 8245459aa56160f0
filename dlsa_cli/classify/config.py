"""A classifier fit's settings (TrainConfig) and the names each setting accepts."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dlsa_cli.errors import InputError

MODELS = ("linear", "cosine", "cluster-aided")
LOSSES = ("ce", "bsm", "la")
SAMPLERS = ("uniform", "balanced")
POSTHOC = ("none", "la", "tau")
SIDE_INPUTS = ("features", "latent", "none")
BSM_COUNTS = ("all", "subset")
PRIOR_TRAIN = ("plain", "loo")

DEFAULT_LR_SCRATCH = 0.03
DEFAULT_LR_FINETUNE = 3e-4
LA_GRID = tuple(np.round(np.arange(0.0, 2.01, 0.25), 2).tolist())
SMALL_WORK = 1 << 27  # batch x D x C below which CPU training uses one thread
TAU_GRID = tuple(np.round(np.arange(0.0, 1.51, 0.1), 2).tolist())


@dataclass
class TrainConfig:
    """Hyperparameters of one classifier fit (all recorded in the output file).

    `lr=None` means 0.03 from scratch and 3e-4 when starting from `init`
    (fine-tuning). `lr_side=None` means the same as `lr` (FC_b of the
    cluster-aided kind). `bsm_counts`: the n_j of BSM/LA for a classifier
    trained on a subset: `all` = the original training set's counts (carried
    in the subset file's metadata), `subset` = the subset's own counts.
    `prior_train`: the prior row a TRAINING sample sees: `plain` = the filter's
    table, `loo` = its cluster's counts without the sample itself.
    `select`: `best` keeps the epoch with the best validation balanced accuracy
    (epoch 0, the starting point, included); `last` keeps the last epoch.
    `model`: the kind of the (FC_a) head, linear or cosine; None = the init
    classifier's kind, else linear. A filter makes the classifier cluster-aided.
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
    bsm_counts: str = "all"
    side_input: str = "features"
    prior_train: str = "plain"
    posthoc: str = "none"
    val_fraction: float = 0.2
    allow_missing_val_classes: bool = False
    select: str = "best"
    seed: int = 0

    def check(self) -> None:
        """Raise a one-line error for an out-of-range setting."""
        if self.model not in (None, "linear", "cosine"):
            raise InputError(f"--model {self.model}: use linear or cosine (a --filter makes it cluster-aided)")
        for name, value, allowed in (
            ("loss", self.loss, LOSSES),
            ("sampler", self.sampler, SAMPLERS),
            ("posthoc", self.posthoc, POSTHOC),
            ("side_input", self.side_input, SIDE_INPUTS),
            ("bsm_counts", self.bsm_counts, BSM_COUNTS),
            ("prior_train", self.prior_train, PRIOR_TRAIN),
            ("select", self.select, ("best", "last")),
        ):
            if value not in allowed:
                raise InputError(f"--{name.replace('_', '-')} {value}: use one of {', '.join(allowed)}")
        if self.epochs < 1:
            raise InputError(f"--epochs {self.epochs}: must be at least 1")
        if self.batch_size < 1:
            raise InputError(f"--batch-size {self.batch_size}: must be at least 1")
        for name in ("lr", "lr_side"):
            v = getattr(self, name)
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise InputError(f"--{name.replace('_', '-')} {v}: must be a positive number")
        if not 0 < self.val_fraction < 1:
            raise InputError(f"--val-fraction {self.val_fraction}: must be between 0 and 1")


