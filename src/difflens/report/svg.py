"""Tiny inline-SVG charts: the report must open offline with no JavaScript or plotting stack."""

from __future__ import annotations

from html import escape

PALETTE = ("#3366cc", "#dc3912", "#ff9900", "#109618", "#990099", "#0099c6", "#dd4477")


def line_chart(series: dict[str, list[float]], x_labels: list[str], title: str,
               width: int = 560, height: int = 220, y_label: str = "") -> str:
    """Lines over a shared x axis; one entry per named series."""
    values = [v for ys in series.values() for v in ys] or [0.0]
    top = max(values) or 1.0
    left, bottom, right, upper = 48, height - 28, width - 12, 24
    n = max(len(x_labels), 2)

    def x(i: int) -> float:
        return left + (right - left) * i / (n - 1)

    def y(v: float) -> float:
        return bottom - (bottom - upper) * (v / top)

    parts = [_frame(width, height, title, left, bottom, right, upper, top, y_label)]
    for i, label in enumerate(x_labels):
        parts.append(f'<text x="{x(i):.1f}" y="{bottom + 14}" font-size="10" '
                     f'text-anchor="middle">{escape(label)}</text>')
    for ys, color in zip(series.values(), PALETTE, strict=False):
        pts = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(ys))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>')
    parts.append(_legend(list(series), right))
    return _svg(width, height, parts)


def interval_chart(rows: list[tuple[str, float, float, float]], title: str,
                   width: int = 560, row_height: int = 26) -> str:
    """Point estimates with intervals: rows of ``(label, low, value, high)``."""
    height = 40 + row_height * len(rows)
    lo = min([r[1] for r in rows] + [0.0])
    hi = max([r[3] for r in rows] + [1e-9])
    left, right = 170, width - 20

    def x(v: float) -> float:
        return left + (right - left) * (v - lo) / ((hi - lo) or 1.0)

    parts = [f'<text x="8" y="16" font-size="13" font-weight="bold">{escape(title)}</text>']
    for i, (label, low, value, high) in enumerate(rows):
        cy = 36 + i * row_height
        color = PALETTE[i % len(PALETTE)]
        parts.append(f'<text x="8" y="{cy + 4}" font-size="11">{escape(label)}</text>')
        parts.append(f'<line x1="{x(low):.1f}" x2="{x(high):.1f}" y1="{cy}" y2="{cy}" '
                     f'stroke="{color}" stroke-width="3"/>')
        parts.append(f'<circle cx="{x(value):.1f}" cy="{cy}" r="4" fill="{color}"/>')
        parts.append(f'<text x="{x(high) + 6:.1f}" y="{cy + 4}" font-size="10">'
                     f"{value:.3f} [{low:.3f}, {high:.3f}]</text>")
    if lo < 0 < hi:
        parts.append(f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="24" y2="{height - 6}" '
                     'stroke="#999" stroke-dasharray="3,3"/>')
    return _svg(width, height, parts)


def strip_chart(groups: dict[str, list[float]], marker: dict[str, float], title: str,
                width: int = 560, row_height: int = 30) -> str:
    """Baseline values as dots per group, with the method's value as a red bar."""
    height = 40 + row_height * len(groups)
    allv = [v for vs in groups.values() for v in vs] + list(marker.values()) + [0.0]
    lo, hi = min(allv), max(allv)
    left, right = 170, width - 60

    def x(v: float) -> float:
        return left + (right - left) * (v - lo) / ((hi - lo) or 1.0)

    parts = [f'<text x="8" y="16" font-size="13" font-weight="bold">{escape(title)}</text>']
    for i, (label, values) in enumerate(groups.items()):
        cy = 36 + i * row_height
        parts.append(f'<text x="8" y="{cy + 4}" font-size="11">{escape(label)}</text>')
        parts.extend(f'<circle cx="{x(v):.1f}" cy="{cy}" r="3" fill="#888" opacity="0.7"/>'
                     for v in values)
        if label in marker:
            mx = x(marker[label])
            parts.append(f'<rect x="{mx - 2:.1f}" y="{cy - 9}" width="4" height="18" '
                         'fill="#dc3912"/>')
            parts.append(f'<text x="{mx + 6:.1f}" y="{cy - 6}" font-size="10" fill="#dc3912">'
                         f"{marker[label]:+.4f}</text>")
    parts.append(f'<line x1="{x(0):.1f}" x2="{x(0):.1f}" y1="24" y2="{height - 6}" '
                 'stroke="#999" stroke-dasharray="3,3"/>')
    return _svg(width, height, parts)


def bar_chart(rows: dict[str, dict[str, float]], title: str, width: int = 560,
              bar_height: int = 9, top: float | None = None) -> str:
    """Grouped horizontal bars: one group per row label, one bar per series (shared colours)."""
    series = list(dict.fromkeys(k for values in rows.values() for k in values))
    group = bar_height * max(len(series), 1) + 8
    height = 40 + group * len(rows) + 14 * len(series)
    hi = top or max([v for values in rows.values() for v in values.values()] + [1e-9])
    left, right = 170, width - 40
    parts = [f'<text x="8" y="16" font-size="13" font-weight="bold">{escape(title)}</text>']
    for i, (label, values) in enumerate(rows.items()):
        y0 = 30 + i * group
        parts.append(f'<text x="8" y="{y0 + group / 2:.0f}" font-size="11">{escape(label)}</text>')
        for j, name in enumerate(series):
            if name not in values:
                continue
            w = (right - left) * values[name] / hi
            y = y0 + j * bar_height
            parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_height - 1}" '
                         f'fill="{PALETTE[j % len(PALETTE)]}"/>')
            parts.append(f'<text x="{left + w + 4:.1f}" y="{y + bar_height - 1}" '
                         f'font-size="9">{values[name]:g}</text>')
    legend_y = 34 + group * len(rows)
    for j, name in enumerate(series):
        parts.append(f'<rect x="{left}" y="{legend_y + 14 * j}" width="10" height="10" '
                     f'fill="{PALETTE[j % len(PALETTE)]}"/><text x="{left + 14}" '
                     f'y="{legend_y + 9 + 14 * j}" font-size="10">{escape(name)}</text>')
    return _svg(width, height, parts)


def _frame(width: int, height: int, title: str, left: int, bottom: int, right: int, upper: int,
           top: float, y_label: str) -> str:
    return (f'<text x="8" y="14" font-size="13" font-weight="bold">{escape(title)}</text>'
            f'<line x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#444"/>'
            f'<line x1="{left}" y1="{bottom}" x2="{left}" y2="{upper}" stroke="#444"/>'
            f'<text x="{left - 4}" y="{upper + 4}" font-size="10" text-anchor="end">'
            f"{top:.3g}</text>"
            f'<text x="{left - 4}" y="{bottom}" font-size="10" text-anchor="end">0</text>'
            f'<text x="4" y="{(upper + bottom) / 2:.0f}" font-size="10">{escape(y_label)}</text>')


def _legend(names: list[str], right: int) -> str:
    return "".join(
        f'<rect x="{right - 110}" y="{22 + 14 * i}" width="10" height="10" fill="{c}"/>'
        f'<text x="{right - 96}" y="{31 + 14 * i}" font-size="10">{escape(n)}</text>'
        for i, (n, c) in enumerate(zip(names, PALETTE, strict=False))
    )


def _svg(width: int, height: int, parts: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif">{"".join(parts)}</svg>')
