"""`dlsa inspect` summaries of a filter file and of a split table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dlsa_cli.errors import InputError, ModelMismatchError
from dlsa_cli.io.files import (
    read_safetensors,
    read_safetensors_header,
    read_table,
)

# ----------------------------------------------------------------------------- inspect


def summary(path: str | Path) -> dict[str, Any]:
    """`dlsa inspect` summary of a filter file."""
    header, kind, meta, prov = read_safetensors_header(path)
    if kind != "filter":
        raise ModelMismatchError(f"is a '{kind}' file, not a filter", path=path)
    tensors, _, _, _ = read_safetensors(path, ["cluster_counts"])
    table = tensors["cluster_counts"].numpy()
    sizes = table.sum(1)
    purity = np.where(sizes > 0, table.max(1) / np.maximum(sizes, 1), 0.0)
    st = meta.get("stats", {})
    cfg = meta.get("config", {})
    hist = meta.get("history", [])
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
        "good clusters": st.get("good_clusters"),
        "train samples": st.get("train_samples"),
        "routed (train)": st.get("routed"),
        "routed tail share (train)": st.get("routed_tail_share"),
        "tail share (train)": st.get("tail_share"),
        "device": st.get("device"),
    }
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
            {
                "title": "clusters (training samples)",
                "columns": ["statistic", "value"],
                "rows": [[k, st[k]] for k in (
                    "size_min", "size_q1", "size_median", "size_q3", "size_max", "empty",
                    "purity_above_0.9", "purity_above_0.7", "purity_above_0.5", "good_clusters",
                ) if k in st],
            },
            _history_table(hist),
        ],
        "charts": [
            {"title": "good clusters per epoch", "values": [float(h["good_clusters"]) for h in hist],
             "labels": [str(h["epoch"]) for h in hist]},
            {"title": "loss per epoch", "values": [float(h["loss"]) for h in hist], "labels": [str(h["epoch"]) for h in hist]},
            {"title": "cluster sizes (largest first)", "values": sorted(sizes.astype(float).tolist(), reverse=True), "labels": None},
            {"title": "cluster purity (highest first)", "values": sorted(purity.astype(float).tolist(), reverse=True), "labels": None},
        ],
    }


def _history_table(hist: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-epoch losses and cluster counts; with validation (`fit-filter --val`), its separation and log-likelihood too."""
    val = any("val_separation" in h for h in hist)
    columns = ["epoch", "loss", "mle", "bal", "pure", "good", "largest share", "eligible"]
    columns += ["val separation", "val mean log p"] if val else []

    def num(v: Any) -> Any:
        return None if v is None else round(v, 4)

    rows = []
    for h in hist:
        row = [h["epoch"], num(h["loss"]), num(h["mle"]), num(h["bal"]), num(h["pure"]),
               h["good_clusters"], num(h["largest_share"]), h["eligible"]]
        rows.append(row + ([num(h.get("val_separation")), num(h.get("val_mean_log_likelihood"))] if val else []))
    return {"title": "history", "columns": columns, "rows": rows}


def split_summary(path: str | Path) -> dict[str, Any]:
    """`dlsa inspect` summary of a split table (Parquet, kind "split")."""
    table, kind, meta, prov = read_table(path)
    if kind != "split":
        raise InputError(f"is a '{kind}' file, not a split table", path=path)
    ll = table.column("log_likelihood").to_numpy()
    routed = table.column("routed").to_numpy(zero_copy_only=False).astype(bool)
    rep = meta.get("report", {})
    fields_ = {
        "rows": int(len(ll)),
        "routed": int(routed.sum()),
        "routed share": float(routed.mean()) if len(ll) else 0.0,
        "depth": meta.get("depth"),
        "threshold": meta.get("threshold"),
        "source": meta.get("source"),
        "filter sha256": meta.get("filter_sha256"),
        "separation accuracy": rep.get("separation_accuracy"),
        "tail share (whole file)": (rep.get("tail_share") or {}).get("all"),
    }
    tables = []
    if "groups" in rep:
        rows = []
        for p in ("routed", "rest", "all"):
            gp, ht = rep["groups"][p], rep["head_tail"][p]
            rows.append([p, gp["many"], gp["medium"], gp["few"], ht["head"], ht["tail"], rep["tail_share"][p],
                         rep["mean_log_likelihood"][p]])
        tables.append({"title": "make-up", "columns": ["part", "many", "medium", "few", "head", "tail", "tail share",
                                                        "mean log p(x)"], "rows": rows})
    charts = []
    if len(ll):
        hist, edges = np.histogram(ll, bins=20)
        charts.append({"title": "log p(x) histogram", "values": hist.astype(float).tolist(),
                       "labels": [f"{e:.4g}" for e in edges[:-1]]})
    return {"kind": "split", "path": str(path), "fields": fields_, "tables": tables, "charts": charts}
