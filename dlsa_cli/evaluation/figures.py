"""The routing figures, read from the files `dlsa split` and the recipes write (`dlsa inspect --plot`).

- Fig. 7: head-tail separation per depth against chance, from a split
  folder's `split.json` or a cascade run's `depth*/split.json`;
- a Fig. 8-style map: a split table's routed and passed-on samples on the
  first two principal components of the features it was made from, head and
  tail coloured.

`plot.py` draws them; this module gathers what they show.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dlsa_cli.errors import InputError
from dlsa_cli.evaluation.metrics import tail_classes
from dlsa_cli.evaluation.plot import (
    check_plot_target,
    pca_2d,
    plot_route_map,
    plot_separation,
)
from dlsa_cli.io.files import load_json_text

__all__ = ["plot_routing", "route_map_inputs", "separation_rows"]


def separation_rows(folder: str | Path) -> list[dict[str, Any]]:
    """Separation per depth and split from a split folder's split.json, or a cascade run's depth*/split.json.

    A row: depth, split (the input's name without '.rest' suffixes), separation
    (tail share of its routed samples) and chance (tail share of all its
    samples, what a random route at that depth gives).
    """
    root = Path(folder)
    reports = sorted(root.glob("depth*/split.json")) or sorted(root.glob("split.json"))
    if not reports:
        raise InputError("holds no split.json (nor depth*/split.json)", path=root,
                         hint="pass a `dlsa split` output folder or a recipe's OUTDIR")
    rows = []
    for rp in reports:
        rep = load_json_text(rp.read_text(), where=rp)
        for name, f in rep.get("files", {}).items():
            f.setdefault("separation", f.get("separation_accuracy"))  # the name split.json used before
            if f.get("separation") is None and "tail_share" not in f:
                continue  # no labels
            split = name.split(".")[0]
            rows.append({"depth": int(rep["depth"]), "split": split, "separation": f.get("separation"),
                         "chance": (f.get("tail_share") or {}).get("all"), "routed_share": f.get("routed_share")})
    if not rows:
        raise InputError("its split reports hold no labelled file", path=root, hint="split files with labels")
    return rows


def route_map_inputs(table: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(features (N, D), routed (N,), tail (N,), depth) of a split table and the feature file it was made from."""
    from dlsa_cli.io.features import read_features
    from dlsa_cli.io.files import read_table

    tab, kind, meta, _ = read_table(table)
    if kind != "split":
        raise InputError(f"is a '{kind}' file, not a split table", path=table,
                         hint="pass NAME.parquet from `dlsa split`")
    if "label" not in tab.column_names:
        raise InputError("has no labels, so head and tail cannot be told apart", path=table)
    src = Path(str(meta.get("source", "")))
    if not src.is_file():
        raise InputError(f"its source features {src} are not found", path=table,
                         hint="run from the folder `dlsa split` ran in")
    fs = read_features(src)
    if fs.n != tab.num_rows:
        raise InputError(f"has {tab.num_rows} rows but its source {src} has {fs.n}", path=table)
    tail = tail_classes(np.asarray(meta["train_counts"]))[tab.column("label").to_numpy()]
    routed = tab.column("routed").to_numpy(zero_copy_only=False).astype(bool)
    return fs.features, routed, tail, int(meta.get("depth", 1))


def plot_routing(path: str | Path, plot: str | Path) -> str:
    """Draw Fig. 7 (a split folder or a cascade run folder) or the Fig. 8-style map (a split table) of `path`."""
    check_plot_target(plot)
    p = Path(path)
    if p.is_dir():
        plot_separation(plot, separation_rows(p))
        return "separation per depth"
    x, routed, tail, depth = route_map_inputs(p)
    plot_route_map(plot, pca_2d(x), routed, tail, title=f"{p.name}: routed at depth {depth} and passed on (PCA)")
    return "route map"
