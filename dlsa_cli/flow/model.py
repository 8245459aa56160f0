"""The flow filter's model: a masked autoregressive flow onto a Gaussian mixture.

`MixtureFlow` maps features `x` (B, D) to latents `z = g^-1(x)` with an nflows
MAF (the paper's network: `blocks` MADE transforms, each followed by a batch
norm, the variable order reversed between blocks) and scores them under a
mixture of K unit Gaussians with fixed means and a uniform prior:

    log N(z; mu_k, I) = -0.5 (|z|^2 - 2 z.mu_k + |mu_k|^2) - D/2 log 2pi      # (B, K)
    log p(x)          = logsumexp_k log N(z; mu_k, I) - log K + log|det J|     # (B,)
    cluster h(x)      = argmax_k log N(z; mu_k, I)

The mixture term is one matrix product `z @ mu^T`: memory grows with B x K,
never with B x K x D.

nflows details that matter here:
- its affine scale is `softplus(.) + 1e-3` (the authors' code uses `exp`), so
  learning rates do not carry over one to one;
- its `BatchNorm` starts with a zero running variance, which makes eval-mode
  scores meaningless until many training steps have run; we start it at one,
  as `torch.nn.BatchNorm1d` does;
- `BatchNorm` updates its running statistics whenever it is in train mode and
  fails on a batch of one: train with full batches, score in eval mode.
- MADE masks, degrees and the reversal permutation are rebuilt deterministically
  from (D, hidden), so `state_dict_to_save` leaves them out.

Parameters are initialised from an explicit `torch.Generator`, never from the
global RNG, so a seed reproduces a model exactly.
"""

from __future__ import annotations

import math

import torch
from nflows.transforms import (
    BatchNorm,
    CompositeTransform,
    MaskedAffineAutoregressiveTransform,
    ReversePermutation,
)
from torch import nn

__all__ = ["REBUILT_SUFFIXES", "MixtureFlow", "mixture_component_log_density"]

# State-dict entries rebuilt from the architecture itself (not stored in files).
REBUILT_SUFFIXES = (".mask", ".degrees", "._permutation")


def mixture_component_log_density(z: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """log N(z; mu_k, I) for every sample and component, (B, D) x (K, D) -> (B, K).

    Computed as `-0.5 (|z|^2 - 2 z mu^T + |mu|^2) - D/2 log 2pi`: one matrix
    product, no (B, K, D) tensor.
    """
    d = z.shape[1]
    z2 = (z * z).sum(1, keepdim=True)  # (B, 1)
    m2 = (means * means).sum(1)  # (K,)
    sq = torch.addmm(z2 + m2, z, means.t(), alpha=-2.0)  # (B, K) = |z - mu_k|^2
    return -0.5 * sq - 0.5 * d * math.log(2 * math.pi)


class MixtureFlow(nn.Module):
    """MAF `x -> z` plus a K-component unit-covariance Gaussian mixture with fixed means.

    Args:
        dim: feature dimension D.
        num_clusters: mixture components K.
        hidden: hidden units of each MADE (default D).
        blocks: number of MADE transforms (the paper uses 2).
        made_blocks: extra masked hidden layers inside each MADE (nflows'
            `num_blocks`; 1 gives D->H->H->2D).
        center_std: the means are drawn once from N(0, center_std^2 I).
        generator: CPU generator for the means and the initial weights.
    """

    means: torch.Tensor  # (K, D), a buffer (registered in __init__)

    def __init__(
        self,
        dim: int,
        num_clusters: int,
        *,
        hidden: int | None = None,
        blocks: int = 2,
        made_blocks: int = 1,
        center_std: float = 0.05,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.dim = int(dim)
        self.num_clusters = int(num_clusters)
        self.hidden = int(hidden or dim)
        self.blocks = int(blocks)
        self.made_blocks = int(made_blocks)
        if generator is None:
            generator = torch.Generator().manual_seed(0)
        layers: list[nn.Module] = []
        for b in range(self.blocks):
            if b > 0:
                layers.append(ReversePermutation(self.dim))
            layers.append(
                MaskedAffineAutoregressiveTransform(
                    self.dim, self.hidden, num_blocks=self.made_blocks, use_residual_blocks=False
                )
            )
            layers.append(BatchNorm(self.dim))
        self.transform = CompositeTransform(layers)
        self._init_parameters(generator)
        means = torch.randn(self.num_clusters, self.dim, generator=generator) * center_std  # (K, D)
        self.register_buffer("means", means)

    @torch.no_grad()
    def _init_parameters(self, g: torch.Generator) -> None:
        """torch's default Linear init, drawn from `g`; BatchNorm running variance starts at 1."""
        for m in self.transform.modules():
            if isinstance(m, nn.Linear):
                fan_in = m.weight.shape[1]
                bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                # kaiming_uniform_(a=sqrt(5)) as nn.Linear does == U(-1/sqrt(fan_in), 1/sqrt(fan_in))
                m.weight.uniform_(-bound, bound, generator=g)
                if m.bias is not None:
                    m.bias.uniform_(-bound, bound, generator=g)
            elif isinstance(m, BatchNorm):
                m.running_var.fill_(1.0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (B, D) and log|det dz/dx| (B,)."""
        return self.transform(x)

    def component_log_density(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; mu_k, I), (B, K)."""
        return mixture_component_log_density(z, self.means)

    def log_prob(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """log p(x) (B,), component log-densities l (B, K) and z (B, D)."""
        z, logdet = self(x)
        comp = self.component_log_density(z)  # (B, K)
        logp = torch.logsumexp(comp, dim=1) - math.log(self.num_clusters) + logdet
        return logp, comp, z

    def state_dict_to_save(self) -> dict[str, torch.Tensor]:
        """The transform's learned parameters and running statistics (no masks)."""
        return {
            k: v
            for k, v in self.transform.state_dict().items()
            if not k.endswith(REBUILT_SUFFIXES)
        }

    def load_saved_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load what `state_dict_to_save` gave; raises KeyError/RuntimeError on a mismatch."""
        own = self.transform.state_dict()
        expected = {k for k in own if not k.endswith(REBUILT_SUFFIXES)}
        missing = sorted(expected - set(state))
        extra = sorted(set(state) - expected)
        if missing or extra:
            raise KeyError(f"missing {missing[:3]} unexpected {extra[:3]}")
        for k, v in state.items():
            if tuple(own[k].shape) != tuple(v.shape):
                raise RuntimeError(f"{k}: shape {tuple(v.shape)} != {tuple(own[k].shape)}")
        self.transform.load_state_dict({**own, **state})
