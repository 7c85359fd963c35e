"""Matching exclusive features between two crosscoders by what they do.

Two crosscoders trained on the same store (other seed, other exclusive fraction) name their
features differently, so "the same feature" has to be recognised by behaviour, not index.
Two signals, both in the feature's *own* model (an A-exclusive feature has no B weights):

- **decoder cosine**: cos(d_i, d_j) of the two decoder rows into that model
  (``Crosscoder.decoder_weight(m)``; both crosscoders see the store's normalization, so the
  rows live in one space; a per-model scalar scale would not change a cosine anyway);
- **activation correlation**: Pearson r of the two features' activations over the same
  held-out rows (zeros included), each crosscoder encoding in inference mode.

A pair is *admissible* when the rule of :class:`MatchConfig` holds (default: cosine >= 0.7
AND correlation >= 0.5, measured on the toy ground truth, docs/recurrence.md); the
admissible pairs are then matched one to one, maximizing the summed score
``(max(cos, 0) + max(r, 0)) / 2``, with scipy's ``linear_sum_assignment`` when scipy is
installed and a greedy pass by descending score otherwise. Why one to one: a feature that
split in two in the other crosscoder must not count as "found again" twice, and two reference
features must not both claim one other feature.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from crossdiff.crosscoder.model import Crosscoder
from crossdiff.errors import CrossdiffError
from crossdiff.recurrence.config import RULES, MatchConfig

__all__ = ["RULES", "MatchConfig", "ModelMatch", "assign_one_to_one", "match_crosscoders"]

MODELS = ("a", "b")


@dataclass
class ModelMatch:
    """Reference vs one other crosscoder, for one model's exclusive block."""

    model: str
    ref_features: np.ndarray
    """(n,) global indices of the reference's exclusive features of this model."""
    matched: np.ndarray
    """(n,) the other crosscoder's matched global index, -1 when none."""
    cosine: np.ndarray
    """(n,) decoder cosine with the matched feature (NaN when none)."""
    correlation: np.ndarray
    """(n,) activation correlation with the matched feature (NaN when none or untestable)."""
    best_cosine: np.ndarray
    """(n,) best decoder cosine with any exclusive feature of the other (NaN: it has none)."""
    best_correlation: np.ndarray
    """(n,) best activation correlation with any of them."""
    ref_active: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """(n,) how often each reference feature fired on the rows."""

    @property
    def n_matched(self) -> int:
        return int((self.matched >= 0).sum())


def scipy_available() -> bool:
    try:
        import scipy.optimize  # noqa: F401
    except ImportError:
        return False
    return True


def assign_one_to_one(
    score: np.ndarray, admissible: np.ndarray, method: str = "auto"
) -> np.ndarray:
    """(n_rows,) column matched to each row (-1: none), one to one, over admissible pairs only,
    maximizing the summed score (scipy) or taking pairs by descending score (greedy).

    Only rows and columns with an admissible pair enter the assignment, so a large block where
    few pairs qualify stays cheap."""
    n_r = score.shape[0]
    out = np.full(n_r, -1, dtype=np.int64)
    if not admissible.any():
        return out
    rows = np.flatnonzero(admissible.any(1))
    cols = np.flatnonzero(admissible.any(0))
    sub_adm = admissible[np.ix_(rows, cols)]
    sub = np.where(sub_adm, np.clip(score[np.ix_(rows, cols)], 1e-9, None), 0.0)
    use_scipy = method == "scipy" or (method == "auto" and scipy_available())
    if method == "scipy" and not scipy_available():
        raise CrossdiffError("one_to_one='scipy' needs scipy; install it or use 'greedy'")
    if use_scipy:
        from scipy.optimize import linear_sum_assignment

        r, c = linear_sum_assignment(sub, maximize=True)
        keep = sub_adm[r, c]
        out[rows[r[keep]]] = cols[c[keep]]
        return out
    rr, cc = np.nonzero(sub_adm)
    order = np.lexsort((cc, rr, -sub[rr, cc]))  # descending score, ties by index
    used_r = np.zeros(len(rows), dtype=bool)
    used_c = np.zeros(len(cols), dtype=bool)
    for i in order:
        a, b = rr[i], cc[i]
        if not used_r[a] and not used_c[b]:
            used_r[a] = used_c[b] = True
            out[rows[a]] = cols[b]
    return out


def _unit(w: torch.Tensor) -> torch.Tensor:
    w = w.detach().float().cpu()
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


def exclusive_block(cc: Crosscoder, m: str) -> range:
    """Global indices of ``cc``'s features exclusive to model ``m``."""
    p = cc.partition
    return p.a_exclusive if m == "a" else p.b_exclusive


def decoder_cosines(ref: Crosscoder, other: Crosscoder, m: str) -> np.ndarray:
    """(n_ref, n_other) cosine of the exclusive decoder rows into model ``m``."""
    r, o = exclusive_block(ref, m), exclusive_block(other, m)
    wr = _unit(ref.decoder_weight(m)[r.start : r.stop])
    wo = _unit(other.decoder_weight(m)[o.start : o.stop])
    return (wr @ wo.T).numpy().astype(np.float64)


class _CorrSums:
    """Float64 running sums for Pearson r between two blocks of activations."""

    def __init__(self, n_r: int, n_o: int) -> None:
        self.n = 0
        self.sr = np.zeros(n_r)
        self.qr = np.zeros(n_r)
        self.so = np.zeros(n_o)
        self.qo = np.zeros(n_o)
        self.cross = np.zeros((n_r, n_o))
        self.count_r = np.zeros(n_r, dtype=np.int64)
        self.count_o = np.zeros(n_o, dtype=np.int64)

    def add(self, fr: torch.Tensor, fo: torch.Tensor) -> None:
        self.n += int(fr.shape[0])
        self.sr += fr.sum(0).double().cpu().numpy()
        self.qr += (fr * fr).sum(0).double().cpu().numpy()
        self.so += fo.sum(0).double().cpu().numpy()
        self.qo += (fo * fo).sum(0).double().cpu().numpy()
        self.cross += (fr.T @ fo).double().cpu().numpy()
        self.count_r += (fr > 0).sum(0).cpu().numpy()
        self.count_o += (fo > 0).sum(0).cpu().numpy()

    def correlation(self, min_active: int) -> np.ndarray:
        n = max(self.n, 1)
        var_r = self.qr / n - (self.sr / n) ** 2
        var_o = self.qo / n - (self.so / n) ** 2
        cov = self.cross / n - np.outer(self.sr / n, self.so / n)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = cov / np.sqrt(np.outer(var_r, var_o))
        bad = (self.count_r < min_active)[:, None] | (self.count_o < min_active)[None, :]
        bad |= ~np.isfinite(r)
        r[bad] = np.nan
        return np.clip(r, -1.0, 1.0)


@torch.no_grad()
def encode_exclusive(
    cc: Crosscoder, x_a: torch.Tensor, x_b: torch.Tensor
) -> dict[str, torch.Tensor]:
    """{model: (rows, n_exclusive) activations} of raw rows, in inference mode."""
    dev = cc.b_enc.device
    f = cc.encode(
        cc.normalize(x_a.to(dev, torch.float32), "a"), cc.normalize(x_b.to(dev, torch.float32), "b")
    )
    return {m: f[:, exclusive_block(cc, m).start : exclusive_block(cc, m).stop] for m in MODELS}


@torch.no_grad()
def match_crosscoders(
    ref: Crosscoder,
    others: list[Crosscoder],
    x_a: torch.Tensor,
    x_b: torch.Tensor,
    config: MatchConfig | None = None,
) -> list[dict[str, ModelMatch]]:
    """Match the reference's exclusive features against each of ``others``.

    ``x_a``/``x_b`` are raw held-out rows (the caller drops huge-norm rows); every crosscoder
    encodes them in inference mode, ``config.batch_size`` rows at a time. Returns, per other
    crosscoder, ``{"a": ModelMatch, "b": ModelMatch}``.
    """
    config = config or MatchConfig()
    config.validate()
    if x_a.shape[0] != x_b.shape[0] or x_a.shape[0] == 0:
        raise CrossdiffError(
            f"matching needs the same, non-zero number of rows from both models "
            f"(got {x_a.shape[0]} and {x_b.shape[0]})"
        )
    for cc in [ref, *others]:
        if (cc.config.d_a, cc.config.d_b) != (ref.config.d_a, ref.config.d_b):
            raise CrossdiffError(
                f"crosscoders of widths {cc.config.d_a}/{cc.config.d_b} and "
                f"{ref.config.d_a}/{ref.config.d_b} cannot be compared: train them on one store"
            )
    modes = [cc.training for cc in [ref, *others]]
    for cc in [ref, *others]:
        cc.eval()
    try:
        sums = [
            {m: _CorrSums(len(exclusive_block(ref, m)), len(exclusive_block(o, m))) for m in MODELS}
            for o in others
        ]
        for start in range(0, x_a.shape[0], config.batch_size):
            xa = x_a[start : start + config.batch_size]
            xb = x_b[start : start + config.batch_size]
            fr = encode_exclusive(ref, xa, xb)
            for o, s in zip(others, sums):
                fo = encode_exclusive(o, xa, xb)
                for m in MODELS:
                    s[m].add(fr[m].float().cpu(), fo[m].float().cpu())
    finally:
        for cc, mode in zip([ref, *others], modes):
            cc.train(mode)
    out = []
    for o, s in zip(others, sums):
        per: dict[str, ModelMatch] = {}
        for m in MODELS:
            cos = decoder_cosines(ref, o, m)
            corr = s[m].correlation(config.min_active)
            per[m] = _match_block(ref, o, m, cos, corr, s[m].count_r, config)
        out.append(per)
    return out


def admissible_pairs(cos: np.ndarray, corr: np.ndarray, config: MatchConfig) -> np.ndarray:
    """Which (reference, other) pairs may be matched under ``config.rule``."""
    ok_cos = cos >= config.min_cosine
    ok_corr = np.nan_to_num(corr, nan=-np.inf) >= config.min_correlation
    return {
        "both": ok_cos & ok_corr,
        "either": ok_cos | ok_corr,
        "cosine": ok_cos,
        "correlation": ok_corr,
    }[config.rule]


def pair_score(cos: np.ndarray, corr: np.ndarray) -> np.ndarray:
    """(max(cos, 0) + max(r, 0)) / 2, r = 0 where untestable: how alike two features are."""
    return (np.clip(cos, 0, None) + np.clip(np.nan_to_num(corr, nan=0.0), 0, None)) / 2


def _best(x: np.ndarray) -> np.ndarray:
    if x.shape[1] == 0:
        return np.full(x.shape[0], np.nan)
    with np.errstate(all="ignore"):
        filled = np.where(np.isnan(x), -np.inf, x)
        best = filled.max(1)
    return np.where(np.isfinite(best), best, np.nan)


def _match_block(
    ref: Crosscoder,
    other: Crosscoder,
    m: str,
    cos: np.ndarray,
    corr: np.ndarray,
    ref_active: np.ndarray,
    config: MatchConfig,
) -> ModelMatch:
    r, o = exclusive_block(ref, m), exclusive_block(other, m)
    adm = admissible_pairs(cos, corr, config)
    col = assign_one_to_one(pair_score(cos, corr), adm, config.one_to_one)
    hit = col >= 0
    idx = np.arange(len(col))
    matched = np.where(hit, col + o.start, -1)
    c = np.full(len(col), np.nan)
    rr = np.full(len(col), np.nan)
    c[hit] = cos[idx[hit], col[hit]]
    rr[hit] = corr[idx[hit], col[hit]]
    return ModelMatch(
        model=m,
        ref_features=np.arange(r.start, r.stop, dtype=np.int64),
        matched=matched.astype(np.int64),
        cosine=c,
        correlation=rr,
        best_cosine=_best(cos),
        best_correlation=_best(corr),
        ref_active=np.asarray(ref_active, dtype=np.int64),
    )


def finite_or_none(x: float) -> float | None:
    """JSON has no NaN: None stands for 'not measured'."""
    return None if x is None or not math.isfinite(float(x)) else float(x)
