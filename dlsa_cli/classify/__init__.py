"""Classifiers on feature files (paper Sec. 3.4): heads, settings, inputs, training.

- `config`: `TrainConfig` and the names each setting accepts;
- `model`: linear, cosine, RIDE and cluster-aided heads, the `Classifier` and its file;
- `data`: init heads, carved validation, batches, loss shifts, branch inputs;
- `start`: where a fit starts (scratch, a baseline head, a RIDE classifier);
- `ride`: RIDE's distribution-aware diversity term;
- `m2m`: M2M's major-to-minor translation in feature space;
- `train`: `fit_classifier` and the fit's rules;
- `summary`: `dlsa inspect` of a classifier.
"""

from dlsa_cli._lazy import lazy_exports

# Each name loads its module on first use, so the CLI's option defaults (`classify.config`) do not import torch.
__all__, __getattr__ = lazy_exports(__name__, {
    "config": ("FLAGS", "LOSSES", "MODELS", "POSTHOC", "SAMPLERS", "TrainConfig", "flag"),
    "data": ("balanced_accuracy", "branch_inputs", "carve_validation", "cluster_inputs", "draw_batches",
             "load_init_head", "loss_logit_shift"),
    "m2m": ("Translation", "m2m_fill"),
    "model": ("Classifier", "ClusterAidedHead", "LinearHead", "RideHead", "expert_logits"),
    "ride": ("ride_diversity", "ride_temperatures"),
    "summary": ("summary",),
    "train": ("FitReport", "check_fit_rules", "fit_classifier", "val_weights"),
})
