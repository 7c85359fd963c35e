"""Classes, the exclusivity verdict, and the default review order of exclusive candidates.

The auditor's time is the scarce resource, so each model's exclusive candidates get one
documented, reproducible order (``rank`` 1, 2, ... within the model; 0 = not ranked):

1. **Verdict**: 'confirmed' (the other model does not predict the feature, and tokenization
   does not explain it) first, then 'conditional' (a DFC feature of a pair that shares one
   residual basis, such as a model and its fine-tune, or of any pair analysed with
   ``AnalysisConfig.mapped_output``: the other model predicts *when* it fires but does not
   carry what it writes: a behaviour on a trigger both models see; exclusivity.py's output
   check), then 'untested' (too few activations in the store to judge),
   then the candidates that are probably not concepts exclusive to one model: 'twin' (an
   exclusive feature of the other model fires on the same rows: one shared concept split in
   two), 'tokenization' (a tokenizer artifact: mostly at word-internal positions, or explained
   by descriptors of the tokenization), then 'refuted' (the other model predicts it).
2. **Recurrence** (when ``crossdiff compare`` has run before the analysis): found again in
   more of the run's other crosscoders first (``recurs``; docs/recurrence.md).
3. **Exclusivity score**, in steps of 0.1 (1 - the larger of the cross-model R^2 and, for
   standard crosscoders, the latent scaling ratio, clipped to [0, 1]; for 'conditional',
   1 - the output ratio); higher first.
4. **Frequency band** (decades): 0.1-1% first (enough examples, specific), then 1-10%,
   0.01-0.1%, >= 10% (dense features are rarely interpretable), then rarer decades.
5. **Activation strength**: mean activation when active, higher first.
6. Feature index (ties).

Dead features (never fired) and near-dead ones (fewer than ``min_count`` activations or
frequency below ``min_frequency``) are not ranked.
"""

from __future__ import annotations

import numpy as np

from crossdiff.analysis.config import AnalysisConfig

VERDICTS = ("confirmed", "conditional", "untested", "twin", "tokenization", "refuted")
CONCEPT_VERDICTS = ("confirmed", "conditional", "untested")
"""Verdicts of candidates that may be concepts exclusive to their model (steered by the run)."""
# decade (floor(log10 f)) -> review order; unlisted (rarer) decades come after, rarest last
_BAND_ORDER = {-3: 0, -2: 1, -4: 2, -1: 3, 0: 3}


def relative_norm_class(rel: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """'A' above ``hi``, 'B' below ``lo``, else 'S' (docs/METHOD.md §3)."""
    out = np.full(rel.shape[0], "S", dtype="<U1")
    out[rel > hi] = "A"
    out[rel < lo] = "B"
    return out


def frequency_decade(freq: np.ndarray) -> np.ndarray:
    """floor(log10(freq)), with -99 for features that never fired."""
    with np.errstate(divide="ignore"):
        dec = np.floor(np.log10(np.where(freq > 0, freq, 1e-99)))
    return dec.astype(np.int64)


def band_order(freq: np.ndarray) -> np.ndarray:
    """Review order of each feature's frequency band (lower comes first)."""
    dec = frequency_decade(freq)
    out = np.array([_BAND_ORDER.get(int(d), 0) for d in dec], dtype=np.int64)
    rare = ~np.isin(dec, list(_BAND_ORDER))
    out[rare] = 4 + (-5 - dec[rare]).clip(min=0)  # 1e-5..1e-4 -> 4, 1e-6.. -> 5, ...
    return out


def verdicts(
    exclusive: np.ndarray,
    cross_r2: np.ndarray,
    test_active: np.ndarray,
    ls_ratio: np.ndarray,
    config: AnalysisConfig,
    tokenization: np.ndarray | None = None,
    twin: np.ndarray | None = None,
    output_check: bool = False,
) -> np.ndarray:
    """A verdict for each exclusive candidate (see the module docstring), '' for the rest.

    ``tokenization`` (bool) flags tokenizer artifacts, ``twin`` (bool) features with a twin;
    precedence: refuted > twin > tokenization > confirmed / untested. ``output_check``:
    ``ls_ratio`` is the DFC output check (exclusivity.py, shared basis), and a candidate the
    other model predicts but whose output it lacks (ratio below ``latent_scaling_max``) is
    'conditional' rather than refuted."""
    out = np.full(exclusive.shape[0], "", dtype=object)
    tested = exclusive & (test_active >= config.min_test_active) & np.isfinite(cross_r2)
    refuted_r2 = tested & (cross_r2 >= config.exclusive_max_r2)
    refuted_ls = exclusive & np.isfinite(ls_ratio) & (ls_ratio >= config.latent_scaling_max)
    out[exclusive] = "untested"
    out[tested] = "confirmed"
    if tokenization is not None:
        out[exclusive & tokenization] = "tokenization"
    if twin is not None:
        out[exclusive & twin] = "twin"
    out[refuted_r2 | refuted_ls] = "refuted"
    if output_check:
        measured = np.isfinite(ls_ratio) & (ls_ratio < config.latent_scaling_max)
        out[refuted_r2 & ~refuted_ls & measured] = "conditional"
    return out


def exclusivity_score(cross_r2: np.ndarray, ls_ratio: np.ndarray) -> np.ndarray:
    """1 - max(cross R^2, latent scaling ratio), clipped to [0, 1]; NaN where neither is known."""
    r2 = np.where(np.isfinite(cross_r2), cross_r2, -np.inf)
    ls = np.where(np.isfinite(ls_ratio), ls_ratio, -np.inf)
    worst = np.maximum(r2, ls)
    score = 1.0 - np.clip(worst, 0.0, 1.0)
    return np.where(np.isfinite(worst), score, np.nan)


def rank_candidates(
    klass: np.ndarray,
    verdict: np.ndarray,
    score: np.ndarray,
    freq: np.ndarray,
    mean_act: np.ndarray,
    reviewable: np.ndarray,
    recurs: np.ndarray | None = None,
) -> np.ndarray:
    """1-based rank of each feature within its model's exclusive list (0: not ranked)."""
    n = klass.shape[0]
    rank = np.zeros(n, dtype=np.int64)
    v_order = np.array([VERDICTS.index(v) if v in VERDICTS else 3 for v in verdict])
    score_step = np.where(np.isfinite(score), np.floor(np.nan_to_num(score) * 10 + 1e-9), -1)
    bands = band_order(freq)
    strength = np.nan_to_num(mean_act, nan=0.0)
    index = np.arange(n)
    rec = np.zeros(n, dtype=np.int64) if recurs is None else np.maximum(recurs, -1)
    for m in ("A", "B"):
        sel = np.flatnonzero((klass == m) & reviewable)
        # np.lexsort sorts by the last key first
        order = np.lexsort(
            (index[sel], -strength[sel], bands[sel], -score_step[sel], -rec[sel], v_order[sel])
        )
        rank[sel[order]] = np.arange(1, len(sel) + 1)
    return rank


def verdict_reason(f: dict, min_test_active: int = 10) -> str:
    """One line saying why a candidate got its verdict (report, ``show``, run summary); ``f``
    is one row of the feature table."""
    import math

    def num(key: str) -> float:
        v = f.get(key)
        return float("nan") if v is None else float(v)

    v = f.get("verdict") or ""
    if v == "untested":
        return (
            f"too rare to judge: {int(f.get('test_active') or 0)} scored activations "
            f"(needs {min_test_active})"
        )
    if v == "twin":
        return (
            f"twin of #{int(f.get('twin_of', -1))}: both fire on the same rows (activation "
            f"correlation {num('twin_corr'):.2f}); one shared concept split in two"
        )
    if v == "tokenization":
        parts = []
        if math.isfinite(num("internal_top_share")):
            parts.append(f"{num('internal_top_share'):.0%} of top examples inside a word")
        if math.isfinite(num("internal_mass_share")):
            parts.append(f"{num('internal_mass_share'):.0%} of its activation there")
        if math.isfinite(num("later_top_share")):
            parts.append(f"{num('later_top_share'):.0%} of top tokens are later pieces of a word")
        if math.isfinite(num("cross_tok_r2")):
            parts.append(
                f"tokenization + other model R² {num('cross_tok_r2'):.2f} (other model alone "
                f"{num('cross_r2'):.2f})"
            )
        return "tokenizer artifact: " + ", ".join(parts)
    if v == "conditional":
        return (
            f"the other model predicts when it fires (R² {num('cross_r2'):.2f}) but does not "
            f"carry what it writes (output ratio {num('ls_ratio'):.2f}): a behaviour on a "
            "trigger both models see"
        )
    if v == "refuted":
        by_ls = num("ls_ratio") >= AnalysisConfig.latent_scaling_max  # (NaN: False)
        if by_ls and num("cross_r2") < AnalysisConfig.exclusive_max_r2:
            return f"the other model carries its direction: ratio {num('ls_ratio'):.2f}"
        return f"the other model predicts it: held-out R² {num('cross_r2'):.2f}"
    if v == "confirmed":
        return (
            f"the other model does not predict it (R² {num('cross_r2'):.2f}, with tokenization "
            f"{num('cross_tok_r2'):.2f})"
        )
    return ""
