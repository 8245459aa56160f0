"""Classifiers on feature files (paper Sec. 3.4): heads, settings, inputs, training.

- `config`: `TrainConfig` and the names each setting accepts;
- `model`: linear, cosine and cluster-aided heads, the `Classifier` and its file;
- `data`: init heads, carved validation, batches, loss shifts, branch inputs;
- `train`: `fit_classifier`;
- `summary`: `dlsa inspect` of a classifier.
"""

from dlsa_cli.classify.config import LOSSES, MODELS, POSTHOC, SAMPLERS, TrainConfig
from dlsa_cli.classify.data import (
    balanced_accuracy,
    branch_inputs,
    carve_validation,
    cluster_inputs,
    draw_batches,
    load_init_head,
    loss_logit_shift,
)
from dlsa_cli.classify.model import Classifier, ClusterAidedHead, LinearHead
from dlsa_cli.classify.summary import summary
from dlsa_cli.classify.train import FitReport, fit_classifier

__all__ = [
    "MODELS",
    "LOSSES",
    "SAMPLERS",
    "POSTHOC",
    "TrainConfig",
    "LinearHead",
    "ClusterAidedHead",
    "Classifier",
    "FitReport",
    "fit_classifier",
    "carve_validation",
    "load_init_head",
    "loss_logit_shift",
    "draw_batches",
    "balanced_accuracy",
    "cluster_inputs",
    "branch_inputs",
    "summary",
]
