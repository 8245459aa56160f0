"""CLI for `evaluate`."""

from __future__ import annotations

from dlsa_cli.cli.common import command, not_built


@command("evaluate")
def evaluate_cmd() -> None:
    """Long-tail metrics of prediction files.

    Example: [bold]dlsa evaluate pred.parquet --train train.safetensors[/]
    """
    not_built("evaluate", "issue 2")
