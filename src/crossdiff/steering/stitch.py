"""The cross-model check: a linear map between the two models' residual streams.

docs/METHOD.md §5: to test whether a feature exclusive to model A really has no counterpart in B,
map its direction into B with a linear "stitching" map fitted on paired activations, steer
both models, and compare what they do.

The fit: ridge regression from the source model's raw activations to the target's, over the
store's aligned pairs, ``y ≈ (x - mean_x) W + mean_y``. It streams: only ``X^T X`` (d_s x d_s),
``X^T Y`` (d_s x d_t) and the sums are accumulated, in float64, so memory is O(d^2) whatever
the store's size (4096 x 4096 floats = 128 MiB per matrix). The ridge strength is relative,
``lambda = ridge x trace(cov X) / d_s``, so one default fits every model scale. Rows with a norm
above ``max_norm_ratio`` x the store's median norm (in either model) are left out, as in
training (docs/METHOD.md §2): a handful of attention-sink positions 10x the median would otherwise
dominate the squares. Fitted on the train split; the fraction of variance explained (FVE) is
measured on the store's eval split.

Mapping a direction: if ``y ≈ x W + c``, adding ``delta`` to model A's residual corresponds to
adding ``delta W`` to model B's (the offset cancels). So the steering vector's image is its
push-forward ``v_B = v_A W`` (``W^T d`` as column vectors). This carries over the part of the
direction that B's residual stream linearly encodes; for a concept B lacks, the map has
nothing to carry and the image is short. ``retained`` reports that ratio (norms relative to each
model's median activation norm), and :func:`crossdiff.steering.api.steer` by default rescales
the image to the source's relative strength (``cross_norm="relative"``), so that B is pushed
as hard as A and "B does not change" means the direction, not a weaker push.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from crossdiff.errors import CrossdiffError
from crossdiff.ridge import ridge_solve

MAP_FORMAT = "crossdiff-linear-map"
DEFAULT_RIDGE = 1e-3
DEFAULT_MAX_ROWS = 1_000_000
DEFAULT_MAX_NORM_RATIO = 2.0
BATCH_ROWS = 8192


@dataclass
class LinearMap:
    """``y ≈ (x - mean_x) @ weight + mean_y``, from model ``source``'s raw activations to
    ``target``'s."""

    source: str
    target: str
    weight: torch.Tensor  # (d_source, d_target) float32
    mean_x: torch.Tensor  # (d_source,)
    mean_y: torch.Tensor  # (d_target,)
    ridge: float
    rows: int
    fve_train: float
    fve_eval: float | None = None
    eval_rows: int = 0
    max_norm_ratio: float | None = None
    request: dict = field(default_factory=dict)  # what the fit was asked for (cache key)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Map source activations (N, d_s) to predicted target activations (N, d_t)."""
        return (x.float() - self.mean_x) @ self.weight + self.mean_y

    def push_forward(self, delta: torch.Tensor) -> torch.Tensor:
        """The target-side change that corresponds to adding ``delta`` to the source."""
        return delta.float() @ self.weight

    def settings(self) -> dict:
        return {
            "source": self.source,
            "target": self.target,
            "ridge": self.ridge,
            "rows": self.rows,
            "fve_train": self.fve_train,
            "fve_eval": self.fve_eval,
            "eval_rows": self.eval_rows,
            "max_norm_ratio": self.max_norm_ratio,
            "request": self.request,
        }

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": MAP_FORMAT, "settings": json.dumps(self.settings())}
        tmp = path.with_name(path.name + ".tmp")
        tensors = {"weight": self.weight, "mean_x": self.mean_x, "mean_y": self.mean_y}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> LinearMap:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            if meta.get("format") != MAP_FORMAT:
                raise CrossdiffError(f"{path} is not a crossdiff linear map")
            s = json.loads(meta["settings"])
            return cls(
                s["source"],
                s["target"],
                fh.get_tensor("weight"),
                fh.get_tensor("mean_x"),
                fh.get_tensor("mean_y"),
                s["ridge"],
                s["rows"],
                s["fve_train"],
                s.get("fve_eval"),
                s.get("eval_rows", 0),
                s.get("max_norm_ratio"),
                s.get("request", {}),
            )


class _Moments:
    """Streaming sums for least squares: n, sum x, sum y, X^T X, X^T Y, sum |y|^2 (float64)."""

    def __init__(self, d_x: int, d_y: int) -> None:
        f64 = torch.float64
        self.n = 0
        self.sx = torch.zeros(d_x, dtype=f64)
        self.sy = torch.zeros(d_y, dtype=f64)
        self.xx = torch.zeros(d_x, d_x, dtype=f64)
        self.xy = torch.zeros(d_x, d_y, dtype=f64)
        self.yy = 0.0

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x = x.double()
        y = y.double()
        self.n += int(x.shape[0])
        self.sx += x.sum(0)
        self.sy += y.sum(0)
        self.xx += x.T @ x
        self.xy += x.T @ y
        self.yy += float((y * y).sum())


def solve_ridge(
    mom: _Moments, ridge: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """(W, mean_x, mean_y, train FVE) from accumulated moments."""
    if mom.n < 2:
        raise CrossdiffError(
            f"fitting a linear map needs at least 2 paired rows, got {mom.n}; harvest more"
        )
    n = mom.n
    mx, my = mom.sx / n, mom.sy / n
    cxx = mom.xx - n * torch.outer(mx, mx)
    cxy = mom.xy - n * torch.outer(mx, my)
    w, _ = ridge_solve(cxx, cxy, ridge, min_lam=1e-12)
    # SSE = tr(Cyy) - 2 tr(W^T Cxy) + tr(W^T Cxx W); total = tr(Cyy)
    tr_cyy = mom.yy - n * float(my @ my)
    sse = tr_cyy - 2 * float((w * cxy).sum()) + float((w * (cxx @ w)).sum())
    fve = 1.0 - sse / tr_cyy if tr_cyy > 0 else float("nan")
    return w.float(), mx.float(), my.float(), fve


def fit_linear_map(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    source: str = "a",
    target: str = "b",
    ridge: float = DEFAULT_RIDGE,
) -> LinearMap:
    """Ridge regression of target rows on source rows, streamed over ``(x, y)`` batches."""
    if not ridge >= 0 or math.isinf(ridge):
        raise CrossdiffError(f"ridge must be a finite number >= 0, got {ridge}")
    mom = None
    for x, y in batches:
        if mom is None:
            mom = _Moments(int(x.shape[1]), int(y.shape[1]))
        mom.add(x, y)
    if mom is None:
        raise CrossdiffError("fitting a linear map needs paired rows, but none were given")
    w, mx, my, fve = solve_ridge(mom, ridge)
    return LinearMap(source, target, w, mx, my, ridge, mom.n, fve)


def _keep_typical(
    x: torch.Tensor, y: torch.Tensor, limits: tuple[float | None, float | None]
) -> tuple[torch.Tensor, torch.Tensor]:
    keep = torch.ones(x.shape[0], dtype=torch.bool)
    if limits[0]:
        keep &= x.norm(dim=1) <= limits[0]
    if limits[1]:
        keep &= y.norm(dim=1) <= limits[1]
    return x[keep], y[keep]


def fit_store_map(
    store,
    source: str,
    *,
    ridge: float = DEFAULT_RIDGE,
    max_rows: int | None = DEFAULT_MAX_ROWS,
    max_norm_ratio: float | None = DEFAULT_MAX_NORM_RATIO,
    progress: bool = False,
) -> LinearMap:
    """Fit the map from model ``source`` ("a"/"b") to the other on a store's aligned pairs.

    Uses the first ``max_rows`` rows of the train split (store order; None = all), then
    measures FVE on the eval split (if it has rows).
    """
    if source not in ("a", "b"):
        raise CrossdiffError(f"source model must be 'a' or 'b', got {source!r}")
    target = "b" if source == "a" else "a"
    m = store.manifest
    limits: tuple[float | None, float | None] = (None, None)
    if max_norm_ratio:
        med = {k: m.norm_stats.get(k, {}).get("median") for k in ("a", "b")}
        limits = (
            max_norm_ratio * med[source] if med[source] else None,
            max_norm_ratio * med[target] if med[target] else None,
        )
    total = min(store.n_rows, max_rows) if max_rows else store.n_rows
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"fit map {source.upper()}->{target.upper()}", unit="row")

    def pairs(split: str, limit: int | None):
        seen = 0
        for x_a, x_b, _meta in store.iter_rows(BATCH_ROWS, split=split):
            x, y = (x_a, x_b) if source == "a" else (x_b, x_a)
            if limit is not None and seen + x.shape[0] > limit:
                x, y = x[: limit - seen], y[: limit - seen]
            seen += int(x.shape[0])
            if bar is not None and split == "train":
                bar.update(int(x.shape[0]))
            yield _keep_typical(x, y, limits)
            if limit is not None and seen >= limit:
                return

    try:
        fitted = fit_linear_map(pairs("train", max_rows), source=source, target=target, ridge=ridge)
    finally:
        if bar is not None:
            bar.close()
    fitted.max_norm_ratio = max_norm_ratio
    sse = 0.0
    sy = None
    syy = 0.0
    n = 0
    for x, y in pairs("eval", None):
        if x.shape[0] == 0:
            continue
        pred = fitted.apply(x)
        sse += float((pred.double() - y.double()).pow(2).sum())
        sy = y.double().sum(0) if sy is None else sy + y.double().sum(0)
        syy += float(y.double().pow(2).sum())
        n += int(x.shape[0])
    if n >= 2 and sy is not None:
        total_var = syy - float(sy @ sy) / n
        fitted.fve_eval = 1.0 - sse / total_var if total_var > 0 else None
        fitted.eval_rows = n
    return fitted


def map_cache_path(steering_dir: Path, source: str) -> Path:
    target = "b" if source == "a" else "a"
    return steering_dir / f"map-{source}-to-{target}.safetensors"


def load_or_fit_map(
    store,
    steering_dir: Path,
    source: str,
    *,
    ridge: float = DEFAULT_RIDGE,
    max_rows: int | None = DEFAULT_MAX_ROWS,
    max_norm_ratio: float | None = DEFAULT_MAX_NORM_RATIO,
    refit: bool = False,
    progress: bool = False,
) -> tuple[LinearMap, bool]:
    """The map cached in ``steering_dir`` if it was fitted with these settings on a store of
    this size, else a fresh fit (then cached). Returns (map, whether it came from the cache)."""
    path = map_cache_path(steering_dir, source)
    request = {"store_rows": store.n_rows, "max_rows": max_rows}
    if path.is_file() and not refit:
        try:
            cached = LinearMap.load(path)
        except (CrossdiffError, OSError, KeyError, json.JSONDecodeError):
            cached = None
        if (
            cached is not None
            and cached.source == source
            and cached.ridge == ridge
            and cached.max_norm_ratio == max_norm_ratio
            and cached.request == request
        ):
            return cached, True
    fitted = fit_store_map(
        store,
        source,
        ridge=ridge,
        max_rows=max_rows,
        max_norm_ratio=max_norm_ratio,
        progress=progress,
    )
    fitted.request = request
    fitted.save(path)
    return fitted, False
