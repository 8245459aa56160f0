"""The paper's Fig. 1 view: where the mistakes go, classes ordered by training frequency.

Each panel draws a (B, B) matrix from `metrics.binned_confusion` as the paper
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

__all__ = ["PLOT_FORMATS", "check_plot_target", "plot_confusion"]

PLOT_FORMATS = (".png", ".pdf", ".svg")


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DlsaError("--plot needs matplotlib, which is not installed", hint="pip install 'dlsa-cli[plot]'") from None
    return plt


def check_plot_target(path: str | Path) -> None:
    """Fail early (before any work) when the plot cannot be written."""
    p = Path(path)
    if p.suffix.lower() not in PLOT_FORMATS:
        raise InputError(f"plot format '{p.suffix or '(none)'}' is not supported", path=p, hint=f"use {', '.join(PLOT_FORMATS)}")
    parent = p.parent if str(p.parent) else Path(".")
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
    for ax, (title, m) in zip(axes[0], panels):
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
    p = Path(path)
    try:
        with atomic_path(p) as tmp:
            fig.savefig(tmp, format=p.suffix.lower().lstrip("."), dpi=120)
    finally:
        plt.close(fig)
