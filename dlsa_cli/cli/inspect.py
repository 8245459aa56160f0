"""CLI for `inspect`: a summary of any file the tool reads or writes."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from dlsa_cli.cli.common import JsonOpt, command, emit_json, stdout
from dlsa_cli.errors import InputError
from dlsa_cli.inspect import render, summarize


@command("inspect")
def inspect_cmd(
    file: Annotated[str,
                    typer.Argument(help="Any file dlsa reads or writes: features (any format), filter, split, "
                                        "classifier, predictions, counts; or a cascade folder.", show_default=False)],
    plot: Annotated[str | None,
                    typer.Option("--plot",
                                 help="Also draw (.png/.pdf/.svg): for a `dlsa split` folder or a recipe's run folder, "
                                      "head-tail separation per depth against chance (paper Fig. 7); for a split table "
                                      "NAME.parquet, a PCA map of its routed and passed-on samples, head and tail "
                                      "coloured (Fig. 8 style).", show_default=False)] = None,
    config: Annotated[bool,
                      typer.Option("--config",
                                   help="Print the settings that wrote FILE (a filter, a classifier, an extracted "
                                        "feature file, or a fit-cascade or compare folder) as a TOML file: pass it "
                                        "back with --config to repeat the run.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Summarise any file the tool reads or writes.

    A feature file shows N, D, dtype, the classes and their count profile
    (many/medium/few, imbalance, a compact picture), NaN/inf rows, ids and
    what produced it; other files show what their kind calls for, or their
    tensors/columns and metadata. A file with NaN or infinite features is
    summarised and then reported as an error (exit 1).

    Example: [bold]dlsa inspect train.safetensors[/]; [bold]dlsa inspect runs/tiny --plot fig7.png[/];
    [bold]dlsa inspect runs/tiny --config > again.toml[/]
    """
    if config:
        from dlsa_cli.settings import dump_toml, recorded_settings

        tables = recorded_settings(file)
        if json_out:
            emit_json(tables)
        else:
            sys.stdout.write(dump_toml(tables))
        return
    if plot is not None:
        from pathlib import Path

        from dlsa_cli.evaluation.figures import plot_routing, separation_rows

        drawn = plot_routing(file, plot)
        typer.echo(f"{drawn} -> {plot}", err=True)
        if Path(file).is_dir() and not (Path(file) / "cascade.json").is_file():  # a split folder: its rows
            rows = separation_rows(file)
            if json_out:
                emit_json(rows)
            else:
                for r in rows:
                    stdout.print(f"depth {r['depth']} {r['split']}: routed {r['routed_share']:.1%}, tail share "
                                 f"{r['separation']:.1%} of routed vs {r['chance']:.1%} of all")
            return
    summary = summarize(file)
    if json_out:
        emit_json(summary, nonfinite_as_null=True)  # a file from elsewhere may hold NaN in its metadata
    else:
        stdout.print(render(summary))
    problems = summary.get("problems") or []
    if problems:
        raise InputError(problems[0], path=file)
