"""The `dlsa` command line: thin wrappers that parse options, call the library and render."""

from __future__ import annotations

# Import order is the order of `dlsa --help`: the pipeline's order.
from dlsa_cli.cli import (
    cascade,  # noqa: F401
    classify,  # noqa: F401
    compare,  # noqa: F401
    datasets,  # noqa: F401
    evaluate,  # noqa: F401
    extract,  # noqa: F401
    filter,  # noqa: F401
    inspect,  # noqa: F401
)
from dlsa_cli.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    app()
