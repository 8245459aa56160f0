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

from typing import TYPE_CHECKING

from dlsa_cli.runtime.lazy import lazy_exports

# What a type checker sees; at run time each name loads its module on first use, so the CLI's
# option defaults (`flow.config`) do not import torch.
if TYPE_CHECKING:
    from dlsa_cli.flow.clusters import cluster_stats, cluster_table
    from dlsa_cli.flow.config import PRESETS, FilterConfig
    from dlsa_cli.flow.filter import FilterScores, FlowFilter
    from dlsa_cli.flow.losses import (
        BalanceLoss,
        PairSampler,
        class_weights,
        mle_loss,
        purity_loss,
    )
    from dlsa_cli.flow.model import MixtureFlow
    from dlsa_cli.flow.split import split, split_report
    from dlsa_cli.flow.summary import split_summary, summary
    from dlsa_cli.flow.train import fit_filter

__all__ = [
    "PRESETS",
    "BalanceLoss",
    "FilterConfig",
    "FilterScores",
    "FlowFilter",
    "MixtureFlow",
    "PairSampler",
    "class_weights",
    "cluster_stats",
    "cluster_table",
    "fit_filter",
    "mle_loss",
    "purity_loss",
    "split",
    "split_report",
    "split_summary",
    "summary",
]
__getattr__ = lazy_exports(__name__)
