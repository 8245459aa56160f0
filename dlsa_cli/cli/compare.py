"""CLI for `compare`: a thin wrapper over `dlsa_cli.compare.run.compare`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dlsa_cli.cascade.plan import CascadePlan
from dlsa_cli.cli.cascade import FIT_CASCADE, cascade_plan
from dlsa_cli.cli.common import DeviceOpt, JsonOpt, QuietOpt, Reporter, command, emit_json
from dlsa_cli.cli.derive import Given, Section
from dlsa_cli.compare.config import CompareConfig
from dlsa_cli.settings import resolve

__all__ = ["compare_cmd"]

# compare's own settings, then fit-cascade's (every seed sets the cascade's seed, so it has no --seed)
COMPARE = (Section("", CompareConfig), Section("", CascadePlan, skip=("seed",)), *FIT_CASCADE[1:])


@command("compare", sections=COMPARE)
def compare_cmd(
    train: Annotated[Path, typer.Argument(help="Training feature file with labels.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (must be new or empty, unless --resume).",
                                      show_default=False)],
    val: Annotated[Optional[Path], typer.Option(  # noqa: UP045 - typer reads Optional
        "--val", help="Validation feature file with labels: chooses every epoch, strength and the best baseline.",
        show_default=False)] = None,
    test: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--test", help="Test feature file with labels: every run is scored on it.", show_default=False)] = None,
    plot: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        "--plot", help="Draw the separation ceiling (with --ceiling) to this PNG (needs matplotlib).",
        show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted compare in OUT from its last "
                                         "finished run (same options and inputs).")] = False,
    settings: Given = None,  # type: ignore[assignment]
    device: DeviceOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Does DLSA help on these features? Baselines, the DLSA cascade and its controls, per seed, with intervals.

    Per seed: linear Balanced Softmax, logit-adjusted loss, post-hoc logit
    adjustment and tau-normalisation, cRT, LWS and NCM; the DLSA cascade (as
    fit-cascade, with the same classifier as its branches); and three controls
    at the cascade's routed shares: random routes, the baseline's tail mass as
    the route, and as many fine-tuned classifiers as the cascade has branches
    without routing. Every choice is made on --val (--select-on test: on TEST,
    the authors' protocol, marked optimistic in every output). OUT holds
    compare.json, seedS/dlsa.parquet (the cascade's test predictions) and each
    run's predictions. Settings can come from a TOML file (--config; tables
    \\[filter], \\[baseline], \\[branch] as fit-cascade's).

    Example: [bold]dlsa compare train.safetensors --val val.safetensors --test test.safetensors -o cmp/ --seeds 0,1,2[/]
    """
    from dlsa_cli.compare.run import compare

    if test is None:
        from dlsa_cli.errors import InputError

        raise InputError("compare needs --test: every run is scored on it", hint="pass --test TEST, a labelled file")
    rep = Reporter(quiet)
    config = resolve(CompareConfig, *settings.layers(""))
    plan = cascade_plan(settings)
    report = compare(train, val, test, out, config, plan, device=device, resume=resume, plot=plot, on_event=rep.log)
    if json_out:
        emit_json(report.to_json())
        return
    from dlsa_cli.cli.render import render_compare

    render_compare(report)
