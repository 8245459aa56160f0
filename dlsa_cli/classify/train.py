"""Training a classifier: epochs on index batches, epoch choice on validation, post-hoc strength."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dlsa_cli import ddp
from dlsa_cli.classify.config import (
    DEFAULT_LR_FINETUNE,
    DEFAULT_LR_SCRATCH,
    LA_GRID,
    SMALL_WORK,
    TAU_GRID,
    TrainConfig,
)
from dlsa_cli.classify.data import (
    _leave_one_out_prior,
    balanced_accuracy,
    carve_validation,
    cluster_inputs,
    draw_batches,
    load_init_head,
    loss_logit_shift,
)
from dlsa_cli.classify.model import Classifier, ClusterAidedHead, LinearHead, _as_tensor
from dlsa_cli.errors import InputError, ModelMismatchError, TrainingError
from dlsa_cli.io.features import FeatureSet
from dlsa_cli.io.features import num_classes as _num_classes
from dlsa_cli.io.features import train_counts as _train_counts
from dlsa_cli.io.files import (
    file_sha256,
)

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

    net = ddp.wrap(module, device)  # under torchrun: DDP (gradients averaged over ranks); module alone

    def forward(idx: torch.Tensor | slice, xs, ss, ps) -> torch.Tensor:
        m = net if module.training else module  # evaluation runs on every rank alone, no collective
        xb = xs[idx].to(device, non_blocking=True)
        if ss is None:
            return m(xb)
        return m(xb, ss[idx].to(device, non_blocking=True), ps[idx].to(device, non_blocking=True))

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
    history = [{"epoch": 0, "loss": None, "val_balanced": bal0, "val_accuracy": acc0}]
    best = (bal0, acc0, 0, _snapshot(module))
    module.train()
    for epoch in range(1, cfg.epochs + 1):
        total, seen = torch.zeros((), device=device), 0
        for idx_all in draw_batches(y, cfg.sampler, cfg.batch_size, gen):  # the same global batch on every rank
            idx = idx_all[ddp.batch_share(len(idx_all))]  # this rank's share of it
            logits = forward(idx, x, side, prior)  # (b, C)
            if correction is not None:
                logits = logits + correction[idx].to(device, non_blocking=True)
            if shift is not None:
                logits = logits + shift
            yb = y[idx].to(device, non_blocking=True)
            loss = ddp.ddp_mean(F.cross_entropy(logits, yb, reduction="none"), len(idx_all))  # the global batch's mean
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx_all)
            seen += len(idx_all)
        mean_loss = float(ddp.mean_over_ranks(total)) / max(seen, 1)
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


