"""CLI for `fit-classifier`."""

from __future__ import annotations

from dlsa_cli.cli.common import command, not_built


@command("fit-classifier")
def fit_classifier_cmd() -> None:
    """Train a regular or cluster-aided classifier.

    Example: [bold]dlsa fit-classifier train.safetensors -o clf.safetensors[/]
    """
    not_built("fit-classifier", "issue 4")


@command("predict")
def predict_cmd() -> None:
    """Predict with one classifier or a whole DLSA cascade.

    Example: [bold]dlsa predict cascade/ test.safetensors -o pred.parquet[/]
    """
    not_built("predict", "issue 4")
