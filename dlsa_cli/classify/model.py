"""Classifier heads (linear, cosine, RIDE experts, cluster-aided), the Classifier object with its file,
and init heads read from files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dlsa_cli.classify.lws import LwsHead
from dlsa_cli.classify.ncm import NcmHead
from dlsa_cli.errors import InputError, ModelMismatchError
from dlsa_cli.io.files import (
    read_safetensors,
    read_safetensors_header,
    require_file,
    write_safetensors,
)

__all__ = [
    "BaseHead",
    "Classifier",
    "ClassifierModule",
    "ClusterAidedHead",
    "Expert",
    "LinearHead",
    "RideHead",
    "expert_logits",
    "fc_a",
    "float_tensor",
    "load_init_head",
    "routed_logits",
]

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


class Expert(nn.Module):
    """One RIDE expert: an optional hidden layer (ReLU) then a linear head."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 0):
        super().__init__()
        self.hidden = nn.Linear(dim, hidden) if hidden else None
        self.out = LinearHead(hidden or dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, C)
        return self.out(torch.relu(self.hidden(x)) if self.hidden is not None else x)


class RideHead(nn.Module):
    """RIDE's experts on frozen features; the prediction is their mean logits."""

    cosine = False

    def __init__(self, dim: int, num_classes: int, experts: int, hidden: int = 0):
        super().__init__()
        self.experts = nn.ModuleList(Expert(dim, num_classes, hidden) for _ in range(experts))

    @property
    def expert_list(self) -> list[Expert]:
        """The experts, typed (to a type checker a ModuleList holds plain Modules)."""
        return [cast(Expert, e) for e in self.experts]

    def expert_logits(self, x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (E, B, C)
        return torch.stack([e(x) for e in self.experts])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, C)
        return self.expert_logits(x).mean(0)


@torch.no_grad()
def routed_logits(head: RideHead, x: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """RIDE's router in its confidence form (`router.py`): experts consulted one after another until the
    ensemble so far is confident enough; (mean logits of the experts consulted (B, C),
    experts consulted per sample (B,))."""
    total = head.experts[0](x)  # (B, C)
    used = torch.ones(x.shape[0], device=x.device)
    for expert in head.experts[1:]:
        conf = F.softmax(total / used[:, None], dim=1).amax(1)  # (B,)
        need = torch.nonzero(conf < threshold).squeeze(1)
        if len(need) == 0:
            break
        total[need] += expert(x[need])
        used[need] += 1
    return total / used[:, None], used



class ClusterAidedHead(nn.Module):
    """`FC_a(x) + FC_b([side, prior])`; FC_b starts at zero so the head starts at FC_a."""

    def __init__(self, base: BaseHead, side_dim: int, num_classes: int):
        super().__init__()
        self.a = base
        self.b = nn.Linear(side_dim + num_classes, num_classes)
        nn.init.zeros_(self.b.weight)
        nn.init.zeros_(self.b.bias)

    def forward(self, x: torch.Tensor, side: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
        # x (B, D), side (B, S), prior (B, C) -> (B, C)
        return self.a(x) + self.b(torch.cat([side, prior], dim=1))


# a regular classifier's module, and FC_a of a cluster-aided one
BaseHead: TypeAlias = LinearHead | RideHead | NcmHead | LwsHead
ClassifierModule: TypeAlias = BaseHead | ClusterAidedHead  # the module of any classifier


def fc_a(module: ClassifierModule) -> BaseHead:
    """The FC_a part of a cluster-aided head, or the head itself."""
    return module.a if isinstance(module, ClusterAidedHead) else module


def expert_logits(module: ClassifierModule, x: torch.Tensor, side: torch.Tensor | None = None,
                  prior: torch.Tensor | None = None) -> torch.Tensor:
    """(E, B, C) logits of each expert (E = 1 for a single head); a cluster-aided
    head adds the same FC_b([side, prior]) term to every expert."""
    head = fc_a(module)
    z = head.expert_logits(x) if isinstance(head, RideHead) else head(x)[None]  # (E, B, C)
    if isinstance(module, ClusterAidedHead):
        if side is None or prior is None:
            raise TypeError("a cluster-aided head needs its side inputs and cluster prior")
        z = z + module.b(torch.cat([side, prior], dim=1))[None]
    return z


# ----------------------------------------------------------------------------- the classifier object


@dataclass
class Classifier:
    """A trained classifier: its module, kind, sizes, post-hoc setting and metadata."""

    kind: str  # linear | cosine | ride | ncm | lws | cluster-aided
    dim: int
    num_classes: int
    module: ClassifierModule
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def base_kind(self) -> str:
        """linear, cosine, ride, ncm or lws: the kind of the FC_a part (or of the whole, when regular)."""
        head = fc_a(self.module)
        if isinstance(head, (RideHead, NcmHead, LwsHead)):
            return {RideHead: "ride", NcmHead: "ncm", LwsHead: "lws"}[type(head)]
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
            xb = float_tensor(x[s : s + batch_size], device)
            if self.kind == "cluster-aided":
                if side is None or prior is None:
                    raise ModelMismatchError("a cluster-aided classifier needs its filter's cluster prior",
                                             path=self.path)
                sb = float_tensor(side[s : s + batch_size], device)
                pb = float_tensor(prior[s : s + batch_size], device)
                out_b = self._forward_scaled(xb, sb, pb, scale)
            else:
                out_b = self._forward_scaled(xb, None, None, scale)
            if adjust is not None:
                out_b = out_b - adjust
            out[s : s + len(xb)] = out_b.float().cpu().numpy()
        return out

    def _forward_scaled(self, x: torch.Tensor, side: torch.Tensor | None, prior: torch.Tensor | None,
                        scale: torch.Tensor | None) -> torch.Tensor:
        head = fc_a(self.module)
        threshold = (self.meta.get("router") or {}).get("threshold")
        if threshold is not None and side is None and isinstance(head, RideHead):
            return routed_logits(head, x, float(threshold))[0]
        if scale is None:
            return self.module(x, side, prior) if side is not None else self.module(x)
        assert isinstance(head, LinearHead)  # _posthoc_scale scales linear heads only
        base = F.linear(x, head.weight * scale[:, None], head.bias * scale)  # tau-normalised FC(_a)
        if side is not None and prior is not None and isinstance(self.module, ClusterAidedHead):
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
        head = fc_a(self.module)
        if not isinstance(head, LinearHead):
            raise InputError("tau post-hoc scaling applies to linear classifiers only", path=self.path)
        norms = head.weight.detach().to(device).norm(dim=1).clamp_min(1e-12)  # (C,)
        return norms.pow(-float(ph["tau"]))

    # ---- files

    def tensors(self) -> dict[str, torch.Tensor]:
        """The module's state: `weight`/`bias`, `a.*`/`b.*` (cluster-aided), `experts.i.*` (RIDE)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items()}

    def save(self, path: str | Path, *, prov: dict | None = None) -> None:
        """Write the classifier (kind "classifier") atomically."""
        meta = dict(self.meta)
        meta.update(model=self.kind, dim=self.dim, num_classes=self.num_classes)
        write_safetensors(path, self.tensors(), kind="classifier", meta=meta, prov=prov)

    @classmethod
    def load(cls, path: str | Path) -> Classifier:
        """Read a classifier file; a one-line error for anything else."""
        p = Path(path)
        _, kind, meta, _ = read_safetensors_header(p)
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
        base = meta.get("base_model") or model
        if model not in (*_BASES, "cluster-aided") or base not in _BASES:
            raise InputError(f"unknown classifier model '{model}'", path=p)
        scale = float(meta.get("hyper", {}).get("cosine_scale", 16.0))
        if base == "ride":
            head: BaseHead = RideHead(dim, c, int(meta.get("experts", 2)), int(meta.get("expert_hidden", 0)))
        elif base == "ncm":
            head = NcmHead(dim, c, scale=scale)
        elif base == "lws":
            head = LwsHead(dim, c)
        else:
            head = LinearHead(dim, c, cosine=base == "cosine", scale=scale)
        module: ClassifierModule = head
        if model == "cluster-aided":
            side_dim = int(tensors["b.weight"].shape[1]) - c if "b.weight" in tensors else 0
            module = ClusterAidedHead(head, side_dim, c)
        try:
            module.load_state_dict(tensors, strict=True)
        except (KeyError, RuntimeError) as e:
            msg = str(e).splitlines()[0][:160]
            raise InputError(f"classifier tensors do not match its metadata ({msg})", path=p) from None
        return cls(kind=model, dim=dim, num_classes=c, module=module.eval(), meta=meta, path=p)


_BASES = ("linear", "cosine", "ride", "ncm", "lws")


def float_tensor(a: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """`a` as a float32 tensor on `device` (a numpy array without a copy on the CPU)."""
    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(a))
    return t.to(device=device, dtype=torch.float32, non_blocking=True)


def _log_prior(counts: np.ndarray) -> np.ndarray:
    c = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    return np.log(c / c.sum()).astype(np.float32)


def load_init_head(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, str, dict[str, Any]]:
    """Weights (C, D), bias (C,), base kind (linear|cosine) and the source's metadata.

    `path` is a regular classifier file, or a backbone's linear head as
    safetensors or `.pt` holding `weight` (C, D) and `bias` (C,) (the usual
    state-dict names `fc.weight`, `classifier.weight`, `linear.weight`, ...
    are accepted too).
    """
    p = require_file(path, "--init file")
    if p.suffix.lower() == ".safetensors":
        _, kind, meta, _ = read_safetensors_header(p)
        if kind == "classifier":
            clf = Classifier.load(p)
            if clf.base_kind == "ncm":
                raise InputError("is a nearest-class-mean classifier: it has no linear head to start from", path=p,
                                 hint="pass a linear or cosine classifier")
            if isinstance(fc_a(clf.module), RideHead):
                raise InputError("is a RIDE classifier: it has no single (C, D) head", path=p,
                                 hint="fit-classifier --init takes it as a whole")
            head = clf.module
            if not isinstance(head, (LinearHead, LwsHead)):  # cluster-aided
                raise InputError(
                    "is a cluster-aided classifier; --init takes a regular (linear or cosine) one",
                    path=p,
                    hint="pass the baseline classifier trained on all training data",
                )
            kind = "linear" if clf.kind == "lws" else clf.kind  # an LWS head is linear with rescaled rows
            return head.weight.detach().clone(), head.bias.detach().clone(), kind, clf.meta
        if kind is not None:
            raise InputError(
                f"is a dlsa '{kind}' file, not a classifier; --init takes the classifier trained on all training data "
                "(or a backbone head with weight and bias)",
                path=p,
            )
        tensors, _, meta, _ = read_safetensors(p)
    elif p.suffix.lower() in (".pt", ".pth"):
        try:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except Exception as e:  # whatever torch.load raises, the file is not a safe tensor dict
            from dlsa_cli.io.features import unsafe_torch_file

            raise unsafe_torch_file(p, e) from None
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
