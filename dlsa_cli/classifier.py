"""Classifiers on feature files: linear, cosine and DLSA's cluster-aided classifier.

- **Models.** `linear`: `W x + b`. `cosine`: `s * <w_j / |w_j|, x / (1 + |x|)>`
  (normalised weights, the feature squashed to length `|x| / (1 + |x|)`,
  scale `s = 16`). `cluster-aided` (paper Sec. 3.4):
  `FC_a(x) + FC_b([side, P(y | cluster(x))])` where `side` is the flow's latent
  `z` or the features `x`, and the prior row comes from the filter's
  `cluster_prior` table for the sample's cluster.
- **Losses.** `ce`; `bsm` (Balanced Softmax: `log n_j` added to logit j during
  training only); `la` (logit-adjusted CE: `tau * log pi_j` added during
  training only; at `tau = 1` it equals `bsm`, softmax being shift-invariant).
- **Samplers.** `uniform` (a shuffled pass over the data per epoch) and
  `balanced` (CBS: a class drawn uniformly, then one of its samples; N draws
  per epoch).
- **Training.** SGD with momentum on index batches drawn on the device; the
  features stay on the device when they fit. After every epoch (and once
  before the first, so a fine-tuned classifier can keep its starting point)
  the model is scored on the validation set; the best epoch by balanced
  (mean per-class) accuracy is kept. Validation is a given file or a
  stratified split carved from the training set, never the test set.
- **Start.** From scratch, or from a classifier trained on all training data
  (`init`: a classifier file or a backbone head with `weight` (C, D) and
  `bias` (C,)). For the cluster-aided kind FC_a is copied from that classifier
  and FC_b starts at zero, so training starts exactly at the init.
- **Post-hoc.** `la` subtracts `tau * log pi_j` from the logits at predict
  time; `tau` (tau-normalisation) divides each class's weights by
  `|w_j| ** tau`. Their strength is chosen on validation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dlsa_cli.errors import InputError, ModelMismatchError, TrainingError
from dlsa_cli.features import FeatureSet, num_classes as _num_classes, train_counts as _train_counts
from dlsa_cli.files import file_sha256, read_safetensors, read_safetensors_header, write_safetensors

__all__ = [
    "MODELS",
    "LOSSES",
    "SAMPLERS",
    "POSTHOC",
    "TrainConfig",
    "LinearHead",
    "ClusterAidedHead",
    "Classifier",
    "FitReport",
    "fit_classifier",
    "carve_validation",
    "load_init_head",
    "loss_logit_shift",
    "draw_batches",
    "balanced_accuracy",
    "cluster_inputs",
    "branch_inputs",
    "summary",
]

MODELS = ("linear", "cosine", "cluster-aided")
LOSSES = ("ce", "bsm", "la")
SAMPLERS = ("uniform", "balanced")
POSTHOC = ("none", "la", "tau")
SIDE_INPUTS = ("features", "latent", "none")
BSM_COUNTS = ("all", "subset")
PRIOR_TRAIN = ("plain", "loo")

DEFAULT_LR_SCRATCH = 0.03
DEFAULT_LR_FINETUNE = 3e-4
LA_GRID = tuple(np.round(np.arange(0.0, 2.01, 0.25), 2).tolist())
SMALL_WORK = 1 << 27  # batch x D x C below which CPU training uses one thread
TAU_GRID = tuple(np.round(np.arange(0.0, 1.51, 0.1), 2).tolist())


@dataclass
class TrainConfig:
    """Hyperparameters of one classifier fit (all recorded in the output file).

    `lr=None` means 0.03 from scratch and 3e-4 when starting from `init`
    (fine-tuning). `lr_side=None` means the same as `lr` (FC_b of the
    cluster-aided kind). `bsm_counts`: the n_j of BSM/LA for a classifier
    trained on a subset: `all` = the original training set's counts (carried
    in the subset file's metadata), `subset` = the subset's own counts.
    `prior_train`: the prior row a TRAINING sample sees: `plain` = the filter's
    table, `loo` = its cluster's counts without the sample itself.
    `select`: `best` keeps the epoch with the best validation balanced accuracy
    (epoch 0, the starting point, included); `last` keeps the last epoch.
    `model`: the kind of the (FC_a) head, linear or cosine; None = the init
    classifier's kind, else linear. A filter makes the classifier cluster-aided.
    """

    model: str | None = None
    loss: str = "bsm"
    sampler: str = "uniform"
    epochs: int = 150
    batch_size: int = 128
    lr: float | None = None
    lr_side: float | None = None
    momentum: float = 0.9
    weight_decay: float = 0.0
    la_tau: float = 1.0
    cosine_scale: float = 16.0
    bsm_counts: str = "all"
    side_input: str = "features"
    prior_train: str = "plain"
    posthoc: str = "none"
    val_fraction: float = 0.2
    allow_missing_val_classes: bool = False
    select: str = "best"
    seed: int = 0

    def check(self) -> None:
        """Raise a one-line error for an out-of-range setting."""
        if self.model not in (None, "linear", "cosine"):
            raise InputError(f"--model {self.model}: use linear or cosine (a --filter makes it cluster-aided)")
        for name, value, allowed in (
            ("loss", self.loss, LOSSES),
            ("sampler", self.sampler, SAMPLERS),
            ("posthoc", self.posthoc, POSTHOC),
            ("side_input", self.side_input, SIDE_INPUTS),
            ("bsm_counts", self.bsm_counts, BSM_COUNTS),
            ("prior_train", self.prior_train, PRIOR_TRAIN),
            ("select", self.select, ("best", "last")),
        ):
            if value not in allowed:
                raise InputError(f"--{name.replace('_', '-')} {value}: use one of {', '.join(allowed)}")
        if self.epochs < 1:
            raise InputError(f"--epochs {self.epochs}: must be at least 1")
        if self.batch_size < 1:
            raise InputError(f"--batch-size {self.batch_size}: must be at least 1")
        for name in ("lr", "lr_side"):
            v = getattr(self, name)
            if v is not None and not (v > 0 and math.isfinite(v)):
                raise InputError(f"--{name.replace('_', '-')} {v}: must be a positive number")
        if not 0 < self.val_fraction < 1:
            raise InputError(f"--val-fraction {self.val_fraction}: must be between 0 and 1")


# ----------------------------------------------------------------------------- models


class LinearHead(nn.Module):
    """A linear (`W x + b`) or cosine (`s * cos(w_j, x) * |x| / (1 + |x|)`) classifier."""

    def __init__(self, dim: int, num_classes: int, *, cosine: bool = False, scale: float = 16.0):
        super().__init__()
        self.cosine = cosine
        self.scale = float(scale)
        self.weight = nn.Parameter(torch.zeros(num_classes, dim))  # (C, D)
        self.bias = nn.Parameter(torch.zeros(num_classes))  # (C,); unused (kept at 0) when cosine

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, C)
        if self.cosine:
            w = F.normalize(self.weight, dim=1)  # (C, D)
            xs = x / (1.0 + x.norm(dim=1, keepdim=True))  # (B, D), length |x| / (1 + |x|)
            return self.scale * xs @ w.T
        return F.linear(x, self.weight, self.bias)


class ClusterAidedHead(nn.Module):
    """`FC_a(x) + FC_b([side, prior])`; FC_b starts at zero so the head starts at FC_a."""

    def __init__(self, base: LinearHead, side_dim: int, num_classes: int):
        super().__init__()
        self.a = base
        self.b = nn.Linear(side_dim + num_classes, num_classes)
        nn.init.zeros_(self.b.weight)
        nn.init.zeros_(self.b.bias)

    def forward(self, x: torch.Tensor, side: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        # x (B, D), side (B, S), prior (B, C) -> (B, C)
        return self.a(x) + self.b(torch.cat([side, prior], dim=1))


# ----------------------------------------------------------------------------- the classifier object


@dataclass
class Classifier:
    """A trained classifier: its module, kind, sizes, post-hoc setting and metadata."""

    kind: str  # linear | cosine | cluster-aided
    dim: int
    num_classes: int
    module: nn.Module
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def base_kind(self) -> str:
        """linear or cosine: the kind of the FC_a part (or of the whole, when regular)."""
        head = self.module.a if isinstance(self.module, ClusterAidedHead) else self.module
        return "cosine" if head.cosine else "linear"

    @property
    def side_input(self) -> str | None:
        return self.meta.get("side_input") if self.kind == "cluster-aided" else None

    def check_features(self, dim: int, num_classes: int | None, *, path: Path | str | None) -> None:
        """Raise ModelMismatchError when a feature file does not fit this classifier."""
        where = f" ({self.path})" if self.path else ""
        if dim != self.dim:
            raise ModelMismatchError(
                f"features have D={dim} but the classifier{where} expects D={self.dim}",
                path=path,
                hint="use features from the backbone the classifier was trained on",
            )
        if num_classes is not None and num_classes != self.num_classes:
            raise ModelMismatchError(
                f"features have {num_classes} classes but the classifier{where} has {self.num_classes}",
                path=path,
                hint="use a classifier trained on this label set",
            )

    @torch.no_grad()
    def logits(
        self,
        x: np.ndarray | torch.Tensor,
        *,
        side: np.ndarray | torch.Tensor | None = None,
        prior: np.ndarray | torch.Tensor | None = None,
        batch_size: int = 4096,
        device: torch.device | str = "cpu",
        posthoc: bool = True,
    ) -> np.ndarray:
        """Logits (N, C) float32, post-hoc adjustment applied unless `posthoc=False`."""
        device = torch.device(device)
        self.module.to(device).eval()
        adjust = self._posthoc_bias(device) if posthoc else None
        scale = self._posthoc_scale(device) if posthoc else None
        n = int(x.shape[0])
        out = np.empty((n, self.num_classes), dtype=np.float32)
        for s in range(0, n, batch_size):
            xb = _as_tensor(x[s : s + batch_size], device)
            if self.kind == "cluster-aided":
                if side is None or prior is None:
                    raise ModelMismatchError("a cluster-aided classifier needs its filter's cluster prior", path=self.path)
                sb = _as_tensor(side[s : s + batch_size], device)
                pb = _as_tensor(prior[s : s + batch_size], device)
                out_b = self._forward_scaled(xb, sb, pb, scale)
            else:
                out_b = self._forward_scaled(xb, None, None, scale)
            if adjust is not None:
                out_b = out_b - adjust
            out[s : s + len(xb)] = out_b.float().cpu().numpy()
        return out

    def _forward_scaled(self, x, side, prior, scale):
        head = self.module.a if isinstance(self.module, ClusterAidedHead) else self.module
        if scale is None:
            return self.module(x, side, prior) if side is not None else self.module(x)
        base = F.linear(x, head.weight * scale[:, None], head.bias * scale)  # tau-normalised FC(_a)
        if side is not None:
            base = base + self.module.b(torch.cat([side, prior], dim=1))
        return base

    def _posthoc_bias(self, device: torch.device) -> torch.Tensor | None:
        ph = self.meta.get("posthoc") or {}
        if ph.get("kind") != "la" or not ph.get("tau"):
            return None
        log_pi = _log_prior(np.asarray(self.meta["train_counts"]))
        return float(ph["tau"]) * torch.as_tensor(log_pi, device=device)  # (C,)

    def _posthoc_scale(self, device: torch.device) -> torch.Tensor | None:
        ph = self.meta.get("posthoc") or {}
        if ph.get("kind") != "tau" or not ph.get("tau"):
            return None
        head = self.module.a if isinstance(self.module, ClusterAidedHead) else self.module
        norms = head.weight.detach().to(device).norm(dim=1).clamp_min(1e-12)  # (C,)
        return norms.pow(-float(ph["tau"]))

    # ---- files

    def tensors(self) -> dict[str, torch.Tensor]:
        if isinstance(self.module, ClusterAidedHead):
            return {
                "a.weight": self.module.a.weight.detach().cpu(),
                "a.bias": self.module.a.bias.detach().cpu(),
                "b.weight": self.module.b.weight.detach().cpu(),
                "b.bias": self.module.b.bias.detach().cpu(),
            }
        return {"weight": self.module.weight.detach().cpu(), "bias": self.module.bias.detach().cpu()}

    def save(self, path: str | Path, *, prov: dict | None = None) -> None:
        """Write the classifier (kind "classifier") atomically."""
        meta = dict(self.meta)
        meta.update(model=self.kind, dim=self.dim, num_classes=self.num_classes)
        write_safetensors(path, self.tensors(), kind="classifier", meta=meta, prov=prov)

    @classmethod
    def load(cls, path: str | Path) -> Classifier:
        """Read a classifier file; a one-line error for anything else."""
        p = Path(path)
        header, kind, meta, _ = read_safetensors_header(p)
        if kind != "classifier":
            raise ModelMismatchError(
                f"is a dlsa '{kind}' file, not a classifier" if kind else "is not a dlsa classifier file",
                path=p,
                hint="pass a file written by `dlsa fit-classifier`",
            )
        tensors, _, meta, _ = read_safetensors(p)
        model = meta.get("model")
        try:
            dim, c = int(meta["dim"]), int(meta["num_classes"])
        except (KeyError, TypeError, ValueError):
            raise InputError("classifier metadata lacks dim / num_classes", path=p) from None
        cosine = (meta.get("base_model") or model) == "cosine"
        scale = float(meta.get("hyper", {}).get("cosine_scale", 16.0))
        try:
            if model == "cluster-aided":
                base = LinearHead(dim, c, cosine=cosine, scale=scale)
                base.weight.data.copy_(tensors["a.weight"])
                base.bias.data.copy_(tensors["a.bias"])
                side_dim = int(tensors["b.weight"].shape[1]) - c
                module: nn.Module = ClusterAidedHead(base, side_dim, c)
                module.b.weight.data.copy_(tensors["b.weight"])
                module.b.bias.data.copy_(tensors["b.bias"])
            elif model in ("linear", "cosine"):
                module = LinearHead(dim, c, cosine=model == "cosine", scale=scale)
                module.weight.data.copy_(tensors["weight"])
                module.bias.data.copy_(tensors["bias"])
            else:
                raise InputError(f"unknown classifier model '{model}'", path=p)
        except (KeyError, RuntimeError) as e:
            raise InputError(f"classifier tensors do not match its metadata ({e})", path=p) from None
        return cls(kind=model, dim=dim, num_classes=c, module=module.eval(), meta=meta, path=p)


def _as_tensor(a: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
    return t.to(device=device, dtype=torch.float32, non_blocking=True)


def _log_prior(counts: np.ndarray) -> np.ndarray:
    c = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    return np.log(c / c.sum()).astype(np.float32)


# ----------------------------------------------------------------------------- init heads


def load_init_head(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, str, dict[str, Any]]:
    """Weights (C, D), bias (C,), base kind (linear|cosine) and the source's metadata.

    `path` is a regular classifier file, or a backbone's linear head as
    safetensors or `.pt` holding `weight` (C, D) and `bias` (C,) (the usual
    state-dict names `fc.weight`, `classifier.weight`, `linear.weight`, ...
    are accepted too).
    """
    from dlsa_cli.files import require_file

    p = require_file(path, "--init file")
    if p.suffix.lower() == ".safetensors":
        _, kind, meta, _ = read_safetensors_header(p)
        if kind == "classifier":
            clf = Classifier.load(p)
            if clf.kind == "cluster-aided":
                raise InputError(
                    "is a cluster-aided classifier; --init takes a regular (linear or cosine) one",
                    path=p,
                    hint="pass the baseline classifier trained on all training data",
                )
            return clf.module.weight.detach().clone(), clf.module.bias.detach().clone(), clf.kind, clf.meta
        tensors, _, meta, _ = read_safetensors(p)
    elif p.suffix.lower() in (".pt", ".pth"):
        try:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as e:
            raise InputError(f"cannot load safely ({str(e).splitlines()[0][:160]})", path=p) from None
        if not isinstance(obj, dict):
            raise InputError("expected a dict with 'weight' and 'bias'", path=p)
        tensors, meta = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, {}
    else:
        raise InputError("--init takes a .safetensors or .pt file", path=p)
    wkey = next((k for k in tensors if k == "weight" or k.endswith(".weight")), None)
    if wkey is None:
        raise InputError(f"no 'weight' tensor (it has {', '.join(tensors) or 'none'})", path=p)
    bkey = wkey[: -len("weight")] + "bias"
    w = tensors[wkey].float()
    if w.ndim != 2:
        raise InputError(f"'{wkey}' must be (C, D), got shape {tuple(w.shape)}", path=p)
    b = tensors[bkey].float() if bkey in tensors else torch.zeros(w.shape[0])
    if b.shape != (w.shape[0],):
        raise InputError(f"'{bkey}' must be ({w.shape[0]},), got {tuple(b.shape)}", path=p)
    return w.clone(), b.clone(), "linear", meta


# ----------------------------------------------------------------------------- data helpers


def carve_validation(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, val) row indices: each class with >= 2 samples gives
    `max(1, round(fraction * n))` (at most n - 1) to val; a class with one
    sample stays in train and is absent from val."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    classes, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    tr, va = [], []
    for s, n in zip(starts, counts):  # one step per class, not per sample
        rows = rng.permutation(order[s : s + n])
        k = 0 if n < 2 else int(min(max(1, round(fraction * n)), n - 1))
        va.append(rows[:k])
        tr.append(rows[k:])
    return np.sort(np.concatenate(tr)), np.sort(np.concatenate(va))


def draw_batches(
    labels: torch.Tensor, sampler: str, batch_size: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """One epoch of index batches (on the labels' device), `uniform` or `balanced` (CBS)."""
    n = labels.shape[0]
    device = labels.device
    if sampler == "uniform":
        perm = torch.randperm(n, generator=generator, device=generator.device).to(device)
    else:
        order = torch.argsort(labels, stable=True)  # (N,)
        counts = torch.bincount(labels)  # (C,)
        present = torch.nonzero(counts).squeeze(1)  # (C',)
        starts = torch.cumsum(counts, 0) - counts  # (C,)
        cls = present[torch.randint(len(present), (n,), generator=generator, device=generator.device).to(device)]
        u = torch.rand(n, generator=generator, device=generator.device).to(device)
        within = (u * counts[cls]).long().clamp_max(counts[cls] - 1)
        perm = order[starts[cls] + within]
    return list(perm.split(batch_size))


def loss_logit_shift(loss: str, counts: np.ndarray, la_tau: float = 1.0) -> np.ndarray | None:
    """The (C,) vector added to the logits during training only (None for CE).

    BSM: `log n_j`; LA: `tau * log(n_j / N)`. A class with no sample counts as 1.
    """
    if loss == "ce":
        return None
    c = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    if loss == "bsm":
        return np.log(c).astype(np.float32)
    return (la_tau * np.log(c / c.sum())).astype(np.float32)


def balanced_accuracy(
    pred: torch.Tensor, labels: torch.Tensor, num_classes: int, full_counts: torch.Tensor | None = None
) -> tuple[float, float]:
    """(mean per-class accuracy over classes present, plain accuracy).

    With `full_counts` (C,), the per-class counts of a whole validation set of
    which `labels` is a part, the first value is this part's contribution to
    the whole set's balanced accuracy: sum_i hit_i / full_counts[y_i] / #classes.
    """
    hit = (pred == labels).float()
    per_hit = torch.bincount(labels, weights=hit, minlength=num_classes)
    per_n = torch.bincount(labels, minlength=num_classes).float() if full_counts is None else full_counts.float()
    present = per_n > 0
    return float((per_hit[present] / per_n[present]).sum() / present.sum().clamp_min(1)), float(hit.mean())


def cluster_inputs(
    flt: Any, x: np.ndarray, *, side_input: str, device: torch.device | str = "cpu", batch_size: int = 4096
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cluster (N,), side input (N, S), prior rows (N, C)) of features under a filter.

    The prior row of a sample is the filter's `cluster_prior` row of its cluster.
    """
    scores = flt.score(x, batch_size=batch_size, device=device, latent=side_input == "latent")
    cluster = np.asarray(scores.cluster, dtype=np.int64)
    side, prior = branch_inputs(flt, x, cluster, scores.latent, side_input)
    return cluster, side, prior


def branch_inputs(
    flt: Any, x: np.ndarray, cluster: np.ndarray, latent: np.ndarray | None, side_input: str
) -> tuple[np.ndarray, np.ndarray]:
    """(side input (N, S), prior rows (N, C)) of already-scored samples: features x (N, D),
    their clusters (N,) and, for side_input "latent", their latents (N, D).

    The prior row of a sample is the filter's `cluster_prior` row of its cluster.
    """
    prior_table = np.asarray(torch.as_tensor(flt.cluster_prior).float().cpu().numpy())  # (K, C)
    if side_input == "latent":
        side = np.asarray(latent, dtype=np.float32)
    elif side_input == "none":  # FC_b sees the prior alone
        side = np.zeros((len(cluster), 0), dtype=np.float32)
    else:
        side = np.asarray(x, dtype=np.float32)
    return side, prior_table[cluster]


# ----------------------------------------------------------------------------- training


@dataclass
class FitReport:
    """What a fit chose: epoch, validation scores, post-hoc strength, history."""

    epoch: int
    val_balanced: float
    val_accuracy: float
    val_source: str
    val_samples: int
    posthoc: dict[str, Any]
    history: list[dict[str, float]]
    train_samples: int
    lr: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


ProgressFn = Callable[[int, int, dict[str, float]], None]


def fit_classifier(
    train: FeatureSet,
    val: FeatureSet | None = None,
    config: TrainConfig | None = None,
    *,
    init: str | Path | None = None,
    flt: Any = None,
    filter_path: str | Path | None = None,
    device: torch.device | str = "cpu",
    progress: ProgressFn | None = None,
    train_offset: np.ndarray | None = None,
    val_class_counts: np.ndarray | None = None,
) -> tuple[Classifier, FitReport]:
    """Train a classifier on `train`, choosing the epoch on `val` (or a carved split).

    `flt` (a `FlowFilter`) makes it cluster-aided; `init` (a classifier or head
    file) starts it from a classifier trained on all training data.
    `train_offset` (N, C): out-of-fold logits of the init classifier on the
    training samples (see `_fit`). `val_class_counts` (C,): per-class counts of
    the whole validation set `val` was split from; the epoch then maximises the
    whole set's balanced accuracy (each sample weighs 1 / its class's count in
    the whole set), not the part's, whose rare classes would weigh as much as
    the classes that really pass this branch.
    """
    cfg = config or TrainConfig()
    device = torch.device(device)
    work = cfg.batch_size * train.dim * max(_num_classes(train) if train.labels is not None else 1, 1)
    with _cpu_threads(device, work):
        return _fit(train, val, cfg, init=init, flt=flt, filter_path=filter_path, device=device, progress=progress, train_offset=train_offset,
                    val_class_counts=val_class_counts)


def _fit(
    train: FeatureSet,
    val: FeatureSet | None,
    cfg: TrainConfig,
    *,
    init: str | Path | None,
    flt: Any,
    filter_path: str | Path | None,
    device: torch.device,
    progress: ProgressFn | None,
    train_offset: np.ndarray | None = None,
    val_class_counts: np.ndarray | None = None,
) -> tuple[Classifier, FitReport]:
    cfg.check()
    device = torch.device(device)
    y_all = train.require_labels()
    c = _num_classes(train)
    if y_all.max() >= c:
        raise InputError(f"label {int(y_all.max())} is out of range for {c} classes", path=train.path)
    counts_all = _train_counts(train)
    if len(counts_all) != c:
        raise InputError(f"train_counts has {len(counts_all)} entries for {c} classes", path=train.path)
    if train.n < 2:
        raise TrainingError(f"only {train.n} training sample(s)", path=train.path, hint="a classifier needs more")

    # ---- validation: given, or carved from train
    if val is not None:
        yv = val.require_labels()
        if val.dim != train.dim:
            raise ModelMismatchError(f"validation features have D={val.dim}, training D={train.dim}", path=val.path)
        if yv.max() >= c:
            raise InputError(f"validation label {int(yv.max())} is out of range for {c} classes", path=val.path)
        missing = np.setdiff1d(np.unique(y_all), np.unique(yv))
        if len(missing) and not cfg.allow_missing_val_classes:
            raise InputError(
                f"validation set lacks {len(missing)} class(es) that training has (e.g. {', '.join(map(str, missing[:5]))})",
                path=val.path,
                hint="give a validation file with every class, or pass --allow-missing-val-classes",
            )
        fit_fs, val_fs, val_source = train, val, str(val.path) if val.path else "given"
    else:
        tr_idx, va_idx = carve_validation(y_all, cfg.val_fraction, cfg.seed)
        if len(va_idx) == 0:
            raise TrainingError("no class has two samples, so no validation split can be carved", path=train.path)
        fit_fs, val_fs = train.subset(tr_idx), train.subset(va_idx)
        val_source = f"carved from train ({cfg.val_fraction:g} of each class with >= 2 samples)"

    # ---- the starting point
    cluster_aided = flt is not None
    if init is not None:
        w0, b0, init_kind, init_meta = load_init_head(init)
        if w0.shape != (c, train.dim):
            raise ModelMismatchError(
                f"--init head is {tuple(w0.shape)} (C, D) but the data have C={c}, D={train.dim}",
                path=init,
                hint="initialise from a classifier trained on these features and classes",
            )
        from_classifier = bool(init_meta.get("model"))
        if from_classifier and cfg.model is not None and cfg.model != init_kind:
            raise ModelMismatchError(
                f"--init is a {init_kind} classifier but --model is {cfg.model}", path=init, hint="make them agree"
            )
        base_kind = init_kind if from_classifier else (cfg.model or "linear")
        init_info = {"source": str(init), "sha256": file_sha256(init), "kind": base_kind}
    else:
        w0 = b0 = None
        base_kind = cfg.model or "linear"
        init_info = {"source": "scratch"}
    if base_kind == "cosine" and cfg.posthoc == "tau":
        raise InputError("--posthoc tau applies to linear classifiers (a cosine one is normalised already)")
    lr = cfg.lr if cfg.lr is not None else (DEFAULT_LR_FINETUNE if init is not None else DEFAULT_LR_SCRATCH)
    lr_side = cfg.lr_side if cfg.lr_side is not None else lr

    gen_cpu = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    head = LinearHead(train.dim, c, cosine=base_kind == "cosine", scale=cfg.cosine_scale)
    if w0 is not None:
        head.weight.data.copy_(w0)
        head.bias.data.copy_(b0)
    elif base_kind == "cosine":
        head.weight.data.normal_(0.0, 0.01, generator=gen_cpu)

    # ---- inputs on the device
    data_dev = _data_device(train, val_fs, device)
    x = _as_tensor(fit_fs.features, data_dev)  # (N, D)
    y = torch.as_tensor(fit_fs.labels, device=data_dev)  # (N,)
    xv = _as_tensor(val_fs.features, data_dev)
    yv_t = torch.as_tensor(val_fs.labels, device=data_dev)
    side = prior = side_v = prior_v = None
    filter_info: dict[str, Any] = {}
    if cluster_aided:
        if flt.dim != train.dim:
            raise ModelMismatchError(
                f"filter has D={flt.dim} but the features have D={train.dim}", path=filter_path
            )
        if flt.num_classes != c:
            raise ModelMismatchError(
                f"filter knows {flt.num_classes} classes but the features have {c}", path=filter_path
            )
        cl, s_np, p_np = cluster_inputs(flt, fit_fs.features, side_input=cfg.side_input, device=device)
        if cfg.prior_train == "loo":
            p_np = _leave_one_out_prior(flt, filter_path, cl, fit_fs.labels, p_np)
        side, prior = _as_tensor(s_np, data_dev), _as_tensor(p_np, data_dev)
        _, sv_np, pv_np = cluster_inputs(flt, val_fs.features, side_input=cfg.side_input, device=device)
        side_v, prior_v = _as_tensor(sv_np, data_dev), _as_tensor(pv_np, data_dev)
        module: nn.Module = ClusterAidedHead(head, side.shape[1], c)
        filter_info = {
            "sha256": file_sha256(filter_path) if filter_path else None,
            "path": str(filter_path) if filter_path else None,
            "num_clusters": int(flt.num_clusters),
            "depth": int(getattr(flt, "depth", 1)),
        }
        params = [
            {"params": list(module.a.parameters()), "lr": lr},
            {"params": list(module.b.parameters()), "lr": lr_side},
        ]
    else:
        module = head
        params = [{"params": list(module.parameters()), "lr": lr}]
    if base_kind == "cosine":
        module_bias = head.bias
        module_bias.requires_grad_(False)  # a cosine head has no bias
    module = module.to(device)

    counts_used = counts_all if cfg.bsm_counts == "all" else np.bincount(y_all, minlength=c)
    shift_np = loss_logit_shift(cfg.loss, counts_used, cfg.la_tau)
    shift = None if shift_np is None else torch.as_tensor(shift_np, device=device)  # (C,)
    opt = torch.optim.SGD(
        [g for g in params], lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    for g in opt.param_groups:
        g["params"] = [p for p in g["params"] if p.requires_grad]

    def forward(idx: torch.Tensor | slice, xs, ss, ps) -> torch.Tensor:
        xb = xs[idx].to(device, non_blocking=True)
        if ss is None:
            return module(xb)
        return module(xb, ss[idx].to(device, non_blocking=True), ps[idx].to(device, non_blocking=True))

    @torch.no_grad()
    def evaluate() -> tuple[float, float]:
        module.eval()
        preds = []
        for s in range(0, xv.shape[0], 4096):
            preds.append(forward(slice(s, s + 4096), xv, side_v, prior_v).argmax(1))
        module.train()
        return balanced_accuracy(torch.cat(preds).to(yv_t.device), yv_t, c, full_counts)

    # Honest starting logits: a classifier trained on all data has memorised its own
    # training samples, so fine-tuning it on them gives almost no signal. With
    # `train_offset` (out-of-fold logits of the init classifier, (N, C)) the training
    # logits become f(x) + (offset - f_init(x)): the model starts where the init
    # classifier stands on samples it has NOT seen, and learns from those mistakes.
    correction = None
    if train_offset is not None:
        with torch.no_grad():
            module.eval()
            init_logits = torch.cat(
                [forward(slice(s_, s_ + 4096), x, side, prior) for s_ in range(0, x.shape[0], 4096)]
            ).to(data_dev)
            module.train()
        correction = _as_tensor(train_offset, data_dev) - init_logits  # (N, C)
    gen = torch.Generator(device=data_dev.type if data_dev.type != "cuda" else data_dev).manual_seed(cfg.seed)
    full_counts = None
    if val_class_counts is not None:
        full_counts = torch.as_tensor(np.asarray(val_class_counts), device=data_dev)
        if full_counts.shape != (c,) or bool((full_counts < torch.bincount(yv_t, minlength=c)).any()):
            raise InputError(
                "the full validation counts do not cover this validation part", hint="pass the validation file it was split from"
            )
    bal0, acc0 = evaluate()
    history = [{"epoch": 0, "loss": float("nan"), "val_balanced": bal0, "val_accuracy": acc0}]
    best = (bal0, acc0, 0, _snapshot(module))
    module.train()
    for epoch in range(1, cfg.epochs + 1):
        total, seen = torch.zeros((), device=device), 0
        for idx in draw_batches(y, cfg.sampler, cfg.batch_size, gen):
            logits = forward(idx, x, side, prior)  # (B, C)
            if correction is not None:
                logits = logits + correction[idx].to(device, non_blocking=True)
            if shift is not None:
                logits = logits + shift
            yb = y[idx].to(device, non_blocking=True)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
            seen += len(idx)
        mean_loss = float(total) / max(seen, 1)
        if not math.isfinite(mean_loss):
            raise TrainingError(
                f"training diverged at epoch {epoch} (loss {mean_loss})", hint="lower --lr"
            )
        bal, acc = evaluate()
        history.append({"epoch": epoch, "loss": mean_loss, "val_balanced": bal, "val_accuracy": acc})
        if bal > best[0] or (cfg.select == "last" and epoch == cfg.epochs):
            best = (bal, acc, epoch, _snapshot(module))
        if progress is not None:
            progress(epoch, cfg.epochs, {"loss": mean_loss, "val_balanced": bal, "best_epoch": best[2]})
    module.load_state_dict(best[3])
    module.eval().cpu()

    meta: dict[str, Any] = {
        "model": "cluster-aided" if cluster_aided else base_kind,
        "base_model": base_kind,
        "loss": cfg.loss,
        "sampler": cfg.sampler,
        "train_counts": counts_all.tolist(),
        "loss_counts": cfg.bsm_counts,
        "init": init_info,
        "epoch": best[2],
        "val": {
            "balanced_accuracy": best[0],
            "accuracy": best[1],
            "source": val_source,
            "samples": int(val_fs.n),
            "weighted_by_full_counts": full_counts is not None,
        },
        "hyper": asdict(cfg) | {"model": base_kind, "lr": lr, "lr_side": lr_side},
        "history": history,
        "train_samples": int(fit_fs.n),
    }
    if class_names := train.meta.get("class_names"):
        meta["class_names"] = list(class_names)
    if cluster_aided:
        meta["side_input"] = cfg.side_input
        meta["filter"] = filter_info
    clf = Classifier(kind=meta["model"], dim=train.dim, num_classes=c, module=module, meta=meta)

    # ---- post-hoc strength on validation
    meta["posthoc"] = {"kind": "none", "tau": 0.0}
    if cfg.posthoc != "none":
        xv_np = val_fs.features
        sv = None if side_v is None else side_v.cpu().numpy()
        pv = None if prior_v is None else prior_v.cpu().numpy()
        grid = LA_GRID if cfg.posthoc == "la" else TAU_GRID
        scores = []
        for tau in grid:
            meta["posthoc"] = {"kind": cfg.posthoc, "tau": float(tau)}
            lg = clf.logits(xv_np, side=sv, prior=pv, device=device)
            scores.append(
                balanced_accuracy(
                    torch.from_numpy(lg.argmax(1)), torch.as_tensor(val_fs.labels), c,
                    None if full_counts is None else full_counts.cpu(),
                )[0]
            )
        best_tau = float(grid[int(np.argmax(scores))])  # first maximum: the weakest adjustment among ties
        meta["posthoc"] = {
            "kind": cfg.posthoc,
            "tau": best_tau,
            "grid": list(grid),
            "val_balanced": scores,
        }
    report = FitReport(
        epoch=best[2],
        val_balanced=best[0],
        val_accuracy=best[1],
        val_source=val_source,
        val_samples=int(val_fs.n),
        posthoc=meta["posthoc"],
        history=history,
        train_samples=int(fit_fs.n),
        lr=lr,
    )
    return clf, report


class _cpu_threads:
    """Use one CPU thread for small matrix work: on a shared machine more threads
    only contend (measured on 2 shared cores: 14 s with one thread, minutes with two)."""

    def __init__(self, device: torch.device, work: int):
        self.active = device.type == "cpu" and work < SMALL_WORK
        self.saved = torch.get_num_threads()

    def __enter__(self) -> None:
        if self.active:
            torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        if self.active:
            torch.set_num_threads(self.saved)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _data_device(train: FeatureSet, val: FeatureSet, device: torch.device) -> torch.device:
    """The device itself when the features fit in a third of its free memory, else the CPU."""
    if device.type != "cuda":
        return device
    need = 4 * (train.n + val.n) * train.dim * 2  # features plus side inputs, float32
    free, _ = torch.cuda.mem_get_info(device)
    return device if need < free / 3 else torch.device("cpu")


def _leave_one_out_prior(flt: Any, filter_path: str | Path | None, cluster: np.ndarray, labels: np.ndarray, plain: np.ndarray) -> np.ndarray:
    """Prior rows for training samples without the sample's own vote."""
    counts = getattr(flt, "cluster_counts", None)
    if counts is None and filter_path is not None:
        counts = read_safetensors(filter_path, ["cluster_counts"])[0]["cluster_counts"]
    if counts is None:
        return plain
    counts = np.asarray(torch.as_tensor(counts).cpu().numpy(), dtype=np.float64)  # (K, C)
    rows = counts[cluster].copy()  # (N, C)
    rows[np.arange(len(labels)), labels] -= 1.0
    rows = np.maximum(rows, 0.0)
    tot = rows.sum(1, keepdims=True)
    return np.where(tot > 0, rows / np.maximum(tot, 1.0), 0.0).astype(np.float32)


# ----------------------------------------------------------------------------- inspect


def summary(path: str | Path) -> dict[str, Any]:
    """Inspect summary of a classifier file (kind "classifier")."""
    clf = Classifier.load(path)
    m = clf.meta
    hyper = m.get("hyper", {})
    fields: dict[str, Any] = {
        "model": clf.kind,
        "base model": m.get("base_model", clf.kind),
        "dim": clf.dim,
        "classes": clf.num_classes,
        "loss": m.get("loss"),
        "sampler": m.get("sampler"),
        "loss counts": m.get("loss_counts"),
        "init": (m.get("init") or {}).get("source"),
        "epochs": hyper.get("epochs"),
        "lr": hyper.get("lr"),
        "batch size": hyper.get("batch_size"),
        "chosen epoch": m.get("epoch"),
        "val balanced acc": (m.get("val") or {}).get("balanced_accuracy"),
        "val accuracy": (m.get("val") or {}).get("accuracy"),
        "val source": (m.get("val") or {}).get("source"),
        "train samples": m.get("train_samples"),
        "post-hoc": f"{(m.get('posthoc') or {}).get('kind', 'none')} (tau {(m.get('posthoc') or {}).get('tau', 0)})",
    }
    if clf.kind == "cluster-aided":
        fields["side input"] = m.get("side_input")
        fields["filter sha256"] = ((m.get("filter") or {}).get("sha256") or "")[:16]
        fields["filter clusters"] = (m.get("filter") or {}).get("num_clusters")
    hist = m.get("history") or []
    charts = []
    if hist:
        charts.append({"title": "validation balanced accuracy per epoch", "values": [h["val_balanced"] for h in hist], "labels": None})
        charts.append({"title": "training loss per epoch", "values": [h["loss"] for h in hist[1:]], "labels": None})
    counts = m.get("train_counts") or []
    tables = []
    if counts:
        cnt = np.asarray(counts)
        tables.append(
            {
                "title": "training counts",
                "columns": ["classes", "samples", "max", "min"],
                "rows": [[len(cnt), int(cnt.sum()), int(cnt.max()), int(cnt.min())]],
            }
        )
    return {"kind": "classifier", "path": str(path), "fields": fields, "tables": tables, "charts": charts}
