"""The CLI shell: every subcommand is listed, has help with an example, and errors are one line."""

from __future__ import annotations

import pytest
from conftest import run_cli

COMMANDS = ["extract", "fit-filter", "split", "fit-classifier", "predict", "evaluate", "inspect", "make-dataset"]


def test_top_level_help_lists_every_command():
    r = run_cli("--help")
    assert r.returncode == 0, r.stderr
    for name in COMMANDS:
        assert name in r.stdout


@pytest.mark.parametrize("name", COMMANDS)
def test_each_command_help_has_an_example(name):
    r = run_cli(name, "--help")
    assert r.returncode == 0, r.stderr
    assert "Example:" in r.stdout
    assert f"dlsa {name}" in r.stdout


def test_unknown_dataset_is_one_clear_line():
    r = run_cli("make-dataset", "nope", "-o", "unused-dir")
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert "unknown data set 'nope'" in r.stderr
