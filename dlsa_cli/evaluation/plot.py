"""Figures: the paper's Fig. 1 (where the mistakes go), Fig. 7 (separation per depth) and a Fig. 8-style map.

Fig. 1: each panel draws a (B, B) matrix from `metrics.binned_confusion` as the paper
does: true class bins along x, predicted class bins along y, most frequent
classes first (left, top), correct predictions left out. Mass at the right-top
is tail samples taken for head classes.

matplotlib is an optional extra (`pip install 'dlsa-cli[plot]'`); it is used
with the Agg backend and the file is written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dlsa_cli.errors import DlsaError, InputError
from dlsa_cli.io.files import atomic_path

__all__ = ["PLOT_FORMATS", "check_plot_target", "pca_2d", "plot_confusion", "plot_route_map", "plot_separation"]

PLOT_FORMATS = (".png", ".pdf", ".svg")


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DlsaError("--plot needs matplotlib, which is not installed",
                        hint="pip install 'dlsa-cli[plot]'") from None
    return plt


def check_plot_target(path: str | Path) -> None:
    """Fail early (before any work) when the plot cannot be written."""
    p = Path(path)
    if p.suffix.lower() not in PLOT_FORMATS:
        raise InputError(f"plot format '{p.suffix or '(none)'}' is not supported", path=p,
                         hint=f"use {', '.join(PLOT_FORMATS)}")
    parent = p.parent  # a bare name's parent is Path(".")
    if not parent.is_dir():
        raise InputError("the plot's folder does not exist", path=parent, hint="create it first")
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:  # looked up, not imported: that is slow
        _pyplot()


def plot_confusion(path: str | Path, panels: Sequence[tuple[str, np.ndarray]], *, num_classes: int) -> None:
    """Draw one panel per (title, (B, B) mistake counts) side by side and write `path` atomically."""
    check_plot_target(path)
    plt = _pyplot()
    from matplotlib.colors import LogNorm

    n = len(panels)
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n + 0.8, 4.4), squeeze=False)
    vmax = max(2, max(int(m.max()) for _, m in panels))
    for ax, (title, m) in zip(axes[0], panels, strict=True):
        b = m.shape[0]
        shown = np.ma.masked_equal(m.T, 0)  # (pred bin, true bin); empty cells stay white
        im = ax.imshow(shown, cmap="viridis", norm=LogNorm(vmin=1, vmax=vmax), interpolation="nearest")
        ax.set_title(f"{title}\n{int(m.sum())} mistakes", fontsize=9)
        ax.set_xlabel(f"true class bin (head → tail, {b} bins of {num_classes} classes)", fontsize=8)
        ax.set_ylabel("predicted class bin (head → tail)", fontsize=8)
        ticks = np.arange(0, b, max(1, b // 5))
        ax.set_xticks(ticks)
        ax.set_yticks(ticks)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="wrong predictions (log scale)")
    fig.suptitle("Mistakes by training frequency, correct predictions left out", fontsize=10)
    _save(fig, plt, path)


def _save(fig, plt, path: str | Path) -> None:
    p = Path(path)
    try:
        with atomic_path(p) as tmp:
            fig.savefig(tmp, format=p.suffix.lower().lstrip("."), dpi=120)
    finally:
        plt.close(fig)


def plot_separation(path: str | Path, rows: Sequence[dict]) -> None:
    """The paper's Fig. 7: head-tail separation per depth, one line per split, chance dashed.

    rows: dicts with `depth`, `split`, `separation` (tail share of the routed
    samples) and `chance` (tail share of all samples that reached the depth).
    """
    check_plot_target(path)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    splits = list(dict.fromkeys(r["split"] for r in rows))
    for i, name in enumerate(splits):
        pts = sorted((r["depth"], r["separation"], r["chance"])
                     for r in rows if r["split"] == name and r["separation"] is not None)
        if not pts:
            continue
        d, sep, chance = (np.array(v, dtype=float) for v in zip(*pts, strict=True))
        color = f"C{i}"
        ax.plot(d, 100 * sep, "o-", color=color, label=f"{name}: routed")
        ax.plot(d, 100 * chance, "x--", color=color, alpha=0.7, label=f"{name}: chance")
    ax.set_xlabel("depth")
    ax.set_ylabel("tail share of the samples (%)")
    ax.set_ylim(0, 100)
    ax.set_xticks(sorted({int(r["depth"]) for r in rows}))
    ax.set_title("Head-tail separation per depth (paper Fig. 7)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, plt, path)


def pca_2d(x: np.ndarray) -> np.ndarray:
    """The first two principal components of the rows of x (N, D), (N, 2)."""
    xc = np.asarray(x, dtype=np.float64) - np.asarray(x, dtype=np.float64).mean(0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    return xc @ vt[:2].T


def plot_route_map(path: str | Path, xy: np.ndarray, routed: np.ndarray, tail: np.ndarray, *, title: str = "") -> None:
    """A Fig. 8-style map: 2-D points (N, 2), routed ones filled, passed-on ones hollow, head blue, tail red."""
    check_plot_target(path)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 5.0))
    for is_routed in (False, True):
        for is_tail, color, name in ((False, "tab:blue", "head"), (True, "tab:red", "tail")):
            m = (routed == is_routed) & (tail == is_tail)
            label = f"{'routed' if is_routed else 'passed on'}, {name} ({int(m.sum())})"
            if is_routed:
                ax.scatter(xy[m, 0], xy[m, 1], s=7, c=color, alpha=0.7, linewidths=0, label=label)
            else:
                ax.scatter(xy[m, 0], xy[m, 1], s=7, facecolors="none", edgecolors=color, alpha=0.35, linewidths=0.5,
                           label=label)
    ax.set_xlabel("principal component 1")
    ax.set_ylabel("principal component 2")
    ax.set_title(title or "Routed and passed-on samples (PCA)", fontsize=10)
    ax.legend(fontsize=7, markerscale=2)
    _save(fig, plt, path)
