"""Training under torchrun so that a global batch means what it means in one process.

The recipe, used by `fit-filter` and `fit-classifier`:
- every rank draws the SAME global batch of B indices (same seed, same
  generator), then keeps its contiguous share `batch_share(B)`: rank r holds
  positions B*r//W .. B*(r+1)//W, so the ranks together see exactly the batch
  one process would see;
- a loss that is a mean over the batch is written `ddp_mean(values, B)`
  (the local sum over B, times W): DistributedDataParallel averages
  gradients over the W ranks, which then gives the gradient of the global
  mean, equal shares or not;
- a statistic of the whole batch (the balance loss's mean posterior, the
  flow's batch-norm mean and variance) is `global_mean(values, B)`, a
  differentiable all_reduce: every rank gets the global value, and the
  gradient reaches every rank's samples;
- `sync_flow_batchnorm` makes nflows' own `BatchNorm` (not torch's, so
  torch's SyncBatchNorm does not apply) compute its mean and variance over
  the global batch, both for the output and for its running statistics.

With these the distributed step is the one-process step up to the order of
floating-point sums; tests/test_distributed.py bounds the difference.
Without torchrun every helper is the one-process identity.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from nflows.transforms import BatchNorm
from torch import nn

from dlsa_cli.runtime.distributed import (
    all_gather_object,
    all_reduce_sum,
    current,
    shard_range,
)

__all__ = [
    "batch_share",
    "ddp_mean",
    "global_mean",
    "mean_over_ranks",
    "sharded_rows",
    "sync_flow_batchnorm",
    "unsync_flow_batchnorm",
    "unwrap",
    "wrap",
]


def batch_share(b: int) -> slice:
    """This rank's contiguous share of a global batch of b positions."""
    lo, hi = shard_range(b)
    return slice(lo, hi)


def ddp_mean(values: torch.Tensor, global_batch: int) -> torch.Tensor:
    """The rank's term of a batch-mean loss: sum(values) / B * W, so that DDP's gradient average is the
    global mean's."""
    return values.sum() * (current().world_size / global_batch)


def global_mean(values: torch.Tensor, global_batch: int) -> torch.Tensor:
    """Mean over the global batch of per-sample rows values (b, ...) -> (...), differentiable, the same on
    every rank."""
    return all_reduce_sum(values.sum(0)) / global_batch


class _GlobalBatchNorm(BatchNorm):
    """nflows BatchNorm whose training-mode statistics are those of the global batch (unbiased variance, as nflows)."""

    def forward(self, inputs: torch.Tensor, context: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.training or not current().active:
            return super().forward(inputs, context)
        n = all_reduce_sum(inputs.new_tensor(float(inputs.shape[0]))).detach()  # global batch size
        mean = all_reduce_sum(inputs.sum(0)) / n  # (D,)
        var = all_reduce_sum(((inputs - mean) ** 2).sum(0)) / (n - 1)  # (D,)
        self.running_mean.mul_(1 - self.momentum).add_(mean.detach() * self.momentum)
        self.running_var.mul_(1 - self.momentum).add_(var.detach() * self.momentum)
        outputs = self.weight * ((inputs - mean) / torch.sqrt(var + self.eps)) + self.bias  # (b, D)
        logabsdet = torch.sum(torch.log(self.weight) - 0.5 * torch.log(var + self.eps))
        logabsdet = logabsdet * inputs.new_ones(inputs.shape[0])
        return outputs, logabsdet


def sync_flow_batchnorm(module: nn.Module) -> nn.Module:
    """Make every nflows BatchNorm inside `module` use global-batch statistics (in place; same parameters and state)."""
    for m in module.modules():
        if type(m) is BatchNorm:
            m.__class__ = _GlobalBatchNorm
    return module


def unsync_flow_batchnorm(module: nn.Module) -> nn.Module:
    """Undo `sync_flow_batchnorm` (for saving or scoring alone)."""
    for m in module.modules():
        if type(m) is _GlobalBatchNorm:
            m.__class__ = BatchNorm
    return module


def wrap(module: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around `module` under torchrun (gradients averaged over ranks); the module
    alone otherwise.

    Buffers are not re-broadcast from rank 0 each step: the synced batch
    norm keeps them equal on every rank by construction.
    """
    if not current().active:
        return module
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters  # torch >= 2.13
    no_sync: dict[str, Any] = {"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}
    return DistributedDataParallel(module, device_ids=ids, **no_sync)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (itself otherwise)."""
    return getattr(module, "module", module)


def sharded_rows(fn: Callable[[int, int], tuple[torch.Tensor, ...]], n: int) -> tuple[torch.Tensor, ...]:
    """fn(start, stop) on this rank's rows, results of every rank concatenated in row order, on every rank.

    For per-sample results over a whole training set (the epoch's clusters,
    the threshold's log-likelihoods): each rank computes a 1/W share.
    """
    lo, hi = shard_range(n)
    mine = fn(lo, hi)
    if not current().active:
        return mine
    parts = all_gather_object(tuple(t.cpu() for t in mine))
    return tuple(torch.cat([p[i] for p in parts]).to(mine[i].device) for i in range(len(mine)))


def mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of a (detached) tensor, e.g. per-rank loss terms for a progress report; t alone."""
    w = current().world_size
    return all_reduce_sum(t.detach().clone()) / w if w > 1 else t
