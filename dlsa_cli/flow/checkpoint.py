"""The resume checkpoint of `fit-filter`: the whole training state after a finished epoch.

A checkpoint is one safetensors file (kind `filter-checkpoint`) beside the
filter being trained (`FILTER.resume`), rewritten atomically after every
epoch and removed once the filter is saved. It holds everything the next
epoch depends on:

- `flow.*`: the flow's state (weights, batch-norm running statistics, the
  fixed means; MADE masks are rebuilt, not stored);
- `best.*`: the best epoch's weights so far, when that is not the current one;
- `opt.N.*`: the optimiser's per-parameter state (empty for plain SGD);
- `rng.init`, `rng.pairs`: both random generators' states;
- `balance.p_tilde`: the balance loss's moving estimate (its step count in the metadata);
- metadata: the last finished epoch, the best epoch and its key, the history,
  and a fingerprint of the data and settings, so a checkpoint of other data or
  other settings is refused rather than silently continued.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlsa_cli.errors import InputError
from dlsa_cli.flow.config import FilterConfig
from dlsa_cli.io.features import FeatureSet
from dlsa_cli.io.files import read_safetensors, write_safetensors

__all__ = ["checkpoint_path", "data_fingerprint", "load_checkpoint", "save_checkpoint"]

KIND = "filter-checkpoint"


def checkpoint_path(out: str | Path) -> Path:
    """Where `fit-filter -o OUT` keeps its resume checkpoint: `OUT.resume` beside it."""
    p = Path(out)
    return p.with_name(p.name + ".resume")


def data_fingerprint(fs: FeatureSet, cfg: FilterConfig) -> dict[str, Any]:
    """SHA-256 of the training features and labels, and the settings: what a resume must match."""
    h = hashlib.sha256()
    # 64 MB of float32 rows at a time: a mapped file stays mapped
    x, step = fs.features, max(1, 2**24 // max(fs.dim, 1))
    for a in range(0, fs.n, step):
        h.update(np.ascontiguousarray(x[a : a + step], dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(fs.require_labels(), dtype=np.int64).tobytes())
    return {"data_sha256": h.hexdigest(), "shape": [fs.n, fs.dim], "config": cfg.to_dict()}


def save_checkpoint(path: str | Path, st: Any, fingerprint: dict[str, Any] | None) -> None:
    """Write the training state `st` (a `TrainState`) atomically; under torchrun rank 0 alone writes.

    Every rank holds the same state (one global batch, reduced gradients and
    batch statistics, the same generators), so rank 0's file resumes them all.
    """
    from dlsa_cli.runtime import distributed as dist

    if not dist.is_main():
        return
    tensors: dict[str, torch.Tensor] = {f"flow.{k}": v for k, v in _learned(st.flow.state_dict()).items()}
    if st.best_state is not None:
        tensors.update({f"best.{k}": v for k, v in _learned(st.best_state).items()})
    for i, p in enumerate(st.flow.parameters()):
        for name, v in st.opt.state.get(p, {}).items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{i}.{name}"] = v
    tensors["rng.init"] = st.g_init.get_state()
    tensors["rng.pairs"] = st.g_pairs.get_state()
    if st.balance.p_tilde is not None:
        tensors["balance.p_tilde"] = st.balance.p_tilde
    meta = {
        "epoch": st.epoch,
        "best_epoch": st.best_epoch,
        "best_key": None if st.best_key is None else list(st.best_key),
        "balance_t": st.balance.t,
        "history": st.history,
        "fingerprint": fingerprint,
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
    }
    write_safetensors(path, tensors, kind=KIND, meta=meta)


def _learned(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A flow state without what is rebuilt from the architecture (MADE masks, the permutation)."""
    from dlsa_cli.flow.model import REBUILT_SUFFIXES

    return {k: v for k, v in state.items() if not k.endswith(REBUILT_SUFFIXES)}


def load_checkpoint(path: str | Path, st: Any, fingerprint: dict[str, Any] | None, device: torch.device) -> list[str]:
    """Restore `st` (a fresh `TrainState`) from a checkpoint; InputError when it is not one of this run.

    Returns warnings: a resume under another thread count, CPU instruction set
    or torch build than the interrupted run continues, but its result may then
    differ in the last bits from an uninterrupted run.
    """
    tensors, kind, meta, _ = read_safetensors(path)
    if kind != KIND:
        raise InputError(f"is a '{kind}' file, not a fit-filter resume checkpoint", path=path, hint="remove it")
    if meta.get("fingerprint") != fingerprint:
        raise InputError(
            "resume checkpoint comes from other training data or other settings",
            path=path,
            hint="run with the same input and options, or remove the checkpoint (or drop --resume) to start over",
        )
    own = st.flow.state_dict()
    st.flow.load_state_dict({**own, **{k[5:]: v for k, v in tensors.items() if k.startswith("flow.")}})
    best = {k[5:]: v.to(device) for k, v in tensors.items() if k.startswith("best.")}
    st.best_state = {**{k: v.detach().clone() for k, v in own.items()}, **best} if best else None
    for i, p in enumerate(st.flow.parameters()):
        state = {k.split(".", 2)[2]: v.to(device) for k, v in tensors.items() if k.startswith(f"opt.{i}.")}
        if state:
            st.opt.state[p] = state
    st.g_init.set_state(tensors["rng.init"])
    st.g_pairs.set_state(tensors["rng.pairs"])
    p_tilde = tensors.get("balance.p_tilde")
    st.balance.p_tilde = None if p_tilde is None else p_tilde.to(device)
    st.balance.t = int(meta["balance_t"])
    st.epoch = st.resumed_from = int(meta["epoch"])
    st.best_epoch = int(meta["best_epoch"])
    st.best_key = None if meta["best_key"] is None else (bool(meta["best_key"][0]), int(meta["best_key"][1]))
    st.history = list(meta["history"])
    st.flow.train()
    now = {"torch_threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
           "torch": torch.__version__}
    return [
        f"the interrupted run had {k} {meta.get(k)}, this one {v}: the resumed filter may differ in the last bits from "
        "an uninterrupted run"
        for k, v in now.items() if meta.get(k) is not None and meta.get(k) != v
    ]
