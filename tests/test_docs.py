"""The documentation against the code: the generated reference is current, the runnable examples run, links resolve."""

from __future__ import annotations

import difflib
import functools
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

DOCS = REPO / "docs"
RUNNABLE = re.compile(r"<!-- runnable -->\s*\n```(?:bash|sh)[^\n]*\n(.*?)\n```", re.S)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _gen_reference():
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_page_is_what_the_code_generates():
    gen = _gen_reference()
    expected, current = gen.render(), gen.PAGE.read_text(encoding="utf-8")
    if current != expected:
        diff = "".join(list(difflib.unified_diff(current.splitlines(True), expected.splitlines(True),
                                                 "docs/reference.md (checked in)", "generated from the code"))[:60])
        pytest.fail(f"docs/reference.md is stale: run `python docs/gen_reference.py` and commit it\n{diff}")


def test_reference_names_every_command_and_option():
    import typer.main

    from dlsa_cli.cli import app

    page = _gen_reference().render()
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert f"## `dlsa {name}`" in page
        for param in command.params:
            for flag in [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]:
                if flag.startswith("-"):
                    assert f"`{flag}`" in page, (name, flag)


def test_reference_check_fails_on_a_changed_help(tmp_path, monkeypatch):
    gen = _gen_reference()
    stale = tmp_path / "reference.md"
    stale.write_text(gen.render().replace("Mixture components K.", "Mixture components.", 1), encoding="utf-8")
    monkeypatch.setattr(gen, "PAGE", stale)
    assert gen.main(["--check"]) == 1
    stale.write_text(gen.render(), encoding="utf-8")
    assert gen.main(["--check"]) == 0


def _blocks(page: Path) -> list[str]:
    return RUNNABLE.findall(page.read_text(encoding="utf-8"))


def test_runnable_examples_are_marked():
    assert len(_blocks(REPO / "README.md")) == 1
    assert len(_blocks(DOCS / "tutorial.md")) >= 4


def _run_blocks(blocks: list[str], cwd: Path) -> None:
    """Each block in bash -euo pipefail, in order, in `cwd`; `dlsa` is this interpreter's package."""
    env = dict(os.environ, PYTHONPATH=str(REPO), COLUMNS="200", OMP_NUM_THREADS="1", PYTHON=sys.executable)
    prelude = 'dlsa() { "$PYTHON" -m dlsa_cli "$@"; }\n'
    for i, block in enumerate(blocks, 1):
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", prelude + block], cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"runnable block {i} failed (exit {r.returncode}):\n{block}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"


def test_readme_example_runs_on_digits(tmp_path):
    _run_blocks(["dlsa make-dataset digits-lt -o data && cp data/*.safetensors ."], tmp_path)
    _run_blocks(_blocks(REPO / "README.md"), tmp_path)
    assert (tmp_path / "dlsa.parquet").exists() and (tmp_path / "run" / "cascade.json").exists()


def test_tutorial_examples_run_on_digits(tmp_path):
    _run_blocks(_blocks(DOCS / "tutorial.md"), tmp_path)
    assert (tmp_path / "again" / "cascade.json").exists()


def test_readme_is_a_front_page_and_its_links_resolve():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 120
    _assert_links_resolve(REPO / "README.md")


@pytest.mark.parametrize("page", sorted(p.relative_to(REPO).as_posix() for p in DOCS.rglob("*.md")))
def test_docs_links_resolve(page):
    _assert_links_resolve(REPO / page)


def _assert_links_resolve(page: Path) -> None:
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        assert (page.parent / target.split("#")[0]).exists(), f"{page.relative_to(REPO)}: broken link {target}"


RESULTS = DOCS / "results"
TABLE = re.compile(r"^\|.*\|\s*\n\|[\s:|-]*-[\s:|-]*\|\s*\n((?:\|.*\|\s*(?:\n|$))+)", re.M)
MEASURED = re.compile(r"\d\.\d|\d%")  # a cell that holds a measurement: a decimal or a percentage
WRITTEN_BY = re.compile(r"Written by `python (benchmarks/\w+\.py)[ `]")
SNIPPET = re.compile(r'^--8<-- "([^"]+)"', re.M)


def _results_pages() -> list[str]:
    """Every page under docs/results with a table of measurements in it (fragments included)."""
    pages = [p for p in RESULTS.rglob("*.md")
             if any(MEASURED.search(rows) for rows in TABLE.findall(p.read_text(encoding="utf-8")))]
    return sorted(p.relative_to(REPO).as_posix() for p in pages)


@functools.cache
def _help(script: str) -> str:
    r = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert r.returncode == 0, f"{script} --help failed:\n{r.stderr[-2000:]}"
    return r.stdout


def test_results_pages_have_tables():
    assert len(_results_pages()) >= 2  # the regex still finds the tables the scripts write


@pytest.mark.parametrize("page", _results_pages())
def test_results_tables_are_written_by_a_script(page):
    """A results table comes from a script: its page opens with the script's command, and the script can write it."""
    lines = [ln for ln in (REPO / page).read_text(encoding="utf-8").splitlines() if ln.strip()]
    first = next(ln for ln in lines if not ln.startswith("#"))
    m = WRITTEN_BY.match(first)
    assert m, f"{page}: a page with a results table must begin with 'Written by `python benchmarks/NAME.py ...`'"
    assert (REPO / m[1]).is_file(), f"{page}: {m[1]} does not exist"
    assert "--markdown" in _help(m[1]), f"{page}: {m[1]} --help does not offer --markdown"


def test_results_pages_include_fragments_that_exist():
    for page in RESULTS.glob("*.md"):
        for name in SNIPPET.findall(page.read_text(encoding="utf-8")):
            assert (RESULTS / "_fragments" / name).is_file(), f"{page.name}: includes a missing fragment {name}"
