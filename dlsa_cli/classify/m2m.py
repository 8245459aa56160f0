"""M2M (Kim, Jeong, Shin, CVPR 2020) in feature space: major-to-minor translation.

A classifier g trained on the imbalanced data turns samples of larger classes
into samples of smaller ones. For a target class k, a source class k0 is drawn
with probability proportional to `1 - beta ** max(n_k0 - n_k, 0)` (so only larger
classes serve, the much larger ones more often); one of its samples plus small
noise starts `m2m_steps` normalised gradient steps on

    CE(g(x), k) + lambda * f(x)[k0]

(f: the classifier being trained). A translation is kept when g assigns it to k
with a loss of at most gamma; otherwise a real sample of k is repeated (plain
oversampling). Every class is filled up to the largest class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Translation", "fill_counts", "m2m_fill", "source_probabilities", "translate"]

LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x (G, D), source rows (G,)) -> (G, C)
# f may instead be given as a (C, D) matrix A when it is linear in x (f(x) = A x + terms without x):
# the penalty's gradient is then A[k0], with no pass through f (half the work of a step).


@dataclass
class Translation:
    """One round of M2M filling: the added samples and what became of them."""

    x: torch.Tensor  # (G, D) added samples (translations, or repeated real samples where rejected)
    y: torch.Tensor  # (G,) their target classes
    source: torch.Tensor  # (G,) row of the real sample each one started from
    accepted: torch.Tensor  # (G,) bool: a kept translation (False: plain oversampling)

    @property
    def acceptance(self) -> float:
        return float(self.accepted.float().mean()) if len(self.accepted) else 0.0


def source_probabilities(counts: torch.Tensor, beta: float) -> torch.Tensor:
    """(C, C) matrix P[k, k0] = P(source k0 | target k) ∝ 1 - beta^max(n_k0 - n_k, 0); zero rows for none."""
    gap = (counts[None, :] - counts[:, None]).clamp_min(0).double()  # (C, C)
    w = 1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), gap)
    return (w / w.sum(1, keepdim=True).clamp_min(1e-300)).float()


def fill_counts(counts: torch.Tensor) -> torch.Tensor:
    """(C,) how many samples each class needs to reach the largest class (0 for absent classes)."""
    need = counts.max() - counts
    return torch.where(counts > 0, need, torch.zeros_like(need))


def _draw_rows(labels: torch.Tensor, classes: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(G,) a random row of each requested class (every class requested must be present)."""
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels, minlength=int(classes.max()) + 1 if len(classes) else 1)
    starts = torch.cumsum(counts, 0) - counts
    u = torch.rand(len(classes), generator=gen, device=gen.device).to(labels.device)
    within = (u * counts[classes]).long().clamp_max(counts[classes] - 1)
    return order[starts[classes] + within]


def translate(
    g: Callable[[torch.Tensor], torch.Tensor],
    f: LogitsFn | torch.Tensor | None,
    x0: torch.Tensor,
    source_rows: torch.Tensor,
    src: torch.Tensor,
    tgt: torch.Tensor,
    *,
    steps: int,
    step: float,
    lam: float,
    gamma: float,
    noise: float,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(translated x (G, D), accepted (G,) bool) of starting samples x0 (G, D) from classes src to tgt.

    The path from x0 is at most `noise + steps * step` long (each step has length `step`).
    """
    u = torch.randn(x0.shape, generator=gen, device=gen.device).to(x0.device)
    x = (x0 + noise * F.normalize(u, dim=1)).detach()
    for _ in range(steps):
        x.requires_grad_(True)
        obj = F.cross_entropy(g(x), tgt, reduction="sum")
        if callable(f) and lam > 0:
            obj = obj + lam * f(x, source_rows).gather(1, src[:, None]).sum()
        (grad,) = torch.autograd.grad(obj, x)
        if isinstance(f, torch.Tensor) and lam > 0:
            grad = grad + lam * f[src]
        x = (x - step * F.normalize(grad, dim=1)).detach()  # a step of length `step` per sample
    with torch.no_grad():
        logits = g(x)
        ok = (logits.argmax(1) == tgt) & (F.cross_entropy(logits, tgt, reduction="none") <= gamma)
    return x, ok


def m2m_fill(
    g: Callable[[torch.Tensor], torch.Tensor],
    f: LogitsFn | torch.Tensor | None,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    *,
    beta: float,
    lam: float,
    gamma: float,
    steps: int,
    step: float,
    gen: torch.Generator,
    chunk: int = 8192,
) -> Translation:
    """Fill every present class of (x (N, D), y (N,)) up to the largest one with M2M translations.

    `step` is absolute (feature units); the starting noise is one step long.
    """
    counts = torch.bincount(y, minlength=num_classes)  # (C,)
    need = fill_counts(counts)
    tgt = torch.repeat_interleave(torch.arange(num_classes, device=y.device), need)  # (G,)
    probs = source_probabilities(counts, beta)[tgt]  # (G, C)
    has_source = probs.sum(1) > 0
    src = tgt.clone()
    if bool(has_source.any()):
        drawn = torch.multinomial(probs[has_source].to(gen.device), 1, generator=gen).squeeze(1)
        src[has_source] = drawn.to(y.device)
    rows = _draw_rows(y, src, gen)  # (G,) starting samples
    out, ok = x[rows].clone(), torch.zeros(len(tgt), dtype=torch.bool, device=y.device)
    for s in range(0, len(tgt), chunk):
        sl = slice(s, s + chunk)
        out[sl], ok[sl] = translate(g, f, x[rows[sl]], rows[sl], src[sl], tgt[sl], steps=steps, step=step,
                                    lam=lam, gamma=gamma, noise=step, gen=gen)
    ok &= has_source
    fallback = _draw_rows(y, tgt[~ok], gen) if bool((~ok).any()) else rows[:0]
    out[~ok] = x[fallback]  # plain oversampling where a translation was rejected
    source = rows.clone()
    source[~ok] = fallback
    return Translation(x=out.detach(), y=tgt, source=source, accepted=ok)
