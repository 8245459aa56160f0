"""Package names that load their module on first use (PEP 562).

A package's `__init__` lists which submodule holds each public name; importing
the package (or one light submodule of it, such as a settings module the CLI
reads its defaults from) then does not import torch and the training code for
commands that never train.

A name that is also a submodule's name (`flow.split`, the function, in the
module `flow/split.py`) keeps meaning the function, as an eager `from .split
import split` in `__init__` made it: importing the submodule later binds the
function, not the module, on the package.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, where: Mapping[str, Sequence[str]]) -> tuple[list[str], Callable[[str], Any]]:
    """(`__all__`, `__getattr__`) for `package`, given {submodule: names it exports}."""
    module_of = {name: module for module, names in where.items() for name in names}
    shadowing = {name for name in module_of if name == module_of[name]}  # a function named as its module

    class _Package(types.ModuleType):
        def __setattr__(self, name: str, value: Any) -> None:
            if name in shadowing and isinstance(value, types.ModuleType):  # the import system binding the submodule
                value = getattr(value, name)
            super().__setattr__(name, value)

    sys.modules[package].__class__ = _Package

    def __getattr__(name: str) -> Any:
        if name not in module_of:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module_of[name]}"), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    return sorted(module_of), __getattr__
