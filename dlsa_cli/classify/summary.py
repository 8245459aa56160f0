"""`fit-classifier`'s report (`ClassifierFitReport`) and `dlsa inspect` of a classifier file."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dlsa_cli.classify.model import Classifier

__all__ = ["ClassifierFitReport", "Posthoc", "RouterSaving", "summary"]

# ----------------------------------------------------------------------------- fit-classifier


@dataclass
class Posthoc:
    """The post-hoc logit adjustment chosen on validation (kind "none": none)."""

    kind: str
    tau: float


@dataclass
class RouterSaving:
    """A RIDE router's threshold (None: off) and the share of expert evaluations it saves on validation."""

    threshold: float | None
    saving: float


@dataclass
class ClassifierFitReport:
    """What `fit-classifier` reports: the file written, the epoch chosen and its validation scores."""

    output: str
    model: str
    base_model: str
    dim: int
    classes: int
    loss: str
    sampler: str
    init: str | None
    train_samples: int
    val_samples: int
    val_source: str
    val_weighted: bool  # validation samples weighed for the whole validation set's balanced accuracy
    epoch: int
    epochs: int
    lr: float
    val_balanced_accuracy: float
    val_accuracy: float
    posthoc: Posthoc
    seconds: float
    experts: int | None = None  # RIDE
    m2m_acceptance: float | None = None  # M2M
    router: RouterSaving | None = None  # RIDE with a router

    @classmethod
    def of(cls, clf: Classifier, fit: Any, out: str | Path, *, epochs: int, seconds: float,
           weighted: bool) -> ClassifierFitReport:
        """The report of `clf`, fitted as `fit` (a `FitReport`) says, written to `out`."""
        m = clf.meta
        router = m.get("router")
        return cls(
            output=str(out), model=clf.kind, base_model=clf.base_kind, dim=clf.dim, classes=clf.num_classes,
            loss=m["loss"], sampler=m["sampler"], init=m["init"]["source"], train_samples=fit.train_samples,
            val_samples=fit.val_samples, val_source=fit.val_source, val_weighted=weighted, epoch=fit.epoch,
            epochs=epochs, lr=fit.lr, val_balanced_accuracy=fit.val_balanced, val_accuracy=fit.val_accuracy,
            posthoc=Posthoc(fit.posthoc["kind"], fit.posthoc["tau"]), seconds=round(seconds, 2),
            experts=m.get("experts"), m2m_acceptance=None if fit.m2m is None else fit.m2m["acceptance"],
            router=None if not router else RouterSaving(router["threshold"], router["saving"]),
        )

    def to_json(self) -> dict[str, Any]:
        """The fields; `experts`, `m2m_acceptance` and `router` only for the models that have them."""
        optional = ("experts", "m2m_acceptance", "router")
        return {k: v for k, v in asdict(self).items() if v is not None or k not in optional}


# ----------------------------------------------------------------------------- inspect

def summary(path: str | Path) -> dict[str, Any]:
    """Inspect summary of a classifier file (kind "classifier")."""
    clf = Classifier.load(path)
    m = clf.meta
    hyper = m.get("hyper", {})
    fields: dict[str, Any] = {
        "model": clf.kind,
        "base model": m.get("base_model", clf.kind),
        "dim": clf.dim,
        "classes": clf.num_classes,
        "loss": m.get("loss"),
        "sampler": m.get("sampler"),
        "loss counts": m.get("loss_counts"),
        "init": (m.get("init") or {}).get("source"),
        "epochs": hyper.get("epochs"),
        "lr": hyper.get("lr"),
        "batch size": hyper.get("batch_size"),
        "chosen epoch": m.get("epoch"),
        "val balanced acc": (m.get("val") or {}).get("balanced_accuracy"),
        "val accuracy": (m.get("val") or {}).get("accuracy"),
        "val source": (m.get("val") or {}).get("source"),
        "train samples": m.get("train_samples"),
        "post-hoc": f"{(m.get('posthoc') or {}).get('kind', 'none')} (tau {(m.get('posthoc') or {}).get('tau', 0)})",
    }
    if clf.base_kind == "ride":
        fields["experts"] = m.get("experts")
        fields["expert hidden"] = m.get("expert_hidden") or "none"
        fields["ride diversity"] = hyper.get("ride_diversity")
        if search := m.get("ride_diversity_search"):
            fields["ride diversity (val)"] = ", ".join(f"{w}: {v:.4f}" for w, v in search.items())
        if router := m.get("router"):
            fields["router threshold"] = router.get("threshold") or "off (it lost accuracy on validation)"
            fields["router saving"] = f"{100 * router['saving']:.1f}% of expert evaluations (validation)"
    if m2m := m.get("m2m"):
        fields["m2m from"] = m2m.get("from")
        fields["m2m acceptance"] = m2m.get("acceptance")
        fields["m2m rounds"] = len(m2m.get("rounds") or [])
    if clf.kind == "cluster-aided":
        fields["side input"] = m.get("side_input")
        fields["filter sha256"] = ((m.get("filter") or {}).get("sha256") or "")[:16]
        fields["filter clusters"] = (m.get("filter") or {}).get("num_clusters")
    hist = m.get("history") or []
    charts = []
    if hist:
        charts.append({"title": "validation balanced accuracy per epoch", "values": [h["val_balanced"] for h in hist],
                       "labels": None})
        charts.append({"title": "training loss per epoch", "values": [h["loss"] for h in hist[1:]], "labels": None})
    counts = m.get("train_counts") or []
    tables = []
    if counts:
        cnt = np.asarray(counts)
        tables.append(
            {
                "title": "training counts",
                "columns": ["classes", "samples", "max", "min"],
                "rows": [[len(cnt), int(cnt.sum()), int(cnt.max()), int(cnt.min())]],
            }
        )
    return {"kind": "classifier", "path": str(path), "fields": fields, "tables": tables, "charts": charts}
