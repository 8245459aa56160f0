"""Package names that load their module on first use (PEP 562), declared once as typed imports.

A package's `__init__` imports its public names inside `if TYPE_CHECKING:`,
which a type checker reads and the interpreter skips, lists them in
`__all__`, and ends with `__getattr__ = lazy_exports(__name__)`:

    if TYPE_CHECKING:
        from dlsa_cli.flow.config import FilterConfig

    __all__ = ["FilterConfig"]
    __getattr__ = lazy_exports(__name__)

`lazy_exports` reads that block from the package's source, so the imports
are the one list of which module holds each name. Importing the package (or a
light submodule of it, such as a settings module the CLI reads its defaults
from) then does not import torch and the training code for commands that
never train.

A name that is also a submodule's name (`flow.split`, the function, in the
module `flow/split.py`) keeps meaning the function, as an eager `from .split
import split` in `__init__` made it: importing the submodule later binds the
function, not the module, on the package.
"""

from __future__ import annotations

import ast
import importlib
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["lazy_exports", "typing_imports"]


def typing_imports(source: str | Path) -> dict[str, str]:
    """{name: module} of the `from MODULE import NAME` lines in a file's top-level `if TYPE_CHECKING:` blocks."""
    tree = ast.parse(Path(source).read_text(encoding="utf-8"))
    found: dict[str, str] = {}
    for node in tree.body:
        if not (isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
            continue
        for line in node.body:
            if isinstance(line, ast.ImportFrom) and line.module and not line.level:
                found.update({a.asname or a.name: line.module for a in line.names})
    return found


def lazy_exports(package: str) -> Callable[[str], Any]:
    """The `__getattr__` of `package`: each name its TYPE_CHECKING imports list, loaded on first use.

    The package's `__all__` must list exactly those names (checked here, so
    the two cannot drift apart).
    """
    pkg = sys.modules[package]
    module_of = typing_imports(str(pkg.__file__))
    if sorted(getattr(pkg, "__all__", [])) != sorted(module_of):
        raise ImportError(f"{package}.__all__ is not the names its `if TYPE_CHECKING:` block imports")
    # the names of functions named as their module
    shadowing = {name for name, module in module_of.items() if module == f"{package}.{name}"}

    class _Package(types.ModuleType):
        def __setattr__(self, name: str, value: Any) -> None:
            if name in shadowing and isinstance(value, types.ModuleType):  # the import system binding the submodule
                value = getattr(value, name)
            super().__setattr__(name, value)

    pkg.__class__ = _Package

    def __getattr__(name: str) -> Any:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_of[name]), name)
        setattr(pkg, name, value)  # later lookups skip this function
        return value

    return __getattr__
