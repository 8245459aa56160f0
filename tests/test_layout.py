"""The package layout: public names a type checker sees load at run time, and modules keep to their own rooms."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys

import pytest
from conftest import REPO

LAZY = ["dlsa_cli.flow", "dlsa_cli.classify", "dlsa_cli.extract"]


@pytest.mark.parametrize("package", LAZY)
def test_every_public_name_loads_from_the_module_its_typed_import_names(package):
    from dlsa_cli.runtime.lazy import typing_imports

    pkg = importlib.import_module(package)
    where = typing_imports(pkg.__file__)
    assert sorted(where) == sorted(pkg.__all__)
    for name, module in where.items():
        assert getattr(pkg, name) is getattr(importlib.import_module(module), name), name


def test_settings_and_packages_load_without_torch():
    code = ("import sys, dlsa_cli.flow.config, dlsa_cli.classify.config, dlsa_cli.extract.config, dlsa_cli.runtime.lazy; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr


def test_a_submodule_import_keeps_the_function_of_the_same_name():
    import dlsa_cli.flow
    import dlsa_cli.flow.split  # binds the submodule on the package, which keeps the function
    from dlsa_cli.flow.split import split

    assert dlsa_cli.flow.split is split


@pytest.mark.parametrize("room", ["extract", "inspect", "runtime", "classify"])
def test_no_module_imports_another_modules_private_names(room):
    for path in sorted((REPO / "dlsa_cli" / room).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dlsa_cli"):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                assert not private, f"{path.name} imports {private} from {node.module}"


@pytest.mark.parametrize("room", ["extract", "inspect", "runtime", "classify"])
def test_no_import_circle_among_a_rooms_modules(room):
    pkg = f"dlsa_cli.{room}"
    graph: dict[str, set[str]] = {}
    for path in (REPO / "dlsa_cli" / room).glob("*.py"):
        mods = {n.module for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ImportFrom) and n.module}
        graph[f"{pkg}.{path.stem}"] = {m for m in mods if m.startswith(pkg + ".")}  # function-level imports too

    def reach(start: str, seen: set[str]) -> set[str]:
        for nxt in graph.get(start, set()) - seen:
            seen.add(nxt)
            reach(nxt, seen)
        return seen

    circles = [m for m in graph if m in reach(m, set())]
    assert not circles, f"import circle through {circles}"
