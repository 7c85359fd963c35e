"""Scores of a judge's answers: balanced accuracy with a 95% interval, and AUROC.

Balanced accuracy (the mean of the true-positive and true-negative rates) rather than plain
accuracy, so that examples the judge did not answer (a reply that did not parse) cannot tilt
the score towards one class. The interval is Wilson's score interval for a proportion, taken
at the balanced accuracy over the answered examples; with equal numbers of activating and
non-activating examples (how the samples are built) it is exactly Wilson's interval of the
accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

Z95 = 1.959963984540054


@dataclass
class Score:
    """One score over n answered examples (NaN when nothing was answered)."""

    value: float
    ci_low: float
    ci_high: float
    n: int
    auroc: float
    unanswered: int


def wilson(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of proportion ``p`` observed over ``n`` trials."""
    if n <= 0 or not math.isfinite(p):
        return math.nan, math.nan
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def auroc(labels: Sequence[bool], scores: Sequence[float]) -> float:
    """Area under the ROC curve (ties count half); NaN without both classes."""
    pos = [s for y, s in zip(labels, scores) if y]
    neg = [s for y, s in zip(labels, scores) if not y]
    if not pos or not neg:
        return math.nan
    wins = 0.0
    for p in pos:
        for q in neg:
            wins += 1.0 if p > q else 0.5 if p == q else 0.0
    return wins / (len(pos) * len(neg))


def score(labels: Sequence[bool], probs: Sequence[float | None], threshold: float = 0.5) -> Score:
    """Balanced accuracy of ``prob >= threshold`` against ``labels`` (None: unanswered)."""
    pairs = [(bool(y), float(p)) for y, p in zip(labels, probs) if p is not None]
    unanswered = len(labels) - len(pairs)
    pos = [p for y, p in pairs if y]
    neg = [p for y, p in pairs if not y]
    if not pos or not neg:
        return Score(math.nan, math.nan, math.nan, len(pairs), math.nan, unanswered)
    tpr = sum(p >= threshold for p in pos) / len(pos)
    tnr = sum(p < threshold for p in neg) / len(neg)
    value = (tpr + tnr) / 2
    lo, hi = wilson(value, len(pairs))
    return Score(
        value, lo, hi, len(pairs), auroc([y for y, _ in pairs], [p for _, p in pairs]), unanswered
    )
