"""Splitting a feature file of any size, in one process or sharded over torchrun's ranks.

Pass 1 (every rank): each rank reads its contiguous rows in batches, scores
them and hands the per-sample columns to rank 0 one round at a time; rank 0
writes them into the split table (one Parquet part per rank, joined in rank
order, which is input order), keeps `routed`, `cluster`, `log_likelihood`
(and `latent`) in temporary memory-mapped files and counts what the report
needs. Pass 2 (rank 0): with the routed and rest counts known, the two
feature files are sized from their headers and filled batch by batch from the
input. Memory grows with the batch, not with N; the temporary columns live in
files (page cache, not anonymous memory).

Outputs, report and ids are those of `dlsa_cli.flow.split.split` for one
process; string ids past `IDS_IN_HEADER_MAX` bytes go to byte tensors.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlsa_cli.errors import InputError, NonFiniteError
from dlsa_cli.evaluation.metrics import FEW_BELOW, MANY_ABOVE, TAIL_AT_MOST, shot_groups, tail_classes
from dlsa_cli.evaluation.tally import GroupCounts
from dlsa_cli.flow.filter import FlowFilter
from dlsa_cli.flow.summary import ByPart, HeadTail, SplitFileReport, SplitOutputs
from dlsa_cli.io.features import feature_info
from dlsa_cli.io.stream import IDS_IN_HEADER_MAX, RowBatch, iter_rows, stream_features, stream_table
from dlsa_cli.runtime import distributed as dist

__all__ = ["ReportCounter", "split_file"]

_PARTS = ("routed", "rest", "all")


class ReportCounter:
    """Accumulates, batch by batch, what `split_report` computes from whole arrays."""

    def __init__(self, filt: FlowFilter, has_labels: bool):
        self.filt = filt
        self.has_labels = has_labels
        self.n = {p: 0 for p in _PARTS}
        self.finite = {p: 0 for p in _PARTS}  # rows with a finite log p(x), over which the mean is taken
        self.ll_sum = {p: 0.0 for p in _PARTS}
        self.groups = {p: {g: 0 for g in ("many", "medium", "few")} for p in _PARTS}
        self.tail = {p: 0 for p in _PARTS}
        self._g = shot_groups(filt.train_counts, MANY_ABOVE, FEW_BELOW)  # (C,)
        self._t = tail_classes(filt.train_counts, TAIL_AT_MOST)  # (C,)

    def add(self, routed: np.ndarray, ll: np.ndarray, labels: np.ndarray | None) -> None:
        ok = np.isfinite(ll)
        for p, m in (("routed", routed), ("rest", ~routed), ("all", np.ones_like(routed))):
            self.n[p] += int(m.sum())
            self.finite[p] += int((m & ok).sum())
            self.ll_sum[p] += float(ll[m & ok].sum())
            if labels is not None:
                g, t = self._g[labels[m]], self._t[labels[m]]
                for name in ("many", "medium", "few"):
                    self.groups[p][name] += int((g == name).sum())
                self.tail[p] += int(t.sum())

    def report(self) -> SplitFileReport:
        """The report `split_report` gives for the same rows."""
        n = self.n["all"]
        rep = SplitFileReport(
            samples=n, routed=self.n["routed"], rest=self.n["rest"],
            routed_share=self.n["routed"] / n if n else 0.0, rest_share=1 - self.n["routed"] / n if n else 0.0,
            threshold=self.filt.threshold, routing=self.filt.routing, depth=self.filt.depth,
            mean_log_likelihood=ByPart(*(self.ll_sum[p] / self.finite[p] if self.finite[p] else None for p in _PARTS)),
            nonfinite=n - self.finite["all"],  # rows whose log p(x) is NaN or infinite (never routed)
            has_labels=self.has_labels, many_above=MANY_ABOVE, few_below=FEW_BELOW, tail_at_most=TAIL_AT_MOST,
        )
        if not self.has_labels:
            return rep
        rep.groups = ByPart(*(GroupCounts(**self.groups[p]) for p in _PARTS))
        rep.head_tail = ByPart(*(HeadTail(self.n[p] - self.tail[p], self.tail[p]) for p in _PARTS))
        rep.tail_share = ByPart(*(self.tail[p] / self.n[p] if self.n[p] else None for p in _PARTS))
        rep.separation = rep.tail_share.routed
        return rep


def _score_batch(filt: FlowFilter, b: RowBatch, path: Path, n: int, *, device: torch.device | None, latent: bool,
                 allow_nonfinite: bool = False) -> dict[str, np.ndarray]:
    """The split table's columns (and latent) for one batch of rows (of a file of n);
    `finite` with `allow_nonfinite`."""
    if b.labels is not None and b.labels.size and b.labels.max() >= filt.num_classes:
        raise InputError(f"label {int(b.labels.max())} is out of range for the filter's {filt.num_classes} classes",
                         path=path)
    try:
        sc = filt.score(b.features, batch_size=len(b.features) or 1, device=device, latent=latent,
                        allow_nonfinite=allow_nonfinite)
    except NonFiniteError as e:  # rows of the file, not of the batch (those of the first such batch)
        raise NonFiniteError.build(e.what, [b.start + int(r) for r in e.rows], n, path=path, hint=e.hint) from None
    cols: dict[str, np.ndarray] = {"id": b.ids if b.ids is not None else np.arange(b.start, b.stop, dtype=np.int64)}
    if b.labels is not None:
        cols["label"] = b.labels.astype(np.int64)
    cols.update(cluster=sc.cluster, log_likelihood=sc.log_likelihood, routed=sc.routed,
                depth=np.full(len(sc.routed), filt.depth, dtype=np.int32))
    if allow_nonfinite:
        cols["finite"] = np.isfinite(sc.log_likelihood)
    if latent and sc.latent is not None:  # score gives latents when asked
        cols["latent"] = sc.latent
    return cols


class _Columns:
    """Rank 0's temporary per-sample columns (memory-mapped files in the staging folder), written by absolute row."""

    def __init__(self, folder: Path, name: str, n: int, dim: int, latent: bool):
        def mm(suffix: str, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
            return np.lib.format.open_memmap(folder / f".{name}.{suffix}.npy", mode="w+", dtype=dtype, shape=shape)

        rows = max(n, 1)  # a memmap cannot be empty
        self.routed = mm("routed", np.bool_, (rows,))
        self.cluster = mm("cluster", np.int64, (rows,))
        self.log_likelihood = mm("ll", np.float64, (rows,))
        self.latent = mm("latent", np.float32, (rows, dim)) if latent else None
        self.str_ids: dict[str, dict[int, list[np.ndarray]]] = {"routed": {}, "rest": {}}  # part -> rank -> batches
        self.id_bytes = {"routed": 0, "rest": 0}

    def put(self, start: int, cols: dict[str, np.ndarray], rank: int) -> None:
        stop = start + len(cols["routed"])
        self.routed[start:stop] = cols["routed"]
        self.cluster[start:stop] = cols["cluster"]
        self.log_likelihood[start:stop] = cols["log_likelihood"]
        if self.latent is not None:
            self.latent[start:stop] = cols["latent"]
        ids = cols["id"]
        if ids.dtype.kind == "U":  # string ids: count their bytes, keep them while they would fit a header
            for part, m in (("routed", cols["routed"]), ("rest", ~cols["routed"])):
                self.id_bytes[part] += sum(len(i.encode()) for i in ids[m])
                if self.id_bytes[part] <= IDS_IN_HEADER_MAX:
                    self.str_ids[part].setdefault(rank, []).append(ids[m])

    def header_ids(self, part: str) -> list[str] | None:
        """The part's string ids in input order when they fit a header; None when they go to tensors."""
        if self.id_bytes[part] > IDS_IN_HEADER_MAX:
            return None
        by_rank = self.str_ids[part]
        return [str(i) for r in sorted(by_rank) for batch in by_rank[r] for i in batch]


def split_file(
    filt: FlowFilter,
    path: str | Path,
    stage: Path | None,
    name: str,
    *,
    batch_size: int = 4096,
    device: torch.device | None = None,
    latent: bool = False,
    prov: dict[str, Any] | None = None,
    table_meta: dict[str, Any] | None = None,
    part_meta: dict[str, dict[str, Any]] | None = None,
    allow_nonfinite: bool = False,
) -> SplitFileReport | None:
    """Score and divide one feature file into `stage` (rank 0's staging folder; None on other ranks).

    Writes NAME.parquet, NAME.routed.safetensors and NAME.rest.safetensors as
    `split` does; returns the file's report entry on rank 0 (None elsewhere).
    A NaN or infinite log p(x) stops it naming the rows, unless
    `allow_nonfinite`: then the row goes to the rest, the table flags it in a
    `finite` column and the report counts it (`nonfinite`).
    Every rank must call it; a rank's bad input becomes every rank's error.
    """
    p = Path(path)
    info = feature_info(p)
    filt.check_dim(info.dim, p)
    if info.n == 0:
        raise InputError("has no rows", path=p)
    me = dist.current()
    lo, hi = dist.shard_range(info.n)
    rounds = math.ceil(max(b - a for a, b in dist.shard_ranges(info.n)) / batch_size)
    prov = {**(prov or {}), **dist.provenance_fields(info.n)}
    tmp = None if stage is None else stage / f".{name}.columns"
    if tmp is not None:
        tmp.mkdir()
    store = _Columns(tmp, name, info.n, info.dim, latent) if tmp is not None else None
    counter = ReportCounter(filt, info.has_labels) if me.is_main else None
    try:
        table_ctx = (stream_table(stage / f"{name}.parquet", kind="split", meta=table_meta, prov=prov,
                                  parts=me.world_size)
                     if stage is not None else contextlib.nullcontext(None))
        with table_ctx as table:
            batches = iter_rows(p, batch_size, lo, hi)
            for _ in range(rounds):
                item = dist.collective(lambda: _next_scored(filt, batches, p, info.n, device, latent, allow_nonfinite))
                _receive(dist.gather_object(item), table, store, counter)
            if table is not None and counter is not None:  # both rank 0's
                table.meta["report"] = counter.report().to_json()

        def write_parts() -> dict[str, str | None] | None:
            if stage is None:
                return None
            # rank 0 holds the staging folder, the columns and the counts
            assert store is not None and counter is not None
            return _write_parts(p, info, stage, name, store, counter.report(), batch_size, part_meta or {}, prov)

        outputs = dist.collective(write_parts)
    finally:
        if tmp is not None:
            import shutil

            del store
            shutil.rmtree(tmp, ignore_errors=True)
    if counter is None:
        return None
    rep = counter.report()
    written = outputs or {}
    rep.input, rep.outputs = str(path), SplitOutputs(f"{name}.parquet", written.get("routed"), written.get("rest"))
    return rep


def _receive(gathered: list | None, table: Any, store: _Columns | None, counter: ReportCounter | None) -> None:
    """Rank 0: one round's (start, columns) of every rank into the table's rank part, the columns and the counts."""
    for r, got in enumerate(gathered or []):
        if got is None or table is None or store is None or counter is None:  # all four rank 0's
            continue
        start, cols = got
        table.write({k: v for k, v in cols.items() if k != "latent"}, part=r)
        store.put(start, cols, r)
        counter.add(cols["routed"], cols["log_likelihood"], cols.get("label"))


def _next_scored(filt: FlowFilter, batches: Any, p: Path, n: int, device: torch.device | None, latent: bool,
                 allow_nonfinite: bool) -> tuple | None:
    """(start, columns) of this rank's next batch, or None when its rows are done."""
    b = next(batches, None)
    if b is None:
        return None
    return b.start, _score_batch(filt, b, p, n, device=device, latent=latent, allow_nonfinite=allow_nonfinite)


def _write_parts(p: Path, info: Any, stage: Path, name: str, store: _Columns, report: SplitFileReport,
                 batch_size: int, part_meta: dict[str, dict[str, Any]], prov: dict[str, Any]) -> dict[str, str | None]:
    """Pass 2 (rank 0): NAME.routed / NAME.rest feature files, sized from the counts, filled from the input in order."""
    dtype = np.float16 if info.dtype == "float16" else np.float32
    extra: dict[str, tuple[Any, tuple[int, ...]]] = {"cluster": (np.int64, ()), "log_likelihood": (np.float64, ())}
    if store.latent is not None:
        extra["latent"] = (np.float32, (info.dim,))
    outputs: dict[str, str | None] = {}
    in_header: dict[str, bool] = {}  # string ids small enough for the header go there whole
    with contextlib.ExitStack() as stack:
        sinks = {}
        for part in ("routed", "rest"):
            count = report.routed if part == "routed" else report.rest
            if count == 0:
                outputs[part] = None
                continue
            header_ids = store.header_ids(part) if info.ids == "str" else None
            in_header[part] = header_ids is not None
            ids_kind = None if header_ids is not None else ("str" if info.ids == "str" else "int")
            sinks[part] = stack.enter_context(stream_features(
                stage / f"{name}.{part}.safetensors", count, info.dim, dtype=dtype, labels=info.has_labels,
                ids=ids_kind, ids_bytes=store.id_bytes[part], header_ids=header_ids, extra=extra,
                meta=part_meta.get(part), prov=prov))
            outputs[part] = f"{name}.{part}.safetensors"
        for b in iter_rows(p, batch_size, check_finite=False):
            routed = np.asarray(store.routed[b.start : b.stop])
            ids = b.ids if b.ids is not None else np.arange(b.start, b.stop, dtype=np.int64)
            for part, sink in sinks.items():
                m = routed if part == "routed" else ~routed
                if not m.any():
                    continue
                more = {"cluster": store.cluster[b.start : b.stop][m],
                        "log_likelihood": store.log_likelihood[b.start : b.stop][m]}
                if store.latent is not None:
                    more["latent"] = store.latent[b.start : b.stop][m]
                sink.append(b.features[m], None if b.labels is None else b.labels[m],
                            None if in_header[part] else ids[m], **more)
    return outputs
