"""Rendering a summary dict: fields, problems, tables, then charts (bars or a sparkline), as one rich renderable.

Nothing here prints: `render` returns the renderable.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["render", "sparkline"]

_BLOCKS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], width: int = 48) -> str:
    """Values as one line of block characters; more values than `width` are averaged in chunks."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return ""
    v = np.nan_to_num(v, nan=np.nanmin(v) if np.isfinite(v).any() else 0.0)
    if v.size > width:
        v = np.array([c.mean() for c in np.array_split(v, width)])
    lo = min(0.0, float(v.min()))
    hi = float(v.max())
    if hi <= lo:
        return _BLOCKS[0] * len(v)
    idx = np.clip(((v - lo) / (hi - lo) * (len(_BLOCKS) - 1)).round().astype(int), 0, len(_BLOCKS) - 1)
    return "".join(_BLOCKS[i] for i in idx)


def _fmt(v: Any) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def render(summary: dict[str, Any]) -> Any:
    """A rich renderable for a summary dict: fields, problems, tables, then charts."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table
    from rich.text import Text

    parts: list[Any] = [Text.from_markup(f"[bold]{escape(str(summary.get('kind')))}[/] "
                                         f"{escape(str(summary.get('path')))}")]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column()
    for k, v in (summary.get("fields") or {}).items():
        grid.add_row(escape(str(k)), escape(_fmt(v)))
    parts.append(grid)
    for msg in summary.get("problems") or []:
        parts.append(Text.from_markup(f"[bold red]problem:[/] {escape(msg)}"))
    for t in summary.get("tables") or []:
        tab = Table(title=escape(t.get("title", "")), title_justify="left")
        for c in t.get("columns", []):
            tab.add_column(escape(str(c)))
        for row in t.get("rows", []):
            tab.add_row(*[escape(_fmt(x)) for x in row])
        parts.append(tab)
    for ch in summary.get("charts") or []:
        values = [float(x) for x in ch.get("values") or []]
        if not values:
            continue
        labels = ch.get("labels")
        parts.append(Text.from_markup(f"[bold]{escape(ch.get('title', ''))}[/]"))
        if labels and len(values) <= 30:
            top = max(max(abs(x) for x in values), 1e-12)
            bars = Table.grid(padding=(0, 1))
            bars.add_column(style="dim", no_wrap=True)
            bars.add_column(no_wrap=True)
            bars.add_column(justify="right")
            for lab, x in zip(labels, values, strict=False):
                bars.add_row(escape(str(lab)), "█" * max(0, round(40 * abs(x) / top)), _fmt(x))
            parts.append(bars)
        else:
            parts.append(Text(f"{sparkline(values)}  {len(values)} values, {_fmt(min(values))}..{_fmt(max(values))}"))
    return Group(*parts)
