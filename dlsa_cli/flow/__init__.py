"""The flow filter (paper Sec. 3.3): model, losses, training, scoring and splitting.

- `model`: the masked autoregressive flow onto a mixture of K unit Gaussians;
- `config`: every hyperparameter and the paper's presets;
- `losses`: weighted likelihood, purity, balance, and the pair sampler;
- `clusters`: the (cluster, class) table and cluster statistics;
- `filter`: a trained filter (scoring, routing, its file);
- `train`: `fit_filter`;
- `split`: `split`, the routed and rest files;
- `summary`: `dlsa inspect` of filters and split tables.
"""

from dlsa_cli._lazy import lazy_exports

# Each name loads its module on first use, so the CLI's option defaults (`flow.config`) do not import torch.
__all__, __getattr__ = lazy_exports(__name__, {
    "clusters": ("cluster_stats", "cluster_table"),
    "config": ("PRESETS", "FilterConfig"),
    "filter": ("FilterScores", "FlowFilter"),
    "losses": ("BalanceLoss", "PairSampler", "class_weights", "mle_loss", "purity_loss"),
    "model": ("MixtureFlow",),
    "split": ("split", "split_report"),
    "summary": ("split_summary", "summary"),
    "train": ("fit_filter",),
})
