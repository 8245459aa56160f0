"""CLI for `fit-filter`."""

from __future__ import annotations

from dlsa_cli.cli.common import command, not_built


@command("fit-filter")
def fit_filter_cmd() -> None:
    """Train the Gaussian-mixture flow filter on a feature file.

    Example: [bold]dlsa fit-filter train.safetensors -o filter.safetensors[/]
    """
    not_built("fit-filter", "issue 3")


@command("split")
def split_cmd() -> None:
    """Score feature files with a filter and route each sample.

    Example: [bold]dlsa split filter.safetensors train.safetensors test.safetensors -o split1/[/]
    """
    not_built("split", "issue 3")
