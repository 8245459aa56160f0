"""Every hyperparameter of a flow filter, the paper's presets, and their range checks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from dlsa_cli.errors import DlsaError

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
    routing: str = "likelihood"  # the routing score (flow/routing.py): likelihood, ratio or cluster-tail

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
    from dlsa_cli.flow.routing import check_routing

    check_routing(cfg.routing)


