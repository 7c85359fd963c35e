"""First and second moments of stored activations: the basis of the ``centered`` normalization.

Why: scaling each model by one scalar to a common median norm (the paper's rule, docs/METHOD.md §2)
weighs each model's *variation* in the loss by how small its constant offset is. Gemma-3-270M
holds ~95% of its squared norm in one mean vector, so after median scaling its variation carries
~5% of the scaled energy against ~45% for SmolLM2, and its exclusive features have little loss
to win (arXiv 2605.31518: the outlier ratio gamma = |mean| / |std| predicts dead features). The
``centered`` normalization removes each model's per-dimension mean and scales each model so
that its mean squared *centred* norm is the common target (d_a + d_b) / 2; the two models then
weigh equally in the summed reconstruction loss.

What is computed, per model m, over the store's *inlier* rows (both models' raw norms within
``INLIER_FACTOR`` x their store median, the rule training uses to drop huge-norm positions such
as SmolLM2's first token at ~150x the median, which would otherwise dominate both moments):

- ``mean_m``: the per-dimension mean (float64);
- ``msq_m``: the mean squared raw norm E|x|^2, and ``msq_centered_m`` = E|x - mean|^2.

Streaming and resumable: one pass over the shards, one shard in memory at a time; per-shard
partial sums are kept in ``moments.safetensors`` in the store folder (written atomically
every ``SAVE_SECONDS`` and at the end, keyed by each shard's checksum and the inlier limits),
so an interrupted pass continues from its last save and a grown store only reads its new
shards (while the limits are unchanged). Nothing is pickled.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from crossdiff.errors import CrossdiffError
from crossdiff.store.stats import HIGH_NORM_FACTOR

if TYPE_CHECKING:
    from crossdiff.store.store import ActivationStore

MOMENTS_FILE = "moments.safetensors"
SAVE_SECONDS = 30.0
"""An interrupted pass loses at most this much work: partial sums are saved this often."""
MOMENTS_FORMAT = "crossdiff-moments-v1"
INLIER_FACTOR = HIGH_NORM_FACTOR
"""Rows whose raw norm exceeds this x the model's median norm are left out of the moments
(the same factor as the training filter, ``TrainConfig.high_norm_factor``)."""


@dataclass
class Moments:
    """Per-model first and second moments of paired activations (inlier rows only)."""

    rows: int
    mean_a: np.ndarray
    mean_b: np.ndarray
    msq_a: float
    msq_b: float
    msq_centered_a: float
    msq_centered_b: float

    @property
    def d_a(self) -> int:
        return int(self.mean_a.shape[0])

    @property
    def d_b(self) -> int:
        return int(self.mean_b.shape[0])

    def mean(self, m: str) -> np.ndarray:
        return self.mean_a if m == "a" else self.mean_b

    def msq_centered(self, m: str) -> float:
        return self.msq_centered_a if m == "a" else self.msq_centered_b

    def gamma(self, m: str) -> float:
        """|mean| / |std| with |std| = sqrt(E|x - mean|^2): the outlier ratio of 2605.31518."""
        return float(np.linalg.norm(self.mean(m))) / math.sqrt(max(self.msq_centered(m), 1e-30))

    def offset_share(self, m: str) -> float:
        """Share of the mean squared norm held by the constant mean vector, |mean|^2 / E|x|^2."""
        msq = self.msq_a if m == "a" else self.msq_b
        return float(np.dot(self.mean(m), self.mean(m))) / max(msq, 1e-30)

    def target(self) -> float:
        """The common scaled norm sqrt((d_a + d_b) / 2)."""
        return math.sqrt((self.d_a + self.d_b) / 2)

    def centered_scales(self) -> tuple[float, float]:
        """Scales that bring each model's root mean squared centred norm to :meth:`target`."""
        if not (self.msq_centered_a > 0 and self.msq_centered_b > 0):
            raise CrossdiffError(
                f"the activations do not vary (centred mean squared norms {self.msq_centered_a} "
                f"and {self.msq_centered_b}); the data looks constant or empty"
            )
        t = self.target()
        return t / math.sqrt(self.msq_centered_a), t / math.sqrt(self.msq_centered_b)

    def loss_share(self, scale_a: float, scale_b: float) -> tuple[float, float]:
        """Each model's share of the summed loss of predicting its mean, after scaling.

        This is the weight each model's variation has in the reconstruction loss (what its
        features can win). Centring does not change variances: the shares depend on the
        scales alone, for either normalization.
        """
        va = scale_a**2 * self.msq_centered_a
        vb = scale_b**2 * self.msq_centered_b
        total = max(va + vb, 1e-30)
        return va / total, vb / total

    def as_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The two mean vectors as float32 tensors (what a centred crosscoder stores)."""
        return (
            torch.from_numpy(self.mean_a.astype(np.float32)),
            torch.from_numpy(self.mean_b.astype(np.float32)),
        )

    def summary(self) -> dict[str, float]:
        """Numbers for logs, summaries and ``store info``."""
        out: dict[str, float] = {"rows": float(self.rows)}
        for m in ("a", "b"):
            out[f"gamma_{m}"] = self.gamma(m)
            out[f"offset_share_{m}"] = self.offset_share(m)
        return out


class _Partial:
    """Running float64 sums for one block of rows."""

    def __init__(self, d_a: int, d_b: int) -> None:
        self.sum_a = np.zeros(d_a, dtype=np.float64)
        self.sum_b = np.zeros(d_b, dtype=np.float64)
        self.sq_a = 0.0
        self.sq_b = 0.0
        self.n = 0

    def add(self, x_a: torch.Tensor, x_b: torch.Tensor) -> None:
        xa, xb = x_a.double(), x_b.double()
        self.sum_a += xa.sum(0).numpy()
        self.sum_b += xb.sum(0).numpy()
        self.sq_a += float(xa.pow(2).sum())
        self.sq_b += float(xb.pow(2).sum())
        self.n += int(xa.shape[0])


def inlier_rows(
    norm_a: torch.Tensor, norm_b: torch.Tensor, limit_a: float, limit_b: float
) -> torch.Tensor:
    """(n,) bool: rows whose raw norms are within both limits (the moments' inlier rule)."""
    return (norm_a <= limit_a) & (norm_b <= limit_b)


def moments_from_sums(parts: list[_Partial]) -> Moments:
    n = sum(p.n for p in parts)
    if n == 0:
        raise CrossdiffError(
            "no inlier rows to compute activation moments from; the store is empty or every "
            "row is a huge-norm outlier"
        )
    sum_a = np.sum([p.sum_a for p in parts], axis=0)
    sum_b = np.sum([p.sum_b for p in parts], axis=0)
    mean_a, mean_b = sum_a / n, sum_b / n
    msq_a = sum(p.sq_a for p in parts) / n
    msq_b = sum(p.sq_b for p in parts) / n
    return Moments(
        rows=n,
        mean_a=mean_a,
        mean_b=mean_b,
        msq_a=msq_a,
        msq_b=msq_b,
        msq_centered_a=max(msq_a - float(mean_a @ mean_a), 0.0),
        msq_centered_b=max(msq_b - float(mean_b @ mean_b), 0.0),
    )


def moments_of_arrays(
    x_a: torch.Tensor, x_b: torch.Tensor, factor: float = INLIER_FACTOR
) -> Moments:
    """Moments of in-memory rows, with the same inlier rule as a store (median x ``factor``)."""
    x_a, x_b = torch.as_tensor(x_a).float(), torch.as_tensor(x_b).float()
    na, nb = x_a.norm(dim=1), x_b.norm(dim=1)
    keep = inlier_rows(na, nb, factor * float(na.median()), factor * float(nb.median()))
    part = _Partial(x_a.shape[1], x_b.shape[1])
    part.add(x_a[keep], x_b[keep])
    return moments_from_sums([part])


# ---- the store's cached pass -------------------------------------------------------------------
def _limits(store: ActivationStore) -> tuple[float, float]:
    st = store.manifest.norm_stats
    med_a = st.get("a", {}).get("median")
    med_b = st.get("b", {}).get("median")
    if not (med_a and med_b):
        raise CrossdiffError(
            f"store {store.path} has no norm statistics yet (no rows?); harvest first"
        )
    return INLIER_FACTOR * float(med_a), INLIER_FACTOR * float(med_b)


def _load_cache(path: Path, limits: tuple[float, float]) -> dict[str, _Partial]:
    """Per-shard partial sums keyed by shard checksum (empty when absent or stale)."""
    if not path.is_file():
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != MOMENTS_FORMAT:
                return {}
            info = json.loads(meta.get("info", "{}"))
            if [float(v) for v in info.get("limits", [])] != [float(v) for v in limits]:
                return {}
            sums_a, sums_b = fh.get_tensor("sum_a"), fh.get_tensor("sum_b")
            sq = fh.get_tensor("sq")
            counts = fh.get_tensor("count")
    except Exception:  # a damaged cache is recomputed, never trusted
        return {}
    out: dict[str, _Partial] = {}
    for i, key in enumerate(info.get("shards", [])):
        p = _Partial(sums_a.shape[1], sums_b.shape[1])
        p.sum_a, p.sum_b = sums_a[i].numpy().copy(), sums_b[i].numpy().copy()
        p.sq_a, p.sq_b, p.n = float(sq[i, 0]), float(sq[i, 1]), int(counts[i])
        out[key] = p
    return out


def _save_cache(path: Path, limits: tuple[float, float], parts: dict[str, _Partial]) -> None:
    from safetensors.torch import save_file

    keys = list(parts)
    tensors = {
        "sum_a": torch.from_numpy(np.stack([parts[k].sum_a for k in keys])),
        "sum_b": torch.from_numpy(np.stack([parts[k].sum_b for k in keys])),
        "sq": torch.tensor([[parts[k].sq_a, parts[k].sq_b] for k in keys], dtype=torch.float64),
        "count": torch.tensor([parts[k].n for k in keys], dtype=torch.int64),
    }
    info = {"limits": list(limits), "shards": keys, "inlier_factor": INLIER_FACTOR}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": MOMENTS_FORMAT, "info": json.dumps(info)})
    tmp.replace(path)


def store_moments(
    store: ActivationStore,
    *,
    write_cache: bool = True,
    on_shard: Callable[[int], None] | None = None,
) -> Moments:
    """The store's moments over its inlier rows (see module docstring), computed once.

    ``write_cache=False`` computes without writing to the store folder (a read-only store).
    ``on_shard(rows)`` is called after each shard read (progress).
    """
    from crossdiff.store.shard import read_columns

    limits = _limits(store)
    path = Path(store.path) / MOMENTS_FILE
    cached = _load_cache(path, limits)
    parts: dict[str, _Partial] = {}
    dirty = False
    last_save = time.monotonic()
    for shard in store.manifest.shards:
        if shard.rows == 0:
            continue
        if shard.sha256 in cached:
            parts[shard.sha256] = cached[shard.sha256]
            continue
        cols = read_columns(store.path / shard.file, ("x_a", "x_b", "norm_a", "norm_b"))
        keep = inlier_rows(cols["norm_a"], cols["norm_b"], *limits)
        part = _Partial(store.d_a, store.d_b)
        part.add(cols["x_a"][keep], cols["x_b"][keep])
        parts[shard.sha256] = part
        dirty = True
        # the whole cache is rewritten on save, so save every SAVE_SECONDS, not every shard
        # (every shard would be quadratic in the number of shards)
        if write_cache and time.monotonic() - last_save >= SAVE_SECONDS:
            _save_cache(path, limits, parts)
            last_save, dirty = time.monotonic(), False
        if on_shard is not None:
            on_shard(shard.rows)
    if not parts:
        raise CrossdiffError(f"store {store.path} has no rows; run crossdiff harvest first")
    if write_cache and (dirty or set(cached) != set(parts)):
        _save_cache(path, limits, parts)
    return moments_from_sums(list(parts.values()))
