"""Small charts as inline SVG, for the jobs' ``report.html`` (no plotting library, no script).

Every function returns one ``<svg>`` element as text: horizontal bars (grouped, or stacked), a
histogram, and a line chart over steps. Whatever comes from users or data (titles, category and
series names) is escaped with :func:`esc`, which also drops the characters XML cannot hold, so a
chart is well-formed XML whatever the data say. Each bar and point carries a ``<title>`` with its
exact value, which browsers show on hover. Values that are not finite numbers are left out.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["PALETTE", "Line", "Series", "esc", "fmt", "grouped_bars", "histogram", "line_chart", "nice_ticks",
           "stacked_bars"]

#: Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
_INVALID_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_FONT = 'font-family="system-ui,sans-serif" font-size="12"'
_SMALL = 'font-family="system-ui,sans-serif" font-size="10"'
_BIG = 'font-family="system-ui,sans-serif" font-size="14"'
_CHAR_PX = 7.4  # generous average width of a 12 px sans-serif character, for laying out labels
_LABEL_CHARS = 32
_WIDTH = 720


@dataclass(frozen=True)
class Series:
    """One named series of bars: ``values`` line up with the chart's categories or bins."""

    name: str
    values: Sequence[float]
    color: str | None = None


@dataclass(frozen=True)
class Line:
    """One named line: ``(x, y)`` points."""

    name: str
    points: Sequence[tuple[float, float]]
    color: str | None = None


def esc(text: object) -> str:
    """Text safe inside XML/HTML elements and quoted attributes."""
    return html.escape(_INVALID_XML.sub("", str(text)), quote=True)


def fmt(value: float) -> str:
    """A number as a chart labels it: integers with thousands separators, others to 4 digits."""
    if not math.isfinite(value):
        return str(value)
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:.4g}"


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering ``[low, high]`` (1, 2, 2.5 or 5 times a power of ten apart)."""
    if not (_finite(low) and _finite(high)):
        return [0.0, 1.0]
    if high <= low:
        low, high = (low - 0.5, high + 0.5) if low else (0.0, 1.0)
    raw = (high - low) / max(count, 1)
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1.0, 2.0, 2.5, 5.0, 10.0) if m * magnitude >= raw * 0.999)
    start = math.floor(low / step + 1e-9) * step
    ticks: list[float] = []
    value = start
    while value < high + step * 0.999 and len(ticks) < 50:
        ticks.append(round(value, 12))
        if value >= high - 1e-12:
            break
        value += step
    return ticks


def _color(series: Series | Line, index: int) -> str:
    return series.color or PALETTE[index % len(PALETTE)]


def _short(text: str, limit: int = _LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _open(title: str, width: float, height: float) -> list[str]:
    return [(f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" aria-label="{esc(title)}" '
             f'width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}">'),
            f"<title>{esc(title)}</title>",
            f'<text x="0" y="16" {_BIG} font-weight="600">{esc(title)}</text>']


def _legend(series: Sequence[Series | Line], x0: float, y: float, width: float) -> tuple[list[str], float]:
    """The legend from ``(x0, y)``, wrapped at ``width``; with the height it took beyond one line."""
    parts = []
    x, extra = x0, 0.0
    for i, s in enumerate(series):
        need = 24 + _CHAR_PX * len(s.name)
        if x > x0 and x + need > width:
            x, extra = x0, extra + 16
        parts.append(f'<rect x="{x:.1f}" y="{y + extra - 9:.1f}" width="10" height="10" fill="{_color(s, i)}"/>'
                     f'<text x="{x + 14:.1f}" y="{y + extra:.1f}" {_FONT}>{esc(s.name)}</text>')
        x += need
    return parts, extra


def _empty(title: str, note: str) -> str:
    parts = _open(title, _WIDTH, 60)
    parts.append(f'<text x="0" y="44" {_FONT} fill="#555">{esc(note)}</text></svg>')
    return "".join(parts)


def _bar_values(series: Sequence[Series], categories: Sequence[str]) -> list[list[float]]:
    rows = []
    for s in series:
        values = [float(v) if _finite(v) else 0.0 for v in s.values]
        rows.append((values + [0.0] * len(categories))[: len(categories)])
    return rows


def grouped_bars(title: str, categories: Sequence[str], series: Sequence[Series], *, unit: str = "",
                 width: float = _WIDTH) -> str:
    """One row per category, one horizontal bar per series in it (e.g. before / after)."""
    return _bars(title, categories, series, unit=unit, width=width, stacked=False)


def stacked_bars(title: str, categories: Sequence[str], series: Sequence[Series], *, unit: str = "",
                 width: float = _WIDTH) -> str:
    """One horizontal bar per category, split into one segment per series (e.g. kept / dropped)."""
    return _bars(title, categories, series, unit=unit, width=width, stacked=True)


def _bars(title: str, categories: Sequence[str], series: Sequence[Series], *, unit: str, width: float,
          stacked: bool) -> str:
    if not categories or not series:
        return _empty(title, "nothing to show")
    values = _bar_values(series, categories)
    label_w = max(min(_LABEL_CHARS, max(len(c) for c in categories)) * _CHAR_PX + 16, 48.0)
    left, right = label_w, 56.0
    legend, extra = _legend(series, left, 36, width)
    top = 52.0 + extra
    bar_h = 14.0
    row_h = (bar_h + 6 if stacked else bar_h * len(series) + 8)
    biggest = max((sum(col) for col in zip(*values, strict=True)) if stacked else (v for r in values for v in r))
    # All zero (an augmenter that kept nothing): draw the empty bars on a 0..1 axis.
    ticks = nice_ticks(0.0, biggest if biggest > 0 else 1.0)
    top_value = ticks[-1] or 1.0
    plot_w = width - left - right
    height = top + row_h * len(categories) + 28
    parts = _open(title, width, height) + legend
    bottom = top + row_h * len(categories)
    for t in ticks:
        x = left + plot_w * t / top_value
        parts.append(f'<line x1="{x:.1f}" y1="{top - 4:.1f}" x2="{x:.1f}" y2="{bottom:.1f}" stroke="#ddd"/>'
                     f'<text x="{x:.1f}" y="{bottom + 16:.1f}" {_FONT} text-anchor="middle" fill="#444">'
                     f"{esc(fmt(t))}</text>")
    suffix = f" {unit}" if unit else ""
    for j, category in enumerate(categories):
        y = top + row_h * j + 3
        parts.append(f'<text x="{left - 8:.1f}" y="{y + (row_h - 6) / 2 + 4:.1f}" {_FONT} text-anchor="end">'
                     f"<title>{esc(category)}</title>{esc(_short(category))}</text>")
        offset = 0.0
        for i, s in enumerate(series):
            value = values[i][j]
            w = plot_w * value / top_value
            x = left + (plot_w * offset / top_value if stacked else 0.0)
            by = y if stacked else y + bar_h * i
            if value > 0:
                parts.append(f'<rect x="{x:.1f}" y="{by:.1f}" width="{max(w, 1.0):.1f}" height="{bar_h - 1:.1f}" '
                             f'fill="{_color(s, i)}"><title>{esc(category)} · {esc(s.name)}: '
                             f"{esc(fmt(value))}{esc(suffix)}</title></rect>")
            if not stacked:
                parts.append(f'<text x="{x + w + 4:.1f}" y="{by + bar_h - 3:.1f}" {_SMALL} '
                             f'fill="#333">{esc(fmt(value))}</text>')
            offset += value
        if stacked:
            parts.append(f'<text x="{left + plot_w * offset / top_value + 4:.1f}" y="{y + bar_h - 3:.1f}" '
                         f'{_SMALL} fill="#333">{esc(fmt(offset))}</text>')
    parts.append(f'<line x1="{left:.1f}" y1="{top - 4:.1f}" x2="{left:.1f}" y2="{bottom:.1f}" stroke="#333"/>')
    parts.append("</svg>")
    return "".join(parts)


def histogram(title: str, bins: Sequence[str], series: Sequence[Series], *, x_label: str = "",
              width: float = _WIDTH, height: float = 260) -> str:
    """Vertical bars per bin (labelled by ``bins``), the series side by side within each bin."""
    if not bins or not series:
        return _empty(title, "nothing to show")
    values = _bar_values(series, bins)
    left, right, bottom_pad = 56.0, 16.0, 44.0
    legend, extra = _legend(series, left, 36, width)
    top = 52.0 + extra
    height += extra
    plot_w, plot_h = width - left - right, height - top - bottom_pad
    tallest = max(v for r in values for v in r)
    ticks = nice_ticks(0.0, tallest if tallest > 0 else 1.0)
    top_value = ticks[-1] or 1.0
    parts = _open(title, width, height) + legend
    bottom = top + plot_h
    for t in ticks:
        y = bottom - plot_h * t / top_value
        parts.append(f'<line x1="{left:.1f}" y1="{y:.1f}" x2="{left + plot_w:.1f}" y2="{y:.1f}" stroke="#ddd"/>'
                     f'<text x="{left - 6:.1f}" y="{y + 4:.1f}" {_FONT} text-anchor="end" fill="#444">'
                     f"{esc(fmt(t))}</text>")
    slot = plot_w / len(bins)
    bar_w = max((slot - 4) / len(series), 1.0)
    every = max(1, math.ceil(len(bins) * 40 / plot_w))
    for j, label in enumerate(bins):
        x0 = left + slot * j + 2
        for i, s in enumerate(series):
            value = values[i][j]
            h = plot_h * value / top_value
            if value > 0:
                parts.append(f'<rect x="{x0 + bar_w * i:.1f}" y="{bottom - h:.1f}" width="{bar_w:.1f}" '
                             f'height="{max(h, 1.0):.1f}" fill="{_color(s, i)}"><title>{esc(label)} · '
                             f"{esc(s.name)}: {esc(fmt(value))}</title></rect>")
        if j % every == 0:
            parts.append(f'<text x="{x0 + (slot - 4) / 2:.1f}" y="{bottom + 14:.1f}" {_SMALL} '
                         f'text-anchor="middle" fill="#444">{esc(_short(label, 10))}</text>')
    parts.append(f'<line x1="{left:.1f}" y1="{bottom:.1f}" x2="{left + plot_w:.1f}" y2="{bottom:.1f}" '
                 'stroke="#333"/>')
    if x_label:
        parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 6:.1f}" {_FONT} text-anchor="middle">'
                     f"{esc(x_label)}</text>")
    parts.append("</svg>")
    return "".join(parts)


def line_chart(title: str, series: Sequence[Line], *, x_label: str = "step", y_label: str = "",
               markers: Sequence[tuple[float, str]] = (), width: float = _WIDTH, height: float = 280) -> str:
    """Lines through each series' ``(x, y)`` points (sorted by x), with a dot per point when there are
    few; ``markers`` are labelled vertical lines (e.g. the best step)."""
    points = [[(float(x), float(y)) for x, y in s.points if _finite(x) and _finite(y)] for s in series]
    if not any(points):
        return _empty(title, "no finite values were recorded")
    xs = [x for p in points for x, _ in p] + [m for m, _ in markers if _finite(m)]
    ys = [y for p in points for _, y in p]
    x_ticks = nice_ticks(min(xs), max(xs))
    y_ticks = nice_ticks(min(ys), max(ys))
    left, right, bottom_pad = 64.0, 16.0, 44.0
    legend, extra = _legend(series, left, 36, width)
    top = 52.0 + extra
    height += extra
    plot_w, plot_h = width - left - right, height - top - bottom_pad
    bottom = top + plot_h

    def px(x: float) -> float:
        return left + plot_w * (x - x_ticks[0]) / ((x_ticks[-1] - x_ticks[0]) or 1.0)

    def py(y: float) -> float:
        return bottom - plot_h * (y - y_ticks[0]) / ((y_ticks[-1] - y_ticks[0]) or 1.0)

    parts = _open(title, width, height) + legend
    for t in y_ticks:
        parts.append(f'<line x1="{left:.1f}" y1="{py(t):.1f}" x2="{left + plot_w:.1f}" y2="{py(t):.1f}" '
                     f'stroke="#ddd"/><text x="{left - 6:.1f}" y="{py(t) + 4:.1f}" {_FONT} text-anchor="end" '
                     f'fill="#444">{esc(fmt(t))}</text>')
    for t in x_ticks:
        parts.append(f'<text x="{px(t):.1f}" y="{bottom + 16:.1f}" {_FONT} text-anchor="middle" fill="#444">'
                     f"{esc(fmt(t))}</text>")
    for x, label in markers:
        if _finite(x):
            parts.append(f'<line x1="{px(x):.1f}" y1="{top:.1f}" x2="{px(x):.1f}" y2="{bottom:.1f}" stroke="#888" '
                         f'stroke-dasharray="4 3"><title>{esc(label)}</title></line>'
                         f'<text x="{px(x) + 3:.1f}" y="{top + 10:.1f}" {_SMALL} fill="#555">'
                         f"{esc(label)}</text>")
    for i, (s, pts) in enumerate(zip(series, points, strict=True)):
        pts = sorted(pts)
        color = _color(s, i)
        if len(pts) > 1:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"/>')
        if len(pts) <= 60:
            for x, y in pts:
                parts.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{color}"><title>'
                             f"{esc(s.name)} at {esc(x_label)} {esc(fmt(x))}: {esc(fmt(y))}</title></circle>")
    parts.append(f'<line x1="{left:.1f}" y1="{bottom:.1f}" x2="{left + plot_w:.1f}" y2="{bottom:.1f}" '
                 f'stroke="#333"/><line x1="{left:.1f}" y1="{top:.1f}" x2="{left:.1f}" y2="{bottom:.1f}" '
                 'stroke="#333"/>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 6:.1f}" {_FONT} text-anchor="middle">'
                 f"{esc(x_label)}</text>")
    if y_label:
        parts.append(f'<text x="14" y="{top + plot_h / 2:.1f}" {_FONT} text-anchor="middle" '
                     f'transform="rotate(-90 14 {top + plot_h / 2:.1f})">{esc(y_label)}</text>')
    parts.append("</svg>")
    return "".join(parts)
