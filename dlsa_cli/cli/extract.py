"""CLI for `extract`."""

from __future__ import annotations

from dlsa_cli.cli.common import command, not_built


@command("extract")
def extract_cmd() -> None:
    """Images to a feature file with a pretrained backbone.

    Example: [bold]dlsa extract images/ -o train.safetensors[/]
    """
    not_built("extract", "issue 5")
