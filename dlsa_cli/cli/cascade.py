"""CLI for `fit-cascade`: a thin wrapper over `dlsa_cli.cascade.fit_cascade`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dlsa_cli.cascade.plan import BRANCH_TOKEN, NOT_IN_TABLES, CascadePlan, plan_from_layers
from dlsa_cli.classify.config import TrainConfig
from dlsa_cli.cli.common import DeviceOpt, JsonOpt, QuietOpt, Reporter, command, emit_json
from dlsa_cli.cli.derive import Given, Section
from dlsa_cli.cli.render import render_cascade
from dlsa_cli.flow.config import FilterConfig

__all__ = ["fit_cascade_cmd"]


PRESET_HELP = ("The paper's filter settings for imagenet-lt, places-lt or inat18 (imagenet-lt's are the defaults); "
               "explicit filter settings override it.")
# The naming rule: every flow filter setting is --filter-NAME (the unprefixed spelling it had stays as an alias
# where no classifier setting has it); classifier settings are --NAME and set the baseline and the branches alike,
# but --lr (the baseline's) and --branch-lr (the branches').
FIT_CASCADE = (
    Section("", CascadePlan),
    Section("filter", FilterConfig, prefix="filter-", aliases=True, skip=("seed",), extra={"preset": PRESET_HELP}),
    Section("baseline", TrainConfig, skip=NOT_IN_TABLES),
    Section("branch", TrainConfig, only=("lr",), skip=NOT_IN_TABLES, flags={"lr": "--branch-lr"}, token=BRANCH_TOKEN),
)


@command("fit-cascade", sections=FIT_CASCADE)
def fit_cascade_cmd(
    train: Annotated[Path, typer.Argument(help="Training feature file with labels.", show_default=False)],
    out: Annotated[Path,
                   typer.Option("--out", "-o", help="Run folder to write (must be new or empty, unless --resume).",
                                show_default=False)],
    val: Annotated[Path | None,
                   typer.Option("--val",
                                help="Validation feature file: chooses every epoch (default: each classifier carves "
                                     "20% of its training file).", show_default=False)] = None,
    resume: Annotated[bool,
                      typer.Option("--resume",
                                   help="Continue an interrupted run in OUT from its last finished stage (same "
                                        "options and inputs).")] = False,
    settings: Given = None,  # type: ignore[assignment]
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
    Settings can come from a TOML file (--config; tables \\[filter], \\[baseline],
    \\[branch]; `dlsa inspect OUT --config` prints the one that repeats a run).
    Under `torchrun --nproc-per-node N` every filter and classifier trains
    with DDP and every split is sharded; rank 0 writes the run folder.

    Example: [bold]dlsa fit-cascade train.safetensors --val val.safetensors -o run/ --depth 2 --clusters 100 --filter-epochs 20[/]
    """  # noqa: E501  the first line is the command's one-line summary, the example one command
    from dlsa_cli.cascade import fit_cascade
    from dlsa_cli.runtime.distributed import setup

    rep = Reporter(quiet)
    plan = cascade_plan(settings)
    _, dev = setup(device)  # under torchrun: DDP training and sharded splits, rank 0 writes
    run = fit_cascade(train, out, plan, val=val, device=dev, resume=resume, on_event=rep.log, on_warning=rep.warn)
    if json_out:
        emit_json(run.report.to_json())
        return
    render_cascade(run.report)


def cascade_plan(settings: Given) -> CascadePlan:
    """The plan of FIT_CASCADE's sections: the plan's and the filter's layers, the classifiers' tables and flags."""
    return plan_from_layers(settings.layers(""), settings.layers("filter"),
                            baseline_table=settings.tables.get("baseline"), branch_table=settings.tables.get("branch"),
                            classifier_flags=settings.flags["baseline"], branch_flags=settings.flags["branch"])
