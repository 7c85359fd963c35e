"""Wiring of the exclusivity check into the analysis: which rows fit and test it (pass 1),
and the scoring pass over the cached test rows (pass 2). The maths is in exclusivity.py.

Rows are split by document: the store's eval split (held out from crosscoder training) is cut
again by a second hash of the document index into a fit part and a test part, so no document
contributes to both, and the split of existing documents never changes when a store grows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from crossdiff.analysis.config import AnalysisConfig
from crossdiff.analysis.encoding import firing_thresholds
from crossdiff.analysis.exclusivity import CrossPredictionScorer, fit_stitch_maps
from crossdiff.crosscoder.model import Crosscoder

if TYPE_CHECKING:
    from crossdiff.analysis.pipeline import PassState

_PROBE_SALT = 0x5851F42D4C957F2D


def _doc_hash_unit(doc_index: np.ndarray, salt: int) -> np.ndarray:
    """A uniform number in [0, 1) per document (splitmix64 of the index with a salt)."""
    z = np.asarray(doc_index).astype(np.uint64) + np.uint64(salt)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / 2.0**53


def probe_masks(
    doc_index: np.ndarray, config: AnalysisConfig, eval_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """(fit, test) masks of the rows the exclusivity check uses, split by document."""
    from crossdiff.store.reader import eval_mask

    if config.probe_split == "eval":
        probe = eval_mask(doc_index, eval_fraction)
    else:
        probe = np.ones(np.shape(doc_index), dtype=bool)
    test = _doc_hash_unit(doc_index, _PROBE_SALT) < config.probe_test_fraction
    return probe & ~test, probe & test


def _controls(klass: np.ndarray, alive: np.ndarray, n: int, seed: int) -> np.ndarray:
    shared = np.flatnonzero((klass == "S") & alive)
    if n == 0 or shared.size == 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([seed, 0xC0])
    return np.sort(rng.choice(shared, size=min(n, shared.size), replace=False))


def run_check(
    state: PassState,
    cc: Crosscoder,
    config: AnalysisConfig,
    klass: np.ndarray,
    alive: np.ndarray,
    dev: torch.device,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Pass 2: held-out cross-model R^2 for alive exclusive candidates and shared controls."""
    f = len(klass)
    cols = {
        "cross_r2": np.full(f, np.nan),
        "test_active": np.zeros(f, dtype=np.int64),
        "check_side": np.full(f, "", dtype=object),
    }
    info: dict[str, Any] = {
        "fit_rows": state.fit_rows,
        "test_rows": state.test_rows,
        "test_rows_available": state.test_rows_seen,
    }
    cand = np.flatnonzero((klass != "S") & alive)
    controls = _controls(klass, alive, config.shared_controls, config.seed)
    need = max(cc.config.d_a, cc.config.d_b)
    if state.fit_rows < 2 or state.test_rows == 0:
        info["skipped"] = (
            f"not enough held-out rows ({state.fit_rows} to fit, {state.test_rows} to test); "
            "harvest more documents, raise eval_fraction, or use probe_split='all'"
        )
        return cols, info
    if state.fit_rows < 2 * need:
        info["warning"] = (
            f"the cross-model map was fitted on {state.fit_rows} rows for width {need}; its "
            "predictions are weak (harvest more, or probe_split='all')"
        )
    maps = fit_stitch_maps(state.moments, config.ridge)
    info.update(
        {
            "map_fve_b_to_a": maps.fve_ba,
            "map_fve_a_to_b": maps.fve_ab,
            "ridge_b_to_a": maps.ridge_ba,
            "ridge_a_to_b": maps.ridge_ab,
        }
    )
    feats = np.concatenate([cand, controls])
    side = ["a" if klass[i] == "A" else "b" for i in cand]
    side += ["a" if j % 2 == 0 else "b" for j in range(len(controls))]
    thr = firing_thresholds(cc, state.stats.min_pos)
    scorer = CrossPredictionScorer(cc, maps, torch.as_tensor(feats, dtype=torch.long), side, thr)
    x_a = torch.cat(state.test_a)
    x_b = torch.cat(state.test_b)
    step = max(1, min(config.batch_size, 1024))
    for s in range(0, x_a.shape[0], step):
        xa = cc.normalize(x_a[s : s + step].to(dev, torch.float32), "a")
        xb = cc.normalize(x_b[s : s + step].to(dev, torch.float32), "b")
        scorer.update(xa, xb)
    r2 = scorer.r2().cpu().numpy()
    cols["cross_r2"][feats] = r2
    cols["test_active"][feats] = scorer.active.cpu().numpy()
    cols["check_side"][feats] = np.array(side, dtype=object)
    if len(controls):
        ok = np.isfinite(r2[len(cand) :]) & (
            scorer.active.cpu().numpy()[len(cand) :] >= config.min_test_active
        )
        ctrl = r2[len(cand) :][ok]
        info["controls"] = {
            "n": len(controls),
            "tested": int(ok.sum()),
            "cross_r2_median": float(np.median(ctrl)) if ctrl.size else None,
            "cross_r2_q10": float(np.quantile(ctrl, 0.1)) if ctrl.size else None,
            "frac_refuted_at_threshold": float((ctrl >= config.exclusive_max_r2).mean())
            if ctrl.size
            else None,
        }
    return cols, info
