"""Inline SVG plots for the report: no plotting library, no external file, no script.

Every label is escaped; the numbers come from the feature table, never from corpus text.
"""

from __future__ import annotations

from html import escape

import numpy as np

WIDTH, HEIGHT = 640, 260
PAD_L, PAD_R, PAD_T, PAD_B = 48, 16, 24, 40
COLORS = {"A": "#c0392b", "B": "#2471a3", "S": "#7f8c8d", "D": "#8e44ad"}


def _frame(title: str, x_label: str, y_label: str, body: list[str]) -> str:
    return (
        f'<svg class="plot" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>"
        f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" class="plot-title">'
        f"{escape(title)}</text>"
        + "".join(body)
        + f'<text x="{WIDTH / 2}" y="{HEIGHT - 6}" text-anchor="middle">{escape(x_label)}</text>'
        f'<text x="12" y="{HEIGHT / 2}" transform="rotate(-90 12 {HEIGHT / 2})" '
        f'text-anchor="middle">{escape(y_label)}</text></svg>'
    )


def relative_norm_histogram(
    rel: np.ndarray, alive: np.ndarray, lo: float, hi: float, bins: int = 50
) -> str:
    """Histogram of relative decoder norms of alive features (log count), with the class
    thresholds marked: the standard crosscoder's view of which features are exclusive."""
    vals = rel[alive]
    counts, edges = np.histogram(vals, bins=bins, range=(0.0, 1.0))
    plot_w = WIDTH - PAD_L - PAD_R
    plot_h = HEIGHT - PAD_T - PAD_B
    top = np.log10(max(int(counts.max(initial=0)), 1) + 1)
    body = []
    for i, c in enumerate(counts):
        if c == 0:
            continue
        h = plot_h * np.log10(c + 1) / top
        x = PAD_L + plot_w * edges[i]
        w = plot_w / bins
        mid = (edges[i] + edges[i + 1]) / 2
        color = COLORS["A"] if mid > hi else COLORS["B"] if mid < lo else COLORS["S"]
        body.append(
            f'<rect x="{x:.1f}" y="{PAD_T + plot_h - h:.1f}" width="{w - 1:.1f}" '
            f'height="{h:.1f}" fill="{color}"><title>{edges[i]:.2f}-{edges[i + 1]:.2f}: '
            f"{int(c)} features</title></rect>"
        )
    for t in (lo, hi):
        x = PAD_L + plot_w * t
        body.append(
            f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{PAD_T}" y2="{PAD_T + plot_h}" '
            'stroke="#333" stroke-dasharray="4 3"/>'
        )
    for t in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = PAD_L + plot_w * t
        body.append(
            f'<text x="{x:.1f}" y="{PAD_T + plot_h + 14}" text-anchor="middle">{t:g}</text>'
        )
    body.append(
        f'<text x="{PAD_L - 4}" y="{PAD_T + 8}" text-anchor="end">'
        f"{int(counts.max(initial=0))}</text>"
    )
    return _frame(
        "Relative decoder norm |d_A| / (|d_A| + |d_B|) of alive features",
        f"relative norm (B-only < {lo:g} | shared | {hi:g} < A-only)",
        "features (log scale)",
        body,
    )


def partition_activity(
    klass: np.ndarray, freq: np.ndarray, alive: np.ndarray, names: dict[str, str]
) -> str:
    """Per partition: distribution of log10 activation frequency of alive features (one step
    line each), with alive counts in the legend: do the exclusive blocks learn, and how often
    do their features fire compared with the shared block?"""
    lo_dec, hi_dec = -7.0, 0.0
    bins = 28
    edges = np.linspace(lo_dec, hi_dec, bins + 1)
    plot_w = WIDTH - PAD_L - PAD_R
    plot_h = HEIGHT - PAD_T - PAD_B
    body = []
    series = []
    for key in ("A", "B", "S"):
        sel = klass == key
        if not sel.any():
            continue
        f = freq[sel & alive]
        logs = np.log10(np.clip(f, 10**lo_dec, 1.0))
        counts, _ = np.histogram(logs, bins=edges)
        share = counts / max(int(sel.sum()), 1)
        series.append((key, share, int((sel & alive).sum()), int(sel.sum())))
    top = max((float(s.max(initial=0)) for _, s, _, _ in series), default=1.0) or 1.0
    for n, (key, share, n_alive, n_all) in enumerate(series):
        pts = []
        for i, s in enumerate(share):
            x0 = PAD_L + plot_w * i / bins
            x1 = PAD_L + plot_w * (i + 1) / bins
            y = PAD_T + plot_h - plot_h * s / top
            pts.append(f"{x0:.1f},{y:.1f} {x1:.1f},{y:.1f}")
        body.append(
            f'<polyline fill="none" stroke="{COLORS[key]}" stroke-width="2" '
            f'points="{" ".join(pts)}"/>'
        )
        label = f"{names.get(key, key)}: {n_alive}/{n_all} alive"
        body.append(
            f'<text x="{PAD_L + 8}" y="{PAD_T + 14 + 14 * n}" fill="{COLORS[key]}">'
            f"{escape(label)}</text>"
        )
    for d in range(int(lo_dec), int(hi_dec) + 1):
        x = PAD_L + plot_w * (d - lo_dec) / (hi_dec - lo_dec)
        body.append(
            f'<text x="{x:.1f}" y="{PAD_T + plot_h + 14}" text-anchor="middle">1e{d}</text>'
        )
    return _frame(
        "Partition activity: activation frequency of alive features",
        "activation frequency (log scale)",
        "share of the partition",
        body,
    )
