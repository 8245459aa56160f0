"""Predictions of a classifier or a cascade, and the predictions table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from dlsa_cli.cascade.model import Cascade
from dlsa_cli.classify.model import Classifier
from dlsa_cli.errors import InputError, ModelMismatchError, NonFiniteError
from dlsa_cli.io.features import FeatureSet
from dlsa_cli.io.files import (
    file_sha256,
)


@dataclass
class Prediction:
    """Per-sample outputs of `predict` (route fields only for a cascade)."""

    logits: np.ndarray  # (N, C)
    route_depth: np.ndarray | None = None  # (N,) 0 = regular


def predict(
    model: Classifier | Cascade,
    fs: FeatureSet,
    *,
    batch_size: int = 4096,
    device: torch.device | str = "cpu",
    flt: Any = None,
) -> Prediction:
    """Logits of every sample of `fs` (and its route, for a cascade).

    A cluster-aided classifier alone needs its filter (`flt`).
    """
    from dlsa_cli.io.features import num_classes

    labels_c = None
    if fs.labels is not None and ("num_classes" in fs.meta or "class_names" in fs.meta or "train_counts" in fs.meta):
        labels_c = num_classes(fs)
    model.check_features(fs.dim, labels_c, path=fs.path)
    if fs.labels is not None and fs.labels.size and int(fs.labels.max()) >= model.num_classes:
        raise ModelMismatchError(
            f"label {int(fs.labels.max())} is out of range for the model's {model.num_classes} classes",
            path=fs.path,
            hint="use a model trained on this label set",
        )
    try:
        pred = _predict(model, fs, batch_size=batch_size, device=device, flt=flt)
    except NonFiniteError as e:
        raise NonFiniteError.build(e.what, e.rows, e.total, path=fs.path, hint=e.hint) from None
    bad = np.flatnonzero(~np.isfinite(pred.logits).all(1))
    if bad.size:
        raise NonFiniteError.build(
            "the classifier's score", bad, fs.n, path=fs.path,
            hint="those rows hold values far beyond the training features'; check them with `dlsa inspect`",
        )
    return pred


def _predict(model: Classifier | Cascade, fs: FeatureSet, *, batch_size: int, device: Any, flt: Any) -> Prediction:
    if isinstance(model, Cascade):
        logits, route = model.logits(fs.features, batch_size=batch_size, device=device)
        return Prediction(logits, route)
    if model.kind == "cluster-aided":
        if flt is None:
            raise InputError(
                "a cluster-aided classifier alone needs its filter",
                path=model.path,
                hint="pass --filter FILTER, or predict with the cascade it belongs to",
            )
        rec = (model.meta.get("filter") or {}).get("sha256")
        if flt.path is not None and rec != file_sha256(flt.path):
            raise ModelMismatchError(
                "the classifier was trained with another filter", path=flt.path,
                hint="pass the filter it was trained with"
            )
        from dlsa_cli.classify.data import cluster_inputs

        _, side, prior = cluster_inputs(flt, fs.features, side_input=model.side_input or "features", device=device)
        return Prediction(model.logits(fs.features, side=side, prior=prior, batch_size=batch_size, device=device))
    return Prediction(model.logits(fs.features, batch_size=batch_size, device=device))


def prediction_columns(fs: FeatureSet, pred: Prediction, *, topk: int = 5, num_filters: int = 0) -> pa.Table:
    """The predictions table: id, label, prediction, score, top-k, and route columns for a cascade."""
    logits = torch.from_numpy(pred.logits)
    probs = torch.softmax(logits, dim=1)  # (N, C)
    k = max(1, min(int(topk), probs.shape[1]))
    top_p, top_i = probs.topk(k, dim=1)  # (N, k)
    n = probs.shape[0]
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
    ids = fs.ids if fs.ids is not None else np.arange(n, dtype=np.int64)
    cols: dict[str, Any] = {"id": pa.array(ids)}
    if fs.labels is not None:
        cols["label"] = pa.array(fs.labels.astype(np.int64))
    cols["prediction"] = pa.array(top_i[:, 0].numpy().astype(np.int64))
    cols["score"] = pa.array(top_p[:, 0].numpy().astype(np.float32))
    cols["topk_labels"] = pa.ListArray.from_arrays(offsets, pa.array(top_i.reshape(-1).numpy().astype(np.int64)))
    cols["topk_scores"] = pa.ListArray.from_arrays(offsets, pa.array(top_p.reshape(-1).numpy().astype(np.float32)))
    if pred.route_depth is not None:
        rd = pred.route_depth
        cluster = rd > 0
        cols["route"] = pa.array(np.where(cluster, np.char.add("cluster@", rd.astype(str)), "regular").astype(str))
        cols["depth"] = pa.array(np.where(cluster, rd, num_filters).astype(np.int32))
        cols["branch"] = pa.array(np.where(cluster, "cluster", "regular").astype(str))
    return pa.table(cols)
