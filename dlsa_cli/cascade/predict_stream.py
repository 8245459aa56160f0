"""Predicting a feature file of any size, in one process or sharded over torchrun's ranks.

Each rank reads its contiguous rows in batches and predicts them; rank 0
receives every round's tables and writes the predictions table by row groups
(one part per rank, joined in rank order, which is input order). Memory grows
with the batch, not with N. The table is `predict.prediction_columns` of
every batch, in input order; `PredictReport` is what `predict` reports.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlsa_cli.cascade.model import Cascade
from dlsa_cli.cascade.predict import predict, prediction_columns
from dlsa_cli.classify.model import Classifier
from dlsa_cli.errors import InputError
from dlsa_cli.io.features import FeatureSet, feature_info
from dlsa_cli.io.stream import iter_rows, stream_table
from dlsa_cli.runtime import distributed as dist

__all__ = ["PredictReport", "predict_file"]


@dataclass
class PredictReport:
    """What `predict` reports: how many samples, by which model, and (when known) accuracy and routes."""

    samples: int
    model: str  # "cascade" or the classifier's kind
    accuracy: float | None = None  # with labels
    routes: dict[str, int] | None = None  # a cascade's samples per route
    output: str | None = None  # the table written (set by the caller)
    seconds: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The fields; `accuracy` only with labels, `routes` only for a cascade."""
        return {k: v for k, v in asdict(self).items() if v is not None or k not in ("accuracy", "routes")}


def _predict_batch(model: Classifier | Cascade, b: Any, info: Any, *, topk: int, batch_size: int,
                   device: torch.device | str, flt: Any) -> tuple[Any, int, dict[str, int]]:
    """(table, correct predictions, route counts) of one batch of rows."""
    ids = b.ids if b.ids is not None else np.arange(b.start, b.stop, dtype=np.int64)
    fs = FeatureSet(b.features, b.labels, ids, dict(info.meta), info.path)
    pred = predict(model, fs, batch_size=batch_size, device=device, flt=flt)
    table = prediction_columns(fs, pred, topk=topk, num_filters=model.depth if isinstance(model, Cascade) else 0)
    correct = int((pred.logits.argmax(1) == b.labels).sum()) if b.labels is not None else 0
    routes: dict[str, int] = {}
    if pred.route_depth is not None:
        names, cnt = np.unique(table.column("route").to_numpy(zero_copy_only=False), return_counts=True)
        routes = {str(a): int(c) for a, c in zip(names, cnt, strict=True)}
    return table, correct, routes


def _meta(model: Classifier | Cascade, path: Path, topk: int, num_classes: int) -> dict[str, Any]:
    counts = model.train_counts if isinstance(model, Cascade) else np.asarray(model.meta.get("train_counts", []))
    meta: dict[str, Any] = {
        "num_classes": model.num_classes,
        "model": "cascade" if isinstance(model, Cascade) else model.kind,
        "features": str(path),
        "topk": max(1, min(int(topk), num_classes)),
    }
    if len(counts):
        meta["train_counts"] = [int(c) for c in counts]
    return meta


def predict_file(
    model: Classifier | Cascade,
    path: str | Path,
    out: str | Path,
    *,
    topk: int = 5,
    batch_size: int = 4096,
    device: torch.device | str = "cpu",
    flt: Any = None,
    prov: dict[str, Any] | None = None,
) -> PredictReport | None:
    """Write the predictions table of a feature file (kind "predictions"); the report on rank 0, None elsewhere."""
    p = Path(path)
    info = feature_info(p)
    if info.n == 0:
        raise InputError(f"features are empty (shape ({info.n}, {info.dim}))", path=p)
    model.check_features(info.dim, None, path=p)
    me = dist.current()
    lo, hi = dist.shard_range(info.n)
    rounds = math.ceil(max(b - a for a, b in dist.shard_ranges(info.n)) / batch_size)
    prov = {**(prov or {}), **dist.provenance_fields(info.n)}
    meta = _meta(model, p, topk, model.num_classes)
    has_route = isinstance(model, Cascade)
    correct = 0
    routes: dict[str, int] = {}
    sink_ctx = stream_table(out, kind="predictions", meta=meta, prov=prov,
                            parts=me.world_size) if me.is_main else contextlib.nullcontext()
    with sink_ctx as sink:
        batches = iter_rows(p, batch_size, lo, hi)

        def step() -> Any:
            b = next(batches, None)
            return None if b is None else _predict_batch(model, b, info, topk=topk, batch_size=batch_size,
                                                         device=device, flt=flt)

        for _ in range(max(rounds, 1)):
            item = dist.collective(step)
            for r, got in enumerate(dist.gather_object(item) or []):
                if got is None or sink is None:
                    continue
                table, c, rt = got
                sink.write({name: table.column(name) for name in table.column_names}, part=r)
                correct += c
                for k, v in rt.items():
                    routes[k] = routes.get(k, 0) + v
        if sink is not None and has_route:
            sink.meta["routes"] = dict(sorted(routes.items()))
    dist.barrier()
    if not me.is_main:
        return None
    return PredictReport(info.n, meta["model"], accuracy=correct / info.n if info.has_labels else None,
                         routes=dict(sorted(routes.items())) if has_route else None)
