"""Fitting a DLSA cascade (paper Sec. 3.2): DLSA's loop as one library function.

    baseline: one classifier on all of TRAIN
    for d in 1..num_depths:
        filter d   on depth d's training samples (all of TRAIN at d = 1, else the rest of depth d-1)
        split      of depth d's training and validation samples by filter d: routed / rest
        cluster d  a cluster-aided classifier on the routed training samples, started from the baseline
    final: a regular classifier on what no filter routed, started from the baseline

It makes the same choices as running the stages by hand (`fit-filter`, `split`,
`fit-classifier`, as `recipes/dlsa.sh` did): one seed for every step; a branch
is validated on its routed (or rest) part of VAL, and its epoch maximises the
WHOLE validation set's balanced accuracy; a branch accepts a validation part
that lacks some classes; with no validation samples for a part (no VAL, or an
empty routed part) a classifier carves its validation from its own training file.

RUNDIR holds every stage's file; `progress.json` records each finished stage,
so an interrupted run continues (`resume=True`) from the last finished one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from dlsa_cli.cascade.combine import MEMORY_FILE, Combine
from dlsa_cli.cascade.manifest import MANIFEST, write_manifest
from dlsa_cli.cascade.model import Cascade
from dlsa_cli.cascade.plan import CascadePlan, as_branch, renamed, with_defaults
from dlsa_cli.cascade.summary import CascadeReport, ClassifierFit, ClassifierStage, DepthStage, FilterFit, RoutedCounts
from dlsa_cli.classify.config import TrainConfig
from dlsa_cli.errors import InputError, TrainingError
from dlsa_cli.flow.config import FilterRun, check_select
from dlsa_cli.io.files import (
    atomic_path,
    file_sha256,
    load_json_text,
    read_safetensors_header,
    require_file,
    write_json,
)

if TYPE_CHECKING:
    from dlsa_cli.flow.summary import SplitReport

__all__ = ["PROGRESS", "REPORT", "CascadePlan", "CascadeRun", "fit_cascade"]

PROGRESS = "progress.json"
REPORT = "report.json"

EventFn = Callable[[str], None]
S = TypeVar("S", ClassifierStage, DepthStage)


@dataclass
class CascadeRun:
    """What `fit_cascade` returns: the loaded cascade and the run's report (report.json)."""

    cascade: Cascade
    report: CascadeReport
    out_dir: Path


@dataclass
class _Ctx:
    """One run's fixed inputs: where it writes, what it was given, how it reports."""

    out: Path
    plan: CascadePlan
    device: Any
    train: Path  # RUNDIR/inputs/train.EXT, a link to TRAIN
    val: Path | None  # RUNDIR/inputs/val.EXT, a link to VAL
    filters: dict[int, Path]
    train_offset: np.ndarray | None  # (N_train, C) in TRAIN's row order, or None
    event: EventFn
    warn: EventFn
    progress: dict[str, Any]

    def done(self, stage: str, rep: ClassifierStage | DepthStage) -> None:
        """Record a finished stage, atomically, before the next one starts."""
        self.progress["stages"][stage] = rep.to_json()
        _on_main(lambda: write_json(self.out / PROGRESS, self.progress))


def fit_cascade(
    train: str | Path,
    out_dir: str | Path,
    plan: CascadePlan | None = None,
    *,
    val: str | Path | None = None,
    filters: Mapping[int, str | Path] | None = None,
    device: Any = "cpu",
    resume: bool = False,
    train_offset: np.ndarray | None = None,
    on_event: EventFn | None = None,
    on_warning: EventFn | None = None,
) -> CascadeRun:
    """Fit the baseline, `plan.num_depths` (filter, split, cluster-aided classifier) depths and the final classifier.

    `filters` maps a depth to an already fitted filter file (trained at that
    depth on that depth's training samples): it is copied into RUNDIR instead of
    fitting one, so one set of filters can serve several classifier settings.
    `resume=True` reuses the stages `progress.json` records as finished (the
    settings, inputs and given filters must be the same).
    """
    from dlsa_cli.runtime.device import as_device

    plan = plan or CascadePlan()
    plan.check()
    check_select(plan.filter_config(), val is not None)
    if val is None and (plan.memory_k or plan.soft_routing):
        what = "CascadePlan.memory_k" if plan.memory_k else "CascadePlan.soft_routing"
        raise InputError(f"{what} is chosen on validation, and no validation file was given",
                         hint="pass --val VAL, or leave memory and soft routing off")
    dev = as_device(device)
    _check_sizes(plan, Path(train), dev)
    out_p = Path(out_dir)
    fresh = not (out_p.is_dir() and any(out_p.iterdir()))
    ctx = _start(out_p, plan, Path(train), None if val is None else Path(val), dict(filters or {}), resume,
                 train_offset)
    ctx.device, ctx.event, ctx.warn = dev, on_event or _quiet, on_warning or _quiet
    if resume and fresh:  # the recipes always pass --resume: a first run is not an error
        ctx.warn(f"{out_p} holds no run to resume; starting a new one")
    t0 = time.perf_counter()
    base = _stage(ctx, "baseline", lambda: _fit_baseline(ctx), ClassifierStage)
    cur_train, cur_val = ctx.train, ctx.val
    depths: list[DepthStage] = []
    for d in range(1, plan.num_depths + 1):
        rep = _stage(ctx, f"depth{d}", partial(_fit_depth, ctx, d, cur_train, cur_val), DepthStage)
        depths.append(rep)
        cur_train = ctx.out / str(rep.files["train_rest"])
        val_rest = rep.files.get("val_rest")
        cur_val = ctx.out / val_rest if val_rest else None
    final = _stage(ctx, "final", lambda: _fit_final(ctx, cur_train, cur_val), ClassifierStage)
    parts = [(ctx.out / str(r.files["filter"]), ctx.out / str(r.files["classifier"])) for r in depths]
    combine = _combine(ctx, parts, ctx.out / str(final.files["classifier"]))
    extra = None if combine is None else {"combine": combine.to_json()}
    _on_main(lambda: write_manifest(ctx.out, parts, ctx.out / str(final.files["classifier"]), extra=extra))
    report = _report(ctx, base, depths, final, time.perf_counter() - t0)
    if combine is not None:
        report.combine = combine.to_json()
        report.unchanged = report.unchanged and not any(combine.weights) and not any(combine.temperatures)
    _on_main(lambda: write_json(ctx.out / REPORT, report.to_json()))
    return CascadeRun(Cascade.load(ctx.out), report, ctx.out)


BRANCHES = ".branches.json"  # the hard cascade's manifest while VAL chooses how to combine its branches


def _combine(ctx: _Ctx, parts: list[tuple[Path, Path]], final: Path) -> Combine | None:
    """Memory weights and soft temperatures chosen on VAL for the fitted branches (`cascade/combine.py`).

    They are chosen on the hard cascade, loaded from a transient manifest: cascade.json is written once,
    with them, so a folder never holds a manifest of a cascade other than the one the plan asked for."""
    from dlsa_cli.cascade.combine import choose_combine
    from dlsa_cli.io.features import num_classes, read_features, train_counts

    if not ctx.plan.memory_k and not ctx.plan.soft_routing:
        return None
    assert ctx.val is not None  # fit_cascade refused memory and soft routing without VAL
    train, val = read_features(ctx.train, require_labels=True), read_features(ctx.val, require_labels=True)
    val.meta.update(num_classes=num_classes(train), train_counts=train_counts(train).tolist())
    hard = ctx.out / BRANCHES
    _on_main(lambda: write_manifest(hard, parts, final))
    try:
        chosen = choose_combine(Cascade.load(hard), train, val, ctx.plan, device=ctx.device, event=ctx.event)
    finally:
        _on_main(lambda: hard.unlink(missing_ok=True))
    assert chosen is not None  # the plan asks for memory or soft routing
    combine, bank = chosen
    if bank is not None:
        _on_main(lambda: bank.save(ctx.out / MEMORY_FILE, prov={"command": "fit-cascade: memory"}))
    return combine


def _check_sizes(plan: CascadePlan, train: Path, device: Any) -> None:
    """Before any work: the filters and classifiers the plan asks for fit in memory (depth 1's sizes)."""
    from dlsa_cli.classify.stage import check_classifier_sizes
    from dlsa_cli.flow.stage import check_filter_sizes

    require_file(train, "training file")
    check_filter_sizes(plan.filter_config(), train, device)
    check_classifier_sizes(plan.baseline_config(), train, device)
    with as_branch():
        check_classifier_sizes(plan.branch_config(), train, device)


def _quiet(_msg: str) -> None:
    pass


def _on_main(write: Callable[[], Any]) -> None:
    """Under torchrun rank 0 alone writes, and every rank goes on once it has (its error is every rank's);
    alone: write."""
    from dlsa_cli.runtime import distributed as dist

    dist.collective(lambda: write() if dist.is_main() else None)


def _stage(ctx: _Ctx, name: str, fit: Callable[[], S], kind: type[S]) -> S:
    """A finished stage's record when resuming (its files still there), else fit it and record it."""
    rep = ctx.progress["stages"].get(name)
    if rep is not None and all((ctx.out / f).is_file() for f in rep["files"].values() if f):
        ctx.event(f"{name}: finished in an earlier run, reused")
        return replace(kind.from_json(rep), reused=True)
    # this stage is refitted, so no later stage of the earlier run may be reused
    order = ["baseline", *[f"depth{d}" for d in range(1, ctx.plan.num_depths + 1)], "final"]
    for later in order[order.index(name):]:
        ctx.progress["stages"].pop(later, None)
    new = fit()
    ctx.done(name, new)
    return new


# ----------------------------------------------------------------------------- the run folder


def _start(out: Path, plan: CascadePlan, train: Path, val: Path | None, filters: Mapping[int, str | Path], resume: bool,
           train_offset: np.ndarray | None) -> _Ctx:
    """Check the inputs and RUNDIR; on resume, check that the earlier run had the same settings."""
    require_file(train, "training file")
    if val is not None:
        require_file(val, "validation file")
    for d, f in filters.items():
        if not 1 <= int(d) <= plan.num_depths:
            raise InputError(f"a filter is given for depth {d}, but the cascade has depths 1..{plan.num_depths}",
                             path=f)
        require_file(f, f"depth-{d} filter")
        kind, meta = read_safetensors_header(f)[1:3]
        if kind != "filter" or int(meta.get("depth", 0)) != int(d):
            what = (f"was trained at depth {meta.get('depth')}" if kind == "filter"
                    else f"is a '{kind}' file, not a filter")
            raise InputError(f"{what}, but is given for depth {d}", path=f)
    parent = out.parent  # a bare name's parent is Path(".")
    if not parent.is_dir():
        raise InputError("output folder's parent does not exist", path=parent, hint="create it first")
    if out.exists() and not out.is_dir():
        raise InputError("output path exists and is not a folder", path=out)
    settings = {
        "plan": plan.to_dict(),
        "train_sha256": file_sha256(train),
        "val_sha256": None if val is None else file_sha256(val),
        "filters": {str(d): file_sha256(f) for d, f in sorted(filters.items())},
        "train_offset_sha256": None if train_offset is None else _array_sha256(train_offset),
    }
    progress = {"settings": settings, "stages": {}}
    if out.is_dir() and any(out.iterdir()):
        if not resume:
            raise InputError("output folder is not empty", path=out,
                             hint="pass --resume to continue its run, or pick another -o")
        progress = _earlier(out, settings)
    _on_main(lambda: None)  # every rank has looked at RUNDIR before rank 0 fills it
    _on_main(lambda: out.mkdir(exist_ok=True))
    links = _link_inputs(out, train, val)
    offset = None if train_offset is None else np.asarray(train_offset, dtype=np.float32)
    return _Ctx(out, plan, None, links[0], links[1], {int(d): Path(f) for d, f in filters.items()}, offset,
                _quiet, _quiet, progress)


def _array_sha256(a: np.ndarray) -> str:
    import hashlib

    a = np.ascontiguousarray(a, dtype=np.float32)
    return hashlib.sha256(str(a.shape).encode() + a.tobytes()).hexdigest()


def _earlier(out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The earlier run's progress; an error when it was started with other settings or inputs."""
    p = out / PROGRESS
    if not p.is_file():
        raise InputError(f"holds no {PROGRESS}, so it is not a fit-cascade run to resume", path=out,
                         hint="pick another -o")
    try:
        old = load_json_text(p.read_text(), where=p)
    except (OSError, ValueError) as e:
        raise InputError(f"unreadable ({e})", path=p, hint="pick another -o") from None
    plan = (old.get("settings") or {}).get("plan") or {}
    if "depth" in plan:  # a run started before the plan's depth count was named num_depths
        plan["num_depths"] = plan.pop("depth")
    if plan:
        old["settings"]["plan"] = with_defaults(plan)
    if old.get("settings") != settings:
        diff = _differences(old.get("settings", {}), settings)
        raise InputError(f"was started with other settings ({', '.join(diff[:4])})", path=out,
                         hint="resume with the same options and inputs, or pick another -o")
    old.setdefault("stages", {})
    return old


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _differences(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}: {x} then, {y} now")
    return out


def _link_inputs(out: Path, train: Path, val: Path | None) -> tuple[Path, Path | None]:
    """RUNDIR/inputs/train.EXT and val.EXT: links, so that `split` names its outputs train.* and val.*."""
    links: list[Path | None] = []
    for name, src in (("train", train), ("val", val)):
        links.append(None if src is None else out / "inputs" / f"{name}{''.join(src.suffixes[-1:])}")

    def make() -> None:
        (out / "inputs").mkdir(exist_ok=True)
        for link, src in zip(links, (train, val), strict=True):
            if link is not None and src is not None:  # one link per input given
                _relink(link, src.resolve())

    _on_main(make)
    return links[0], links[1]  # type: ignore[return-value]


def _relink(link: Path, target: Path) -> None:
    tmp = link.with_name(f".{link.name}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


# ----------------------------------------------------------------------------- the stages


def _start_from(ctx: _Ctx) -> Path | None:
    """Where every branch starts: the baseline, unless from scratch."""
    return None if ctx.plan.from_scratch else ctx.out / "baseline.safetensors"


def _fit_baseline(ctx: _Ctx) -> ClassifierStage:
    ctx.event("baseline: one classifier on all training data")
    plan = ctx.plan
    init = None if plan.baseline_init is None else Path(plan.baseline_init)
    rep = _fit_classifier(ctx, "baseline", ctx.train, ctx.val, plan.baseline_config(), init=init, weigh=False)
    return ClassifierStage(rep, {"classifier": "baseline.safetensors"})


def _fit_depth(ctx: _Ctx, d: int, train: Path, val: Path | None) -> DepthStage:
    """Filter d on this depth's training samples, the split of train/val by it, cluster-aided classifier d."""
    t0 = time.perf_counter()
    ddir = ctx.out / f"depth{d}"
    _on_main(lambda: ddir.mkdir(exist_ok=True))
    train, val = _depth_inputs(ctx, d, train, val)
    ctx.event(f"depth {d}: flow filter on {train.resolve().name}")
    filt = _filter(ctx, d, train, val, ddir / "filter.safetensors")
    split = _split(ctx, d, [p for p in (train, val) if p is not None], ddir)
    files: dict[str, str | None] = {"filter": f"depth{d}/filter.safetensors",
                                    "classifier": f"depth{d}/cluster.safetensors"}
    for name in ("train", "val"):
        for part in ("routed", "rest"):
            fr = split.files.get(name)
            out = None if fr is None or fr.outputs is None else getattr(fr.outputs, part)
            files[f"{name}_{part}"] = None if out is None else f"depth{d}/{out}"
        files[f"{name}_table"] = f"depth{d}/{name}.parquet" if name in split.files else None
    if files["train_routed"] is None:
        raise TrainingError(f"depth {d}: the filter routes no training sample", path=ddir / "filter.safetensors",
                            hint="raise FilterConfig.share or lower CascadePlan.num_depths")
    if files["train_rest"] is None:
        raise TrainingError(f"depth {d}: the filter routes every training sample, none is left for the next stage",
                            path=ddir / "filter.safetensors", hint="lower FilterConfig.share or CascadePlan.num_depths")
    ctx.event(f"depth {d}: cluster-aided classifier on the routed training samples")
    routed_val = None if files["val_routed"] is None else ctx.out / files["val_routed"]
    clf = _fit_classifier(ctx, f"depth{d}/cluster", ctx.out / files["train_routed"], routed_val,
                          ctx.plan.branch_config(),
                          init=_start_from(ctx), filter_path=ddir / "filter.safetensors", weigh=True)
    return DepthStage(d, _routing(split, "train"), _routing(split, "val"), filt, clf,
                      round(time.perf_counter() - t0, 2),
                      files)


def _fit_final(ctx: _Ctx, train: Path, val: Path | None) -> ClassifierStage:
    ctx.event("final: regular classifier on the samples no filter routed")
    rep = _fit_classifier(ctx, "final", train, val, ctx.plan.branch_config(), init=_start_from(ctx), weigh=True)
    return ClassifierStage(rep, {"classifier": "final.safetensors"})


def _depth_inputs(ctx: _Ctx, d: int, train: Path, val: Path | None) -> tuple[Path, Path | None]:
    """Depth d's inputs under the names train.* and val.* (links to depth d-1's rest files)."""
    if d == 1:
        return train, val
    folder = ctx.out / "inputs" / f"depth{d}"
    links = [None if src is None else folder / f"{name}.safetensors" for name, src in (("train", train), ("val", val))]

    def make() -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for link, src in zip(links, (train, val), strict=True):
            if link is not None and src is not None:  # one link per input given
                _relink(link, Path(os.path.relpath(src, folder)))

    _on_main(make)
    return links[0], links[1]  # type: ignore[return-value]


def _filter(ctx: _Ctx, d: int, train: Path, val: Path | None, path: Path) -> FilterFit:
    """Fit filter d as `dlsa fit-filter TRAIN --depth d [--val VAL]` does, or copy the given one.

    The filter sees this depth's part of the validation set when its --filter-select
    rule chooses on validation (val-separation, val-likelihood), and only then.
    """
    from dlsa_cli.flow import FlowFilter
    from dlsa_cli.flow.config import VAL_SELECTS
    from dlsa_cli.flow.stage import fit_filter_file

    given = ctx.filters.get(d)
    if given is not None:
        flt = FlowFilter.load(given)
        if flt.depth != d:
            raise InputError(f"was trained at depth {flt.depth}, but is given for depth {d}", path=given)
        def copy() -> None:
            with atomic_path(path) as tmp:
                shutil.copyfile(given, tmp)

        _on_main(copy)
        return FilterFit(str(given), flt.chosen_epoch, flt.config.epochs, 0.0)
    cfg = ctx.plan.filter_config()
    t0 = time.perf_counter()
    use_val = val if (val is not None and cfg.select in VAL_SELECTS) else None
    if cfg.select in VAL_SELECTS and use_val is None:
        raise TrainingError(f"depth {d}: no validation sample is left for FilterConfig.select {cfg.select}",
                            hint="lower CascadePlan.num_depths, or choose the filter epoch with good-clusters or last")
    router = str(ctx.out / "baseline.safetensors") if cfg.routing == "posterior" else None  # flow/router.py
    run = FilterRun(depth=d, router=router, allow_singletons=True if ctx.plan.allow_singletons else None)
    with renamed("FilterRun.allow_singletons", "CascadePlan.allow_singletons"):
        flt = fit_filter_file(train, path, cfg, run, val=use_val, device=ctx.device, checkpoint_every=0,
                              command="fit-cascade: fit-filter", on_warning=ctx.warn)
    epoch = flt.chosen_epoch
    assert epoch is not None  # a filter just fitted records the epoch it kept
    kept = flt.history[epoch - 1]
    return FilterFit(None, epoch, cfg.epochs, round(time.perf_counter() - t0, 2),
                     good_clusters=flt.stats.get("good_clusters"), val_separation=kept.get("val_separation"))


def _split(ctx: _Ctx, d: int, inputs: list[Path], ddir: Path) -> SplitReport:
    """`dlsa split FILTER TRAIN [VAL] -o depthD/`: tables, routed and rest files, split.json."""
    from dlsa_cli.flow.config import SplitConfig
    from dlsa_cli.flow.stage import split_files

    return split_files(ddir / "filter.safetensors", inputs, ddir, SplitConfig(batch_size=ctx.plan.split_batch_size),
                       device=ctx.device, command="fit-cascade: split")


def _routing(split: SplitReport, name: str) -> RoutedCounts | None:
    """Routed counts of train or val (None: not split), and head-tail separation (tail share of the routed samples)."""
    r = split.files.get(name)
    if r is None:
        return None
    return RoutedCounts(r.samples, r.routed, r.rest, r.separation, None if r.tail_share is None else r.tail_share.all)


def _fit_classifier(ctx: _Ctx, name: str, train: Path, val: Path | None, cfg: TrainConfig, *, init: Path | None,
                    filter_path: Path | None = None, weigh: bool) -> ClassifierFit:
    """`dlsa fit-classifier TRAIN [--val VAL] [--val-weights-from WHOLE_VAL] ...` into RUNDIR/NAME.safetensors."""
    from dlsa_cli.classify.stage import fit_classifier_file
    from dlsa_cli.io.features import num_classes, read_labels

    whole = ctx.val if (weigh and val is not None and ctx.val is not None and ctx.plan.val_weights) else None
    counts = None
    if whole is not None:
        c = num_classes(read_labels(train, require_labels=True))
        counts = np.bincount(read_labels(whole, require_labels=True).require_labels(), minlength=c)
    offset = None if (ctx.train_offset is None or name == "baseline") else _offset_rows(ctx, train)
    with as_branch() if name != "baseline" else contextlib.nullcontext():
        fit = fit_classifier_file(train, ctx.out / f"{name}.safetensors", cfg, val=val, init=init,
                                  filter_path=filter_path, val_class_counts=counts, train_offset=offset,
                                  from_scratch=init is None and name != "baseline", device=ctx.device,
                                  command="fit-cascade: fit-classifier")
    rep, clf = fit.report, fit.classifier
    return ClassifierFit(
        kind=clf.kind, start="scratch" if init is None else init.name, epoch=rep.epoch, epochs=cfg.epochs,
        kept_start=rep.epoch == 0, lr=rep.lr, train_samples=rep.train_samples, val_samples=rep.val_samples,
        val_source=rep.val_source, val_weighted=whole is not None, val_balanced_accuracy=rep.val_balanced,
        val_accuracy=rep.val_accuracy, seconds=round(fit.seconds, 2),
    )


def _offset_rows(ctx: _Ctx, part_path: Path) -> np.ndarray:
    """The rows of `train_offset` for a routed / rest part, found by its ids (the row index when TRAIN has none)."""
    from dlsa_cli.io.features import read_labels

    offset = ctx.train_offset
    assert offset is not None  # asked for only when fit_cascade was given a train_offset
    part = read_labels(part_path)
    whole = read_labels(ctx.train)  # ids only: the matrix stays on disk
    ids = whole.ids if whole.ids is not None else np.arange(whole.n)
    if offset.shape[0] != whole.n:
        raise InputError(f"train_offset has {offset.shape[0]} rows for {whole.n} training samples", path=ctx.train)
    if part.ids is None:
        raise InputError("has no ids to find its rows of train_offset by", path=part_path)
    row = {k: i for i, k in enumerate(ids.tolist())}
    return offset[[row[k] for k in part.ids.tolist()]]


# ----------------------------------------------------------------------------- the report


def _report(ctx: _Ctx, base: ClassifierStage, depths: list[DepthStage], final: ClassifierStage,
            seconds: float) -> CascadeReport:
    """report.json: the settings, each stage's record, and whether DLSA changed anything."""
    branches = [r.classifier for r in depths] + [final.classifier]
    stages: list[ClassifierStage | DepthStage] = [base, *depths, final]
    return CascadeReport(
        out_dir=str(ctx.out),
        manifest=MANIFEST,
        train=str(ctx.train.resolve()),
        val=None if ctx.val is None else str(ctx.val.resolve()),
        num_depths=ctx.plan.num_depths,
        device=str(ctx.device),
        plan=ctx.plan.to_dict(),
        settings=ctx.plan.to_tables(),  # the config file that repeats this run (`dlsa inspect RUN --config`)
        baseline=base,
        depths=depths,
        final=final,
        unchanged=not ctx.plan.from_scratch and all(b.kept_start for b in branches),
        resumed=any(r.reused for r in stages),
        seconds=round(seconds, 2),
    )
