"""The Gaussian-mixture flow filter: training, scoring, routing and splitting.

A filter (paper Sec. 3.3) is a `MixtureFlow` trained on one depth's training
samples with three losses, on pairs of samples from two different classes
drawn class-uniformly:

- weighted likelihood `L_mle = -lambda_lh * mean(w[y_pos] * log p(x_pos))`,
  `w_c = (n_max / n_c)^q / sum_j (n_max / n_j)^q` (tail classes weigh more);
- purity `L_pure = lambda_pure * mean(sum_k softmax(l_pos)_k log_softmax(l_neg)_k)`
  with `l = log N(z; mu_k, I)` and `l_pos` detached;
- balance `L_bal = lambda_bal * (sum_k p^_k log p^_k + log K)`, where
  `p^` is the bias-corrected moving average (decay `ema`) of the batch's mean
  cluster posterior; the gradient flows through the current batch only.

After each epoch every training sample is assigned its cluster (eval mode, in
batches) and the epoch with the most "good" clusters (purity > 0.7, size > 10)
among those whose largest cluster holds less than `max_cluster_share` of the
samples is kept. Then the routing threshold is set so that `share` of the
training samples (exactly round(share * N), ties aside) have
`log p(x) >= threshold`, and the cluster prior P(y | cluster) is counted from
the training samples' clusters.

The selection uses training data only, as the paper does; no test data is read.

Files: a filter is a safetensors file of kind "filter" (see `FlowFilter.save`);
`split` writes, per input, a Parquet table of kind "split" and the routed and
rest samples as feature files (see `split`).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlsa_cli.errors import DlsaError, InputError, ModelMismatchError, TrainingError
from dlsa_cli.features import FeatureSet, num_classes as _num_classes, read_features, train_counts as _train_counts
from dlsa_cli.files import (
    file_sha256,
    read_safetensors,
    read_safetensors_header,
    read_table,
    write_json,
    write_safetensors,
    write_table,
)
from dlsa_cli.flow import MixtureFlow
from dlsa_cli.metrics import FEW_BELOW, MANY_ABOVE, TAIL_AT_MOST, shot_groups, tail_classes

__all__ = [
    "FilterConfig",
    "PRESETS",
    "FilterScores",
    "FlowFilter",
    "SplitResult",
    "fit_filter",
    "split_features",
    "split",
    "split_report",
    "class_weights",
    "mle_loss",
    "purity_loss",
    "BalanceLoss",
    "PairSampler",
    "cluster_table",
    "cluster_stats",
    "summary",
    "split_summary",
]

# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class FilterConfig:
    """Every hyperparameter of a flow filter; defaults are the paper's ImageNet-LT ones."""

    clusters: int = 500
    epochs: int = 50
    batch_size: int = 1024
    lr: float = 0.2
    lambda_lh: float = 2.0
    lambda_bal: float = 1.0
    lambda_pure: float = 0.02
    q: float = 2.0
    center_std: float = 0.05
    ema: float = 0.7
    share: float = 0.3
    hidden: int | None = None  # None: D
    blocks: int = 2
    made_blocks: int = 1
    purity_threshold: float = 0.7
    min_cluster_size: int = 10
    max_cluster_share: float = 0.05
    select: str = "good-clusters"  # or "last"
    seed: int = 0
    eval_batch_size: int = 4096

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FilterConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# The paper's configurations (reference notes, from the authors' config files).
PRESETS: dict[str, dict[str, Any]] = {
    "imagenet-lt": dict(clusters=500, epochs=50, batch_size=1024, lambda_lh=2.0, lambda_bal=1.0, lambda_pure=0.02, q=2.0),
    "places-lt": dict(clusters=500, epochs=60, batch_size=512, lambda_lh=1.0, lambda_bal=2.0, lambda_pure=0.03, q=2.0),
    "inat18": dict(clusters=500, epochs=30, batch_size=1024, lambda_lh=1.0, lambda_bal=1.0, lambda_pure=0.02, q=2.0),
}


def _check_config(cfg: FilterConfig) -> None:
    def bad(opt: str, msg: str) -> DlsaError:
        return DlsaError(f"--{opt} {getattr(cfg, opt.replace('-', '_'))}: {msg}")

    if cfg.clusters < 1:
        raise bad("clusters", "need at least 1 cluster")
    if cfg.epochs < 1:
        raise bad("epochs", "need at least 1 epoch")
    if cfg.batch_size < 2:
        raise bad("batch-size", "batch norm needs at least 2 samples per batch")
    if not cfg.lr > 0:
        raise bad("lr", "the learning rate must be > 0")
    for name in ("lambda_lh", "lambda_bal", "lambda_pure", "q", "center_std"):
        if not getattr(cfg, name) >= 0:
            raise bad(name.replace("_", "-"), "must be >= 0")
    if not 0 <= cfg.ema < 1:
        raise bad("ema", "the decay must be in [0, 1)")
    if not 0 < cfg.share < 1:
        raise bad("share", "the routed share must be in (0, 1)")
    if cfg.hidden is not None and cfg.hidden < 1:
        raise bad("hidden", "need at least 1 hidden unit")
    if cfg.blocks < 1:
        raise bad("blocks", "need at least 1 flow block")
    if cfg.made_blocks < 0:
        raise bad("made-blocks", "must be >= 0")
    if not 0 <= cfg.purity_threshold <= 1:
        raise bad("purity-threshold", "must be in [0, 1]")
    if not 0 < cfg.max_cluster_share <= 1:
        raise bad("max-cluster-share", "must be in (0, 1]")
    if cfg.select not in ("good-clusters", "last"):
        raise bad("select", "use good-clusters or last")
    if cfg.eval_batch_size < 1:
        raise bad("eval-batch-size", "must be >= 1")


# ----------------------------------------------------------------------------- losses


def class_weights(counts: np.ndarray | torch.Tensor, q: float) -> torch.Tensor:
    """w_c = (n_max / n_c)^q / sum_j (n_max / n_j)^q over present classes; 0 for absent ones. (C,)"""
    n = torch.as_tensor(np.asarray(counts) if not isinstance(counts, torch.Tensor) else counts).double()
    present = n > 0
    w = torch.zeros_like(n)
    w[present] = (n.max() / n[present]) ** q
    return (w / w.sum()).float()


def mle_loss(log_p: torch.Tensor, weights: torch.Tensor, lam: float) -> torch.Tensor:
    """-lam * mean(w * log p): log_p (B,), weights (B,) (already indexed by label)."""
    return -lam * (weights * log_p).mean()


def purity_loss(l_pos: torch.Tensor, l_neg: torch.Tensor, lam: float) -> torch.Tensor:
    """lam * mean_batch sum_k softmax(l_pos)_k log_softmax(l_neg)_k, l_pos detached. (B, K) each."""
    p_pos = torch.softmax(l_pos.detach(), dim=1)  # (B, K)
    return lam * (p_pos * torch.log_softmax(l_neg, dim=1)).sum(1).mean()


class BalanceLoss:
    """Cluster-balance loss with the bias-corrected moving estimate of P(h | X).

    Step t: `p_t = mean_batch softmax(l) + 1e-7`,
    `p~_t = eta p~_{t-1} + (1 - eta) p_t` (p~_0 = 0; the history is detached,
    so the gradient flows through the current batch only),
    `p^ = p~_t / (1 - eta^t)`, loss `lam * (sum_k p^_k log p^_k + log K)`,
    which is >= 0 (up to the 1e-7 smoothing) and 0 for perfectly even clusters.
    """

    def __init__(self, num_clusters: int, eta: float, lam: float):
        self.k = int(num_clusters)
        self.eta = float(eta)
        self.lam = float(lam)
        self.t = 0
        self.p_tilde: torch.Tensor | None = None  # (K,), detached

    def __call__(self, l_pos: torch.Tensor) -> torch.Tensor:
        self.t += 1
        p_t = torch.softmax(l_pos, dim=1).mean(0) + 1e-7  # (K,)
        prev = torch.zeros_like(p_t) if self.p_tilde is None else self.p_tilde
        p_tilde = self.eta * prev + (1 - self.eta) * p_t
        self.p_tilde = p_tilde.detach()
        p_hat = p_tilde / (1 - self.eta**self.t)
        return self.lam * ((p_hat * torch.log(p_hat)).sum() + math.log(self.k))


class PairSampler:
    """Draws (pos, neg) index pairs: pos from a uniformly drawn class, neg from a
    uniformly drawn OTHER class, each sample uniform within its class.

    Everything is an index tensor on the labels' device, drawn from `generator`.
    """

    def __init__(self, labels: torch.Tensor, generator: torch.Generator):
        y = labels.long()
        self.g = generator
        counts = torch.bincount(y)  # (C,)
        self.classes = torch.nonzero(counts > 0).flatten()  # (Cp,) present classes
        if self.classes.numel() < 2:
            raise TrainingError("pairs need samples of at least 2 classes")
        self.counts = counts[self.classes]  # (Cp,)
        self.order = torch.argsort(y, stable=True)  # sample indices grouped by class
        self.starts = torch.cumsum(counts, 0)[self.classes] - self.counts  # (Cp,)

    def _sample_in(self, cls_idx: torch.Tensor) -> torch.Tensor:
        n = self.counts[cls_idx]
        u = torch.rand(cls_idx.shape[0], generator=self.g, device=cls_idx.device)
        off = torch.minimum((u * n).long(), n - 1)
        return self.order[self.starts[cls_idx] + off]

    def draw(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(pos, neg) sample indices, each (batch,)."""
        cp = self.classes.numel()
        dev = self.order.device
        i = torch.randint(0, cp, (batch,), generator=self.g, device=dev)
        j = (i + 1 + torch.randint(0, cp - 1, (batch,), generator=self.g, device=dev)) % cp
        return self._sample_in(i), self._sample_in(j)


# ----------------------------------------------------------------------------- cluster statistics


def cluster_table(cluster: torch.Tensor, labels: torch.Tensor, k: int, c: int) -> torch.Tensor:
    """Counts (K, C) of samples per (cluster, class), from one bincount."""
    return torch.bincount(cluster.long() * c + labels.long(), minlength=k * c).view(k, c)


def cluster_stats(table: np.ndarray | torch.Tensor, purity_threshold: float = 0.7, min_size: int = 10) -> dict[str, Any]:
    """Sizes, purities and the good-cluster count of a (K, C) count table."""
    t = torch.as_tensor(table).cpu().numpy() if isinstance(table, torch.Tensor) else np.asarray(table)
    sizes = t.sum(1)
    n = int(sizes.sum())
    nonempty = sizes > 0
    purity = np.where(nonempty, t.max(1) / np.maximum(sizes, 1), 0.0)
    q = np.percentile(sizes, [0, 25, 50, 75, 100]) if sizes.size else np.zeros(5)
    return {
        "samples": n,
        "size_min": int(q[0]),
        "size_q1": float(q[1]),
        "size_median": float(q[2]),
        "size_q3": float(q[3]),
        "size_max": int(q[4]),
        "largest_share": float(sizes.max() / n) if n else 0.0,
        "empty": int((~nonempty).sum()),
        "purity_above_0.9": int((purity > 0.9).sum()),
        "purity_above_0.7": int((purity > 0.7).sum()),
        "purity_above_0.5": int((purity > 0.5).sum()),
        "good_clusters": int(((purity > purity_threshold) & (sizes > min_size)).sum()),
    }


# ----------------------------------------------------------------------------- the filter


@dataclass
class FilterScores:
    """What a filter says about N samples."""

    log_likelihood: np.ndarray  # (N,) float64, log p(x)
    cluster: np.ndarray  # (N,) int64, argmax_k log N(z; mu_k, I)
    routed: np.ndarray  # (N,) bool, log_likelihood >= threshold
    latent: np.ndarray | None = None  # (N, D) float32 when asked


class FlowFilter:
    """A trained flow filter: the flow, its threshold and its cluster prior."""

    def __init__(
        self,
        flow: MixtureFlow,
        *,
        num_classes: int,
        threshold: float,
        share: float,
        depth: int,
        cluster_counts: torch.Tensor,
        train_counts: np.ndarray,
        config: FilterConfig,
        history: list[dict[str, Any]] | None = None,
        chosen_epoch: int | None = None,
        stats: dict[str, Any] | None = None,
        path: Path | None = None,
    ):
        self.flow = flow
        self.num_classes = int(num_classes)
        self.threshold = float(threshold)
        self.share = float(share)
        self.depth = int(depth)
        self.cluster_counts = cluster_counts.detach().cpu().long()  # (K, C)
        sizes = self.cluster_counts.sum(1, keepdim=True)
        self.cluster_prior = (self.cluster_counts.float() / sizes.clamp(min=1).float()).contiguous()  # (K, C)
        self.train_counts = np.asarray(train_counts, dtype=np.int64)
        self.config = config
        self.history = list(history or [])
        self.chosen_epoch = chosen_epoch
        self.stats = dict(stats or {})
        self.path = None if path is None else Path(path)

    @property
    def dim(self) -> int:
        return self.flow.dim

    @property
    def num_clusters(self) -> int:
        return self.flow.num_clusters

    @property
    def device(self) -> torch.device:
        return self.flow.means.device

    def to(self, device: str | torch.device) -> FlowFilter:
        self.flow.to(_device(device))
        return self

    # --- scoring

    def check_dim(self, d: int, path: str | Path | None = None) -> None:
        """Raise ModelMismatchError when features of dimension d do not fit this filter."""
        if d != self.dim:
            where = f" ({path})" if path is not None else ""
            raise ModelMismatchError(
                f"filter expects {self.dim}-dim features, got {d}-dim{where}",
                path=self.path,
                hint="use features from the backbone this filter was trained on",
            )

    def score(
        self,
        x: np.ndarray | torch.Tensor,
        *,
        batch_size: int = 4096,
        device: str | torch.device | None = None,
        latent: bool = False,
    ) -> FilterScores:
        """log p(x), cluster and route of every row of x (N, D), in batches (eval mode)."""
        xt = x if isinstance(x, torch.Tensor) else np.asarray(x)  # numpy is converted batch by batch
        if xt.ndim != 2:
            raise ModelMismatchError(f"features must be (N, D), got shape {tuple(xt.shape)}", path=self.path)
        self.check_dim(int(xt.shape[1]))
        if batch_size < 1:
            raise DlsaError(f"--batch-size {batch_size}: must be >= 1")
        if device is not None:
            self.to(device)
        dev = self.device
        n = int(xt.shape[0])
        ll = np.empty(n, dtype=np.float64)
        cl = np.empty(n, dtype=np.int64)
        zs = np.empty((n, self.dim), dtype=np.float32) if latent else None
        self.flow.eval()
        with torch.inference_mode():
            for s in range(0, n, batch_size):
                xb = xt[s : s + batch_size]
                xb = xb.to(dev, torch.float32) if isinstance(xb, torch.Tensor) else torch.tensor(xb, dtype=torch.float32, device=dev)  # (B, D)
                logp, comp, z = self.flow.log_prob(xb)
                ll[s : s + len(xb)] = logp.double().cpu().numpy()
                cl[s : s + len(xb)] = comp.argmax(1).cpu().numpy()
                if zs is not None:
                    zs[s : s + len(xb)] = z.float().cpu().numpy()
        return FilterScores(ll, cl, ll >= self.threshold, zs)

    # --- files

    def meta(self) -> dict[str, Any]:
        """The filter file's `dlsa_meta`."""
        cfg = self.config.to_dict()
        return {
            "dim": self.dim,
            "num_clusters": self.num_clusters,
            "num_classes": self.num_classes,
            "threshold": self.threshold,
            "share": self.share,
            "depth": self.depth,
            "train_counts": self.train_counts.tolist(),
            "hidden": self.flow.hidden,
            "blocks": self.flow.blocks,
            "made_blocks": self.flow.made_blocks,
            "config": cfg,
            **{k: v for k, v in cfg.items() if k not in ("hidden", "blocks", "made_blocks")},
            "chosen_epoch": self.chosen_epoch,
            "stats": self.stats,
            "history": self.history,
        }

    def save(self, path: str | Path, *, prov: dict | None = None) -> None:
        """Write the filter file (kind "filter") atomically."""
        tensors: dict[str, torch.Tensor] = {f"flow.{k}": v for k, v in self.flow.state_dict_to_save().items()}
        tensors["means"] = self.flow.means
        tensors["cluster_prior"] = self.cluster_prior
        tensors["cluster_counts"] = self.cluster_counts
        write_safetensors(path, tensors, kind="filter", meta=self.meta(), prov=prov)
        self.path = Path(path)

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu") -> FlowFilter:
        """Read a filter file; ModelMismatchError/InputError when it is not a usable filter."""
        header, kind, meta, _ = read_safetensors_header(path)
        if kind != "filter":
            raise ModelMismatchError(
                f"is a '{kind or 'unknown'}' file, not a filter",
                path=path,
                hint="pass a file written by `dlsa fit-filter`",
            )
        needed = ("dim", "num_clusters", "num_classes", "threshold", "share", "depth", "train_counts")
        missing = [k for k in needed if k not in meta]
        if missing or "means" not in header or "cluster_counts" not in header:
            raise ModelMismatchError(
                f"filter file lacks {', '.join(missing) or 'tensors'}", path=path, hint="re-create it with `dlsa fit-filter`"
            )
        tensors, _, _, _ = read_safetensors(path)
        cfg = FilterConfig.from_dict(meta.get("config", {}))
        flow = MixtureFlow(
            int(meta["dim"]),
            int(meta["num_clusters"]),
            hidden=int(meta.get("hidden", meta["dim"])),
            blocks=int(meta.get("blocks", 2)),
            made_blocks=int(meta.get("made_blocks", 1)),
            center_std=cfg.center_std,
        )
        state = {k[len("flow.") :]: v for k, v in tensors.items() if k.startswith("flow.")}
        try:
            flow.load_saved_state(state)
            if tuple(tensors["means"].shape) != tuple(flow.means.shape):
                raise RuntimeError("means shape")
            flow.means.copy_(tensors["means"])
        except (KeyError, RuntimeError) as e:
            raise ModelMismatchError(f"filter weights do not fit its settings ({e})", path=path) from None
        flow.to(_device(device)).eval()
        return cls(
            flow,
            num_classes=int(meta["num_classes"]),
            threshold=float(meta["threshold"]),
            share=float(meta["share"]),
            depth=int(meta["depth"]),
            cluster_counts=tensors["cluster_counts"],
            train_counts=np.asarray(meta["train_counts"], dtype=np.int64),
            config=cfg,
            history=meta.get("history", []),
            chosen_epoch=meta.get("chosen_epoch"),
            stats=meta.get("stats", {}),
            path=Path(path),
        )


def _device(device: str | torch.device | None) -> torch.device:
    if isinstance(device, torch.device):
        return device
    from dlsa_cli.device import resolve_device

    return resolve_device(device or "cpu")


# ----------------------------------------------------------------------------- training

StepCallback = Callable[[int, int, int, dict[str, float]], None]  # (epoch, step, steps, losses)
EpochCallback = Callable[[dict[str, Any]], None]


def _assign(flow: MixtureFlow, x: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode log p(x) (N,) and cluster (N,) of every row, in batches, on x's device."""
    flow.eval()
    logps, clusters = [], []
    with torch.inference_mode():
        for s in range(0, x.shape[0], batch_size):
            logp, comp, _ = flow.log_prob(x[s : s + batch_size])
            logps.append(logp)
            clusters.append(comp.argmax(1))
    flow.train()
    return torch.cat(logps), torch.cat(clusters)


def fit_filter(
    train: FeatureSet | np.ndarray,
    labels: np.ndarray | None = None,
    *,
    config: FilterConfig | None = None,
    depth: int | None = None,
    device: str | torch.device = "cpu",
    allow_singletons: bool | None = None,
    on_step: StepCallback | None = None,
    on_epoch: EpochCallback | None = None,
    on_warning: Callable[[str], None] | None = None,
    **options: Any,
) -> FlowFilter:
    """Train a flow filter on one depth's training samples.

    Args:
        train: a FeatureSet with labels (its metadata's `num_classes`,
            `train_counts` and, for a split "rest" file, `depth` are honoured),
            or a feature matrix (N, D) with `labels`.
        config: hyperparameters (FilterConfig()); keyword `options` override
            single fields, e.g. `fit_filter(fs, clusters=100, epochs=5)`.
        depth: recorded depth; default: input's depth + 1 for a split "rest"
            file, else 1.
        allow_singletons: train with classes of a single sample. Default
            (None): allowed, with a warning, at depth > 1 (routing leaves such
            classes behind); an error at depth 1.
        on_step / on_epoch / on_warning: progress callbacks (nothing prints).
    """
    if not isinstance(train, FeatureSet):
        train = FeatureSet(np.asarray(train), None if labels is None else np.asarray(labels, dtype=np.int64))
    cfg = replace(config or FilterConfig(), **options)
    _check_config(cfg)
    warn = on_warning or (lambda _msg: None)
    path = train.path
    y_np = train.require_labels()
    c = _num_classes(train)
    if y_np.max() >= c:
        raise InputError(f"label {int(y_np.max())} is out of range for {c} classes", path=path)
    counts = np.bincount(y_np, minlength=c)
    if depth is None:
        depth = int(train.meta.get("depth", 0)) + 1 if train.meta.get("part") == "rest" else 1
    n, d = train.n, train.dim
    if (counts > 0).sum() < 2:
        raise InputError("has samples of fewer than 2 classes; the purity pairs need 2", path=path)
    single = np.flatnonzero(counts == 1)
    if single.size:
        allow = depth > 1 if allow_singletons is None else allow_singletons
        if not allow:
            raise InputError(
                f"class {int(single[0])} has a single training sample ({single.size} such class(es))",
                path=path,
                hint="drop those samples, or pass --allow-singletons to train with them",
            )
        warn(f"{single.size} class(es) have a single training sample; they get the largest likelihood weights")
    if n < cfg.batch_size:
        raise InputError(
            f"has {n} training samples, fewer than the batch size {cfg.batch_size}",
            path=path,
            hint=f"pass a smaller --batch-size, e.g. {max(2, 2 ** int(math.log2(max(n // 2, 2))))}",
        )
    dev = _device(device)
    k = cfg.clusters

    g_init = torch.Generator().manual_seed(cfg.seed)
    flow = MixtureFlow(
        d, k, hidden=cfg.hidden, blocks=cfg.blocks, made_blocks=cfg.made_blocks, center_std=cfg.center_std, generator=g_init
    ).to(dev)
    g_pairs = torch.Generator(device=dev).manual_seed(cfg.seed + 1)
    x = torch.as_tensor(train.features).to(dev, torch.float32)  # (N, D)
    y = torch.as_tensor(y_np).to(dev)  # (N,)
    sampler = PairSampler(y, g_pairs)
    w = class_weights(counts, cfg.q).to(dev)  # (C,)
    balance = BalanceLoss(k, cfg.ema, cfg.lambda_bal)
    opt = torch.optim.SGD(flow.parameters(), lr=cfg.lr, momentum=0.0)
    steps = n // cfg.batch_size
    report_every = max(1, steps // 20)
    log_k = math.log(k)
    b = cfg.batch_size
    use_neg = cfg.lambda_pure > 0
    n_route = min(max(int(round(cfg.share * n)), 1), n)
    is_tail = torch.as_tensor(tail_classes(_train_counts(train))).to(dev)[y]  # (N,) bool

    history: list[dict[str, Any]] = []
    best_key: tuple[bool, int] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    best_epoch = 0
    flow.train()
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        sums = torch.zeros(4, device=dev, dtype=torch.float64)  # loss, mle, bal, pure
        for step in range(1, steps + 1):
            pos, neg = sampler.draw(b)
            xb = x[torch.cat([pos, neg])] if use_neg else x[pos]  # (2B or B, D)
            z, logdet = flow(xb)
            comp = flow.component_log_density(z)  # (2B, K)
            l_pos = comp[:b]
            zero = comp.new_zeros(())
            l_mle = (
                mle_loss(torch.logsumexp(l_pos, 1) - log_k + logdet[:b], w[y[pos]], cfg.lambda_lh)
                if cfg.lambda_lh > 0
                else zero
            )
            l_bal = balance(l_pos) if cfg.lambda_bal > 0 else zero
            l_pure = purity_loss(l_pos, comp[b:], cfg.lambda_pure) if use_neg else zero
            loss = l_mle + l_bal + l_pure
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += torch.stack([loss.detach(), l_mle.detach(), l_bal.detach(), l_pure.detach()]).double()
            if step % report_every == 0 or step == steps:
                means = (sums / step).tolist()
                if not all(math.isfinite(v) for v in means):
                    raise _diverged(epoch, cfg.lr)
                if on_step is not None:
                    on_step(epoch, step, steps, dict(zip(("loss", "mle", "bal", "pure"), means)))
        logp, cluster = _assign(flow, x, cfg.eval_batch_size)
        if not bool(torch.isfinite(logp).all()):
            raise _diverged(epoch, cfg.lr)
        st = cluster_stats(cluster_table(cluster, y, k, c), cfg.purity_threshold, cfg.min_cluster_size)
        eligible = st["largest_share"] < cfg.max_cluster_share
        means = (sums / steps).tolist()
        record = {
            "epoch": epoch,
            "loss": means[0],
            "mle": means[1],
            "bal": means[2],
            "pure": means[3],
            "good_clusters": st["good_clusters"],
            "largest_cluster": st["size_max"],
            "largest_share": st["largest_share"],
            "empty_clusters": st["empty"],
            "mean_log_likelihood": float(logp.double().mean()),
            "routed_tail_share": float(is_tail[torch.topk(logp, n_route).indices].double().mean()),
            "eligible": bool(eligible),
            "seconds": time.perf_counter() - t0,
        }
        history.append(record)
        key = (True, epoch) if cfg.select == "last" else (bool(eligible), st["good_clusters"])
        if best_key is None or key >= best_key:  # ties: the later (longer trained) epoch
            best_key, best_epoch = key, epoch
            if epoch < cfg.epochs:  # the last epoch's state is the flow itself
                best_state = {kk: v.detach().clone() for kk, v in flow.state_dict().items()}
            else:
                best_state = None
        if on_epoch is not None:
            on_epoch(record)
    assert best_key is not None
    if cfg.select != "last" and not best_key[0]:
        warn(
            f"no epoch kept its largest cluster under {cfg.max_cluster_share:g} of the samples; "
            f"kept epoch {best_epoch} (most good clusters); consider a larger --max-cluster-share or more --clusters"
        )
    if best_state is not None:
        flow.load_state_dict(best_state)
    del best_state
    flow.eval()

    filt = FlowFilter(
        flow,
        num_classes=c,
        threshold=0.0,
        share=cfg.share,
        depth=depth,
        cluster_counts=torch.zeros(k, c, dtype=torch.long),
        train_counts=_train_counts(train),
        config=cfg,
        history=history,
        chosen_epoch=best_epoch,
        path=None,
    )
    sc = filt.score(x, batch_size=cfg.eval_batch_size)
    filt.threshold = float(np.sort(sc.log_likelihood)[::-1][n_route - 1])
    table = cluster_table(torch.from_numpy(sc.cluster), torch.from_numpy(y_np), k, c)
    filt.cluster_counts = table.long()
    filt.cluster_prior = (table.float() / table.sum(1, keepdim=True).clamp(min=1).float()).contiguous()
    routed = sc.log_likelihood >= filt.threshold
    tail = tail_classes(filt.train_counts)
    filt.stats = {
        **cluster_stats(table, cfg.purity_threshold, cfg.min_cluster_size),
        "chosen_epoch": best_epoch,
        "chosen_epoch_eligible": bool(best_key[0]),
        "train_samples": n,
        "routed": int(routed.sum()),
        "routed_tail_share": float(tail[y_np[routed]].mean()) if routed.any() else None,
        "tail_share": float(tail[y_np].mean()),
        "seconds_per_epoch": float(np.mean([h["seconds"] for h in history])),
        "device": str(dev),
    }
    return filt


def _diverged(epoch: int, lr: float) -> TrainingError:
    return TrainingError(
        f"training diverged: the loss became NaN or infinite in epoch {epoch}",
        hint=f"try a lower --lr than {lr:g}, e.g. {lr / 4:g}",
    )


# ----------------------------------------------------------------------------- split


@dataclass
class SplitResult:
    """One feature file scored and divided by a filter."""

    scores: FilterScores
    ids: np.ndarray  # (N,) the file's ids, or the row index
    routed: FeatureSet
    rest: FeatureSet
    report: dict[str, Any] = field(default_factory=dict)


def split_report(
    filt: FlowFilter,
    labels: np.ndarray | None,
    scores: FilterScores,
    *,
    many_above: int = MANY_ABOVE,
    few_below: int = FEW_BELOW,
    tail_at_most: int = TAIL_AT_MOST,
) -> dict[str, Any]:
    """Counts, shares, group make-up and head-tail separation of one scored file.

    Groups use the filter's `train_counts` (the ORIGINAL training set).
    Separation accuracy (paper Fig. 7) = share of routed samples whose class
    is tail (train count <= tail_at_most); `tail_share` is the same share over
    the whole file, the value a random routing would get.
    """
    n = int(scores.routed.shape[0])
    parts = {"routed": scores.routed, "rest": ~scores.routed, "all": np.ones(n, dtype=bool)}
    rep: dict[str, Any] = {
        "samples": n,
        "routed": int(scores.routed.sum()),
        "rest": int(n - scores.routed.sum()),
        "routed_share": float(scores.routed.mean()) if n else 0.0,
        "rest_share": float(1 - scores.routed.mean()) if n else 0.0,
        "threshold": filt.threshold,
        "depth": filt.depth,
        "mean_log_likelihood": {
            p: (float(scores.log_likelihood[m].mean()) if m.any() else None) for p, m in parts.items()
        },
        "has_labels": labels is not None,
        "many_above": many_above,
        "few_below": few_below,
        "tail_at_most": tail_at_most,
    }
    if labels is None:
        return rep
    groups = shot_groups(filt.train_counts, many_above, few_below)  # (C,)
    tail = tail_classes(filt.train_counts, tail_at_most)  # (C,)
    g, t = groups[labels], tail[labels]
    rep["groups"] = {
        p: {name: int((g[m] == name).sum()) for name in ("many", "medium", "few")} for p, m in parts.items()
    }
    rep["head_tail"] = {p: {"head": int((~t[m]).sum()), "tail": int(t[m].sum())} for p, m in parts.items()}
    rep["tail_share"] = {p: (float(t[m].mean()) if m.any() else None) for p, m in parts.items()}
    rep["separation_accuracy"] = rep["tail_share"]["routed"]
    return rep


def split_features(
    filt: FlowFilter,
    fs: FeatureSet,
    *,
    batch_size: int = 4096,
    device: str | torch.device | None = None,
    latent: bool = False,
) -> SplitResult:
    """Score a FeatureSet and divide it into routed and rest FeatureSets."""
    filt.check_dim(fs.dim, fs.path)
    if fs.labels is not None and fs.labels.size and fs.labels.max() >= filt.num_classes:
        raise InputError(
            f"label {int(fs.labels.max())} is out of range for the filter's {filt.num_classes} classes", path=fs.path
        )
    sc = filt.score(fs.features, batch_size=batch_size, device=device, latent=latent)
    ids = fs.ids if fs.ids is not None else np.arange(fs.n, dtype=np.int64)
    base = FeatureSet(fs.features, fs.labels, ids, {}, fs.path)
    routed_idx = np.flatnonzero(sc.routed)
    rest_idx = np.flatnonzero(~sc.routed)
    return SplitResult(sc, ids, base.subset(routed_idx), base.subset(rest_idx), split_report(filt, fs.labels, sc))


def _part_meta(filt: FlowFilter, fs: FeatureSet, part: str, filter_sha: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "num_classes": filt.num_classes,
        "train_counts": filt.train_counts.tolist(),
        "depth": filt.depth,
        "part": part,
        "filter_sha256": filter_sha,
        "threshold": filt.threshold,
        "source": None if fs.path is None else str(fs.path),
    }
    if "class_names" in fs.meta:
        meta["class_names"] = fs.meta["class_names"]
    return meta


def _write_part(path: Path, part: FeatureSet, extra: dict[str, np.ndarray], meta: dict[str, Any], prov: dict | None) -> None:
    """A canonical feature file (as `write_features` writes it) with extra per-sample tensors."""
    tensors: dict[str, np.ndarray] = {"features": np.ascontiguousarray(part.features)}
    if part.labels is not None:
        tensors["labels"] = np.asarray(part.labels, dtype=np.int64)
    meta = dict(meta)
    ids = np.asarray(part.ids)
    if np.issubdtype(ids.dtype, np.integer):
        tensors["ids"] = ids.astype(np.int64)
    else:
        meta["ids"] = [str(i) for i in ids]
    tensors.update(extra)
    write_safetensors(path, tensors, kind="features", meta=meta, prov=prov)


def split(
    filt: FlowFilter | str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    batch_size: int = 4096,
    device: str | torch.device | None = None,
    latent: bool = False,
    prov: dict | None = None,
    on_file: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Split feature files with a filter and write, for each input NAME.ext, into out_dir:

    - NAME.parquet (kind "split"): id, label (when known), cluster, log_likelihood, routed, depth;
    - NAME.routed.safetensors / NAME.rest.safetensors: feature files with
      `cluster`, `log_likelihood` (and `latent` when asked) per sample; a part
      with no sample is not written (its entry in the report says so);
    - split.json: the report of every input.

    Everything is written into a staging folder first and moved into out_dir
    only when every input succeeded. Returns the split.json content.
    """
    if not isinstance(filt, FlowFilter):
        filt = FlowFilter.load(filt, device=device or "cpu")
    out = Path(out_dir)
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise InputError("output folder's parent does not exist", path=parent, hint="create it first")
    if out.exists() and not out.is_dir():
        raise InputError("output path exists and is not a folder", path=out)
    names = [_stem(Path(p)) for p in inputs]
    if len(set(names)) != len(names):
        dup = next(nm for nm in names if names.count(nm) > 1)
        raise InputError(f"two inputs share the name '{dup}'; their outputs would collide", hint="rename one of them")
    filter_sha = file_sha256(filt.path) if filt.path is not None and filt.path.is_file() else None
    report: dict[str, Any] = {
        "filter": None if filt.path is None else str(filt.path),
        "filter_sha256": filter_sha,
        "depth": filt.depth,
        "threshold": filt.threshold,
        "share": filt.share,
        "files": {},
    }
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.split-", suffix=".tmp", dir=parent))
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(stage, 0o777 & ~mask)  # mkdtemp makes 0700; the folder may become `out` itself
    try:
        for p, name in zip(inputs, names):
            fs = read_features(p)
            res = split_features(filt, fs, batch_size=batch_size, device=device, latent=latent)
            sc = res.scores
            cols: dict[str, Any] = {"id": res.ids}
            if fs.labels is not None:
                cols["label"] = fs.labels.astype(np.int64)
            cols.update(
                cluster=sc.cluster,
                log_likelihood=sc.log_likelihood,
                routed=sc.routed,
                depth=np.full(fs.n, filt.depth, dtype=np.int32),
            )
            file_rep = {"input": str(p), **res.report, "outputs": {"table": f"{name}.parquet"}}
            meta_common = {"num_classes": filt.num_classes, "train_counts": filt.train_counts.tolist()}
            write_table(
                stage / f"{name}.parquet",
                cols,
                kind="split",
                meta={**meta_common, "depth": filt.depth, "threshold": filt.threshold, "filter_sha256": filter_sha,
                      "source": str(p), "report": res.report},
                prov=prov,
            )
            for part, mask, sub in (("routed", sc.routed, res.routed), ("rest", ~sc.routed, res.rest)):
                if sub.n == 0:
                    file_rep["outputs"][part] = None
                    continue
                extra = {"cluster": sc.cluster[mask], "log_likelihood": sc.log_likelihood[mask]}
                if sc.latent is not None:
                    extra["latent"] = sc.latent[mask]
                _write_part(stage / f"{name}.{part}.safetensors", sub, extra, _part_meta(filt, fs, part, filter_sha), prov)
                file_rep["outputs"][part] = f"{name}.{part}.safetensors"
            report["files"][name] = file_rep
            if on_file is not None:
                on_file(name, file_rep)
        write_json(stage / "split.json", report)
        if not out.exists():
            os.replace(stage, out)
        else:
            for f in sorted(stage.iterdir()):
                os.replace(f, out / f.name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(stage)
    return report


def _stem(p: Path) -> str:
    name = p.name
    for ext in (".safetensors", ".parquet", ".npz", ".npy", ".pth", ".pt", ".hdf5", ".h5"):
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return p.stem


# ----------------------------------------------------------------------------- inspect


def summary(path: str | Path) -> dict[str, Any]:
    """`dlsa inspect` summary of a filter file."""
    header, kind, meta, prov = read_safetensors_header(path)
    if kind != "filter":
        raise ModelMismatchError(f"is a '{kind}' file, not a filter", path=path)
    tensors, _, _, _ = read_safetensors(path, ["cluster_counts"])
    table = tensors["cluster_counts"].numpy()
    sizes = table.sum(1)
    purity = np.where(sizes > 0, table.max(1) / np.maximum(sizes, 1), 0.0)
    st = meta.get("stats", {})
    cfg = meta.get("config", {})
    hist = meta.get("history", [])
    fields_ = {
        "dim": meta.get("dim"),
        "clusters": meta.get("num_clusters"),
        "classes": meta.get("num_classes"),
        "depth": meta.get("depth"),
        "threshold": meta.get("threshold"),
        "share": meta.get("share"),
        "chosen epoch": meta.get("chosen_epoch"),
        "epochs": len(hist),
        "good clusters": st.get("good_clusters"),
        "train samples": st.get("train_samples"),
        "routed (train)": st.get("routed"),
        "routed tail share (train)": st.get("routed_tail_share"),
        "tail share (train)": st.get("tail_share"),
        "device": st.get("device"),
    }
    return {
        "kind": "filter",
        "path": str(path),
        "fields": fields_,
        "tables": [
            {
                "title": "hyperparameters",
                "columns": ["name", "value"],
                # hidden = None means "D": show what the flow was built with
                "rows": [[k, f"{meta.get('dim')} (D)" if k == "hidden" and v is None else v] for k, v in cfg.items()],
            },
            {
                "title": "clusters (training samples)",
                "columns": ["statistic", "value"],
                "rows": [[k, st[k]] for k in (
                    "size_min", "size_q1", "size_median", "size_q3", "size_max", "empty",
                    "purity_above_0.9", "purity_above_0.7", "purity_above_0.5", "good_clusters",
                ) if k in st],
            },
            {
                "title": "history",
                "columns": ["epoch", "loss", "mle", "bal", "pure", "good", "largest share", "eligible"],
                "rows": [
                    [h["epoch"], round(h["loss"], 4), round(h["mle"], 4), round(h["bal"], 4), round(h["pure"], 4),
                     h["good_clusters"], round(h["largest_share"], 4), h["eligible"]]
                    for h in hist
                ],
            },
        ],
        "charts": [
            {"title": "good clusters per epoch", "values": [float(h["good_clusters"]) for h in hist],
             "labels": [str(h["epoch"]) for h in hist]},
            {"title": "loss per epoch", "values": [float(h["loss"]) for h in hist], "labels": [str(h["epoch"]) for h in hist]},
            {"title": "cluster sizes (largest first)", "values": sorted(sizes.astype(float).tolist(), reverse=True), "labels": None},
            {"title": "cluster purity (highest first)", "values": sorted(purity.astype(float).tolist(), reverse=True), "labels": None},
        ],
    }


def split_summary(path: str | Path) -> dict[str, Any]:
    """`dlsa inspect` summary of a split table (Parquet, kind "split")."""
    table, kind, meta, prov = read_table(path)
    if kind != "split":
        raise InputError(f"is a '{kind}' file, not a split table", path=path)
    ll = table.column("log_likelihood").to_numpy()
    routed = table.column("routed").to_numpy(zero_copy_only=False).astype(bool)
    rep = meta.get("report", {})
    fields_ = {
        "rows": int(len(ll)),
        "routed": int(routed.sum()),
        "routed share": float(routed.mean()) if len(ll) else 0.0,
        "depth": meta.get("depth"),
        "threshold": meta.get("threshold"),
        "source": meta.get("source"),
        "filter sha256": meta.get("filter_sha256"),
        "separation accuracy": rep.get("separation_accuracy"),
        "tail share (whole file)": (rep.get("tail_share") or {}).get("all"),
    }
    tables = []
    if "groups" in rep:
        rows = []
        for p in ("routed", "rest", "all"):
            gp, ht = rep["groups"][p], rep["head_tail"][p]
            rows.append([p, gp["many"], gp["medium"], gp["few"], ht["head"], ht["tail"], rep["tail_share"][p],
                         rep["mean_log_likelihood"][p]])
        tables.append({"title": "make-up", "columns": ["part", "many", "medium", "few", "head", "tail", "tail share",
                                                        "mean log p(x)"], "rows": rows})
    charts = []
    if len(ll):
        hist, edges = np.histogram(ll, bins=20)
        charts.append({"title": "log p(x) histogram", "values": hist.astype(float).tolist(),
                       "labels": [f"{e:.4g}" for e in edges[:-1]]})
    return {"kind": "split", "path": str(path), "fields": fields_, "tables": tables, "charts": charts}
