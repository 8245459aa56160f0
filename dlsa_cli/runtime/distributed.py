"""Running past one process: torch.distributed as torchrun launches it.

`torchrun --nproc-per-node N -m dlsa_cli COMMAND ...` starts N copies of a
command; each reads RANK, WORLD_SIZE and LOCAL_RANK from its environment.
`setup()` joins them into one process group (NCCL when each process has its
own GPU, gloo on CPU) and gives each process its device: `cuda:LOCAL_RANK`,
one process per device. Without torchrun nothing is initialised and every
helper here behaves as for a world of one process, so library code calls them
unconditionally.

What the helpers give:
- `shard_range` / `shard_ranges`: contiguous row ranges, disjoint, covering
  0..N, balanced to one row; rank r holds rows `n*r//W .. n*(r+1)//W`.
- `gather_object`, `all_gather_object`: per-rank results in rank order, which
  for contiguous shards is input order.
- `all_reduce_sum`: a differentiable sum over ranks (its backward sums the
  gradients too), for the batch statistics of distributed training.
- `agree`: the barrier-safe error path. Every rank calls it at the same
  points with the error it hit (or None); if any rank failed, every rank
  raises the first failing rank's DlsaError, marked `agreed`, so one line is
  shown (by rank 0) and every rank exits non-zero instead of waiting forever
  in the next collective.
- `provenance_fields`: `world_size` (1 for one process) and each rank's row
  range, for a file's `dlsa_provenance`.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from dlsa_cli.errors import DlsaError

__all__ = [
    "TORCHRUN_VARS",
    "DistInfo",
    "agree",
    "all_gather_object",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "collective",
    "current",
    "gather_object",
    "is_main",
    "launched_by_torchrun",
    "provenance_fields",
    "setup",
    "shard_range",
    "shard_ranges",
]

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank of world_size, local rank on its node, backend (None alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True when collectives run (a process group of more than one process)."""
        return self.backend is not None and self.world_size > 1


def launched_by_torchrun(env: Mapping[str, str] | None = None) -> bool:
    """True when torchrun (or an equivalent launcher) set the env:// rendezvous variables."""
    env = os.environ if env is None else env
    return all(k in env for k in TORCHRUN_VARS)


def current() -> DistInfo:
    """This process's DistInfo: from the process group when one is up, else a world of one."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            backend=str(dist.get_backend()),
        )
    return DistInfo()


def is_main() -> bool:
    """True on rank 0, and in a process that torchrun did not start."""
    return current().is_main


def _device_for(spec: str, local_rank: int, local_world: int) -> torch.device:
    """The device of one torchrun process: cuda:LOCAL_RANK when CUDA is asked for (or auto finds it), else cpu."""
    from dlsa_cli.runtime.device import resolve_device

    spec = (spec or "auto").strip().lower()
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if spec.startswith("cuda:") and local_world > 1:
        raise DlsaError(
            f"--device {spec}: under torchrun each process takes its own GPU (cuda:LOCAL_RANK)",
            hint="pass --device cuda or auto",
        )
    if spec.startswith("cuda:"):
        return resolve_device(spec)
    resolve_device("cuda")  # raises the usual line when there is none
    if local_rank >= torch.cuda.device_count():
        raise DlsaError(
            f"torchrun started {local_world} processes on this node but it has {torch.cuda.device_count()} GPU(s)",
            hint="pass --nproc-per-node at most the GPU count, or --device cpu",
        )
    return torch.device("cuda", local_rank)


def setup(device: str = "auto", *, timeout_s: float | None = None) -> tuple[DistInfo, torch.device]:
    """Join torchrun's process group (once) and pick this process's device.

    Without torchrun: a world of one and `resolve_device(device)`. Under
    torchrun: NCCL on `cuda:LOCAL_RANK` or gloo on CPU. The collective timeout
    is `timeout_s`, else $DLSA_DIST_TIMEOUT seconds, else 30 minutes.
    """
    from dlsa_cli.runtime.device import resolve_device

    if not launched_by_torchrun():
        return DistInfo(), resolve_device(device)
    local_rank = int(os.environ["LOCAL_RANK"])
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    dev = _device_for(device, local_rank, local_world)
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        seconds = timeout_s if timeout_s is not None else float(os.environ.get("DLSA_DIST_TIMEOUT", "1800"))
        dist.init_process_group(backend=backend, timeout=_dt.timedelta(seconds=seconds))
        atexit.register(_teardown)
    return current(), dev


def _teardown() -> None:
    """Leave the process group at exit (gloo aborts the process otherwise)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def shard_range(n: int, rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Rows [start, stop) of `rank` (default: this process) among `world_size` contiguous shards of n rows."""
    info = current()
    r = info.rank if rank is None else int(rank)
    w = info.world_size if world_size is None else int(world_size)
    if n < 0 or w < 1 or not 0 <= r < w:
        raise ValueError(f"no shard {r} of {w} for {n} rows")
    return n * r // w, n * (r + 1) // w


def shard_ranges(n: int, world_size: int | None = None) -> list[tuple[int, int]]:
    """Every rank's [start, stop), in rank order: disjoint, contiguous, covering [0, n)."""
    w = current().world_size if world_size is None else int(world_size)
    return [shard_range(n, r, w) for r in range(w)]


def barrier() -> None:
    """Wait for every rank (nothing alone)."""
    if current().active:
        dist.barrier()


def _payload(err: BaseException | None) -> tuple[str, int] | None:
    if err is None:
        return None
    if isinstance(err, DlsaError):
        return str(err), int(err.exit_code)
    return f"{type(err).__name__}: {err}", 1


def agree(err: BaseException | None = None) -> None:
    """Collective error check: raise the first failing rank's error on every rank, or return.

    Every rank must call it at the same point. A rank that did not fail
    passes None. The raised DlsaError has `agreed = True` (the CLI shows it
    once, on rank 0) and the failing rank's message and exit code.
    """
    if not current().active:
        if err is not None:
            raise err
        return
    found = [p for p in all_gather_object(_payload(err)) if p is not None]
    if not found:
        return
    message, code = found[0]
    raised = err if isinstance(err, DlsaError) and str(err) == message else DlsaError(message)
    raised.exit_code = code
    raised.agreed = True  # type: ignore[attr-defined]
    raise raised


def collective(fn: Callable[[], T]) -> T:
    """Run a local step, then `agree`: one rank's DlsaError becomes every rank's, before the next collective."""
    try:
        out = fn()
    except DlsaError as e:
        agree(e)
        raise  # not reached: agree raises
    agree(None)
    return out


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank ([obj] alone)."""
    info = current()
    if not info.active:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def gather_object(obj: Any, dst: int = 0) -> list[Any] | None:
    """Every rank's `obj` in rank order on rank `dst`; None elsewhere ([obj] alone)."""
    info = current()
    if not info.active:
        return [obj]
    out: list[Any] | None = [None] * info.world_size if info.rank == dst else None
    dist.gather_object(obj, out, dst=dst)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank (obj alone)."""
    if not current().active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over ranks, differentiable (the backward sums the gradients over ranks too); t alone."""
    if not current().active:
        return t
    return _SumOverRanks.apply(t)


class _SumOverRanks(torch.autograd.Function):
    """y = sum over ranks of x; dL/dx = sum over ranks of dL/dy (each rank's loss depends on every x)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        g = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(g, op=dist.ReduceOp.SUM)
        return g


def provenance_fields(n: int | None = None) -> dict[str, Any]:
    """`world_size` and, for n rows sharded by rank, `row_ranges` [[start, stop], ...] in rank order."""
    info = current()
    out: dict[str, Any] = {"world_size": info.world_size}
    if n is not None:
        out["row_ranges"] = [list(r) for r in shard_ranges(n, info.world_size)]
    return out
