"""A small self-contained SVG line chart: behaviour rate against alpha, one line per model.

Written by hand (no plotting dependency) so the plot also embeds in the HTML report as is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 520, 320
MARGIN = {"left": 56, "right": 150, "top": 36, "bottom": 46}
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
Y_TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)
PLOT_W = WIDTH - MARGIN["left"] - MARGIN["right"]
PLOT_H = HEIGHT - MARGIN["top"] - MARGIN["bottom"]


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
    frame = _Frame(min(alphas), max(alphas))
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
    out += _axes(frame, alphas, x_label, y_label)
    order = sorted(range(len(alphas)), key=lambda i: alphas[i])
    for k, (label, values) in enumerate(series.items()):
        points = [(alphas[i], values[i]) for i in order]
        out += _series(frame, points, COLORS[k % len(COLORS)])
        out += _legend_entry(frame, k, label, COLORS[k % len(COLORS)])
    out.append("</svg>")
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class _Frame:
    """How (alpha, rate) maps into the plot area, shared by the axes, the lines and the
    legend so that they line up."""

    lo: float
    """Smallest alpha (the left edge)."""
    hi: float
    """Largest alpha (the right edge); equal to ``lo``, every point sits in the middle."""

    @property
    def x0(self) -> int:
        """The plot area's left edge."""
        return MARGIN["left"]

    @property
    def x1(self) -> int:
        """The plot area's right edge (the legend starts right of it)."""
        return MARGIN["left"] + PLOT_W

    def px(self, a: float) -> float:
        """The x coordinate of alpha ``a``."""
        if self.hi > self.lo:
            return MARGIN["left"] + (a - self.lo) / (self.hi - self.lo) * PLOT_W
        return MARGIN["left"] + PLOT_W / 2

    def py(self, r: float) -> float:
        """The y coordinate of rate ``r`` (0 at the bottom, 1 at the top)."""
        return MARGIN["top"] + (1.0 - r) * PLOT_H


def _axes(frame: _Frame, alphas: Sequence[float], x_label: str, y_label: str) -> list[str]:
    """Grid lines at the rate ticks, both axes, a tick per distinct alpha and the labels."""
    x0, x1 = frame.x0, frame.x1
    out = []
    for tick in Y_TICKS:
        y = frame.py(tick)
        out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:g}</text>')
    y_axis = frame.py(0.0)
    out.append(f'<line x1="{x0}" y1="{y_axis:.1f}" x2="{x1}" y2="{y_axis:.1f}" stroke="#333"/>')
    out.append(
        f'<line x1="{x0}" y1="{frame.py(1.0):.1f}" x2="{x0}" y2="{y_axis:.1f}" stroke="#333"/>'
    )
    for a in sorted(set(alphas)):
        x = frame.px(a)
        out.append(
            f'<line x1="{x:.1f}" y1="{y_axis:.1f}" x2="{x:.1f}" y2="{y_axis + 4:.1f}" '
            'stroke="#333"/>'
        )
        out.append(f'<text x="{x:.1f}" y="{y_axis + 17:.1f}" text-anchor="middle">{a:g}</text>')
    out.append(
        f'<text x="{x0 + PLOT_W / 2:.1f}" y="{HEIGHT - 8}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
    )
    mid = MARGIN["top"] + PLOT_H / 2
    out.append(
        f'<text x="14" y="{mid:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {mid:.1f})">{escape(y_label)}</text>'
    )
    return out


def _series(frame: _Frame, points: Sequence[tuple[float, float | None]], color: str) -> list[str]:
    """One model's line, its points in alpha order: a dot per rate, and a polyline through
    each run of rates between missing ones (a lone rate is a dot only)."""
    out = []
    segments: list[list[str]] = [[]]
    for a, v in points:
        if v is None:
            segments.append([])
            continue
        x, y = frame.px(a), frame.py(float(v))
        segments[-1].append(f"{x:.1f},{y:.1f}")
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color}"/>')
    for seg in segments:
        if len(seg) > 1:
            out.append(
                f'<polyline points="{" ".join(seg)}" fill="none" stroke="{color}" '
                'stroke-width="2"/>'
            )
    return out


def _legend_entry(frame: _Frame, k: int, label: str, color: str) -> list[str]:
    """The ``k``-th model's legend line and name, right of the plot area."""
    ly = MARGIN["top"] + 10 + 18 * k
    lx = frame.x1 + 14
    return [
        f'<line x1="{lx}" y1="{ly}" x2="{lx + 18}" y2="{ly}" stroke="{color}" stroke-width="2"/>',
        f'<text x="{lx + 24}" y="{ly + 4}">{escape(label)}</text>',
    ]
