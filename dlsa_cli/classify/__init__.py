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

# Names load their module on first use (PEP 562), so `import dlsa_cli.classify.config`
# (the CLI's option defaults) does not pull in torch for commands that never train.
_WHERE = {
    "config": ("FLAGS", "LOSSES", "MODELS", "POSTHOC", "SAMPLERS", "TrainConfig", "flag"),
    "data": ("balanced_accuracy", "branch_inputs", "carve_validation", "cluster_inputs", "draw_batches",
             "load_init_head", "loss_logit_shift"),
    "m2m": ("Translation", "m2m_fill"),
    "model": ("Classifier", "ClusterAidedHead", "LinearHead", "RideHead", "expert_logits"),
    "ride": ("ride_diversity", "ride_temperatures"),
    "summary": ("summary",),
    "train": ("FitReport", "check_fit_rules", "fit_classifier", "val_weights"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> object:
    import importlib

    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value
    return value
