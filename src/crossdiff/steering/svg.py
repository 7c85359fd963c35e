"""A small self-contained SVG line chart: behaviour rate against alpha, one line per model.

Written by hand (no plotting dependency) so the plot also embeds in the HTML report as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT = 520, 320
MARGIN = {"left": 56, "right": 150, "top": 36, "bottom": 46}
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def rate_plot_svg(
    alphas: Sequence[float],
    series: dict[str, Sequence[float | None]],
    *,
    title: str = "",
    x_label: str = "alpha",
    y_label: str = "rate",
) -> str:
    """SVG text of rate (0-1, y) against alpha (x); None values break a line."""
    if not alphas:
        raise ValueError("rate_plot_svg needs at least one alpha")
    plot_w = WIDTH - MARGIN["left"] - MARGIN["right"]
    plot_h = HEIGHT - MARGIN["top"] - MARGIN["bottom"]
    lo, hi = min(alphas), max(alphas)
    span = hi - lo or 1.0

    def px(a: float) -> float:
        return MARGIN["left"] + (a - lo) / span * plot_w if hi > lo else MARGIN["left"] + plot_w / 2

    def py(r: float) -> float:
        return MARGIN["top"] + (1.0 - r) * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
    ]
    if title:
        out.append(
            f'<text x="{MARGIN["left"]}" y="20" font-size="14" font-weight="bold">'
            f"{escape(title)}</text>"
        )
    x0, x1 = MARGIN["left"], MARGIN["left"] + plot_w
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = py(tick)
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:g}</text>')
    y_axis = py(0.0)
    out.append(f'<line x1="{x0}" y1="{y_axis:.1f}" x2="{x1}" y2="{y_axis:.1f}" stroke="#333"/>')
    out.append(f'<line x1="{x0}" y1="{py(1.0):.1f}" x2="{x0}" y2="{y_axis:.1f}" stroke="#333"/>')
    for a in sorted(set(alphas)):
        x = px(a)
        out.append(
            f'<line x1="{x:.1f}" y1="{y_axis:.1f}" x2="{x:.1f}" y2="{y_axis + 4:.1f}" '
            'stroke="#333"/>'
        )
        out.append(f'<text x="{x:.1f}" y="{y_axis + 17:.1f}" text-anchor="middle">{a:g}</text>')
    out.append(
        f'<text x="{x0 + plot_w / 2:.1f}" y="{HEIGHT - 8}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
    )
    out.append(
        f'<text x="14" y="{MARGIN["top"] + plot_h / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {MARGIN["top"] + plot_h / 2:.1f})">{escape(y_label)}</text>'
    )
    order = sorted(range(len(alphas)), key=lambda i: alphas[i])
    for k, (label, values) in enumerate(series.items()):
        color = COLORS[k % len(COLORS)]
        segment: list[str] = []
        segments: list[list[str]] = []
        for i in order:
            v = values[i]
            if v is None:
                if segment:
                    segments.append(segment)
                segment = []
                continue
            segment.append(f"{px(alphas[i]):.1f},{py(float(v)):.1f}")
            out.append(
                f'<circle cx="{px(alphas[i]):.1f}" cy="{py(float(v)):.1f}" r="3" fill="{color}"/>'
            )
        if segment:
            segments.append(segment)
        for seg in segments:
            if len(seg) > 1:
                out.append(
                    f'<polyline points="{" ".join(seg)}" fill="none" stroke="{color}" '
                    'stroke-width="2"/>'
                )
        ly = MARGIN["top"] + 10 + 18 * k
        lx = x1 + 14
        out.append(
            f'<line x1="{lx}" y1="{ly}" x2="{lx + 18}" y2="{ly}" stroke="{color}" '
            'stroke-width="2"/>'
        )
        out.append(f'<text x="{lx + 24}" y="{ly + 4}">{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
