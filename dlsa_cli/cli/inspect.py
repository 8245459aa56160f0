"""CLI for `inspect`: a summary of any file the tool reads or writes."""

from __future__ import annotations

from typing import Annotated

import typer

from dlsa_cli.cli.common import JsonOpt, command, emit_json, stdout
from dlsa_cli.errors import InputError
from dlsa_cli.inspection import render, summarize


@command("inspect")
def inspect_cmd(
    file: Annotated[str, typer.Argument(help="Any file dlsa reads or writes: features (any format), filter, split, classifier, predictions, counts; or a cascade folder.", show_default=False)],
    json_out: JsonOpt = False,
) -> None:
    """Summarise any file the tool reads or writes.

    A feature file shows N, D, dtype, the classes and their count profile
    (many/medium/few, imbalance, a compact picture), NaN/inf rows, ids and
    what produced it; other files show what their kind calls for, or their
    tensors/columns and metadata. A file with NaN or infinite features is
    summarised and then reported as an error (exit 1).

    Example: [bold]dlsa inspect train.safetensors[/]
    """
    summary = summarize(file)
    if json_out:
        emit_json(summary, nonfinite_as_null=True)  # a file from elsewhere may hold NaN in its metadata
    else:
        stdout.print(render(summary))
    problems = summary.get("problems") or []
    if problems:
        raise InputError(problems[0], path=file)
