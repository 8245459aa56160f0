"""Absurd sizes refused before allocation: a model's memory, estimated from its settings, against the machine's.

A setting that allocates (`FilterConfig.clusters`, `FilterConfig.hidden`,
`TrainConfig.experts`, ...) is checked with `refuse_oversized`: the estimate
is a lower bound (parameters, gradients and optimiser state as float32, plus
the per-batch activations that grow with the setting), and the error names
the setting whose default would shrink it most, with the memory it would take.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any, TypeVar

from dlsa_cli.errors import DlsaError

__all__ = ["machine_memory", "refuse_oversized"]

C = TypeVar("C")


def machine_memory(device: Any = "cpu") -> int:
    """Bytes of memory where the model would live: the GPU's for a CUDA device, else the machine's RAM."""
    if str(getattr(device, "type", device)).startswith("cuda"):
        try:
            import torch

            return int(torch.cuda.get_device_properties(torch.device(device)).total_memory)
        except Exception:  # no CUDA here: the device check reports that later
            pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def _gib(n: float) -> str:
    return f"{n / 2**30:,.1f} GiB"


def refuse_oversized(config: C, names: tuple[str, ...], estimate: Callable[[C], float], *, device: Any = "cpu",
                     what: str = "the model") -> None:
    """Raise DlsaError when `estimate(config)` (bytes) exceeds the machine's memory, naming the setting of
    `names` whose default would shrink the estimate most (`FilterConfig.clusters 100000000`)."""
    need, have = float(estimate(config)), machine_memory(device)
    if need <= have:
        return
    defaults = {f.name: f.default for f in fields(config)}  # type: ignore[arg-type]

    def saved(name: str) -> float:
        return need - float(estimate(replace(config, **{name: defaults[name]})))  # type: ignore[type-var]

    name = max(names, key=saved)
    raise DlsaError(f"{type(config).__name__}.{name} {getattr(config, name)}: {what} would take at least "
                    f"{_gib(need)} of memory, more than the {_gib(have)} here", hint="pass a smaller value")
