"""fit-cascade's report (`CascadeReport`, report.json, and its stages in progress.json) and `dlsa inspect` of a cascade.

Every report is a dataclass with one JSON form (`to_json`) and `from_json`,
which reads the files of earlier runs too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from dlsa_cli.cascade.manifest import read_manifest
from dlsa_cli.cascade.model import Cascade
from dlsa_cli.classify.model import Classifier
from dlsa_cli.errors import InputError, ModelMismatchError
from dlsa_cli.io.files import (
    read_safetensors_header,
)

__all__ = ["CascadeReport", "ClassifierFit", "ClassifierStage", "DepthStage", "FilterFit", "RoutedCounts", "summary"]


def _known(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


# ----------------------------------------------------------------------------- fit-cascade


@dataclass
class ClassifierFit:
    """One classifier of a cascade: where it started, the epoch kept and its validation scores."""

    kind: str
    start: str  # "scratch" or the file it started from
    epoch: int
    epochs: int
    kept_start: bool  # epoch 0 kept: the classifier is its starting point
    lr: float
    train_samples: int
    val_samples: int
    val_source: str
    val_weighted: bool  # validation samples weighed for the whole validation set's balanced accuracy
    val_balanced_accuracy: float
    val_accuracy: float
    seconds: float

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ClassifierFit:
        return cls(**_known(cls, d))


@dataclass
class FilterFit:
    """A depth's filter: given, or fitted (its kept epoch, clusters and validation separation)."""

    given: str | None
    chosen_epoch: int | None  # None for a given filter file that does not record it
    epochs: int
    seconds: float
    good_clusters: int | None = None
    val_separation: float | None = None  # the kept epoch's separation on this depth's validation samples

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FilterFit:
        return cls(**_known(cls, d))


@dataclass
class RoutedCounts:
    """How a depth's filter divided its training or validation samples."""

    samples: int
    routed: int
    rest: int
    separation: float | None  # tail share of the routed samples
    tail_share: float | None  # tail share of all of them

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> RoutedCounts | None:
        return None if d is None else cls(**_known(cls, d))


@dataclass
class ClassifierStage:
    """The baseline or the final classifier: its fit and file (relative to RUNDIR)."""

    classifier: ClassifierFit
    files: dict[str, str | None]
    reused: bool = False  # finished in an earlier run of the same settings

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ClassifierStage:
        return cls(ClassifierFit.from_json(d["classifier"]), dict(d["files"]), bool(d.get("reused", False)))


@dataclass
class DepthStage:
    """One depth: filter, split of train and val (None: no val), cluster-aided classifier, files."""

    depth: int
    train: RoutedCounts | None
    val: RoutedCounts | None
    filter: FilterFit
    classifier: ClassifierFit
    seconds: float
    files: dict[str, str | None]
    reused: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DepthStage:
        return cls(int(d["depth"]), RoutedCounts.from_json(d.get("train")), RoutedCounts.from_json(d.get("val")),
                   FilterFit.from_json(d["filter"]), ClassifierFit.from_json(d["classifier"]), float(d["seconds"]),
                   dict(d["files"]), bool(d.get("reused", False)))


@dataclass
class CascadeReport:
    """What `fit_cascade` reports (RUNDIR/report.json): the settings, every stage, whether DLSA changed anything."""

    out_dir: str
    manifest: str
    train: str
    val: str | None
    num_depths: int
    device: str
    plan: dict[str, Any]  # CascadePlan.to_dict()
    settings: dict[str, dict[str, Any]]  # CascadePlan.to_tables(): the config file that repeats the run
    baseline: ClassifierStage
    depths: list[DepthStage]
    final: ClassifierStage
    unchanged: bool  # every branch kept its starting point: the cascade predicts as the baseline does
    resumed: bool
    seconds: float
    combine: dict[str, Any] | None = None  # memory weights and soft temperatures VAL chose (cascade/combine.py)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CascadeReport:
        old = {"num_depths": d["depth"]} if "depth" in d else {}  # written before num_depths had its name
        return cls(**{"settings": {}, **old, **_known(cls, d), "baseline": ClassifierStage.from_json(d["baseline"]),
                      "depths": [DepthStage.from_json(x) for x in d["depths"]],
                      "final": ClassifierStage.from_json(d["final"])})


# ----------------------------------------------------------------------------- inspect


def summary(path: str | Path) -> dict[str, Any]:
    """Inspect summary of a cascade (folder or cascade.json)."""
    spec = read_manifest(path)
    rows = []
    for i, (f, c) in enumerate(zip(spec.filters, spec.classifiers, strict=True), start=1):
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
    comb = spec.raw.get("combine") or {}
    if comb.get("memory"):
        fields["memory"] = (f"{comb['memory']}: vote of the {comb.get('k')} nearest training samples, weight per "
                            f"branch {', '.join(f'{w:g}' for w in comb.get('weights', []))}, floor "
                            f"{', '.join(f'{f:g}' for f in comb.get('floors', []))}")
    if any(comb.get("temperatures", [])):
        fields["soft routing"] = "temperature per depth " + ", ".join(f"{t:.3g}" for t in comb["temperatures"])
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

