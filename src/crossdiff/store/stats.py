"""Norm statistics and normalization scales of stored activations.

Training multiplies each model's activations by one scalar so that both have the same median
L2 norm, sqrt((d_a + d_b) / 2) (docs/METHOD.md §2). The median is estimated from a bounded,
deterministic sample of each shard's per-row norms (stored in the shard itself), so the
statistics never need the activations in memory and a resumed harvest computes exactly the
numbers an uninterrupted one would.
"""

from __future__ import annotations

import math

import numpy as np

SAMPLE_PER_SHARD = 4096
HIGH_NORM_FACTOR = 2.0
"""Pairs whose norm exceeds this x the typical (median) norm are huge-norm outliers (attention
sinks such as SmolLM2's first token at ~150x): left out of training (per batch), evaluation,
analysis, s_max and the moments. The one home of the factor 2 of docs/METHOD.md §2."""
QUANTILES: tuple[float, ...] = (0.001, 0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 0.999)


def shard_sample(norms: np.ndarray, limit: int = SAMPLE_PER_SHARD) -> np.ndarray:
    """An evenly strided, deterministic subsample of one shard's norms (at most ``limit``)."""
    norms = np.asarray(norms, dtype=np.float32)
    if norms.shape[0] <= limit:
        return norms.copy()
    idx = np.linspace(0, norms.shape[0] - 1, limit).round().astype(np.int64)
    return norms[idx]


def norm_summary(sample: np.ndarray) -> dict[str, float | int | dict[str, float]]:
    """Median, mean, max, quantiles and the share above 2x the median (the training filter)."""
    sample = np.asarray(sample, dtype=np.float64)
    if sample.size == 0:
        return {"sample_size": 0}
    median = float(np.median(sample))
    qs = np.quantile(sample, QUANTILES)
    return {
        "sample_size": int(sample.size),
        "median": median,
        "mean": float(sample.mean()),
        "max": float(sample.max()),
        "quantiles": {f"{q:g}": float(v) for q, v in zip(QUANTILES, qs)},
        "frac_above_2x_median": float(np.mean(sample > 2 * median)),
    }


def normalization_scales(
    median_a: float, median_b: float, d_a: int, d_b: int
) -> dict[str, float] | None:
    """scale_m = sqrt((d_a + d_b) / 2) / median_norm_m, or None if a median is not positive."""
    if not (median_a > 0 and median_b > 0):
        return None
    target = math.sqrt((d_a + d_b) / 2)
    return {"a": target / median_a, "b": target / median_b, "target_norm": target}
