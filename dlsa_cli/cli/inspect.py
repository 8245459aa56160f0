"""CLI for `inspect`."""

from __future__ import annotations

from dlsa_cli.cli.common import command, not_built


@command("inspect")
def inspect_cmd() -> None:
    """Summarise any file the tool reads or writes.

    Example: [bold]dlsa inspect train.safetensors[/]
    """
    not_built("inspect", "issue 2")
