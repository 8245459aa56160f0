"""Training a classifier: the fit's rules and inputs, epochs on index batches, epoch choice on
validation, post-hoc strength. `fit_classifier` is the one entry point."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dlsa_cli.classify.config import (
    LA_GRID,
    RIDE_GRID,
    SMALL_WORK,
    TAU_GRID,
    TrainConfig,
    flag,
)
from dlsa_cli.classify.data import (
    balanced_accuracy,
    carve_validation,
    cluster_inputs,
    draw_batches,
    leave_one_out_prior,
    loss_logit_shift,
)
from dlsa_cli.classify.m2m import m2m_fill
from dlsa_cli.classify.model import (
    Classifier,
    ClassifierModule,
    ClusterAidedHead,
    LinearHead,
    RideHead,
    expert_logits,
    fc_a,
    float_tensor,
)
from dlsa_cli.classify.ncm import NcmHead, class_means
from dlsa_cli.classify.ride import ride_diversity, ride_temperatures
from dlsa_cli.classify.router import choose_router
from dlsa_cli.classify.start import Start, is_ride_file, starting_point
from dlsa_cli.errors import InputError, ModelMismatchError, TrainingError
from dlsa_cli.io.features import FeatureSet, read_labels
from dlsa_cli.io.features import num_classes as _num_classes
from dlsa_cli.io.features import train_counts as _train_counts
from dlsa_cli.io.files import file_sha256
from dlsa_cli.runtime import ddp
from dlsa_cli.runtime.distributed import current

__all__ = ["FitReport", "ProgressFn", "check_fit_rules", "fit_classifier", "val_weights"]


@dataclass
class FitReport:
    """What a fit chose: epoch, validation scores, post-hoc strength, history, warnings."""

    epoch: int
    val_balanced: float
    val_accuracy: float
    val_source: str
    val_samples: int
    posthoc: dict[str, Any]
    history: list[dict[str, float | None]]  # loss None at epoch 0
    train_samples: int
    lr: float
    warnings: list[str] = field(default_factory=list)
    m2m: dict[str, Any] | None = None


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
    val_weights_from: str | Path | None = None,
    from_scratch: bool = False,
) -> tuple[Classifier, FitReport]:
    """Train a classifier on `train`, choosing the epoch on `val` (or a carved split).

    `flt` (a `FlowFilter`) makes it cluster-aided; `init` (a classifier or head
    file) starts it from a classifier trained on all training data; a
    cluster-aided classifier, or one trained on the rest of a split, needs
    `init` unless `from_scratch`. `train_offset` (N, C): out-of-fold logits of
    the init classifier on the training samples (see `_Data.correction`).
    `val_weights_from` (the whole validation file `val` was split from) or
    `val_class_counts` (its per-class counts, (C,)): the epoch then maximises
    the whole set's balanced accuracy (each sample weighs 1 / its class's
    count in the whole set), not the part's, whose rare classes would weigh as
    much as the classes that really pass this branch.
    """
    cfg = config or TrainConfig()
    cfg.check()
    device = torch.device(device)
    c = _num_classes(train) if train.labels is not None else 1
    warnings = check_fit_rules(train, cfg, init=init, flt=flt, filter_path=filter_path, from_scratch=from_scratch,
                               train_offset=train_offset)
    if val_weights_from is not None:
        if val_class_counts is not None:
            raise InputError("give the whole validation set once: --val-weights-from or val_class_counts")
        val_class_counts = val_weights(val_weights_from, c)
    if val_class_counts is not None and val is None:
        raise InputError(f"{flag('val_class_counts')} needs --val (the part of that file this classifier sees)")
    kw = dict(init=init, flt=flt, filter_path=filter_path, device=device, progress=progress,
              train_offset=train_offset, val_class_counts=val_class_counts)
    with _cpu_threads(device, cfg.batch_size * train.dim * max(c, 1)):
        if cfg.model == "ncm":
            clf, report = _fit_ncm(train, val, cfg, device=device, val_class_counts=val_class_counts)
        elif cfg.ride_diversity is None and (cfg.model == "ride" or (cfg.model is None and is_ride_file(init))):
            clf, report = _fit_ride_search(train, val, cfg, **kw)
        else:
            clf, report = _fit(train, val, cfg, **kw)
    report.warnings = warnings + report.warnings
    return clf, report


def _fit_ride_search(train: FeatureSet, val: FeatureSet | None, cfg: TrainConfig,
                     **kw: Any) -> tuple[Classifier, FitReport]:
    """RIDE with its diversity weight chosen on validation from RIDE_GRID (the first best among ties)."""
    best: tuple[Classifier, FitReport] | None = None
    scores = {}
    for w in RIDE_GRID:
        clf, rep = _fit(train, val, replace(cfg, ride_diversity=w), **kw)
        scores[str(w)] = rep.val_balanced
        if best is None or rep.val_balanced > best[1].val_balanced:
            best = (clf, rep)
    assert best is not None  # RIDE_GRID is not empty
    best[0].meta["ride_diversity_search"] = scores
    return best


def check_fit_rules(
    train: FeatureSet, cfg: TrainConfig, *, init: Any, flt: Any, filter_path: Any, from_scratch: bool,
    train_offset: Any = None,
) -> list[str]:
    """The domain rules of a fit (one-line errors); returns warnings (the filter that split `train`)."""
    if cfg.model in ("ncm", "lws") and flt is not None:
        raise InputError(f"{flag('model')} {cfg.model} is a regular classifier; it cannot be cluster-aided",
                         hint="drop --filter")
    if cfg.model == "ncm" and (init is not None or from_scratch):
        raise InputError(f"{flag('model')} ncm is computed from the training features alone",
                         hint="drop --init / --from-scratch")
    if cfg.model == "lws" and from_scratch:
        raise InputError(f"{flag('model')} lws rescales an init classifier", hint="drop --from-scratch, pass --init")
    if init is not None and from_scratch:
        raise InputError("--init and --from-scratch exclude each other", hint="pick one")
    if flt is not None and init is None and not from_scratch:
        raise InputError(
            "a cluster-aided classifier starts from the classifier trained on all training data",
            hint="pass --init BASELINE (or --from-scratch to train it on the routed samples alone)",
        )
    needs_init = cfg.model != "ncm" and init is None and not from_scratch
    if flt is None and train.meta.get("part") == "rest" and needs_init:
        raise InputError(
            "is the rest of a split: the final regular classifier starts from the classifier trained on "
            "all training data",
            path=train.path,
            hint="pass --init BASELINE (or --from-scratch)",
        )
    if cfg.sampler == "m2m" and train_offset is not None:
        raise InputError("TrainConfig.sampler m2m does not combine with out-of-fold starting logits (train_offset)")
    if cfg.sampler == "m2m" and flt is not None and cfg.side_input == "latent":
        raise InputError("TrainConfig.sampler m2m translates features, so a cluster-aided FC_b cannot see latents",
                         hint="use TrainConfig.side_input features or none")
    warnings = []
    sha = train.meta.get("filter_sha256")
    if flt is not None and sha and filter_path is not None and sha != file_sha256(filter_path):
        warnings.append(f"{train.path} was split by another filter than {filter_path}")
    return warnings


def val_weights(path: str | Path, num_classes: int) -> np.ndarray:
    """(C,) per-class counts of the whole validation file `path` (--val-weights-from)."""
    y = read_labels(path, require_labels=True).require_labels()
    if y.size and int(y.max()) >= num_classes:
        raise InputError(f"label {int(y.max())} is out of range for {num_classes} classes", path=path)
    return np.bincount(y, minlength=num_classes)


def _fit(
    train: FeatureSet, val: FeatureSet | None, cfg: TrainConfig, *, init: str | Path | None, flt: Any,
    filter_path: str | Path | None, device: torch.device, progress: ProgressFn | None,
    train_offset: np.ndarray | None = None, val_class_counts: np.ndarray | None = None,
) -> tuple[Classifier, FitReport]:
    c, counts_all = _check_train(train)
    fit_fs, val_fs, val_source = _validation(train, val, cfg, c)
    start = starting_point(cfg, init, train.dim, c)
    data = _Data.build(fit_fs, val_fs, cfg, flt=flt, filter_path=filter_path, device=device, c=c)
    weights = data.full_counts(val_class_counts)
    module, opt = _module_and_optimiser(start, data, cfg, device)
    if train_offset is not None:
        data.correction = _correction(module, data, train_offset, device)
    run = _Run(module=module, opt=opt, data=data, cfg=cfg, device=device, weights=weights,
               shift=_shift(cfg, counts_all, train, c, device),
               temps=ride_temperatures(counts_all, cfg.ride_temperature))
    if cfg.sampler == "m2m":
        run.g, run.m2m = _m2m_classifier(cfg, fit_fs, val_fs, data, device)
    history = run.epochs(progress)
    meta = _meta(cfg, start, data, counts_all, run, history, val_source, train)
    clf = Classifier(kind=meta["model"], dim=train.dim, num_classes=c, module=module, meta=meta)
    if isinstance(module, RideHead):  # a RIDE classifier, not cluster-aided
        router = choose_router(module, data.xv.cpu(), data.yv.cpu(), c, None if weights is None else weights.cpu())
        if router is not None:
            meta["router"] = router
    meta["posthoc"] = _choose_posthoc(clf, data, cfg, weights, device)
    report = FitReport(epoch=run.best_epoch, val_balanced=run.best_scores[0], val_accuracy=run.best_scores[1],
                       val_source=val_source, val_samples=int(val_fs.n), posthoc=meta["posthoc"], history=history,
                       train_samples=int(fit_fs.n), lr=start.lr, m2m=meta.get("m2m"))
    return clf, report


def _fit_ncm(train: FeatureSet, val: FeatureSet | None, cfg: TrainConfig, *, device: torch.device,
             val_class_counts: np.ndarray | None = None) -> tuple[Classifier, FitReport]:
    """The nearest-class-mean classifier of the training part, scored on validation (nothing to choose)."""
    c, counts_all = _check_train(train)
    fit_fs, val_fs, val_source = _validation(train, val, cfg, c)
    head = NcmHead(train.dim, c, scale=cfg.cosine_scale)
    head.means.copy_(class_means(fit_fs.features, fit_fs.require_labels(), c))
    clf = Classifier(kind="ncm", dim=train.dim, num_classes=c, module=head.eval())
    pred = torch.from_numpy(clf.logits(val_fs.features, device=device).argmax(1))
    weights = None if val_class_counts is None else torch.as_tensor(np.asarray(val_class_counts))
    bal, acc = balanced_accuracy(pred, torch.as_tensor(val_fs.labels), c, weights)
    history = [{"epoch": 0, "loss": None, "val_balanced": bal, "val_accuracy": acc}]
    clf.meta = {
        "model": "ncm", "base_model": "ncm", "loss": None, "sampler": None, "loss_counts": None,
        "train_counts": counts_all.tolist(), "init": {"source": "none"},
        "epoch": 0, "hyper": asdict(cfg) | {"model": "ncm"}, "history": history, "train_samples": int(fit_fs.n),
        "val": {"balanced_accuracy": bal, "accuracy": acc, "source": val_source, "samples": int(val_fs.n),
                "weighted_by_full_counts": weights is not None},
        "posthoc": {"kind": "none", "tau": 0.0},
    }
    if class_names := train.meta.get("class_names"):
        clf.meta["class_names"] = list(class_names)
    report = FitReport(epoch=0, val_balanced=bal, val_accuracy=acc, val_source=val_source, val_samples=int(val_fs.n),
                       posthoc=clf.meta["posthoc"], history=history, train_samples=int(fit_fs.n), lr=0.0)
    return clf, report


def _check_train(train: FeatureSet) -> tuple[int, np.ndarray]:
    """(C, original training counts (C,)) after checking labels and counts."""
    y_all = train.require_labels()
    c = _num_classes(train)
    if y_all.max() >= c:
        raise InputError(f"label {int(y_all.max())} is out of range for {c} classes", path=train.path)
    counts_all = _train_counts(train)
    if len(counts_all) != c:
        raise InputError(f"train_counts has {len(counts_all)} entries for {c} classes", path=train.path)
    if train.n < 2:
        raise TrainingError(f"only {train.n} training sample(s)", path=train.path, hint="a classifier needs more")
    return c, counts_all


def _validation(train: FeatureSet, val: FeatureSet | None, cfg: TrainConfig,
                c: int) -> tuple[FeatureSet, FeatureSet, str]:
    """(the part trained on, the validation set, where it came from): `val`, or carved from `train`."""
    y_all = train.require_labels()
    if val is None:
        tr_idx, va_idx = carve_validation(y_all, cfg.val_fraction, cfg.seed)
        if len(va_idx) == 0:
            raise TrainingError("no class has two samples, so no validation split can be carved", path=train.path)
        source = f"carved from train ({cfg.val_fraction:g} of each class with >= 2 samples)"
        return train.subset(tr_idx), train.subset(va_idx), source
    yv = val.require_labels()
    if val.dim != train.dim:
        raise ModelMismatchError(f"validation features have D={val.dim}, training D={train.dim}", path=val.path)
    if yv.max() >= c:
        raise InputError(f"validation label {int(yv.max())} is out of range for {c} classes", path=val.path)
    missing = np.setdiff1d(np.unique(y_all), np.unique(yv))
    if len(missing) and not cfg.allow_missing_val_classes:
        raise InputError(
            f"validation set lacks {len(missing)} class(es) that training has "
            f"(e.g. {', '.join(map(str, missing[:5]))})",
            path=val.path,
            hint="give a validation file with every class, or pass TrainConfig.allow_missing_val_classes",
        )
    return train, val, str(val.path) if val.path else "given"


@dataclass
class _Data:
    """The fit's tensors on the data device: training part (x, y), validation (xv, yv), and for a
    cluster-aided fit the side inputs and prior rows of both; `correction` (N, C) see `_correction`."""

    x: torch.Tensor  # (N, D)
    y: torch.Tensor  # (N,)
    xv: torch.Tensor  # (V, D)
    yv: torch.Tensor  # (V,)
    dev: torch.device
    c: int
    side: torch.Tensor | None = None  # (N, S)
    prior: torch.Tensor | None = None  # (N, C)
    sv: torch.Tensor | None = None  # (V, S)
    pv: torch.Tensor | None = None  # (V, C)
    filter_info: dict[str, Any] = field(default_factory=dict)
    correction: torch.Tensor | None = None  # (N, C)

    @property
    def cluster_aided(self) -> bool:
        return self.side is not None

    @classmethod
    def build(cls, fit_fs: FeatureSet, val_fs: FeatureSet, cfg: TrainConfig, *, flt: Any,
              filter_path: str | Path | None, device: torch.device, c: int) -> _Data:
        dev = _data_device(fit_fs, val_fs, device)
        d = cls(x=float_tensor(fit_fs.features, dev), y=torch.as_tensor(fit_fs.labels, device=dev),
                xv=float_tensor(val_fs.features, dev), yv=torch.as_tensor(val_fs.labels, device=dev), dev=dev, c=c)
        if flt is None:
            return d
        if flt.dim != fit_fs.dim:
            raise ModelMismatchError(f"filter has D={flt.dim} but the features have D={fit_fs.dim}", path=filter_path)
        if flt.num_classes != c:
            raise ModelMismatchError(f"filter knows {flt.num_classes} classes but the features have {c}",
                                     path=filter_path)
        cl, s_np, p_np = cluster_inputs(flt, fit_fs.features, side_input=cfg.side_input, device=device)
        if cfg.prior_train == "loo":
            p_np = leave_one_out_prior(flt, filter_path, cl, fit_fs.require_labels(), p_np)
        _, sv_np, pv_np = cluster_inputs(flt, val_fs.features, side_input=cfg.side_input, device=device)
        d.side, d.prior = float_tensor(s_np, dev), float_tensor(p_np, dev)
        d.sv, d.pv = float_tensor(sv_np, dev), float_tensor(pv_np, dev)
        d.filter_info = {
            "sha256": file_sha256(filter_path) if filter_path else None,
            "path": str(filter_path) if filter_path else None,
            "num_clusters": int(flt.num_clusters),
            "depth": int(getattr(flt, "depth", 1)),
        }
        return d

    def full_counts(self, val_class_counts: np.ndarray | None) -> torch.Tensor | None:
        """(C,) counts of the whole validation set this validation part comes from, checked."""
        if val_class_counts is None:
            return None
        full = torch.as_tensor(np.asarray(val_class_counts), device=self.dev)
        if full.shape != (self.c,) or bool((full < torch.bincount(self.yv, minlength=self.c)).any()):
            raise InputError("the full validation counts do not cover this validation part",
                             hint=f"pass the validation file it was split from as {flag('val_class_counts')}")
        return full


def _module_and_optimiser(start: Start, data: _Data, cfg: TrainConfig,
                          device: torch.device) -> tuple[ClassifierModule, torch.optim.Optimizer]:
    """The trained module (the head, or FC_a + FC_b when cluster-aided) and its SGD."""
    head = start.head
    module: ClassifierModule
    groups: list[dict[str, Any]]
    if data.side is not None:  # cluster-aided
        aided = ClusterAidedHead(head, data.side.shape[1], data.c)
        groups = [{"params": list(aided.a.parameters()), "lr": start.lr},
                  {"params": list(aided.b.parameters()), "lr": start.lr_side}]
        module = aided
    else:
        module = head
        groups = [{"params": list(module.parameters()), "lr": start.lr}]
    if isinstance(head, LinearHead) and head.cosine:
        head.bias.requires_grad_(False)  # a cosine head has no bias
    for g in groups:
        g["params"] = [p for p in g["params"] if p.requires_grad]
    opt = torch.optim.SGD(groups, lr=start.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return module.to(device), opt


class _ExpertLogits(nn.Module):
    """The training forward, (B, D) [+ side, prior] -> (E, B, C), as one module that DDP can wrap."""

    def __init__(self, module: ClassifierModule):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor, side: torch.Tensor | None, prior: torch.Tensor | None) -> torch.Tensor:
        return expert_logits(self.module, x, side, prior)


def _forward(module: nn.Module, idx: torch.Tensor | slice, x: torch.Tensor, side: torch.Tensor | None,
             prior: torch.Tensor | None, device: torch.device) -> torch.Tensor:
    xb = x[idx].to(device, non_blocking=True)
    if side is None or prior is None:
        return module(xb)
    return module(xb, side[idx].to(device, non_blocking=True), prior[idx].to(device, non_blocking=True))


@torch.no_grad()
def _correction(module: nn.Module, data: _Data, train_offset: np.ndarray, device: torch.device) -> torch.Tensor:
    """Honest starting logits: a classifier trained on all data has memorised its own training
    samples, so fine-tuning it on them gives almost no signal. With `train_offset` (out-of-fold
    logits of the init classifier, (N, C)) the training logits become f(x) + (offset - f_init(x)):
    the model starts where the init classifier stands on samples it has NOT seen."""
    module.eval()
    n = data.x.shape[0]
    init_logits = torch.cat([_forward(module, slice(s, s + 4096), data.x, data.side, data.prior, device)
                             for s in range(0, n, 4096)]).to(data.dev)
    module.train()
    return float_tensor(train_offset, data.dev) - init_logits  # (N, C)


def _shift(cfg: TrainConfig, counts_all: np.ndarray, train: FeatureSet, c: int,
           device: torch.device) -> torch.Tensor | None:
    """The (C,) training-only logit shift of BSM / LA, from the counts `loss_counts` names."""
    counts = counts_all if cfg.loss_counts == "all" else np.bincount(train.require_labels(), minlength=c)
    shift = loss_logit_shift(cfg.loss, counts, cfg.la_tau)
    return None if shift is None else torch.as_tensor(shift, device=device)


@dataclass
class _Pool:
    """One epoch's training samples: the real ones, plus M2M's once it has started."""

    x: torch.Tensor  # (M, D)
    y: torch.Tensor  # (M,)
    side: torch.Tensor | None = None  # (M, S)
    prior: torch.Tensor | None = None  # (M, C)
    correction: torch.Tensor | None = None  # (M, C)


@dataclass
class _Run:
    """The epoch loop of one fit: batches, loss, validation, the best epoch so far, M2M rounds."""

    module: ClassifierModule
    opt: torch.optim.Optimizer
    data: _Data
    cfg: TrainConfig
    device: torch.device
    weights: torch.Tensor | None
    shift: torch.Tensor | None
    temps: torch.Tensor  # (C,) RIDE's per-class temperatures
    g: nn.Module | None = None  # M2M's translating classifier
    m2m: dict[str, Any] | None = None
    best_epoch: int = 0
    best_scores: tuple[float, float] = (float("-inf"), 0.0)
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)  # the best epoch's, kept from epoch 0 on
    # the training forward; under torchrun wrapped in DDP (gradients averaged over ranks)
    net: nn.Module = field(init=False)

    def __post_init__(self) -> None:
        self.net = ddp.wrap(_ExpertLogits(self.module), self.device)

    def epochs(self, progress: ProgressFn | None) -> list[dict[str, float | None]]:
        cfg, d = self.cfg, self.data
        gen = torch.Generator(device=d.dev.type if d.dev.type != "cuda" else d.dev).manual_seed(cfg.seed)
        bal, acc = self.evaluate()
        history: list[dict[str, float | None]] = [  # strict JSON: no NaN
            {"epoch": 0, "loss": None, "val_balanced": bal, "val_accuracy": acc}]
        self._keep(0, bal, acc)
        pool = _Pool(d.x, d.y, d.side, d.prior, d.correction)
        self.module.train()
        for epoch in range(1, cfg.epochs + 1):
            if self.g is not None and _m2m_round(epoch, cfg.m2m_start, cfg.m2m_every):
                pool = _m2m_pool(self, epoch, gen)
            loss = self._epoch(pool, gen)
            if not math.isfinite(loss):
                raise TrainingError(f"training diverged at epoch {epoch} (loss {loss})", hint="lower TrainConfig.lr")
            bal, acc = self.evaluate()
            history.append({"epoch": epoch, "loss": loss, "val_balanced": bal, "val_accuracy": acc})
            if bal > self.best_scores[0] or (cfg.select == "last" and epoch == cfg.epochs):
                self._keep(epoch, bal, acc)
            if progress is not None:
                progress(epoch, cfg.epochs, {"loss": loss, "val_balanced": bal, "best_epoch": self.best_epoch})
        self.module.load_state_dict(self.best_state)
        self.module.eval().cpu()
        return history

    def _keep(self, epoch: int, bal: float, acc: float) -> None:
        self.best_epoch, self.best_scores = epoch, (bal, acc)
        self.best_state = {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def _epoch(self, pool: _Pool, gen: torch.Generator) -> float:
        """One pass over `pool`; returns the mean loss."""
        total, seen = torch.zeros((), device=self.device), 0
        sampler = "uniform" if self.cfg.sampler == "m2m" else self.cfg.sampler  # M2M's pool is balanced already
        for idx_all in draw_batches(pool.y, sampler, self.cfg.batch_size, gen):  # the same global batch on every rank
            idx = idx_all[ddp.batch_share(len(idx_all))]  # this rank's share of it (all of it in one process)
            # the share's mean loss weighed so that DDP's average over ranks is the global batch's mean
            loss = self.loss(pool, idx) * (len(idx) * current().world_size / len(idx_all))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            total += loss.detach() * len(idx_all)
            seen += len(idx_all)
        return float(ddp.mean_over_ranks(total)) / max(seen, 1)

    def loss(self, pool: _Pool, idx: torch.Tensor) -> torch.Tensor:
        """The sum over experts of each one's loss (with the BSM/LA shift) minus RIDE's diversity term."""
        dev = self.device
        side = None if pool.side is None else pool.side[idx].to(dev)
        prior = None if pool.prior is None else pool.prior[idx].to(dev)
        z = self.net(pool.x[idx].to(dev), side, prior)  # (E, B, C)
        zt = z if pool.correction is None else z + pool.correction[idx].to(dev)[None]
        if self.shift is not None:
            zt = zt + self.shift
        yb = pool.y[idx].to(dev)
        loss = F.cross_entropy(zt.flatten(0, 1), yb.repeat(z.shape[0]))  # mean over experts and samples
        if z.shape[0] > 1 and self.cfg.ride_diversity:
            loss = loss - self.cfg.ride_diversity * ride_diversity(z, yb, self.temps)
        return z.shape[0] * loss  # summed over experts, as RIDE does: each expert learns at the full --lr

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        d = self.data
        self.module.eval()
        preds = [_forward(self.module, slice(s, s + 4096), d.xv, d.sv, d.pv, self.device).argmax(1)
                 for s in range(0, d.xv.shape[0], 4096)]
        self.module.train()
        return balanced_accuracy(torch.cat(preds).to(d.yv.device), d.yv, d.c, self.weights)


def _m2m_round(epoch: int, start: int, every: int) -> bool:
    """Whether M2M translates anew before `epoch`: at `start`, then every `every` epochs (0: never again)."""
    since = epoch - start
    return since == 0 or (since > 0 and every > 0 and since % every == 0)


def _m2m_pool(run: _Run, epoch: int, gen: torch.Generator) -> _Pool:
    """The real samples plus a fresh round of M2M translations (recorded in `run.m2m`)."""
    cfg, d, dev = run.cfg, run.data, run.device
    assert run.g is not None and run.m2m is not None  # M2M rounds run only with M2M's g
    t0 = time.perf_counter()
    step = cfg.m2m_step * float(d.x.norm(dim=1).mean())

    def f(xg: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:  # the classifier being trained, (G, C)
        if d.side is None or d.prior is None:
            return run.module(xg)
        side = xg if cfg.side_input == "features" else d.side[rows].to(dev)
        return run.module(xg, side, d.prior[rows].to(dev))

    linear = _linear_part(run.module, cfg, d.x.shape[1])
    tr = m2m_fill(run.g, f if linear is None else linear, d.x.to(dev), d.y.to(dev), d.c, beta=cfg.m2m_beta,
                  lam=cfg.m2m_lambda,
                  gamma=cfg.m2m_gamma, steps=cfg.m2m_steps, step=step, gen=gen)
    run.m2m["rounds"].append({"epoch": epoch, "added": len(tr.y), "accepted": int(tr.accepted.sum()),
                              "seconds": round(time.perf_counter() - t0, 3)})
    added, accepted = sum(r["added"] for r in run.m2m["rounds"]), sum(r["accepted"] for r in run.m2m["rounds"])
    run.m2m["acceptance"] = accepted / max(added, 1)
    src = tr.source.to(d.dev)
    side = None
    if d.side is not None:
        side = torch.cat([d.side, tr.x.to(d.dev) if cfg.side_input == "features" else d.side[src]])
    prior = None if d.prior is None else torch.cat([d.prior, d.prior[src]])
    return _Pool(torch.cat([d.x, tr.x.to(d.dev)]), torch.cat([d.y, tr.y.to(d.dev)]), side, prior)


@torch.no_grad()
def _linear_part(module: ClassifierModule, cfg: TrainConfig, dim: int) -> torch.Tensor | None:
    """(C, D) A with f(x) = A x + (terms without x) when the trained classifier is linear in x, else None."""
    head = fc_a(module)
    if not isinstance(head, LinearHead) or head.cosine:
        return None
    a = head.weight.detach().clone()
    if isinstance(module, ClusterAidedHead) and cfg.side_input == "features":
        a += module.b.weight[:, :dim]  # FC_b sees x too
    return a


def _m2m_classifier(cfg: TrainConfig, fit_fs: FeatureSet, val_fs: FeatureSet, data: _Data,
                    device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """M2M's g: the --m2m-from classifier, or a plain-CE linear warm-up on the same data."""
    if cfg.m2m_from is not None:
        g = Classifier.load(cfg.m2m_from)
        if g.kind == "cluster-aided":
            raise ModelMismatchError("is cluster-aided; M2M's g must be a regular classifier", path=cfg.m2m_from,
                                     hint="pass the baseline trained on the imbalanced training data")
        g.check_features(fit_fs.dim, data.c, path=cfg.m2m_from)
        info: dict[str, Any] = {"from": str(cfg.m2m_from), "sha256": file_sha256(cfg.m2m_from)}
    else:
        warm = replace(cfg, model="linear", loss="ce", sampler="uniform", epochs=cfg.m2m_warmup, posthoc="none",
                       select="best", allow_missing_val_classes=True, lr=None, lr_side=None, m2m_from=None)
        g, rep = _fit(fit_fs, val_fs, warm, init=None, flt=None, filter_path=None, device=device, progress=None)
        info = {"from": f"warm-up (linear, ce, {cfg.m2m_warmup} epochs)", "epoch": rep.epoch,
                "val_balanced": rep.val_balanced}
    module = g.module.to(device).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    info |= {"acceptance": 0.0, "rounds": []}
    return module, info


def _meta(cfg: TrainConfig, start: Start, data: _Data, counts_all: np.ndarray, run: _Run,
          history: list[dict[str, float | None]], val_source: str, train: FeatureSet) -> dict[str, Any]:
    """The classifier file's metadata: what was trained, how, and what validation chose."""
    meta: dict[str, Any] = {
        "model": "cluster-aided" if data.cluster_aided else start.base_kind,
        "base_model": start.base_kind,
        "loss": cfg.loss,
        "sampler": cfg.sampler,
        "train_counts": counts_all.tolist(),
        "loss_counts": cfg.loss_counts,
        "init": start.info,
        "epoch": run.best_epoch,
        "val": {
            "balanced_accuracy": run.best_scores[0],
            "accuracy": run.best_scores[1],
            "source": val_source,
            "samples": int(data.xv.shape[0]),
            "weighted_by_full_counts": run.weights is not None,
        },
        "hyper": asdict(cfg) | {"model": start.base_kind, "lr": start.lr, "lr_side": start.lr_side},
        "history": history,
        "train_samples": int(data.x.shape[0]),
    }
    if isinstance(ride := fc_a(run.module), RideHead):
        experts = ride.expert_list
        meta["experts"] = len(experts)
        meta["expert_hidden"] = 0 if experts[0].hidden is None else experts[0].hidden.out_features
    if class_names := train.meta.get("class_names"):
        meta["class_names"] = list(class_names)
    if data.cluster_aided:
        meta["side_input"] = cfg.side_input
        meta["filter"] = data.filter_info
    if run.m2m is not None:
        meta["m2m"] = run.m2m
    return meta


def _choose_posthoc(clf: Classifier, data: _Data, cfg: TrainConfig, weights: torch.Tensor | None,
                    device: torch.device) -> dict[str, Any]:
    """The post-hoc strength with the best validation balanced accuracy (the first, weakest, among ties)."""
    if cfg.posthoc == "none":
        return {"kind": "none", "tau": 0.0}
    xv = data.xv.cpu().numpy()
    sv = None if data.sv is None else data.sv.cpu().numpy()
    pv = None if data.pv is None else data.pv.cpu().numpy()
    grid = LA_GRID if cfg.posthoc == "la" else TAU_GRID
    scores = []
    for tau in grid:
        clf.meta["posthoc"] = {"kind": cfg.posthoc, "tau": float(tau)}
        pred = torch.from_numpy(clf.logits(xv, side=sv, prior=pv, device=device).argmax(1))
        scores.append(balanced_accuracy(pred, data.yv.cpu(), data.c, None if weights is None else weights.cpu())[0])
    best_tau = float(grid[int(np.argmax(scores))])
    return {"kind": cfg.posthoc, "tau": best_tau, "grid": list(grid), "val_balanced": scores}


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


def _data_device(train: FeatureSet, val: FeatureSet, device: torch.device) -> torch.device:
    """The device itself when the features fit in a third of its free memory, else the CPU."""
    if device.type != "cuda":
        return device
    need = 4 * (train.n + val.n) * train.dim * 2  # features plus side inputs, float32
    free, _ = torch.cuda.mem_get_info(device)
    return device if need < free / 3 else torch.device("cpu")
