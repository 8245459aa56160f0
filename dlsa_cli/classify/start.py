"""Where a classifier fit starts: from scratch, from a baseline head (`--init`), or from a RIDE classifier."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dlsa_cli.classify.config import DEFAULT_LR_FINETUNE, DEFAULT_LR_SCRATCH, TrainConfig
from dlsa_cli.classify.lws import LwsHead
from dlsa_cli.classify.model import BaseHead, Classifier, LinearHead, RideHead, load_init_head
from dlsa_cli.errors import InputError, ModelMismatchError
from dlsa_cli.io.files import file_sha256, read_safetensors_header

__all__ = ["Start", "is_ride_file", "starting_point"]


@dataclass
class Start:
    """The head a fit starts from (FC_a when cluster-aided), its kind, provenance and learning rates."""

    head: BaseHead
    base_kind: str  # linear | cosine | ride
    info: dict[str, Any]
    lr: float
    lr_side: float


def starting_point(cfg: TrainConfig, init: str | Path | None, dim: int, num_classes: int) -> Start:
    """The starting head: scratch (zeros; cosine and RIDE experts seeded random), or `init`.

    From a linear baseline, `--model ride` starts every expert at the baseline plus
    its own seeded noise (`ride_init_noise` times the baseline weights' std), so the
    experts differ from the first step (with equal experts the diversity term has no
    gradient that tells them apart).
    """
    ride_init = _ride_classifier(init)
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    if ride_init is not None:
        head: BaseHead = _from_ride(cfg, ride_init, dim, num_classes)
        kind = "ride"
    elif cfg.model == "lws":
        head, kind = _lws(init, dim, num_classes), "lws"
    elif init is not None:
        head, kind = _from_head(cfg, init, dim, num_classes, gen)
    else:
        kind = cfg.model or "linear"
        head = _scratch(kind, cfg, dim, num_classes, gen)
    if kind != "linear" and cfg.posthoc == "tau":
        raise InputError(f"TrainConfig.posthoc tau applies to linear classifiers, not to a {kind} one",
                         hint="use TrainConfig.posthoc la")
    info = {"source": "scratch"} if init is None else {"source": str(init), "sha256": file_sha256(init), "kind": kind}
    fine_tune = init is not None and kind != "lws"  # LWS's scales are new parameters, learned at the scratch rate
    lr = cfg.lr if cfg.lr is not None else (DEFAULT_LR_FINETUNE if fine_tune else DEFAULT_LR_SCRATCH)
    return Start(head=head, base_kind=kind, info=info, lr=lr, lr_side=cfg.lr_side if cfg.lr_side is not None else lr)


def _scratch(kind: str, cfg: TrainConfig, dim: int, c: int, gen: torch.Generator) -> BaseHead:
    if kind != "ride":
        head = LinearHead(dim, c, cosine=kind == "cosine", scale=cfg.cosine_scale)
        if kind == "cosine":
            head.weight.data.normal_(0.0, 0.01, generator=gen)
        return head
    ride = RideHead(dim, c, cfg.experts, cfg.expert_hidden)
    for e in ride.expert_list:  # each expert its own draws from the seeded generator
        if e.hidden is not None:
            e.hidden.weight.data.normal_(0.0, dim**-0.5, generator=gen)
            e.hidden.bias.data.zero_()
        e.out.weight.data.normal_(0.0, 0.01, generator=gen)
    return ride


def _from_head(cfg: TrainConfig, init: str | Path, dim: int, c: int, gen: torch.Generator) -> tuple[BaseHead, str]:
    w0, b0, init_kind, init_meta = load_init_head(init)
    if w0.shape != (c, dim):
        raise ModelMismatchError(
            f"--init head is {tuple(w0.shape)} (C, D) but the data have C={c}, D={dim}",
            path=init,
            hint="initialise from a classifier trained on these features and classes",
        )
    from_classifier = bool(init_meta.get("model"))
    if cfg.model == "ride":
        if init_kind != "linear" or cfg.expert_hidden:
            raise ModelMismatchError(
                f"TrainConfig.model ride{' with TrainConfig.expert_hidden' if cfg.expert_hidden else ''} cannot start "
                f"from a {init_kind} head",
                path=init, hint="start RIDE from a linear baseline without TrainConfig.expert_hidden, or from scratch")
        ride = RideHead(dim, c, cfg.experts)
        std = float(w0.std()) * cfg.ride_init_noise
        for e in ride.expert_list:
            e.out.weight.data.copy_(w0 + std * torch.randn(w0.shape, generator=gen))
            e.out.bias.data.copy_(b0)
        return ride, "ride"
    if from_classifier and cfg.model is not None and cfg.model != init_kind:
        raise ModelMismatchError(f"--init is a {init_kind} classifier but TrainConfig.model is {cfg.model}", path=init,
                                 hint="make them agree")
    kind = init_kind if from_classifier else (cfg.model or "linear")
    head = LinearHead(dim, c, cosine=kind == "cosine", scale=cfg.cosine_scale)
    head.weight.data.copy_(w0)
    head.bias.data.copy_(b0)
    return head, kind


def _lws(init: str | Path | None, dim: int, c: int) -> LwsHead:
    """LWS's head: the init classifier's linear weights and bias, every row's scale at 1."""
    if init is None:
        raise InputError("TrainConfig.model lws rescales the rows of a trained classifier", hint="pass --init BASELINE")
    w0, b0, init_kind, _ = load_init_head(init)
    if init_kind != "linear":
        raise ModelMismatchError(f"TrainConfig.model lws rescales a linear classifier, not a {init_kind} one",
                                 path=init, hint="pass a linear baseline as --init")
    if w0.shape != (c, dim):
        raise ModelMismatchError(f"--init head is {tuple(w0.shape)} (C, D) but the data have C={c}, D={dim}", path=init,
                                 hint="initialise from a classifier trained on these features and classes")
    return LwsHead.from_init(w0, b0)


def is_ride_file(init: str | Path | None) -> bool:
    """Whether `init` names a regular RIDE classifier file."""
    return _ride_classifier(init) is not None


def _ride_classifier(init: str | Path | None) -> Classifier | None:
    """The RIDE classifier file `init` names, else None (other files go to load_init_head)."""
    if init is None or Path(init).suffix.lower() != ".safetensors" or not Path(init).is_file():
        return None
    _, kind, meta, _ = read_safetensors_header(init)
    if kind != "classifier" or meta.get("model") not in ("ride", "cluster-aided") or meta.get("base_model") != "ride":
        return None
    clf = Classifier.load(init)
    if clf.kind == "cluster-aided":
        raise InputError("is a cluster-aided classifier; --init takes a regular one", path=init,
                         hint="pass the baseline classifier trained on all training data")
    return clf


def _from_ride(cfg: TrainConfig, clf: Classifier, dim: int, c: int) -> RideHead:
    if (clf.dim, clf.num_classes) != (dim, c):
        raise ModelMismatchError(f"--init has D={clf.dim}, C={clf.num_classes} but the data have D={dim}, C={c}",
                                 path=clf.path,
                                 hint="initialise from a classifier trained on these features and classes")
    if cfg.model not in (None, "ride"):
        raise ModelMismatchError(f"--init is a ride classifier but TrainConfig.model is {cfg.model}", path=clf.path,
                                 hint="make them agree")
    have = (int(clf.meta.get("experts", 2)), int(clf.meta.get("expert_hidden", 0)))
    if cfg.model == "ride" and (cfg.experts, cfg.expert_hidden) != have:
        raise ModelMismatchError(f"--init has {have[0]} experts (hidden {have[1]}), not "
                                 f"TrainConfig.experts {cfg.experts} "
                                 f"TrainConfig.expert_hidden {cfg.expert_hidden}", path=clf.path,
                                 hint="make them agree")
    assert isinstance(clf.module, RideHead)  # _ride_classifier passes regular RIDE classifiers only
    return copy.deepcopy(clf.module).train()
