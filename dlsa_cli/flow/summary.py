"""The filter's reports: `fit-filter`'s (`FilterFitReport`), `split`'s (`SplitReport`), and `dlsa inspect` summaries.

Each report is a dataclass with one JSON form (`to_json`); those read back from
files (a filter's `stats` and `history`, a split table's or split.json's
report) also have `from_json`, which accepts the names earlier versions wrote
(`routed_tail_share` and `separation_accuracy` are now `separation`: the tail
share of the routed samples).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from dlsa_cli.errors import InputError, ModelMismatchError
from dlsa_cli.evaluation.tally import GroupCounts
from dlsa_cli.io.files import (
    read_safetensors,
    read_safetensors_header,
    read_table,
)

__all__ = [
    "ByPart",
    "EpochRecord",
    "FilterFitReport",
    "FilterStats",
    "HeadTail",
    "SplitFileReport",
    "SplitOutputs",
    "SplitReport",
    "split_summary",
    "summary",
]

T = TypeVar("T")


def _known(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """The keys of `d` that are fields of the dataclass `cls` (later versions may add keys)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


# ----------------------------------------------------------------------------- fit-filter


@dataclass
class FilterStats:
    """The kept epoch's clusters on the training samples and its route (a filter file's `stats`)."""

    train_samples: int | None = None
    samples: int | None = None
    size_min: int | None = None
    size_q1: float | None = None
    size_median: float | None = None
    size_q3: float | None = None
    size_max: int | None = None
    largest_share: float | None = None
    empty: int | None = None
    purity_above_0_9: int | None = None  # JSON: purity_above_0.9
    purity_above_0_7: int | None = None
    purity_above_0_5: int | None = None
    good_clusters: int | None = None
    chosen_epoch: int | None = None
    chosen_epoch_eligible: bool = True
    routing: str | None = None  # set when the routing score was chosen after training
    routed: int | None = None
    separation: float | None = None  # tail share of the routed training samples
    tail_share: float | None = None  # tail share of all training samples
    seconds_per_epoch: float | None = None
    device: str | None = None

    _DOTTED: ClassVar[dict[str, str]] = {"purity_above_0_9": "purity_above_0.9", "purity_above_0_7": "purity_above_0.7",
               "purity_above_0_5": "purity_above_0.5"}

    def to_json(self) -> dict[str, Any]:
        return {self._DOTTED.get(k, k): v for k, v in asdict(self).items() if not (k == "routing" and v is None)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> FilterStats:
        d = {**d}
        if "routed_tail_share" in d:  # written before `separation` was the one name
            d.setdefault("separation", d.pop("routed_tail_share"))
        for attr, key in cls._DOTTED.items():
            if key in d:
                d[attr] = d.pop(key)
        return cls(**_known(cls, d))


@dataclass
class EpochRecord:
    """One epoch of a filter's training (a filter file's `history` entry); `val_*` only with validation samples."""

    epoch: int
    loss: float | None = None
    mle: float | None = None
    bal: float | None = None
    pure: float | None = None
    good_clusters: int = 0
    largest_cluster: int | None = None
    largest_share: float | None = None
    empty_clusters: int | None = None
    mean_log_likelihood: float | None = None
    separation: float | None = None  # tail share of the training samples this epoch routes
    eligible: bool = True
    val_routed_share: float | None = None
    val_separation: float | None = None  # tail share of the validation samples this epoch routes
    val_separation_by: dict[str, float | None] | None = None  # by routing score: likelihood, cluster-tail
    val_tail_share: float | None = None
    val_mean_log_likelihood: float | None = None
    seconds: float | None = None

    @property
    def has_val(self) -> bool:
        return self.val_separation_by is not None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.has_val:
            d = {k: v for k, v in d.items() if not k.startswith("val_")}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EpochRecord:
        d = {**d}
        if "routed_tail_share" in d:  # written before `separation` was the one name
            d.setdefault("separation", d.pop("routed_tail_share"))
        return cls(**_known(cls, d))


@dataclass
class FilterFitReport:
    """What `fit-filter` reports: the file written, its route, its clusters and every epoch."""

    filter: str
    train: str
    val: str | None
    depth: int
    threshold: float
    share: float
    chosen_epoch: int
    stats: FilterStats
    config: dict[str, Any]  # FilterConfig.to_dict()
    history: list[EpochRecord]
    resumed_from: int | None = None
    epochs_run: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, filt: Any, out: str | Path, train: str | Path, val: str | Path | None) -> FilterFitReport:
        """The report of a fitted `FlowFilter` written to `out` from `train` (and `val`)."""
        history = [EpochRecord.from_json(h) for h in filt.history]
        return cls(
            filter=str(out), train=str(train), val=None if val is None else str(val), depth=filt.depth,
            threshold=filt.threshold, share=filt.share, chosen_epoch=filt.chosen_epoch,
            stats=FilterStats.from_json(filt.stats), config=filt.config.to_dict(), history=history,
            resumed_from=filt.resumed_from, epochs_run=[h.epoch for h in history[filt.resumed_from or 0 :]],
        )

    @property
    def kept(self) -> EpochRecord | None:
        """The chosen epoch's record."""
        return self.history[self.chosen_epoch - 1] if self.history else None

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["stats"] = self.stats.to_json()
        d["history"] = [h.to_json() for h in self.history]
        return d


# ----------------------------------------------------------------------------- split


@dataclass
class ByPart(Generic[T]):
    """One value for the routed samples, the rest, and all of them."""

    routed: T
    rest: T
    all: T

    def items(self) -> list[tuple[str, T]]:
        return [("routed", self.routed), ("rest", self.rest), ("all", self.all)]

    @classmethod
    def from_json(cls, d: dict[str, Any], item: Any = None) -> ByPart[Any]:
        """`item` builds each part's value from its JSON object (None: the value as it is)."""
        v: list[Any] = [d.get(p) if item is None else item(**d[p]) for p in ("routed", "rest", "all")]
        return cls(v[0], v[1], v[2])


@dataclass
class HeadTail:
    """Samples whose class is head (more than `tail_at_most` training samples) and tail."""

    head: int
    tail: int


@dataclass
class SplitOutputs:
    """The files a split wrote for one input (names inside its folder; None: that part had no sample)."""

    table: str
    routed: str | None
    rest: str | None


@dataclass
class SplitFileReport:
    """One scored file: counts and shares of each part; with labels, their make-up and the separation."""

    samples: int
    routed: int
    rest: int
    routed_share: float
    rest_share: float
    threshold: float
    routing: str
    depth: int
    mean_log_likelihood: ByPart[float | None]  # over the rows with a finite log p(x)
    nonfinite: int  # rows whose log p(x) is NaN or infinite (never routed)
    has_labels: bool
    many_above: int
    few_below: int
    tail_at_most: int
    groups: ByPart[GroupCounts] | None = None  # samples whose class is many-, medium-, few-shot in training
    head_tail: ByPart[HeadTail] | None = None
    tail_share: ByPart[float | None] | None = None
    separation: float | None = None  # tail share of the routed samples (paper Fig. 7)
    input: str | None = None  # split.json's entries: the input and the files written
    outputs: SplitOutputs | None = None

    def to_json(self) -> dict[str, Any]:
        d = {"input": self.input} if self.input is not None else {}
        d.update((k, v) for k, v in asdict(self).items() if k != "input")
        if not self.has_labels:
            for k in ("groups", "head_tail", "tail_share", "separation"):
                d.pop(k)
        if self.outputs is None:
            d.pop("outputs")
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SplitFileReport:
        d = {**d}
        if "separation_accuracy" in d:  # written before `separation` was the one name
            d.setdefault("separation", d.pop("separation_accuracy"))
        d["mean_log_likelihood"] = ByPart.from_json(d["mean_log_likelihood"])
        if d.get("groups") is not None:
            d["groups"] = ByPart.from_json(d["groups"], GroupCounts)
            d["head_tail"] = ByPart.from_json(d["head_tail"], HeadTail)
            d["tail_share"] = ByPart.from_json(d["tail_share"])
        if d.get("outputs") is not None:
            d["outputs"] = SplitOutputs(**_known(SplitOutputs, d["outputs"]))
        return cls(**_known(cls, d))


@dataclass
class SplitReport:
    """What `split` reports and writes as split.json: the filter and every input's `SplitFileReport`."""

    filter: str | None
    filter_sha256: str | None
    depth: int
    threshold: float
    routing: str
    share: float
    files: dict[str, SplitFileReport] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["files"] = {k: f.to_json() for k, f in self.files.items()}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SplitReport:
        files = {k: SplitFileReport.from_json(f) for k, f in d.get("files", {}).items()}
        return cls(**{**_known(cls, d), "files": files})


# ----------------------------------------------------------------------------- inspect


def summary(path: str | Path) -> dict[str, Any]:
    """`dlsa inspect` summary of a filter file."""
    _, kind, meta, _ = read_safetensors_header(path)
    if kind != "filter":
        raise ModelMismatchError(f"is a '{kind}' file, not a filter", path=path)
    tensors, _, _, _ = read_safetensors(path, ["cluster_counts"])
    table = tensors["cluster_counts"].numpy()
    sizes = table.sum(1)
    purity = np.where(sizes > 0, table.max(1) / np.maximum(sizes, 1), 0.0)
    st = FilterStats.from_json(meta.get("stats", {}))
    cfg = meta.get("config", {})
    hist = [EpochRecord.from_json(h) for h in meta.get("history", [])]
    fields_ = {
        "dim": meta.get("dim"),
        "clusters": meta.get("num_clusters"),
        "classes": meta.get("num_classes"),
        "depth": meta.get("depth"),
        "threshold": meta.get("threshold"),
        "routing": meta.get("routing", "likelihood"),
        "share": meta.get("share"),
        "chosen epoch": meta.get("chosen_epoch"),
        "epochs": len(hist),
        "good clusters": st.good_clusters,
        "train samples": st.train_samples,
        "routed (train)": st.routed,
        "separation (train)": st.separation,
        "tail share (train)": st.tail_share,
        "device": st.device,
    }
    cluster_rows = [[k, v] for k, v in st.to_json().items() if k in _CLUSTER_STATS and v is not None]
    return {
        "kind": "filter",
        "path": str(path),
        "fields": fields_,
        "tables": [
            {
                "title": "hyperparameters",
                "columns": ["name", "value"],
                # hidden = None means "D": show what the flow was built with
                "rows": [[k, f"{meta.get('dim')} (D)" if k == "hidden" and v is None else v] for k, v in cfg.items()],
            },
            {"title": "clusters (training samples)", "columns": ["statistic", "value"], "rows": cluster_rows},
            _history_table(hist),
        ],
        "charts": [
            {"title": "good clusters per epoch", "values": [float(h.good_clusters) for h in hist],
             "labels": [str(h.epoch) for h in hist]},
            {"title": "loss per epoch", "values": [float(h.loss or 0.0) for h in hist],
             "labels": [str(h.epoch) for h in hist]},
            {"title": "cluster sizes (largest first)", "values": sorted(sizes.astype(float).tolist(), reverse=True),
             "labels": None},
            {"title": "cluster purity (highest first)", "values": sorted(purity.astype(float).tolist(), reverse=True),
             "labels": None},
        ],
    }


_CLUSTER_STATS = ("size_min", "size_q1", "size_median", "size_q3", "size_max", "empty",
                  "purity_above_0.9", "purity_above_0.7", "purity_above_0.5", "good_clusters")


def _history_table(hist: list[EpochRecord]) -> dict[str, Any]:
    """Per-epoch losses and cluster counts; with validation (`fit-filter --val`), its separation and
    log-likelihood too."""
    val = any(h.has_val for h in hist)
    columns = ["epoch", "loss", "mle", "bal", "pure", "good", "largest share", "eligible"]
    columns += ["val separation", "val mean log p"] if val else []

    def num(v: Any) -> Any:
        return None if v is None else round(v, 4)

    rows = []
    for h in hist:
        row = [h.epoch, num(h.loss), num(h.mle), num(h.bal), num(h.pure), h.good_clusters, num(h.largest_share),
               h.eligible]
        rows.append(row + ([num(h.val_separation), num(h.val_mean_log_likelihood)] if val else []))
    return {"title": "history", "columns": columns, "rows": rows}


def split_summary(path: str | Path) -> dict[str, Any]:
    """`dlsa inspect` summary of a split table (Parquet, kind "split")."""
    table, kind, meta, _ = read_table(path)
    if kind != "split":
        raise InputError(f"is a '{kind}' file, not a split table", path=path)
    ll = table.column("log_likelihood").to_numpy()
    routed = table.column("routed").to_numpy(zero_copy_only=False).astype(bool)
    rep = SplitFileReport.from_json(meta["report"]) if "report" in meta else None
    fields_ = {
        "rows": len(ll),
        "routed": int(routed.sum()),
        "routed share": float(routed.mean()) if len(ll) else 0.0,
        "depth": meta.get("depth"),
        "threshold": meta.get("threshold"),
        "source": meta.get("source"),
        "filter sha256": meta.get("filter_sha256"),
        "separation": None if rep is None else rep.separation,
        "tail share (whole file)": None if rep is None or rep.tail_share is None else rep.tail_share.all,
    }
    tables = []
    if rep is not None and rep.groups is not None and rep.head_tail is not None and rep.tail_share is not None:
        rows = []
        for (p, gp), (_, ht), (_, ts), (_, mean) in zip(rep.groups.items(), rep.head_tail.items(),
                                                        rep.tail_share.items(),
                                                      rep.mean_log_likelihood.items(), strict=True):
            rows.append([p, gp.many, gp.medium, gp.few, ht.head, ht.tail, ts, mean])
        tables.append({"title": "make-up", "columns": ["part", "many", "medium", "few", "head", "tail", "tail share",
                                                        "mean log p(x)"], "rows": rows})
    charts = []
    if len(ll):
        hist, edges = np.histogram(ll, bins=20)
        charts.append({"title": "log p(x) histogram", "values": hist.astype(float).tolist(),
                       "labels": [f"{e:.4g}" for e in edges[:-1]]})
    return {"kind": "split", "path": str(path), "fields": fields_, "tables": tables, "charts": charts}
