"""Small SVG charts written directly (no plotting library: a report of one layer draws
in milliseconds instead of the second it takes to import and run matplotlib).

Every text is XML-escaped; numbers are formatted, never interpolated raw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

__all__ = ["bar_chart"]


def _text(x: float, y: float, text: str, *, size: int = 11, anchor: str = "middle",
          rotate: float | None = None, weight: str = "normal") -> str:  # fmt: skip
    transform = f' transform="rotate({rotate:g} {x:.1f} {y:.1f})"' if rotate is not None else ""
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
            f'font-weight="{weight}"{transform}>{escape(str(text))}</text>')  # fmt: skip


def bar_chart(
    bars: Sequence[tuple[str, str, float]],
    colors: Mapping[str, str],
    *,
    title: str,
    ylabel: str,
    empty: str = "nothing to show",
    bar_width: int = 16,
    height: int = 260,
) -> str:
    """An SVG bar chart of ``bars`` = ``[(group, label, value), ...]`` in order, each bar
    coloured by its group (``colors[group]``, grey if absent), labels below the bars
    rotated, a legend of the groups, a y axis with integer-friendly ticks. With no
    bars, the chart says ``empty``."""
    left, right, top, label_room = 48, 16, 34, 110
    n = len(bars)
    width = max(320, left + right + n * bar_width + 8)
    plot_h = height - top - 24
    total_h = height + label_room
    top_value = max([float(v) for _, _, v in bars] + [1.0])
    step = _tick_step(top_value)
    ticks = [i * step for i in range(int(top_value // step) + 1)]
    scale_max = max(top_value, ticks[-1])
    base = top + plot_h
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{total_h}" '
        f'viewBox="0 0 {width} {total_h}" font-family="sans-serif">',
        f'<rect width="{width}" height="{total_h}" fill="white"/>',
        _text(width / 2, 18, title, size=13, weight="bold"),
        _text(14, top + plot_h / 2, ylabel, rotate=-90),
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{base}" stroke="black"/>',
        f'<line x1="{left}" y1="{base}" x2="{width - right}" y2="{base}" stroke="black"/>',
    ]
    for t in ticks:
        y = base - plot_h * t / scale_max
        parts.append(f'<line x1="{left - 4}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" '
                     'stroke="black"/>')  # fmt: skip
        parts.append(_text(left - 7, y + 4, f"{t:g}", size=10, anchor="end"))
    if not bars:
        parts.append(_text(left + (width - left - right) / 2, top + plot_h / 2, empty, size=13))
    for i, (group, label, value) in enumerate(bars):
        x = left + 4 + i * bar_width
        h = plot_h * float(value) / scale_max
        color = escape(colors.get(group, "#7f7f7f"))
        parts.append(f'<rect x="{x + 1:.1f}" y="{base - h:.1f}" width="{bar_width - 2}" '
                     f'height="{h:.1f}" fill="{color}"><title>{escape(f"{label} ({group}): {value:g}")}'
                     "</title></rect>")  # fmt: skip
        parts.append(_text(x + bar_width / 2 + 3, base + 6, label, size=9, anchor="end",
                           rotate=-90))  # fmt: skip
    legend_x = width - right - 110
    for k, group in enumerate(dict.fromkeys(g for g, _, _ in bars)):
        y = top + 4 + 14 * k
        color = escape(colors.get(group, "#7f7f7f"))
        parts.append(f'<rect x="{legend_x}" y="{y}" width="10" height="10" fill="{color}"/>')
        parts.append(_text(legend_x + 14, y + 9, group, size=10, anchor="start"))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _tick_step(top: float) -> float:
    """A step of 1, 2 or 5 x 10^k giving at most about 6 ticks up to ``top``."""
    step = 1.0
    while top / step > 6:
        for factor in (2.0, 2.5, 2.0):
            step *= factor
            if top / step <= 6:
                break
    return step
