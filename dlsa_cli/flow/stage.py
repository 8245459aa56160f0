"""The fit-filter and split stages, one function each: exactly the files `dlsa fit-filter` and `dlsa split` write.

`fit_filter_file` checks the output, fits (resuming from the checkpoint beside the
output when asked), records the settings and provenance, and writes the filter on
rank 0; `dlsa fit-filter` and `fit_cascade` both call it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dlsa_cli.errors import DlsaError, InputError
from dlsa_cli.flow.config import FilterConfig, FilterRun, SplitConfig, check_select
from dlsa_cli.flow.filter import FlowFilter
from dlsa_cli.flow.summary import SplitFileReport, SplitReport
from dlsa_cli.settings import setting_token, to_table

__all__ = ["check_filter_sizes", "filter_settings", "fit_filter_file", "split_files"]

Callback = Callable[..., None]


def filter_settings(config: FilterConfig, run: FilterRun) -> dict[str, Any]:
    """The config-file tables that repeat a fit-filter run (recorded as provenance's `settings`)."""
    return {"": {**to_table(config), **to_table(run)}}


def fit_filter_file(
    train: str | Path,
    out: str | Path,
    config: FilterConfig,
    run: FilterRun | None = None,
    *,
    val: str | Path | None = None,
    device: Any = "cpu",
    resume: bool = False,
    checkpoint_every: int = 1,
    preset: str | None = None,
    command: str = "fit-filter",
    on_step: Callback | None = None,
    on_epoch: Callback | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> FlowFilter:
    """Fit a flow filter on TRAIN (and VAL for the val-* rules) and write it to OUT on rank 0.

    The resume checkpoint `OUT.resume` is written every `checkpoint_every` epochs (0: none)
    and removed once the filter is written; a refused or diverged run removes a
    checkpoint it made, an interrupted one keeps it.
    """
    from dlsa_cli.flow.checkpoint import checkpoint_path
    from dlsa_cli.flow.train import fit_filter
    from dlsa_cli.io.features import read_features
    from dlsa_cli.io.files import check_output_file, provenance
    from dlsa_cli.runtime import distributed as dist

    run = run or FilterRun()
    warn = on_warning or (lambda _m: None)
    inputs = [Path(train), *([Path(val)] if val is not None else [])]
    out_p = check_output_file(out, suffixes=(".safetensors",), inputs=inputs)
    config.check()
    check_select(config, val is not None)  # a val-* rule without validation samples: one line, before any work
    check_filter_sizes(config, train, device)
    check_router(config, run)
    if checkpoint_every < 0:
        raise DlsaError(f"--checkpoint-every {checkpoint_every}: must be >= 0 (0 writes no checkpoint)")
    ckpt = checkpoint_path(out_p)
    had_ckpt = ckpt.exists()
    if had_ckpt and not resume:
        warn(f"{ckpt} holds an interrupted run; starting over (pass --resume to continue it)")
    dev = _device(device, run.tf32)
    fs = read_features(train, require_labels=True, mmap=True)  # a mapped matrix: no copy of a big file
    val_fs = None if val is None else read_features(val, require_labels=True, mmap=True)
    try:
        filt = fit_filter(fs, config=config, depth=run.depth, device=dev, allow_singletons=run.allow_singletons,
                          on_step=on_step, on_epoch=on_epoch, on_warning=warn,
                          checkpoint=ckpt if checkpoint_every > 0 else None, resume=resume,
                          checkpoint_every=checkpoint_every, val=val_fs, router=run.router)
    except DlsaError:  # a refusal or a diverged run leaves nothing behind (an interrupted one keeps its checkpoint)
        if not had_ckpt:
            ckpt.unlink(missing_ok=True)
        raise
    tf32 = run.tf32 and dev.type == "cuda"
    options = {"preset": preset, **config.to_dict(), "depth": filt.depth, "device": str(dev), "tf32": tf32}
    recorded = FilterRun(depth=filt.depth, allow_singletons=run.allow_singletons, router=run.router, tf32=run.tf32)
    prov = provenance(command, options, inputs, config.seed, settings=filter_settings(config, recorded))
    prov["resumed_from"] = filt.resumed_from  # the epoch this run continued after, or None
    if dist.is_main():  # every rank holds the same filter; rank 0 writes it
        filt.save(out_p, prov=prov)
        ckpt.unlink(missing_ok=True)
    dist.barrier()
    return filt


def check_router(config: FilterConfig, run: FilterRun) -> None:
    """Routing by posterior needs a routing classifier, and only it uses one: one line, before any work."""
    from dlsa_cli.io.files import require_file

    if config.routing == "posterior" and run.router is None:
        raise InputError(f"{setting_token(config, 'routing')} posterior routes by a classifier's tail mass, and "
                         "none was given", hint=f"pass {setting_token(run, 'router')} CLF.safetensors")
    if config.routing != "posterior" and run.router is not None:
        raise InputError(f"{setting_token(run, 'router')} is used only by {setting_token(config, 'routing')} "
                         f"posterior, and the routing is {config.routing}", hint="drop it, or route by posterior")
    if run.router is not None:
        require_file(run.router, "routing classifier")


def check_filter_sizes(config: FilterConfig, train: str | Path, device: Any) -> None:
    """Before any work: neighbours the training set can give, and a model that fits in memory."""
    from dlsa_cli.io.features import feature_info
    from dlsa_cli.runtime.memory import refuse_oversized

    info = feature_info(train)
    if config.routing == "knn-tail" and config.neighbours > info.n:
        raise DlsaError(f"FilterConfig.neighbours {config.neighbours}: more than the {info.n} training samples",
                        path=train, hint=f"pass at most {info.n}")
    d = info.dim

    def need(c: FilterConfig) -> float:
        h = c.hidden or d
        made = d * h + c.made_blocks * h * h + h * 2 * d  # one MADE's weights
        flows = 2 if c.routing == "ratio" else 1
        weights = 16.0 * c.blocks * made * flows  # weights, gradients, masks, buffers (float32)
        acts = 4.0 * 3 * c.batch_size * (c.clusters + c.blocks * h) + 4.0 * c.eval_batch_size * c.clusters
        return weights + 4.0 * c.clusters * d + acts

    refuse_oversized(config, ("clusters", "hidden", "blocks", "made_blocks", "batch_size", "eval_batch_size"), need,
                     device=device, what="the flow filter")


def _device(device: Any, tf32: bool) -> Any:
    from dlsa_cli.runtime.device import as_device

    dev = as_device(device)
    if dev.type == "cuda":
        import torch

        torch.backends.cuda.matmul.allow_tf32 = tf32
    return dev


def split_files(
    filter_path: str | Path,
    features: Sequence[str | Path],
    out: str | Path,
    config: SplitConfig | None = None,
    *,
    device: Any = "cpu",
    command: str = "split",
    on_file: Callable[[str, SplitFileReport], None] | None = None,
) -> SplitReport:
    """`dlsa split FILTER FEATURES -o OUT`: every feature file's table, routed and rest files, and split.json.

    Every input's feature dimension is checked against the filter (headers only) before any scoring.
    """
    from dlsa_cli.flow.split import split
    from dlsa_cli.io.features import feature_info
    from dlsa_cli.io.files import provenance

    cfg = config or SplitConfig()
    cfg.check()
    dev = _device(device, False)
    filt = FlowFilter.load(filter_path, device=dev)
    for p in features:
        filt.check_dim(feature_info(p).dim, p)
    options = {"latent": cfg.latent, "batch_size": cfg.batch_size, "device": str(dev)}
    prov = provenance(command, options, [filter_path, *features], settings={"": to_table(cfg)})
    return split(filt, list(features), out, batch_size=cfg.batch_size, device=dev, latent=cfg.latent, prov=prov,
                 on_file=on_file, allow_nonfinite=cfg.allow_nonfinite)
