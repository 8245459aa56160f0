"""Splitting feature files with a filter: routed and rest parts, the split table and report."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlsa_cli.errors import InputError, OutputError
from dlsa_cli.evaluation.metrics import (
    FEW_BELOW,
    MANY_ABOVE,
    TAIL_AT_MOST,
    shot_groups,
    tail_classes,
)
from dlsa_cli.evaluation.tally import GroupCounts
from dlsa_cli.flow.filter import FilterScores, FlowFilter
from dlsa_cli.flow.summary import ByPart, HeadTail, SplitFileReport, SplitReport
from dlsa_cli.io.features import feature_info
from dlsa_cli.io.files import (
    check_output_dir,
    file_sha256,
    load_json_text,
    staging_dir,
    write_json,
)
from dlsa_cli.io.formats import strip_suffix

# ----------------------------------------------------------------------------- split


def split_report(
    filt: FlowFilter,
    labels: np.ndarray | None,
    scores: FilterScores,
    *,
    many_above: int = MANY_ABOVE,
    few_below: int = FEW_BELOW,
    tail_at_most: int = TAIL_AT_MOST,
) -> SplitFileReport:
    """Counts, shares, group make-up and head-tail separation of one scored file.

    Groups use the filter's `train_counts` (the ORIGINAL training set).
    Separation (paper Fig. 7) = share of routed samples whose class
    is tail (train count <= tail_at_most); `tail_share` is the same share over
    the whole file, the value a random routing would get.
    """
    n = int(scores.routed.shape[0])
    finite = np.isfinite(scores.log_likelihood)
    parts = ByPart(scores.routed, ~scores.routed, np.ones(n, dtype=bool))
    ll = scores.log_likelihood
    rep = SplitFileReport(
        samples=n,
        routed=int(scores.routed.sum()),
        rest=int(n - scores.routed.sum()),
        routed_share=float(scores.routed.mean()) if n else 0.0,
        rest_share=float(1 - scores.routed.mean()) if n else 0.0,
        threshold=filt.threshold,
        routing=filt.routing,
        depth=filt.depth,
        mean_log_likelihood=ByPart(*(float(ll[m & finite].mean()) if (m & finite).any() else None
                                     for _, m in parts.items())),
        nonfinite=int((~finite).sum()),
        has_labels=labels is not None,
        many_above=many_above,
        few_below=few_below,
        tail_at_most=tail_at_most,
    )
    if labels is None:
        return rep
    groups = shot_groups(filt.train_counts, many_above, few_below)  # (C,)
    tail = tail_classes(filt.train_counts, tail_at_most)  # (C,)
    g, t = groups[labels], tail[labels]
    rep.groups = ByPart(*(GroupCounts(*(int((g[m] == name).sum()) for name in ("many", "medium", "few")))
                          for _, m in parts.items()))
    rep.head_tail = ByPart(*(HeadTail(int((~t[m]).sum()), int(t[m].sum())) for _, m in parts.items()))
    rep.tail_share = ByPart(*(float(t[m].mean()) if m.any() else None for _, m in parts.items()))
    rep.separation = rep.tail_share.routed
    return rep


def _part_meta(filt: FlowFilter, fs: Any, part: str, filter_sha: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "num_classes": filt.num_classes,
        "train_counts": filt.train_counts.tolist(),
        "depth": filt.depth,
        "part": part,
        "filter_sha256": filter_sha,
        "threshold": filt.threshold,
        "source": None if fs.path is None else str(fs.path),
    }
    if "class_names" in fs.meta:
        meta["class_names"] = fs.meta["class_names"]
    return meta


def split(
    filt: FlowFilter | str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    batch_size: int = 4096,
    device: str | torch.device | None = None,
    latent: bool = False,
    prov: dict | None = None,
    on_file: Callable[[str, SplitFileReport], None] | None = None,
    allow_nonfinite: bool = False,
) -> SplitReport:
    """Split feature files with a filter and write, for each input NAME.ext, into out_dir:

    - NAME.parquet (kind "split"): id, label (when known), cluster, log_likelihood, routed, depth;
    - NAME.routed.safetensors / NAME.rest.safetensors: feature files with
      `cluster`, `log_likelihood` (and `latent` when asked) per sample; a part
      with no sample is not written (its entry in the report says so);
    - split.json: the report of every input.

    A row whose log p(x) is NaN or infinite stops the split (one error naming
    the file and rows) unless `allow_nonfinite`: then it goes to the rest, the
    table flags it in a `finite` column and the report counts it (`nonfinite`).

    Everything is written into a staging folder first and moved into out_dir
    only when every input succeeded; the parts that a previous split.json in
    out_dir listed are removed then (and nothing else there). Nothing written
    or removed may be one of the inputs (checked before any scoring). Returns
    the report that split.json holds.
    """
    if not isinstance(filt, FlowFilter):
        filt = FlowFilter.load(filt, device=device or "cpu")
    if batch_size < 1:
        raise InputError(f"SplitConfig.batch_size {batch_size}: must be at least 1")
    out = Path(out_dir)
    names = [strip_suffix(Path(p).name) for p in inputs]
    if len(set(names)) != len(names):
        dup = next(nm for nm in names if names.count(nm) > 1)
        raise InputError(f"two inputs share the name '{dup}'; their outputs would collide", hint="rename one of them")
    previous = previous_split_outputs(out)
    planned = [f"{nm}{sfx}" for nm in names for sfx in (".parquet", ".routed.safetensors", ".rest.safetensors")]
    check_output_dir(out, writes=[*planned, "split.json", *previous], inputs=[filt.path, *inputs])
    _refuse_foreign(out, planned, previous)
    filter_sha = file_sha256(filt.path) if filt.path is not None and filt.path.is_file() else None
    report = SplitReport(None if filt.path is None else str(filt.path), filter_sha, filt.depth, filt.threshold,
                         filt.routing, filt.share)
    from dlsa_cli.runtime import distributed as dist

    stage = staging_dir(out) if dist.is_main() else None  # under torchrun rank 0 alone writes
    try:
        for p, name in zip(inputs, names, strict=True):
            file_rep = _split_file(filt, p, name, stage, filter_sha, batch_size=batch_size, device=device,
                                   latent=latent,
                                  prov=prov, allow_nonfinite=allow_nonfinite)
            if file_rep is None:
                continue
            report.files[name] = file_rep
            if on_file is not None:
                on_file(name, file_rep)
        if stage is not None:
            write_json(stage / "split.json", report.to_json())
            _publish(stage, out, previous)
    finally:
        if stage is not None:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(stage)
    return dist.broadcast_object(report)  # every rank returns rank 0's report, once its files are in place


def _split_file(filt: FlowFilter, p: str | Path, name: str, stage: Path | None, filter_sha: str | None, *,
               batch_size: int, device: Any, latent: bool, prov: dict | None,
                allow_nonfinite: bool) -> SplitFileReport | None:
    """One input, streamed in batches and sharded over torchrun's ranks; its report entry on rank 0 (None elsewhere)."""
    from dlsa_cli.flow.split_stream import split_file

    info = feature_info(p)
    meta_common = {"num_classes": filt.num_classes, "train_counts": filt.train_counts.tolist()}
    return split_file(
        filt, p, stage, name, batch_size=batch_size, device=device, latent=latent, prov=prov,
        table_meta={**meta_common, "depth": filt.depth, "threshold": filt.threshold, "filter_sha256": filter_sha,
                    "source": str(p)},
        part_meta={part: _part_meta(filt, info, part, filter_sha) for part in ("routed", "rest")},
        allow_nonfinite=allow_nonfinite,
    )


def _refuse_foreign(out: Path, planned: Sequence[str], previous: Sequence[str]) -> None:
    """The folder rule: a split replaces only files a split wrote there (those split.json lists)."""
    foreign = [nm for nm in planned if (out / nm).exists() and nm not in previous]
    if foreign:
        raise OutputError(f"-o {out}: {foreign[0]} is there and no earlier split wrote it; writing would replace it",
                          hint="pick a new or empty folder for -o")


def previous_split_outputs(out: Path) -> list[str]:
    """File names (inside `out`) that a split.json already there lists as its outputs.

    Only plain names are taken (no folders, no `..`): the report cannot point
    outside its folder. An unreadable split.json lists nothing.
    """

    try:
        old = load_json_text((out / "split.json").read_text(), where=out / "split.json")
        entries = [f.get("outputs", {}) for f in old.get("files", {}).values()]
    except (OSError, ValueError, AttributeError, InputError):
        return []
    names = [v for o in entries if isinstance(o, dict) for v in o.values() if isinstance(v, str)]
    return sorted({v for v in names if v and Path(v).name == v and v not in (".", "..")})


def _publish(stage: Path, out: Path, previous: Sequence[str]) -> None:
    """Move a finished staging folder's files into `out`, removing what the previous split listed."""
    if not out.exists():
        os.replace(stage, out)
        return
    fresh = {f.name for f in stage.iterdir()}
    for name in previous:
        if name not in fresh:
            with contextlib.suppress(FileNotFoundError):
                (out / name).unlink()
    for f in sorted(stage.iterdir()):
        os.replace(f, out / f.name)
