"""Training a flow filter: the epoch loop, the epoch choice, the threshold and the cluster prior."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from dlsa_cli.errors import InputError, TrainingError
from dlsa_cli.evaluation.metrics import (
    tail_classes,
)
from dlsa_cli.flow.clusters import cluster_stats, cluster_table
from dlsa_cli.flow.config import FilterConfig, _check_config
from dlsa_cli import ddp
from dlsa_cli.flow.filter import FilterScores, FlowFilter, _device
from dlsa_cli.flow.losses import (
    BalanceLoss,
    PairSampler,
    class_weights,
    mle_loss,
    purity_loss,
)
from dlsa_cli.flow.model import MixtureFlow
from dlsa_cli.io.features import FeatureSet
from dlsa_cli.io.features import num_classes as _num_classes
from dlsa_cli.io.features import train_counts as _train_counts

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
    model = ddp.wrap(ddp.sync_flow_batchnorm(flow), dev)  # under torchrun: DDP, batch norm over the global batch
    g_pairs = torch.Generator(device=dev).manual_seed(cfg.seed + 1)  # every rank draws the same global batch
    x = torch.as_tensor(train.features).to(dev, torch.float32)  # (N, D)
    y = torch.as_tensor(y_np).to(dev)  # (N,)
    sampler = PairSampler(y, g_pairs)
    w = class_weights(counts, cfg.q).to(dev)  # (C,)
    b = cfg.batch_size
    balance = BalanceLoss(k, cfg.ema, cfg.lambda_bal, batch_mean=lambda v: ddp.global_mean(v, b))
    mean = lambda v: ddp.ddp_mean(v, b)  # noqa: E731  the global batch's mean (plain mean alone)
    opt = torch.optim.SGD(flow.parameters(), lr=cfg.lr, momentum=0.0)
    steps = n // cfg.batch_size
    report_every = max(1, steps // 20)
    log_k = math.log(k)
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
            share = ddp.batch_share(b)  # this rank's positions of the global batch (all of it alone)
            pos, neg = pos[share], neg[share]
            bl = pos.shape[0]
            xb = x[torch.cat([pos, neg])] if use_neg else x[pos]  # (2b or b, D)
            z, logdet = model(xb)
            comp = flow.component_log_density(z)  # (2b, K)
            l_pos = comp[:bl]
            zero = comp.new_zeros(())
            l_mle = (
                mle_loss(torch.logsumexp(l_pos, 1) - log_k + logdet[:bl], w[y[pos]], cfg.lambda_lh, mean)
                if cfg.lambda_lh > 0
                else zero
            )
            l_bal = balance(l_pos) if cfg.lambda_bal > 0 else zero
            l_pure = purity_loss(l_pos, comp[bl:], cfg.lambda_pure, mean) if use_neg else zero
            loss = l_mle + l_bal + l_pure
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += torch.stack([loss.detach(), l_mle.detach(), l_bal.detach(), l_pure.detach()]).double()
            if step % report_every == 0 or step == steps:
                means = (ddp.mean_over_ranks(sums) / step).tolist()
                if not all(math.isfinite(v) for v in means):
                    raise _diverged(epoch, cfg.lr)
                if on_step is not None:
                    on_step(epoch, step, steps, dict(zip(("loss", "mle", "bal", "pure"), means)))
        logp, cluster = ddp.sharded_rows(lambda a, e: _assign(flow, x[a:e], cfg.eval_batch_size), n)
        if not bool(torch.isfinite(logp).all()):
            raise _diverged(epoch, cfg.lr)
        st = cluster_stats(cluster_table(cluster, y, k, c), cfg.purity_threshold, cfg.min_cluster_size)
        eligible = st["largest_share"] < cfg.max_cluster_share
        means = (ddp.mean_over_ranks(sums) / steps).tolist()
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
    ddp.unsync_flow_batchnorm(flow)
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
    sc = _scores(filt, x, cfg.eval_batch_size)
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


def _scores(filt: FlowFilter, x: torch.Tensor, batch_size: int) -> FilterScores:
    """The filter's scores of every training row; under torchrun each rank scores its share and all gather them."""
    def part(a: int, e: int) -> tuple[torch.Tensor, ...]:
        sc = filt.score(x[a:e], batch_size=batch_size)
        return torch.from_numpy(sc.log_likelihood), torch.from_numpy(sc.cluster)

    ll, cl = ddp.sharded_rows(part, x.shape[0])
    ll_np = ll.numpy()
    return FilterScores(ll_np, cl.numpy(), ll_np >= filt.threshold)


def _diverged(epoch: int, lr: float) -> TrainingError:
    return TrainingError(
        f"training diverged: the loss became NaN or infinite in epoch {epoch}",
        hint=f"try a lower --lr than {lr:g}, e.g. {lr / 4:g}",
    )


