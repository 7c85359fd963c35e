"""Per-feature statistics and example selection in one streaming pass, vectorized over features.

A store can hold 100M rows and a crosscoder 131k features, so nothing here keeps rows: each
batch's sparse activations (row, feature, value) are folded into fixed-size per-feature state.

- :class:`FeatureStats`: count, sum, sum of squares, max and smallest positive activation per
  feature (``torch.bincount`` / ``scatter_reduce``; no Python loop over features).
- :class:`PerFeatureTopK`: the ``n`` entries with the largest score per feature. Each batch's
  entries are grouped by feature with two stable sorts, cut to ``n`` per feature, and merged
  with the kept entries of the *touched* features only (one sort over ``(touched, 2n)``).
  Used twice: top activations (score = activation) and a uniform random sample of each
  feature's activations (score = minus a hash of (row, feature): the bottom-k sketch, which is
  a uniform sample without replacement and, being a pure function of (row, feature), does not
  depend on the batch size).

Ties are broken towards the earlier row, so the result equals a brute-force "sort by
(score desc, row asc), take n" over all rows.
"""

from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF


def _fmix32(x: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finalizer on int64 tensors holding values in [0, 2^32).

    A bijection on 32-bit integers; products are masked back to 32 bits (the low bits of a
    wrapped int64 product are exact), so it runs identically on CPU and CUDA.
    """
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & _M32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & _M32
    return x ^ (x >> 16)


def sample_keys(rows: torch.Tensor, feats: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Pseudo-random 32-bit key per (row, feature): a pure function of the pair and ``seed``.

    For one feature, distinct rows (below 2^32) get distinct keys, so keeping the smallest keys
    is a uniform sample without replacement of the rows where the feature fired.
    """
    s = _fmix32(torch.tensor(seed & _M32, dtype=torch.int64))
    h = _fmix32((rows.to(torch.int64) & _M32) ^ s.to(rows.device))
    return _fmix32(h ^ (feats.to(torch.int64) & _M32))


class FeatureStats:
    """Running count, sum, sum of squares, max and min positive activation per feature."""

    def __init__(self, n_features: int, device: torch.device | str = "cpu") -> None:
        self.n_features = n_features
        self.count = torch.zeros(n_features, dtype=torch.int64, device=device)
        self.sum = torch.zeros(n_features, dtype=torch.float64, device=device)
        self.sumsq = torch.zeros(n_features, dtype=torch.float64, device=device)
        self.max = torch.zeros(n_features, dtype=torch.float32, device=device)
        self.min_pos = torch.full((n_features,), float("inf"), device=device)
        self.rows = 0

    def update(self, feats: torch.Tensor, vals: torch.Tensor, n_rows: int) -> None:
        """Fold in one batch: active entries (feature, value) from ``n_rows`` rows."""
        self.rows += int(n_rows)
        if feats.numel() == 0:
            return
        f = self.n_features
        v = vals.detach().to(torch.float32)
        self.count += torch.bincount(feats, minlength=f)
        vd = v.double()
        self.sum += torch.bincount(feats, weights=vd, minlength=f)
        self.sumsq += torch.bincount(feats, weights=vd * vd, minlength=f)
        self.max.scatter_reduce_(0, feats, v, reduce="amax")
        self.min_pos.scatter_reduce_(0, feats, v, reduce="amin")


class PerFeatureTopK:
    """The ``n`` entries with the largest ``score`` per feature, with their row and value."""

    def __init__(
        self,
        n_features: int,
        n: int,
        *,
        score_dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.n_features = n_features
        self.n = n
        if score_dtype.is_floating_point:
            empty = float("-inf")
        else:
            empty = torch.iinfo(score_dtype).min
        self._empty = empty
        self.score = torch.full((n_features, n), empty, dtype=score_dtype, device=device)
        self.row = torch.full((n_features, n), -1, dtype=torch.int64, device=device)
        self.value = torch.zeros((n_features, n), dtype=torch.float32, device=device)

    def update(
        self,
        feats: torch.Tensor,
        scores: torch.Tensor,
        rows: torch.Tensor,
        values: torch.Tensor,
    ) -> None:
        """Merge one batch of entries. ``rows`` must not decrease along the entries' order
        within a feature for exact tie-breaking (true for sparse codes sorted by row)."""
        if feats.numel() == 0:
            return
        # Only entries that beat a feature's current n-th best can enter (ties go to the kept,
        # earlier rows). After the first batches this drops almost everything, so the sorts
        # below see few entries.
        better = scores.to(self.score.dtype) > self.score[feats, -1]
        if not bool(better.all()):
            feats, scores, rows, values = (
                feats[better],
                scores[better],
                rows[better],
                values[better],
            )
            if feats.numel() == 0:
                return
        n = self.n
        # Group by feature, best score first, stable so that equal scores keep row order.
        o1 = torch.sort(scores, descending=True, stable=True).indices
        o2 = torch.sort(feats[o1], stable=True).indices
        order = o1[o2]
        fs = feats[order]
        touched, counts = torch.unique_consecutive(fs, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        group = torch.repeat_interleave(torch.arange(len(touched), device=fs.device), counts)
        rank = torch.arange(len(fs), device=fs.device) - starts[group]
        keep = rank < n
        sel, g, r = order[keep], group[keep], rank[keep]
        u = len(touched)
        new_score = torch.full((u, n), self._empty, dtype=self.score.dtype, device=fs.device)
        new_row = torch.full((u, n), -1, dtype=torch.int64, device=fs.device)
        new_val = torch.zeros((u, n), dtype=torch.float32, device=fs.device)
        new_score[g, r] = scores[sel].to(self.score.dtype)
        new_row[g, r] = rows[sel].to(torch.int64)
        new_val[g, r] = values[sel].to(torch.float32)
        # Kept entries first: on equal scores the earlier (kept) rows win.
        cat_score = torch.cat([self.score[touched], new_score], dim=1)
        cat_row = torch.cat([self.row[touched], new_row], dim=1)
        cat_val = torch.cat([self.value[touched], new_val], dim=1)
        best = torch.sort(cat_score, dim=1, descending=True, stable=True).indices[:, :n]
        self.score[touched] = torch.gather(cat_score, 1, best)
        self.row[touched] = torch.gather(cat_row, 1, best)
        self.value[touched] = torch.gather(cat_val, 1, best)

    def filled(self) -> torch.Tensor:
        """(F, n) bool: which slots hold an entry."""
        return self.row >= 0


def quantile_band_picks(
    values: torch.Tensor, keys: torch.Tensor, filled: torch.Tensor, bands: int, per_band: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Choose ``per_band`` sample slots from each of ``bands`` equal-mass activation bands.

    ``values``/``keys``/``filled`` are (F, m) sample slots (uniform random sample of each
    feature's activations, keys = their sampling hash). Within a feature the filled slots are
    ranked by value; band b holds ranks in [b m_f / bands, (b+1) m_f / bands), i.e. the sample
    quantiles; the slots with the smallest keys in each band are picked (random, reproducible).
    Returns (slot index (F, bands*per_band), band (same shape)); slot -1 where a band has fewer
    than ``per_band`` entries.
    """
    f, m = values.shape
    dev = values.device
    big = torch.finfo(torch.float32).max
    v = torch.where(filled, values, torch.full_like(values, big))
    by_value = torch.sort(v, dim=1, stable=True).indices  # filled slots first, ascending
    value_rank = torch.empty_like(by_value)
    value_rank.scatter_(1, by_value, torch.arange(m, device=dev).expand(f, m))
    m_f = filled.sum(1, keepdim=True).clamp_min(1)
    band = torch.div(value_rank * bands, m_f, rounding_mode="floor").clamp_max(bands - 1)
    band = torch.where(filled, band, torch.full_like(band, bands))  # empty slots: past the end
    # order by (band, key): keys are < 2^32, so band * 2^32 + key fits in int64
    composite = band.to(torch.int64) * (1 << 32) + keys.to(torch.int64)
    order = torch.sort(composite, dim=1, stable=True).indices
    band_sorted = torch.gather(band, 1, order)
    counts = torch.stack([(band == b).sum(1) for b in range(bands + 1)], dim=1)  # (F, bands+1)
    starts = torch.cumsum(counts, 1) - counts
    pos_in_band = torch.arange(m, device=dev).expand(f, m) - torch.gather(starts, 1, band_sorted)
    out_slot = torch.full((f, bands * per_band), -1, dtype=torch.int64, device=dev)
    out_band = torch.arange(bands, device=dev).repeat_interleave(per_band).expand(f, -1).clone()
    ok = (pos_in_band < per_band) & (band_sorted < bands)
    fi, j = torch.nonzero(ok, as_tuple=True)
    col = band_sorted[fi, j] * per_band + pos_in_band[fi, j]
    out_slot[fi, col] = order[fi, j]
    return out_slot, out_band
