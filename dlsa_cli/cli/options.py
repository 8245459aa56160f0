"""Options shared by several commands, declared once; defaults come from the config dataclasses.

- `FILTER`: the flow filter's options under fit-filter's names (`--epochs`, `--lr`, ...);
- `CASCADE_FILTER`: the same options under fit-cascade's names: the four that
  fit-classifier also has get a `--filter-` prefix (`--filter-epochs`,
  `--filter-batch-size`, `--filter-lr`, `--filter-select`, `--filter-weight-decay`),
  the rest keep theirs;
- `FILTER_VAL`: fit-filter's `--val`, the validation samples a `val-*` --select rule needs;
- `CLASSIFIER`: the classifier options of fit-classifier and fit-cascade.

Each is an `Annotated[...]` type for a command's signature, e.g.
`clusters: FILTER.clusters = None`. A flow filter option's value None means
"from --preset, else the paper's default" (the default is shown in the help);
a classifier option's default is `CLASSIFIER_DEFAULTS.<field>`.
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Optional

import typer

from dlsa_cli.classify.config import TrainConfig
from dlsa_cli.flow.config import FilterConfig

__all__ = [
    "FILTER",
    "CASCADE_FILTER",
    "CLASSIFIER",
    "CLASSIFIER_DEFAULTS",
    "FILTER_SHARED_NAMES",
    "FILTER_VAL",
    "CLASSIFIER_FLAGS",
    "RIDE_M2M",
    "filter_option",
    "classifier_option",
]

PRESET_NAMES = ("imagenet-lt", "places-lt", "inat18")
# Filter options whose names fit-classifier also has: fit-cascade prefixes them with --filter-.
FILTER_SHARED_NAMES = ("epochs", "batch_size", "lr", "select", "weight_decay")
_FILTER_DEFAULTS = {f.name: f.default for f in fields(FilterConfig)}
CLASSIFIER_DEFAULTS = TrainConfig()

# field -> (type, help); the default is FilterConfig's unless the help says otherwise
_FILTER_HELP: dict[str, tuple[type, str]] = {
    "preset": (str, f"The paper's settings for {', '.join(PRESET_NAMES)} (imagenet-lt's are the defaults); explicit options override it."),
    "clusters": (int, "Mixture components K."),
    "epochs": (int, "Flow filter epochs (one epoch = N pairs)."),
    "batch_size": (int, "Flow filter pairs per step."),
    "lr": (float, "Flow filter SGD learning rate, no momentum, no schedule."),
    "lambda_lh": (float, "Weight of the class-weighted likelihood loss; 0 turns it off."),
    "lambda_bal": (float, "Weight of the cluster-balance loss; 0 turns it off."),
    "lambda_pure": (float, "Weight of the purity loss; 0 turns it off."),
    "q": (float, "Class weight exponent: w_c ~ (n_max / n_c)^q."),
    "center_std": (float, "The fixed means are drawn from N(0, std^2 I)."),
    "ema": (float, "Decay of the balance loss's moving estimate."),
    "share": (float, "Share of the training samples routed to the cluster-aided classifier."),
    "hidden": (int, "Hidden units of each MADE."),
    "blocks": (int, "MAF blocks (each MADE + batch norm)."),
    "purity_threshold": (float, "A good cluster's share of its largest class must exceed this."),
    "min_cluster_size": (int, "A good cluster must hold more samples than this."),
    "max_cluster_share": (float, "Filter epochs whose largest cluster holds this share of the samples or more are not kept (the paper's 5000 of 115,846 is 0.043)."),
    "select": (str, "Which filter epoch to keep: good-clusters (the paper's rule: most pure training clusters), last, "
               "or on the validation samples (need --val): val-separation (the highest tail share, <= 50 training "
               "samples, among the validation samples the epoch routes) or val-likelihood (the highest mean log p(x), "
               "early stopping)."),
    "routing": (str, "Routing score (flow/routing.py): likelihood (the paper's log p(x)), ratio (log p(x) minus log p(x) of the same flow trained with q = 0, trained alongside: twice the time), cluster-tail (the tail share of the sample's training cluster) or knn-tail (the tail share of its --neighbours nearest training samples in the flow's latent space; the filter file keeps the training latents, N x D float16)."),
    "neighbours": (int, "--routing knn-tail: how many nearest training samples vote."),
    "input_noise": (float, "Gaussian noise added to the flow's training inputs, std times each feature's std over the training samples (0: none)."),
    "weight_decay": (float, "Flow filter SGD weight decay (0: none)."),
}
_FILTER_SHOWN = {"preset": None, "hidden": "D"}


def filter_option(name: str, *, prefixed: bool = False) -> Any:
    """The Annotated type of the flow filter option for FilterConfig field `name` (value None: preset or default)."""
    typ, help_text = _FILTER_HELP[name]
    flag = "--" + ("filter-" if prefixed else "") + name.replace("_", "-")
    names = (flag, "-k") if name == "clusters" else (flag,)
    shown = _FILTER_SHOWN.get(name, _FILTER_DEFAULTS.get(name))
    default = False if shown is None else f"{shown:g}" if isinstance(shown, float) else str(shown)
    return Annotated[Optional[typ], typer.Option(*names, help=help_text, show_default=default)]


# field -> (flag, type, help); the default is TrainConfig's
CLASSIFIER_FLAGS: dict[str, str] = {"side_input": "--input"}  # as dlsa_cli.classify.config.FLAGS
_CLASSIFIER_HELP: dict[str, tuple[Any, str]] = {
    "model": (Optional[str], "linear, cosine, or ride (RIDE's --experts heads) (default: the --init classifier's kind, else linear)."),
    "loss": (str, "ce, bsm (Balanced Softmax) or la (logit-adjusted CE); RIDE: each expert's loss."),
    "sampler": (str, "uniform, balanced (CBS: classes drawn uniformly) or m2m (major-to-minor translation, see --m2m-*)."),
    "epochs": (int, "Classifier training epochs; the best on validation is kept."),
    "batch_size": (int, "Classifier samples per SGD step."),
    "lr": (Optional[float], "Classifier learning rate (default 0.03 from scratch, 3e-4 when fine-tuning from --init)."),
    "lr_side": (Optional[float], "Cluster-aided only: learning rate of FC_b(\\[side, prior]) (default: --lr)."),
    "momentum": (float, "SGD momentum."),
    "weight_decay": (float, "SGD weight decay."),
    "la_tau": (float, "Strength of the logit-adjusted loss (1 = Balanced Softmax)."),
    "side_input": (str, "Cluster-aided: what FC_b sees besides the cluster prior: features, latent (the flow's z) or none (the prior alone)."),
    "prior_train": (str, "Cluster-aided: the prior a training sample sees: plain (the filter's table) or loo (without itself)."),
    "loss_counts": (str, "n_j of bsm/la on a subset: all (original training counts) or subset (its own counts)."),
    "posthoc": (str, "none, la (logit adjustment) or tau (tau-normalisation); strength chosen on validation."),
    "val_fraction": (float, "Share of each class carved for validation when there is no validation file."),
    "select": (str, "Which classifier epoch to keep: best (on validation, the start included) or last."),
    "experts": (int, "--model ride: number of expert heads, trained jointly."),
    "expert_hidden": (int, "--model ride: a hidden layer of this width per expert (0: none)."),
    "ride_diversity": (Optional[float], "--model ride: weight of the diversity term subtracted from each expert's loss "
                       "(default: chosen on validation from 0, 0.05, 0.2; RIDE's own is 0.2)."),
    "ride_temperature": (float, "--model ride: base temperature of the diversity term (per class, growing with its count)."),
    "ride_init_noise": (float, "--model ride from a linear --init: noise added to each expert, times the weights' std."),
    "m2m_from": (Optional[Path], "--sampler m2m: the classifier g that translates (trained on the imbalanced data; default: a CE warm-up)."),
    "m2m_warmup": (int, "--sampler m2m without --m2m-from: epochs of g's CE warm-up."),
    "m2m_beta": (float, "--sampler m2m: source class k0 drawn with weight 1 - beta^(n_k0 - n_k)."),
    "m2m_lambda": (float, "--sampler m2m: weight of the source-class logit penalty."),
    "m2m_gamma": (float, "--sampler m2m: keep a translation when g's loss for the target is at most this."),
    "m2m_steps": (int, "--sampler m2m: gradient steps per translation."),
    "m2m_step": (float, "--sampler m2m: length of a step, times the mean feature norm."),
    "m2m_start": (int, "--sampler m2m: first epoch that trains on translations."),
    "m2m_every": (int, "--sampler m2m: regenerate the translations every this many epochs (0: make them once)."),
}
# the options that configure RIDE and M2M, in fit-classifier's and fit-cascade's order
RIDE_M2M = ("experts", "expert_hidden", "ride_diversity", "ride_temperature", "ride_init_noise", "m2m_from",
            "m2m_warmup", "m2m_beta", "m2m_lambda", "m2m_gamma", "m2m_steps", "m2m_step", "m2m_start", "m2m_every")


def classifier_option(name: str, *, flag: str | None = None) -> Any:
    """The Annotated type of the classifier option for TrainConfig field `name` (default: TrainConfig's)."""
    typ, help_text = _CLASSIFIER_HELP[name]
    flag = flag or CLASSIFIER_FLAGS.get(name, "--" + name.replace("_", "-"))
    shown = getattr(CLASSIFIER_DEFAULTS, name) is not None
    return Annotated[typ, typer.Option(flag, help=help_text, show_default=shown)]


FILTER_VAL = Annotated[Optional[str], typer.Option(
    "--val", help="Validation feature file with labels: each epoch's record gets its routed tail share and mean log p(x), "
    "and the val-* --select rules choose the epoch on it.", show_default=False)]
FILTER = SimpleNamespace(**{name: filter_option(name) for name in _FILTER_HELP})
CASCADE_FILTER = SimpleNamespace(**{name: filter_option(name, prefixed=name in FILTER_SHARED_NAMES) for name in _FILTER_HELP})
CLASSIFIER = SimpleNamespace(**{name: classifier_option(name) for name in _CLASSIFIER_HELP})
