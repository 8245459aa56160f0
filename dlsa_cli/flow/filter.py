"""A trained flow filter: scoring (log p(x), cluster, route), and its file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlsa_cli.errors import DlsaError, ModelMismatchError, NonFiniteError
from dlsa_cli.flow.config import FilterConfig
from dlsa_cli.flow.model import MixtureFlow
from dlsa_cli.flow.neighbours import NeighbourBank
from dlsa_cli.flow.router import Router
from dlsa_cli.io.files import (
    read_safetensors,
    read_safetensors_header,
    write_safetensors,
)
from dlsa_cli.runtime.device import as_device

__all__ = ["FilterScores", "FlowFilter"]

# ----------------------------------------------------------------------------- the filter


@dataclass
class FilterScores:
    """What a filter says about N samples."""

    log_likelihood: np.ndarray  # (N,) float64, log p(x)
    cluster: np.ndarray  # (N,) int64, argmax_k log N(z; mu_k, I)
    routed: np.ndarray  # (N,) bool, route_score >= threshold
    latent: np.ndarray | None = None  # (N, D) float32 when asked
    route_score: np.ndarray | None = None  # (N,) float64, the filter's routing score (flow/routing.py)


class FlowFilter:
    """A trained flow filter: the flow, its threshold and its cluster prior.

    `routing` names the score the threshold applies to (`flow/routing.py`);
    `reference` is the unweighted (q = 0) flow of the "ratio" score and
    `neighbours` the training latents of the "knn-tail" score and `router`
    the classifier of the "posterior" score.
    """

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
        routing: str = "likelihood",
        reference: MixtureFlow | None = None,
        neighbours: NeighbourBank | None = None,
        router: Router | None = None,
    ):
        self.flow = flow
        self.routing = routing
        self.reference = reference
        self.neighbours = neighbours
        self.router = router
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
        self.resumed_from: int | None = None  # the epoch a resumed training continued after

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
        self.flow.to(as_device(device))
        if self.reference is not None:
            self.reference.to(as_device(device))
        if self.neighbours is not None:
            self.neighbours.to(as_device(device))
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
        allow_nonfinite: bool = False,
    ) -> FilterScores:
        """log p(x), cluster and route of every row of x (N, D), in batches (eval mode).

        A NaN or infinite log p(x) raises NonFiniteError naming the rows; with
        `allow_nonfinite` such rows are kept (log p as computed) and never routed.
        """
        xt = x if isinstance(x, torch.Tensor) else np.asarray(x)  # numpy is converted batch by batch
        if xt.ndim != 2:
            raise ModelMismatchError(f"features must be (N, D), got shape {tuple(xt.shape)}", path=self.path)
        self.check_dim(int(xt.shape[1]))
        if batch_size < 1:
            raise DlsaError(f"batch_size {batch_size}: must be >= 1")
        if device is not None:
            self.to(device)
        dev = self.device
        n = int(xt.shape[0])
        ll = np.empty(n, dtype=np.float64)
        ref = np.empty(n, dtype=np.float64) if self.reference is not None else None
        cl = np.empty(n, dtype=np.int64)
        knn = np.empty(n, dtype=np.float64) if self.routing == "knn-tail" else None
        post = np.empty(n, dtype=np.float64) if self.routing == "posterior" else None
        if post is not None and self.router is None:
            raise ModelMismatchError("filter routes by 'posterior' but holds no routing classifier", path=self.path)
        if knn is not None and self.neighbours is None:
            raise ModelMismatchError("filter routes by 'knn-tail' but holds no training latents", path=self.path)
        zs = np.empty((n, self.dim), dtype=np.float32) if latent else None
        self.flow.eval()
        if self.reference is not None:
            self.reference.eval()
        with torch.inference_mode():
            for s in range(0, n, batch_size):
                xb = xt[s : s + batch_size]
                if isinstance(xb, torch.Tensor):
                    xb = xb.to(dev, torch.float32)  # (B, D)
                else:
                    xb = torch.tensor(xb, dtype=torch.float32, device=dev)
                logp, comp, z = self.flow.log_prob(xb)
                ll[s : s + len(xb)] = logp.double().cpu().numpy()
                cl[s : s + len(xb)] = comp.argmax(1).cpu().numpy()
                if ref is not None and self.reference is not None:
                    ref[s : s + len(xb)] = self.reference.log_prob(xb)[0].double().cpu().numpy()
                if zs is not None:
                    zs[s : s + len(xb)] = z.float().cpu().numpy()
                if knn is not None and self.neighbours is not None:
                    knn[s : s + len(xb)] = self.neighbours.tail_share(z).cpu().numpy()
                if post is not None and self.router is not None:
                    post[s : s + len(xb)] = self.router.tail_mass(xb)
        finite = np.isfinite(ll)
        if not allow_nonfinite:
            _check_scores(ll, xt)
        rs = self.route_score(ll, cl, ref, knn, post)
        return FilterScores(ll, cl, finite & (rs >= self.threshold), zs, rs)

    def route_score(self, ll: np.ndarray, cluster: np.ndarray, reference_ll: np.ndarray | None = None,
                    knn_tail: np.ndarray | None = None, posterior_tail: np.ndarray | None = None) -> np.ndarray:
        """This filter's routing score (N,) from log p(x), clusters, the reference's log p(x), the
        neighbours' tail share and the routing classifier's tail mass."""
        from dlsa_cli.flow.routing import cluster_tail_share, routing_score

        tail = (cluster_tail_share(self.cluster_counts, self.train_counts, self.config.tail_at_most)
                if self.routing == "cluster-tail" else None)
        return routing_score(self.routing, ll, cluster, reference_log_likelihood=reference_ll, cluster_tail=tail,
                             knn_tail=knn_tail, posterior_tail=posterior_tail)

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
            "routing": self.routing,  # the score in use (may differ from config's when set afterwards)
            **({"router": self.router.meta()} if self.router is not None else {}),
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
        if self.reference is not None:
            tensors.update({f"reference.flow.{k}": v for k, v in self.reference.state_dict_to_save().items()})
            tensors["reference.means"] = self.reference.means
        if self.neighbours is not None:
            tensors["neighbours.latents"] = self.neighbours.latents
            tensors["neighbours.tail"] = self.neighbours.tail.to(torch.uint8)
        if self.router is not None:
            tensors.update(self.router.tensors())
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
                f"filter file lacks {', '.join(missing) or 'tensors'}", path=path,
                hint="re-create it with `dlsa fit-filter`"
            )
        tensors, _, _, _ = read_safetensors(path)
        cfg = FilterConfig.from_dict(meta.get("config", {}))
        flow = _load_flow(meta, cfg, tensors, "", path).to(as_device(device)).eval()
        routing = str(meta.get("routing", "likelihood"))
        reference = None
        if "reference.means" in tensors:
            reference = _load_flow(meta, cfg, tensors, "reference.", path).to(as_device(device)).eval()
        elif routing == "ratio":
            raise ModelMismatchError("filter routes by 'ratio' but holds no reference flow", path=path,
                                     hint="re-create it with FilterConfig.routing ratio")
        neighbours = _load_neighbours(tensors, cfg, routing, int(meta["dim"]), path)
        router = None
        if routing == "posterior" or "router.weight" in tensors:
            router = Router.from_tensors(tensors, meta.get("router", {}), path)
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
            routing=routing,
            reference=reference,
            neighbours=neighbours.to(as_device(device)) if neighbours is not None else None,
            router=router,
        )


def _load_neighbours(tensors: dict[str, torch.Tensor], cfg: FilterConfig, routing: str, dim: int,
                     path: str | Path) -> NeighbourBank | None:
    """The stored training latents of a knn-tail filter (None when the file has none)."""
    if "neighbours.latents" not in tensors:
        if routing == "knn-tail":
            raise ModelMismatchError("filter routes by 'knn-tail' but holds no training latents", path=path,
                                     hint="re-create it with FilterConfig.routing knn-tail")
        return None
    z, tail = tensors["neighbours.latents"], tensors.get("neighbours.tail")
    if z.ndim != 2 or z.shape[1] != dim or tail is None or tuple(tail.shape) != (z.shape[0],):
        raise ModelMismatchError("filter's training latents do not fit its settings", path=path,
                                 hint="re-create it with FilterConfig.routing knn-tail")
    return NeighbourBank(z.to(torch.float16), tail.bool(), cfg.neighbours)


def _load_flow(meta: dict[str, Any], cfg: FilterConfig, tensors: dict[str, torch.Tensor], prefix: str,
               path: str | Path) -> MixtureFlow:
    """The flow stored under `prefix` ("" for the filter's own, "reference." for the reference flow)."""
    flow = MixtureFlow(
        int(meta["dim"]),
        int(meta["num_clusters"]),
        hidden=int(meta.get("hidden", meta["dim"])),
        blocks=int(meta.get("blocks", 2)),
        made_blocks=int(meta.get("made_blocks", 1)),
        center_std=cfg.center_std,
    )
    head = f"{prefix}flow."
    state = {k[len(head) :]: v for k, v in tensors.items() if k.startswith(head)}
    try:
        flow.load_saved_state(state)
        means = tensors[f"{prefix}means"]
        if tuple(means.shape) != tuple(flow.means.shape):
            raise RuntimeError("means shape")
        flow.means.copy_(means)
    except (KeyError, RuntimeError) as e:
        raise ModelMismatchError(f"filter weights do not fit its settings ({e})", path=path) from None
    return flow


def _check_scores(ll: np.ndarray, x: np.ndarray | torch.Tensor) -> None:
    """NonFiniteError (rows numbered within x) when a log p(x) (N,) is NaN or infinite."""
    bad = np.flatnonzero(~np.isfinite(ll))
    if bad.size == 0:
        return
    rows = x[torch.as_tensor(bad)] if isinstance(x, torch.Tensor) else np.asarray(x[bad])
    big = float(np.abs(np.asarray(rows, dtype=np.float64)).max())
    raise NonFiniteError.build(
        "log p(x)",
        bad,
        int(ll.shape[0]),
        hint=f"those rows hold values up to {big:.3g}, beyond what the flow can score; "
        "check the features with `dlsa inspect` and scale them as the training features were",
    )


