"""The DLSA cascade: how it is described, checked, and run; predictions tables.

A cascade is a folder holding `cascade.json` (the manifest), easy to write by
hand or by a script; paths are relative to the manifest's folder:

    {"dlsa_kind": "cascade",
     "depths": [{"filter": "d1/filter.safetensors", "classifier": "d1/cluster.safetensors"},
                {"filter": "d2/filter.safetensors", "classifier": "d2/cluster.safetensors"}],
     "final": "final.safetensors"}

A sample goes through filter 1: if routed (log p(x) >= the filter's
threshold) the depth-1 cluster-aided classifier predicts it; otherwise it goes
on to filter 2, and so on; what no filter routes is predicted by the final
regular classifier. Routes are therefore exhaustive and disjoint: every
sample gets exactly one prediction.

Loading checks that the files belong together: every filter and classifier
has the same feature dimension and class count, the same original training
counts, filter i was trained at depth i, and each cluster-aided classifier
records the SHA-256 of exactly the filter it sits behind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from dlsa_cli.classifier import Classifier, branch_inputs
from dlsa_cli.errors import InputError, ModelMismatchError
from dlsa_cli.features import FeatureSet
from dlsa_cli.files import file_sha256, read_safetensors_header, require_file, write_json, write_table

__all__ = [
    "MANIFEST",
    "CascadeSpec",
    "Cascade",
    "Prediction",
    "read_manifest",
    "write_manifest",
    "load_model",
    "predict",
    "prediction_columns",
    "write_predictions",
    "summary",
]

MANIFEST = "cascade.json"


@dataclass
class CascadeSpec:
    """The manifest, with paths resolved against its folder."""

    manifest: Path
    filters: list[Path]
    classifiers: list[Path]
    final: Path
    raw: dict[str, Any] = field(default_factory=dict)


def _manifest_path(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST
    if not p.exists():
        raise InputError("cascade manifest does not exist", path=p, hint=f"give a cascade folder holding {MANIFEST}")
    return p


def read_manifest(path: str | Path) -> CascadeSpec:
    """Parse a cascade manifest (the JSON file or its folder); paths resolved, files must exist."""
    p = _manifest_path(path)
    try:
        raw = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"not a readable JSON cascade manifest ({e})", path=p) from None
    if not isinstance(raw, dict) or "final" not in raw or not isinstance(raw.get("depths", []), list):
        raise InputError(
            'a cascade manifest needs "depths": [{"filter": ..., "classifier": ...}, ...] and "final"', path=p
        )
    root = p.parent
    filters, classifiers = [], []
    for i, d in enumerate(raw.get("depths", []), start=1):
        if not isinstance(d, dict) or "filter" not in d or "classifier" not in d:
            raise InputError(f'depth {i} needs "filter" and "classifier" entries', path=p)
        filters.append(require_file(root / d["filter"], f"depth-{i} filter (listed in {p})"))
        classifiers.append(require_file(root / d["classifier"], f"depth-{i} classifier (listed in {p})"))
    final = require_file(root / raw["final"], f"final classifier (listed in {p})")
    return CascadeSpec(p, filters, classifiers, final, raw)


def write_manifest(
    path: str | Path,
    depths: list[tuple[str | Path, str | Path]],
    final: str | Path,
    *,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `cascade.json` (into a folder `path`, or to the file `path`); paths stored relative to it."""
    p = Path(path)
    if p.is_dir() or not p.suffix:
        p = p / MANIFEST
    root = p.parent.resolve()

    def rel(q: str | Path) -> str:
        q = Path(q).resolve()
        try:
            return str(q.relative_to(root))
        except ValueError:
            return str(q)

    obj = {
        "dlsa_kind": "cascade",
        "depths": [{"filter": rel(f), "classifier": rel(c)} for f, c in depths],
        "final": rel(final),
        **(extra or {}),
    }
    write_json(p, obj)
    return p


class Cascade:
    """Loaded filters, cluster-aided classifiers and the final regular classifier."""

    def __init__(self, spec: CascadeSpec, filters: list[Any], classifiers: list[Classifier], final: Classifier):
        self.spec = spec
        self.filters = filters
        self.classifiers = classifiers
        self.final = final

    @property
    def dim(self) -> int:
        return self.final.dim

    @property
    def num_classes(self) -> int:
        return self.final.num_classes

    @property
    def depth(self) -> int:
        return len(self.filters)

    @property
    def train_counts(self) -> np.ndarray:
        return np.asarray(self.final.meta.get("train_counts", []), dtype=np.int64)

    def check_features(self, dim: int, num_classes: int | None, *, path: Path | str | None) -> None:
        self.final.check_features(dim, num_classes, path=path)

    @classmethod
    def load(cls, path: str | Path, *, device: str | torch.device = "cpu") -> Cascade:
        """Read and check a cascade; 'cascade files do not belong together' when they do not."""
        from dlsa_cli.flowfilter import FlowFilter

        spec = read_manifest(path)
        filters = [FlowFilter.load(f, device=device) for f in spec.filters]
        classifiers = [Classifier.load(c) for c in spec.classifiers]
        final = Classifier.load(spec.final)

        def bad(what: str) -> ModelMismatchError:
            return ModelMismatchError(
                f"cascade files do not belong together: {what}",
                path=spec.manifest,
                hint="build every part from the same training data, or fix the manifest",
            )

        if final.kind == "cluster-aided":
            raise bad(f"the final classifier {spec.final.name} is cluster-aided; it must be a regular one")
        counts = np.asarray(final.meta.get("train_counts", []), dtype=np.int64)
        for i, (flt, clf, fp, cp) in enumerate(zip(filters, classifiers, spec.filters, spec.classifiers), start=1):
            if flt.dim != final.dim or clf.dim != final.dim:
                raise bad(f"depth {i}: D is {flt.dim} (filter) / {clf.dim} (classifier) but {final.dim} (final)")
            if flt.num_classes != final.num_classes or clf.num_classes != final.num_classes:
                raise bad(
                    f"depth {i}: {flt.num_classes} (filter) / {clf.num_classes} (classifier) classes "
                    f"but {final.num_classes} (final)"
                )
            if flt.depth != i:
                raise bad(f"{fp.name} was trained at depth {flt.depth} but is listed at depth {i}")
            if clf.kind != "cluster-aided":
                raise bad(f"depth {i}: {cp.name} is a {clf.kind} classifier, not cluster-aided")
            rec = (clf.meta.get("filter") or {}).get("sha256")
            if rec != file_sha256(fp):
                raise bad(f"depth {i}: {cp.name} was trained with another filter than {fp.name}")
            for name, other in (("filter", flt.train_counts), ("classifier", clf.meta.get("train_counts", []))):
                if len(counts) and not np.array_equal(np.asarray(other, dtype=np.int64), counts):
                    raise bad(f"depth {i}: the {name}'s training counts differ from the final classifier's")
        return cls(spec, filters, classifiers, final)

    @torch.no_grad()
    def logits(
        self, x: np.ndarray, *, batch_size: int = 4096, device: torch.device | str = "cpu"
    ) -> tuple[np.ndarray, np.ndarray]:
        """(logits (N, C), route depth (N,) int32: d for cluster@d, 0 for regular) of features (N, D).

        Runs batch by batch, so memory grows with the batch, not with N.
        """
        n = x.shape[0]
        out = np.empty((n, self.num_classes), dtype=np.float32)
        route = np.zeros(n, dtype=np.int32)
        for s in range(0, n, batch_size):
            xb = np.asarray(x[s : s + batch_size], dtype=np.float32)  # (B, D)
            left = np.arange(len(xb))  # rows of this batch still unrouted
            for d, (flt, clf) in enumerate(zip(self.filters, self.classifiers), start=1):
                if len(left) == 0:
                    break
                sc = flt.score(xb[left], batch_size=batch_size, device=device, latent=clf.side_input == "latent")
                take = left[sc.routed]
                if len(take):
                    latent = None if sc.latent is None else sc.latent[sc.routed]
                    side, prior = branch_inputs(flt, xb[take], sc.cluster[sc.routed], latent, clf.side_input)
                    out[s + take] = clf.logits(xb[take], side=side, prior=prior, device=device)
                    route[s + take] = d
                left = left[~sc.routed]
            if len(left):
                out[s + left] = self.final.logits(xb[left], device=device)
        return out, route


def load_model(path: str | Path) -> Classifier | Cascade:
    """A classifier file, or a cascade (its folder or manifest)."""
    p = Path(path)
    if p.is_dir() or p.suffix.lower() == ".json":
        return Cascade.load(p)
    require_file(p, "model file")
    if p.suffix.lower() != ".safetensors":
        raise InputError("a model is a classifier .safetensors file or a cascade folder / cascade.json", path=p)
    _, kind, _, _ = read_safetensors_header(p)
    if kind != "classifier":
        raise ModelMismatchError(
            f"is a dlsa '{kind}' file, not a classifier or cascade" if kind else "is not a dlsa classifier",
            path=p,
            hint="pass a classifier from `dlsa fit-classifier` or a cascade folder",
        )
    return Classifier.load(p)


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
    from dlsa_cli.features import num_classes

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
                "the classifier was trained with another filter", path=flt.path, hint="pass the filter it was trained with"
            )
        from dlsa_cli.classifier import cluster_inputs

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


def write_predictions(
    path: str | Path,
    fs: FeatureSet,
    pred: Prediction,
    model: Classifier | Cascade,
    *,
    topk: int = 5,
    prov: dict | None = None,
) -> dict[str, Any]:
    """Write the predictions table (kind "predictions") atomically; returns a short report."""
    num_filters = model.depth if isinstance(model, Cascade) else 0
    table = prediction_columns(fs, pred, topk=topk, num_filters=num_filters)
    counts = model.train_counts if isinstance(model, Cascade) else np.asarray(model.meta.get("train_counts", []))
    meta: dict[str, Any] = {
        "num_classes": model.num_classes,
        "model": "cascade" if isinstance(model, Cascade) else model.kind,
        "features": None if fs.path is None else str(fs.path),
        "topk": int(table.column("topk_labels")[0].values.__len__()) if table.num_rows else topk,
    }
    if len(counts):
        meta["train_counts"] = [int(c) for c in counts]
    report: dict[str, Any] = {"samples": table.num_rows, "model": meta["model"]}
    if fs.labels is not None:
        report["accuracy"] = float((pred.logits.argmax(1) == fs.labels).mean())
    if pred.route_depth is not None:
        routes = table.column("route").to_numpy(zero_copy_only=False)
        names, cnt = np.unique(routes, return_counts=True)
        report["routes"] = {str(a): int(b) for a, b in zip(names, cnt)}
        meta["routes"] = report["routes"]
    write_table(path, table, kind="predictions", meta=meta, prov=prov)
    return report


# ----------------------------------------------------------------------------- inspect


def summary(path: str | Path) -> dict[str, Any]:
    """Inspect summary of a cascade (folder or cascade.json)."""
    spec = read_manifest(path)
    rows = []
    for i, (f, c) in enumerate(zip(spec.filters, spec.classifiers), start=1):
        _, _, fm, _ = read_safetensors_header(f)
        clf = Classifier.load(c)
        rows.append(
            [
                i,
                str(f.relative_to(spec.manifest.parent)) if f.is_relative_to(spec.manifest.parent) else str(f),
                fm.get("num_clusters"),
                fm.get("share"),
                str(c.relative_to(spec.manifest.parent)) if c.is_relative_to(spec.manifest.parent) else str(c),
                clf.meta.get("loss"),
                clf.meta.get("epoch"),
                (clf.meta.get("val") or {}).get("balanced_accuracy"),
            ]
        )
    final = Classifier.load(spec.final)
    try:
        Cascade.load(path)
        consistent = "yes"
    except (ModelMismatchError, InputError) as e:
        consistent = f"no: {e}"
    fields = {
        "depths": len(spec.filters),
        "dim": final.dim,
        "classes": final.num_classes,
        "final classifier": str(spec.final.name),
        "final model": final.kind,
        "final loss": final.meta.get("loss"),
        "files belong together": consistent,
    }
    return {
        "kind": "cascade",
        "path": str(path),
        "fields": fields,
        "tables": [
            {
                "title": "depths",
                "columns": ["depth", "filter", "clusters", "share", "classifier", "loss", "epoch", "val score"],
                "rows": rows,
            }
        ],
        "charts": [],
    }

