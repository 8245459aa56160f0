"""Classifiers on feature files (paper Sec. 3.4): heads, settings, inputs, training.

- `config`: `TrainConfig` and the names each setting accepts;
- `model`: linear, cosine, RIDE and cluster-aided heads, the `Classifier` and its file, init heads;
- `data`: carved validation, batches, loss shifts, balanced accuracy, branch inputs;
- `start`: where a fit starts (scratch, a baseline head, a RIDE classifier);
- `ride`: RIDE's distribution-aware diversity term;
- `m2m`: M2M's major-to-minor translation in feature space;
- `train`: `fit_classifier` and the fit's rules;
- `summary`: `dlsa inspect` of a classifier.
"""

from typing import TYPE_CHECKING

from dlsa_cli.runtime.lazy import lazy_exports

# What a type checker sees; at run time each name loads its module on first use, so the CLI's
# option defaults (`classify.config`) do not import torch.
if TYPE_CHECKING:
    from dlsa_cli.classify.config import (
        LOSSES,
        MODELS,
        POSTHOC,
        SAMPLERS,
        TrainConfig,
        flag,
    )
    from dlsa_cli.classify.data import (
        balanced_accuracy,
        branch_inputs,
        carve_validation,
        cluster_inputs,
        draw_batches,
        loss_logit_shift,
    )
    from dlsa_cli.classify.m2m import Translation, m2m_fill
    from dlsa_cli.classify.model import (
        Classifier,
        ClusterAidedHead,
        LinearHead,
        RideHead,
        expert_logits,
        load_init_head,
    )
    from dlsa_cli.classify.ride import ride_diversity, ride_temperatures
    from dlsa_cli.classify.summary import summary
    from dlsa_cli.classify.train import (
        FitReport,
        check_fit_rules,
        fit_classifier,
        val_weights,
    )

__all__ = [
    "LOSSES",
    "MODELS",
    "POSTHOC",
    "SAMPLERS",
    "Classifier",
    "ClusterAidedHead",
    "FitReport",
    "LinearHead",
    "RideHead",
    "TrainConfig",
    "Translation",
    "balanced_accuracy",
    "branch_inputs",
    "carve_validation",
    "check_fit_rules",
    "cluster_inputs",
    "draw_batches",
    "expert_logits",
    "fit_classifier",
    "flag",
    "load_init_head",
    "loss_logit_shift",
    "m2m_fill",
    "ride_diversity",
    "ride_temperatures",
    "summary",
    "val_weights",
]
__getattr__ = lazy_exports(__name__)
