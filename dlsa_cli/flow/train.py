"""Training a flow filter: the epoch loop, the epoch choice, the threshold and the cluster prior.

`fit_filter` runs in steps: check the data (`_prepare`), build the model and
its training state (`_start`), optionally restore that state from a resume
checkpoint, run the epochs (`_train_epoch`, `_evaluate_epoch`, `_keep_best`),
and turn the kept epoch into a filter (`_finish`). After every epoch the whole
training state is written to the checkpoint (`flow/checkpoint.py`), so an
interrupted run continues with `resume=True` and gives the same tensors as an
uninterrupted one (same device, thread count, CPU instruction set and torch
build: see the README's "Guarantees").
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlsa_cli.errors import InputError, NonFiniteError, TrainingError
from dlsa_cli.evaluation.metrics import tail_classes
from dlsa_cli.flow.clusters import cluster_stats, cluster_table
from dlsa_cli.flow.config import VAL_SELECTS, FilterConfig, check_select
from dlsa_cli.flow.filter import FilterScores, FlowFilter
from dlsa_cli.flow.losses import BalanceLoss, PairSampler, class_weights, mle_loss, purity_loss
from dlsa_cli.flow.model import MixtureFlow
from dlsa_cli.io.features import FeatureSet
from dlsa_cli.io.features import num_classes as _num_classes
from dlsa_cli.io.features import train_counts as _train_counts
from dlsa_cli.runtime import ddp
from dlsa_cli.runtime.device import as_device
from dlsa_cli.settings import setting_token

__all__ = ["EpochCallback", "StepCallback", "TrainState", "fit_filter", "select_key"]

StepCallback = Callable[[int, int, int, dict[str, float]], None]  # (epoch, step, steps, losses)
EpochCallback = Callable[[dict[str, Any]], None]


@dataclass
class _Data:
    """One depth's training samples, on the training device."""

    fs: FeatureSet
    x: torch.Tensor  # (N, D) float32
    y: torch.Tensor  # (N,) int64
    y_np: np.ndarray  # (N,)
    counts: np.ndarray  # (C,)
    num_classes: int
    depth: int
    is_tail: torch.Tensor  # (N,) bool
    std: torch.Tensor | None  # (D,) each feature's std over the training samples, for input noise (None without)
    val: _Val | None = None

    @property
    def n(self) -> int:
        return int(self.x.shape[0])


@dataclass
class _Val:
    """Validation samples that choose the epoch (`select="val-..."`); tail by the TRAINING counts."""

    x: torch.Tensor  # (M, D) float32
    is_tail: torch.Tensor  # (M,) bool


@dataclass
class TrainState:
    """Everything the next epoch depends on (what a resume checkpoint holds)."""

    flow: MixtureFlow
    opt: torch.optim.SGD
    g_init: torch.Generator
    g_pairs: torch.Generator
    sampler: PairSampler
    balance: BalanceLoss
    epoch: int = 0  # last finished epoch
    history: list[dict[str, Any]] = field(default_factory=list)
    best_key: tuple[bool, float] | None = None
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] | None = None  # None: the flow itself is the kept epoch
    resumed_from: int | None = None
    model: Any = None  # the flow as trained: under torchrun its DistributedDataParallel wrapper


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
    checkpoint: str | Path | None = None,
    resume: bool = False,
    checkpoint_every: int = 1,
    val: FeatureSet | None = None,
    router: str | Path | None = None,
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
        checkpoint: a file to write the training state to after every epoch
            (the caller removes it once the filter is saved).
        resume: continue from `checkpoint` when it exists (it must come from
            the same data and settings); the filter's `resumed_from` is then
            the epoch it continued after.
        checkpoint_every: write the checkpoint after every this many epochs
            (never after the last one: the filter itself follows).
        val: validation samples with labels (this depth's part of the
            validation set). After every epoch they are scored and the epoch
            record gets their routed tail share (`val_separation`, routed by
            the training quantile of the epoch's routing score) and mean
            log p(x); `select="val-separation"` / `"val-likelihood"` keep
            the epoch with the highest of them and need `val`.
    """
    if not isinstance(train, FeatureSet):
        train = FeatureSet(np.asarray(train), None if labels is None else np.asarray(labels, dtype=np.int64))
    cfg = replace(config or FilterConfig(), **options)
    cfg.check()
    check_select(cfg, val is not None)
    warn = on_warning or (lambda _msg: None)
    dev = as_device(device)
    data = _prepare(train, cfg, depth, allow_singletons, warn, dev)
    data.val = None if val is None else _prepare_val(val, train, data, dev, cfg.tail_at_most)
    head = _router(router, cfg, train)  # checked before any training
    st = _start(data, cfg, dev)
    fingerprint = None
    if checkpoint is not None:
        from dlsa_cli.flow.checkpoint import data_fingerprint, load_checkpoint

        fingerprint = data_fingerprint(train, cfg)
        if val is not None:  # a resume must also see the same validation samples
            fingerprint["val_sha256"] = data_fingerprint(val, cfg)["data_sha256"]
        if resume and Path(checkpoint).exists():
            for note in load_checkpoint(checkpoint, st, fingerprint, dev):
                warn(note)
            if st.best_key is not None:  # the checkpoint stores the key as integers; rebuild it from the record
                st.best_key = select_key(st.history[st.best_epoch - 1], cfg)
    if st.epoch == 0:
        _check_start(st.flow, data, cfg)
    for epoch in range(st.epoch + 1, cfg.epochs + 1):
        t0 = time.perf_counter()
        sums = _train_epoch(st, data, cfg, epoch, on_step)
        record = _evaluate_epoch(st, data, cfg, epoch, sums, t0)
        _keep_best(st, record, cfg, epoch)
        st.epoch = epoch
        if checkpoint is not None and epoch < cfg.epochs and epoch % max(checkpoint_every, 1) == 0:
            from dlsa_cli.flow.checkpoint import save_checkpoint

            save_checkpoint(checkpoint, st, fingerprint)
        if on_epoch is not None:
            on_epoch(record)
    filt = _finish(st, data, cfg, dev, warn)
    if cfg.routing != "likelihood":  # flow/routing.py: re-threshold by another score
        _route_by(filt, train, data.x, data.y_np, cfg, head, device=dev, allow_singletons=allow_singletons,
                  on_warning=on_warning)
    return filt


def _prepare(
    train: FeatureSet, cfg: FilterConfig, depth: int | None, allow_singletons: bool | None,
    warn: Callable[[str], None], dev: torch.device,
) -> _Data:
    """Check one depth's training samples and move them to the device."""
    path = train.path
    y_np = train.require_labels()
    c = _num_classes(train)
    if y_np.max() >= c:
        raise InputError(f"label {int(y_np.max())} is out of range for {c} classes", path=path)
    counts = np.bincount(y_np, minlength=c)
    if depth is None:
        depth = int(train.meta.get("depth", 0)) + 1 if train.meta.get("part") == "rest" else 1
    if (counts > 0).sum() < 2:
        raise InputError("has samples of fewer than 2 classes; the purity pairs need 2", path=path)
    single = np.flatnonzero(counts == 1)
    if single.size:
        allow = depth > 1 if allow_singletons is None else allow_singletons
        if not allow:
            raise InputError(
                f"class {int(single[0])} has a single training sample ({single.size} such class(es))",
                path=path,
                hint="drop those samples, or pass FilterRun.allow_singletons to train with them",
            )
        warn(f"{single.size} class(es) have a single training sample; they get the largest likelihood weights")
    n = train.n
    if n < cfg.batch_size:
        raise InputError(
            f"has {n} training samples, fewer than the batch size {cfg.batch_size}",
            path=path,
            hint=f"pass a smaller {setting_token(cfg, 'batch_size')}, e.g. "
                 f"{max(2, 2 ** int(math.log2(max(n // 2, 2))))}",
        )
    x = torch.as_tensor(train.features).to(dev, torch.float32)  # (N, D)
    y = torch.as_tensor(y_np).to(dev)  # (N,)
    is_tail = torch.as_tensor(tail_classes(_train_counts(train), cfg.tail_at_most)).to(dev)[y]  # (N,) bool
    std = None  # a pass over every training sample, made only for the noise that is relative to it
    if cfg.input_noise > 0:
        std = x.std(0) if n > 1 else torch.zeros_like(x[0])  # (D,)
    return _Data(train, x, y, y_np, counts, c, depth, is_tail, std)


def _prepare_val(val: FeatureSet, train: FeatureSet, data: _Data, dev: torch.device, tail_at_most: int) -> _Val:
    """Check the validation samples against the training ones and move them to the device."""
    y = val.require_labels()
    if val.dim != int(data.x.shape[1]):
        raise InputError(f"has {val.dim} features per sample, the training file {int(data.x.shape[1])}", path=val.path)
    if val.n == 0:
        raise InputError("has no samples to choose the epoch on", path=val.path)
    if y.max() >= data.num_classes:
        raise InputError(f"label {int(y.max())} is out of range for {data.num_classes} classes", path=val.path)
    tail = torch.as_tensor(tail_classes(_train_counts(train), tail_at_most)).to(dev)  # (C,) bool, by TRAINING counts
    return _Val(torch.as_tensor(val.features).to(dev, torch.float32), tail[torch.as_tensor(y).to(dev)])


def _start(data: _Data, cfg: FilterConfig, dev: torch.device) -> TrainState:
    """A fresh model and training state, every random draw from seeded generators."""
    g_init = torch.Generator().manual_seed(cfg.seed)
    flow = MixtureFlow(
        int(data.x.shape[1]), cfg.clusters, hidden=cfg.hidden, blocks=cfg.blocks, made_blocks=cfg.made_blocks,
        center_std=cfg.center_std, generator=g_init,
    ).to(dev)
    model = ddp.wrap(ddp.sync_flow_batchnorm(flow), dev)  # under torchrun: DDP, batch norm over the global batch
    g_pairs = torch.Generator(device=dev).manual_seed(cfg.seed + 1)  # every rank draws the same global batch
    opt = torch.optim.SGD(flow.parameters(), lr=cfg.lr, momentum=0.0, weight_decay=cfg.weight_decay)
    flow.train()
    balance = BalanceLoss(cfg.clusters, cfg.ema, cfg.lambda_bal,
                          batch_mean=lambda v: ddp.global_mean(v, cfg.batch_size))
    return TrainState(flow, opt, g_init, g_pairs, PairSampler(data.y, g_pairs), balance, model=model)


def _check_start(flow: MixtureFlow, data: _Data, cfg: FilterConfig) -> None:
    """Refuse features the untrained flow cannot score (e.g. values of 1e19 overflow |z|^2)."""
    logp, _ = _assign(flow, data.x, cfg.eval_batch_size)
    bad = torch.nonzero(~torch.isfinite(logp)).flatten().cpu().numpy()
    if bad.size:
        big = float(data.x[torch.as_tensor(bad, device=data.x.device)].abs().max())
        raise NonFiniteError.build(
            "log p(x) before any training", bad, data.n, path=data.fs.path,
            hint=f"those rows hold values up to {big:.3g}, too large for the flow; scale the features "
            "(e.g. as the backbone wrote them) and check them with `dlsa inspect`",
        )


def _train_epoch(st: TrainState, data: _Data, cfg: FilterConfig, epoch: int,
                 on_step: StepCallback | None) -> torch.Tensor:
    """One epoch of SGD steps on class-uniform pairs; returns the summed (loss, mle, bal, pure) (4,)."""
    b, k = cfg.batch_size, cfg.clusters
    steps = data.n // b
    report_every = max(1, steps // 20)
    w = class_weights(data.counts, cfg.q).to(data.x.device)  # (C,)
    use_neg = cfg.lambda_pure > 0
    sums = torch.zeros(4, device=data.x.device, dtype=torch.float64)  # loss, mle, bal, pure
    mean = lambda v: ddp.ddp_mean(v, b)  # the global batch's mean (the plain mean alone)
    for step in range(1, steps + 1):
        pos, neg = st.sampler.draw(b)
        noise = _input_noise(st, data, cfg, b, use_neg)  # (2, b, D) or (1, b, D) or None, for the global batch
        share = ddp.batch_share(b)  # this rank's positions of the global batch (all of it alone)
        pos, neg = pos[share], neg[share]
        bl = pos.shape[0]
        xb = data.x[torch.cat([pos, neg])] if use_neg else data.x[pos]  # (2b or b, D)
        if noise is not None:
            xb = xb + noise[:, share].reshape(xb.shape)
        z, logdet = (st.model or st.flow)(xb)
        comp = st.flow.component_log_density(z)  # (2b, K)
        l_pos = comp[:bl]
        zero = comp.new_zeros(())
        log_p = torch.logsumexp(l_pos, 1) - math.log(k) + logdet[:bl]  # (b,)
        l_mle = mle_loss(log_p, w[data.y[pos]], cfg.lambda_lh, mean) if cfg.lambda_lh > 0 else zero
        l_bal = st.balance(l_pos) if cfg.lambda_bal > 0 else zero
        l_pure = purity_loss(l_pos, comp[bl:], cfg.lambda_pure, mean) if use_neg else zero
        loss = l_mle + l_bal + l_pure
        st.opt.zero_grad(set_to_none=True)
        loss.backward()
        st.opt.step()
        sums += torch.stack([loss.detach(), l_mle.detach(), l_bal.detach(), l_pure.detach()]).double()
        if step % report_every == 0 or step == steps:
            means = (ddp.mean_over_ranks(sums) / step).tolist()
            if not all(math.isfinite(v) for v in means):
                raise _diverged(epoch, cfg.lr)
            if on_step is not None:
                on_step(epoch, step, steps, dict(zip(("loss", "mle", "bal", "pure"), means, strict=True)))
    return sums


def _input_noise(st: TrainState, data: _Data, cfg: FilterConfig, b: int, use_neg: bool) -> torch.Tensor | None:
    """Gaussian noise of std `input_noise` x each feature's std for the global batch's rows, from the pair stream."""
    if cfg.input_noise <= 0 or data.std is None:  # std is made exactly when input_noise > 0
        return None
    e = torch.randn((2 if use_neg else 1, b, data.x.shape[1]), generator=st.g_pairs, device=data.x.device)
    return e * (cfg.input_noise * data.std)  # (2 or 1, b, D)


def _evaluate_epoch(st: TrainState, data: _Data, cfg: FilterConfig, epoch: int, sums: torch.Tensor,
                    t0: float) -> dict[str, Any]:
    """Assign every training sample its cluster; the epoch's history record."""
    logp, cluster = ddp.sharded_rows(lambda a, e: _assign(st.flow, data.x[a:e], cfg.eval_batch_size), data.n)
    if not bool(torch.isfinite(logp).all()):
        raise _diverged(epoch, cfg.lr)
    table = cluster_table(cluster, data.y, cfg.clusters, data.num_classes)  # (K, C) of the training samples
    stats = cluster_stats(table, cfg.purity_threshold, cfg.min_cluster_size)
    means = (ddp.mean_over_ranks(sums) / (data.n // cfg.batch_size)).tolist()
    n_route = _n_route(cfg, data.n)
    return {
        "epoch": epoch,
        "loss": means[0],
        "mle": means[1],
        "bal": means[2],
        "pure": means[3],
        "good_clusters": stats["good_clusters"],
        "largest_cluster": stats["size_max"],
        "largest_share": stats["largest_share"],
        "empty_clusters": stats["empty"],
        "mean_log_likelihood": float(logp.double().mean()),
        "separation": float(data.is_tail[torch.topk(logp, n_route).indices].double().mean()),
        "eligible": bool(stats["largest_share"] < cfg.max_cluster_share),
        **(_evaluate_val(st, data, data.val, cfg, logp, cluster, table) if data.val is not None else {}),
        "seconds": time.perf_counter() - t0,
    }


def _evaluate_val(st: TrainState, data: _Data, v: _Val, cfg: FilterConfig, logp: torch.Tensor,
                  cluster: torch.Tensor, table: torch.Tensor) -> dict[str, Any]:
    """The validation samples this epoch would route: their tail share, the base rate, their mean log p(x).

    The route is the filter's: score >= the (1 - share) quantile of the training
    samples' score (`logp`, `cluster` and their cluster `table` (K, C), the
    epoch's). `val_separation` and `val_routed_share` are by the filter's
    routing score (`ratio` and `knn-tail`, whose reference flow and training
    latents are made after the epochs, are taken as `likelihood` here);
    `val_separation_by` gives both scores an epoch can compute, likelihood and
    cluster-tail.
    """
    from dlsa_cli.flow.routing import epoch_route_score, quantile_threshold

    vlogp, vcluster = _assign(st.flow, v.x, cfg.eval_batch_size)  # (M,), (M,)
    table = table.cpu()
    counts = _train_counts(data.fs)
    routed = {}
    for name in ("likelihood", "cluster-tail"):
        def score(ll: torch.Tensor, cl: torch.Tensor, name: str = name) -> np.ndarray:
            return epoch_route_score(name, ll.double().cpu().numpy(), cl.cpu().numpy(), table, counts,
                                     cfg.tail_at_most)

        thr = quantile_threshold(score(logp, cluster), cfg.share)
        routed[name] = torch.as_tensor(score(vlogp, vcluster) >= thr, device=v.x.device)  # (M,) bool
    sep = {k: float(v.is_tail[r].double().mean()) if bool(r.any()) else None for k, r in routed.items()}
    own = "cluster-tail" if cfg.routing == "cluster-tail" else "likelihood"
    return {
        "val_routed_share": float(routed[own].double().mean()),
        "val_separation": sep[own],
        "val_separation_by": sep,
        "val_tail_share": float(v.is_tail.double().mean()),
        "val_mean_log_likelihood": float(vlogp.double().mean()) if bool(torch.isfinite(vlogp).all()) else None,
    }


def select_key(record: dict[str, Any], cfg: FilterConfig) -> tuple[bool, float]:
    """How `select` ranks an epoch record (higher is better); None (nothing routed, a non-finite log p) ranks last."""
    if cfg.select == "last":
        return (True, float(record["epoch"]))
    if cfg.select in VAL_SELECTS:
        v = record["val_separation" if cfg.select == "val-separation" else "val_mean_log_likelihood"]
        return (True, -math.inf if v is None else float(v))
    return (bool(record["eligible"]), float(record["good_clusters"]))


def _keep_best(st: TrainState, record: dict[str, Any], cfg: FilterConfig, epoch: int) -> None:
    """Keep this epoch's weights when it beats the best so far (ties: the later epoch)."""
    st.history.append(record)
    key = select_key(record, cfg)
    if st.best_key is None or key >= st.best_key:
        st.best_key, st.best_epoch = key, epoch
        if epoch < cfg.epochs:  # the last epoch's state is the flow itself
            st.best_state = {kk: v.detach().clone() for kk, v in st.flow.state_dict().items()}
        else:
            st.best_state = None


def _n_route(cfg: FilterConfig, n: int) -> int:
    return min(max(round(cfg.share * n), 1), n)


def _finish(st: TrainState, data: _Data, cfg: FilterConfig, dev: torch.device,
            warn: Callable[[str], None]) -> FlowFilter:
    """The kept epoch as a filter: its threshold, cluster prior and statistics."""
    assert st.best_key is not None
    if cfg.select == "good-clusters" and not st.best_key[0]:
        warn(
            f"no epoch kept its largest cluster under {cfg.max_cluster_share:g} of the samples; "
            f"kept epoch {st.best_epoch} (most good clusters); consider a larger "
            f"{setting_token(FilterConfig, 'max_cluster_share')} "
            f"or more {setting_token(FilterConfig, 'clusters')}"
        )
    if st.best_state is not None:
        st.flow.load_state_dict(st.best_state)
    ddp.unsync_flow_batchnorm(st.flow)
    st.flow.eval()
    k, c, n = cfg.clusters, data.num_classes, data.n
    filt = FlowFilter(
        st.flow, num_classes=c, threshold=0.0, share=cfg.share, depth=data.depth,
        cluster_counts=torch.zeros(k, c, dtype=torch.long), train_counts=_train_counts(data.fs),
        config=cfg, history=st.history, chosen_epoch=st.best_epoch, path=None,
    )
    sc = _scores(filt, data.x, cfg.eval_batch_size)
    filt.threshold = float(np.sort(sc.log_likelihood)[::-1][_n_route(cfg, n) - 1])
    table = cluster_table(torch.from_numpy(sc.cluster), torch.from_numpy(data.y_np), k, c)
    filt.cluster_counts = table.long()
    filt.cluster_prior = (table.float() / table.sum(1, keepdim=True).clamp(min=1).float()).contiguous()
    routed = sc.log_likelihood >= filt.threshold
    tail = tail_classes(filt.train_counts, cfg.tail_at_most)
    filt.stats = {
        **cluster_stats(table, cfg.purity_threshold, cfg.min_cluster_size),
        "chosen_epoch": st.best_epoch,
        "chosen_epoch_eligible": bool(st.best_key[0]),
        "train_samples": n,
        "routed": int(routed.sum()),
        "separation": float(tail[data.y_np[routed]].mean()) if routed.any() else None,
        "tail_share": float(tail[data.y_np].mean()),
        "seconds_per_epoch": float(np.mean([h["seconds"] for h in st.history])),
        "device": str(dev),
    }
    filt.resumed_from = st.resumed_from
    return filt


def _router(router: str | Path | None, cfg: FilterConfig, train: FeatureSet) -> Any:
    """The `posterior` score's classifier (`flow/router.py`), read and checked; None for other scores."""
    if cfg.routing != "posterior":
        return None
    if router is None:
        raise InputError("routing by posterior needs the routing classifier", hint="pass FilterRun.router")
    from dlsa_cli.flow.router import Router

    return Router.from_classifier(router, _train_counts(train), cfg.tail_at_most)


def _route_by(filt: FlowFilter, train: FeatureSet, x: torch.Tensor, y: np.ndarray, cfg: FilterConfig,
              head: Any, **fit_kw: Any) -> None:
    """Set the filter's routing score; "ratio" trains the unweighted (q = 0) reference flow on the same samples."""
    from dlsa_cli.flow.routing import set_routing

    ref_cfg = replace(cfg, q=0.0, routing="likelihood")
    set_routing(filt, x, y, routing=cfg.routing, router=head,
                fit_reference=lambda: fit_filter(train, config=ref_cfg, depth=filt.depth, **fit_kw).flow)


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
        hint=f"try a lower {setting_token(FilterConfig, 'lr')} than {lr:g}, e.g. {lr / 4:g}",
    )
