"""CLI for `fit-cascade`: a thin wrapper over `dlsa_cli.cascade.fit_cascade`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from dlsa_cli.cli.common import DeviceOpt, JsonOpt, QuietOpt, Reporter, SeedOpt, command, emit_json
from dlsa_cli.cli.options import CASCADE_FILTER as F
from dlsa_cli.cli.options import CLASSIFIER as C
from dlsa_cli.cli.options import CLASSIFIER_DEFAULTS as CD
from dlsa_cli.cli.options import PRESET_NAMES, RIDE_M2M
from dlsa_cli.cli.render import render_cascade
from dlsa_cli.errors import InputError

__all__ = ["fit_cascade_cmd"]


@command("fit-cascade")
def fit_cascade_cmd(
    train: Annotated[Path, typer.Argument(help="Training feature file with labels.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder to write (must be new or empty, unless --resume).", show_default=False)],
    val: Annotated[Optional[Path], typer.Option("--val", help="Validation feature file: chooses every epoch (default: each classifier carves 20% of its training file).", show_default=False)] = None,
    depth: Annotated[int, typer.Option("--depth", help="Cascade depth: how many filters and cluster-aided classifiers.")] = 3,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted run in OUT from its last finished stage (same options and inputs).")] = False,
    preset: F.preset = None,
    clusters: F.clusters = None,
    filter_epochs: F.epochs = None,
    filter_batch_size: F.batch_size = None,
    filter_lr: F.lr = None,
    lambda_lh: F.lambda_lh = None,
    lambda_bal: F.lambda_bal = None,
    lambda_pure: F.lambda_pure = None,
    q: F.q = None,
    center_std: F.center_std = None,
    ema: F.ema = None,
    share: F.share = None,
    hidden: F.hidden = None,
    blocks: F.blocks = None,
    purity_threshold: F.purity_threshold = None,
    min_cluster_size: F.min_cluster_size = None,
    max_cluster_share: F.max_cluster_share = None,
    filter_select: F.select = None,
    routing: F.routing = None,
    neighbours: F.neighbours = None,
    input_noise: F.input_noise = None,
    filter_weight_decay: F.weight_decay = None,
    model: C.model = CD.model,
    loss: C.loss = CD.loss,
    sampler: C.sampler = CD.sampler,
    epochs: C.epochs = CD.epochs,
    batch_size: C.batch_size = CD.batch_size,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Learning rate of the baseline (default 0.03, or 3e-4 with --baseline-init).", show_default=False)] = None,
    lr_side: C.lr_side = CD.lr_side,
    momentum: C.momentum = CD.momentum,
    weight_decay: C.weight_decay = CD.weight_decay,
    la_tau: C.la_tau = CD.la_tau,
    side_input: C.side_input = CD.side_input,
    prior_train: C.prior_train = CD.prior_train,
    loss_counts: C.loss_counts = CD.loss_counts,
    posthoc: C.posthoc = CD.posthoc,
    val_fraction: C.val_fraction = CD.val_fraction,
    select: C.select = CD.select,
    experts: C.experts = CD.experts,
    expert_hidden: C.expert_hidden = CD.expert_hidden,
    ride_diversity: C.ride_diversity = CD.ride_diversity,
    ride_temperature: C.ride_temperature = CD.ride_temperature,
    ride_init_noise: C.ride_init_noise = CD.ride_init_noise,
    m2m_from: C.m2m_from = CD.m2m_from,
    m2m_warmup: C.m2m_warmup = CD.m2m_warmup,
    m2m_beta: C.m2m_beta = CD.m2m_beta,
    m2m_lambda: C.m2m_lambda = CD.m2m_lambda,
    m2m_gamma: C.m2m_gamma = CD.m2m_gamma,
    m2m_steps: C.m2m_steps = CD.m2m_steps,
    m2m_step: C.m2m_step = CD.m2m_step,
    m2m_start: C.m2m_start = CD.m2m_start,
    m2m_every: C.m2m_every = CD.m2m_every,
    branch_lr: Annotated[Optional[float], typer.Option("--branch-lr", help="Learning rate of the branch classifiers (default 3e-4 fine-tuning, 0.03 with --from-scratch).", show_default=False)] = None,
    from_scratch: Annotated[bool, typer.Option("--from-scratch", help="Train branch classifiers from scratch on their subsets (the authors' way) instead of from the baseline.")] = False,
    baseline_init: Annotated[Optional[Path], typer.Option("--baseline-init", help="Start the baseline from a backbone's own head (weight (C, D), bias (C,); .safetensors or .pt), as the paper does for PaCo.", show_default=False)] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fit a whole DLSA cascade: the baseline, then per depth a flow filter, the split and a cluster-aided classifier, then the final classifier.

    Every branch starts from the baseline (a classifier on all of TRAIN) and is
    validated on its part of --val, its epoch chosen for the whole validation
    set's balanced accuracy. OUT holds baseline.safetensors, depthD/ (filter,
    split tables, routed and rest files, cluster.safetensors), final.safetensors,
    cascade.json (run it with `dlsa predict OUT TEST`) and report.json.
    Under `torchrun --nproc-per-node N` every filter and classifier trains
    with DDP and every split is sharded; rank 0 writes the run folder.

    Example: [bold]dlsa fit-cascade train.safetensors --val val.safetensors -o run/ --depth 2 --clusters 100 --filter-epochs 20[/]
    """
    from dlsa_cli.cascade import fit_cascade
    from dlsa_cli.distributed import setup

    opts = dict(locals())
    rep = Reporter(quiet)
    plan = _plan(opts)
    _, dev = setup(device)  # under torchrun: DDP training and sharded splits, rank 0 writes
    run = fit_cascade(train, out, plan, val=val, device=dev, resume=resume, on_event=rep.log, on_warning=rep.warn)
    if json_out:
        emit_json(run.report.to_json())
        return
    render_cascade(run.report)


_FILTER_FIELDS = {  # fit-cascade's parameter -> FilterConfig field
    "clusters": "clusters", "filter_epochs": "epochs", "filter_batch_size": "batch_size", "filter_lr": "lr",
    "lambda_lh": "lambda_lh", "lambda_bal": "lambda_bal", "lambda_pure": "lambda_pure", "q": "q",
    "center_std": "center_std", "ema": "ema", "share": "share", "hidden": "hidden", "blocks": "blocks",
    "purity_threshold": "purity_threshold", "min_cluster_size": "min_cluster_size",
    "max_cluster_share": "max_cluster_share", "filter_select": "select", "routing": "routing", "neighbours": "neighbours",
    "input_noise": "input_noise", "filter_weight_decay": "weight_decay",
}
_CLASSIFIER_FIELDS = {  # fit-cascade's parameter -> TrainConfig field
    "model": "model", "loss": "loss", "sampler": "sampler", "epochs": "epochs", "batch_size": "batch_size",
    "lr": "lr", "lr_side": "lr_side", "momentum": "momentum", "weight_decay": "weight_decay", "la_tau": "la_tau",
    "loss_counts": "loss_counts", "side_input": "side_input", "prior_train": "prior_train", "posthoc": "posthoc",
    "val_fraction": "val_fraction", "select": "select", **{n: n for n in RIDE_M2M},
}


def _plan(o: dict[str, Any]) -> Any:
    """The CascadePlan of fit-cascade's options: --preset under explicit filter options; --branch-lr for branches."""
    from dataclasses import replace

    from dlsa_cli.cascade import CascadePlan
    from dlsa_cli.classify import TrainConfig
    from dlsa_cli.flow import PRESETS, FilterConfig

    preset = o["preset"]
    if preset is not None and preset not in PRESET_NAMES:
        raise InputError(f"--preset {preset}: unknown preset", hint=f"use one of {', '.join(PRESET_NAMES)}")
    explicit = {f: o[k] for k, f in _FILTER_FIELDS.items() if o[k] is not None}
    filter_cfg = FilterConfig(**{**(PRESETS[preset] if preset else {}), **explicit})
    base = TrainConfig(**{f: o[k] for k, f in _CLASSIFIER_FIELDS.items()})
    if base.m2m_from is not None:
        base = replace(base, m2m_from=str(base.m2m_from))
    init = o["baseline_init"]
    return CascadePlan(
        depth=o["depth"], seed=o["seed"], filter=filter_cfg, baseline=base, branch=replace(base, lr=o["branch_lr"]),
        baseline_init=None if init is None else str(init), from_scratch=o["from_scratch"],
    )
