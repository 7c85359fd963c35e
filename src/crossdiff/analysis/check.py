"""Wiring of the exclusivity check into the analysis: which rows fit and test it (pass 1),
and the scoring pass (pass 2). The maths is in exclusivity.py.

Rows are split by document, by a hash of the document index, so no document contributes to
both the fit and the test of a map, and the split never changes when a store grows.

- ``probe_split="crossfit"`` (default): the store's documents are dealt into
  ``probe_folds`` folds; pass 1 accumulates the cross-model moments per fold, and pass 2
  streams the whole store again, scoring each row with the maps fitted on the *other* folds.
  Every candidate is therefore judged on all its activations in the store, each by a map that
  never saw its document. (The rows the crosscoder trained on are fine here: the check tests
  the other model, not the crosscoder.) Pass 2 also feeds the tokenization regression
  (tokenization.py): "exclusive" then means "exclusive beyond tokenization".
- ``"eval"`` / ``"all"`` (the earlier scheme): the store's eval split (or all documents) cut
  by a second hash into a fit part and a bounded in-memory test part. On the default store
  the eval split held 403 test rows, so most candidates stayed untested.

``map_sources`` narrows the rows that *fit* the maps to the documents of some corpus sources
(:func:`map_documents`); every row is still scored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from crossdiff.analysis.config import AnalysisConfig
from crossdiff.analysis.encoding import firing_thresholds
from crossdiff.analysis.exclusivity import CrossPredictionScorer, fit_stitch_maps
from crossdiff.crosscoder.model import Crosscoder
from crossdiff.errors import CrossdiffError
from crossdiff.store.reader import doc_hash_unit

if TYPE_CHECKING:
    from crossdiff.analysis.pipeline import PassState

_PROBE_SALT = 0x5851F42D4C957F2D


def probe_masks(
    doc_index: np.ndarray, config: AnalysisConfig, eval_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """(fit, test) masks of the rows the exclusivity check uses, split by document."""
    from crossdiff.store.reader import eval_mask

    if config.probe_split == "eval":
        probe = eval_mask(doc_index, eval_fraction)
    else:
        probe = np.ones(np.shape(doc_index), dtype=bool)
    test = doc_hash_unit(doc_index, _PROBE_SALT) < config.probe_test_fraction
    return probe & ~test, probe & test


def map_documents(store: Any, sources: tuple[str, ...]) -> np.ndarray | None:
    """(n_documents,) bool: the documents whose rows fit the cross-model map
    (``AnalysisConfig.map_sources``); None when every document does. A source the store does
    not hold is an error naming the ones it does (a typo would otherwise fit on nothing)."""
    if not sources:
        return None
    names = np.array([str(r.get("source")) for r in store.documents()], dtype=object)
    unknown = sorted(set(sources) - set(names.tolist()))
    if unknown:
        held = ", ".join(sorted(set(names.tolist()))) or "none"
        raise CrossdiffError(
            f"analysis map_sources {', '.join(unknown)}: no document of the store has that "
            f"source (it holds: {held}); name some of these, or none for every document"
        )
    return np.isin(names, list(sources))


_FOLD_SALT = 0x2545F4914F6CDD1D


def fold_of(doc_index: np.ndarray, folds: int) -> np.ndarray:
    """The cross-fitting fold (0 .. folds-1) of each row's document."""
    return np.minimum((doc_hash_unit(doc_index, _FOLD_SALT) * folds).astype(np.int64), folds - 1)


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
    cols = _check_columns(len(klass), tokenization=False)
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
    _map_info(info, maps)
    feats, side, thr = _scored(cand, controls, klass, cc, state)
    scorer = CrossPredictionScorer(
        cc,
        maps,
        torch.as_tensor(feats, dtype=torch.long),
        side,
        thr,
        output=mapped_output(cc, config),
    )
    x_a = torch.cat(state.test_a)
    x_b = torch.cat(state.test_b)
    step = max(1, min(config.batch_size, 1024))
    for s in range(0, x_a.shape[0], step):
        xa = cc.normalize(x_a[s : s + step].to(dev, torch.float32), "a")
        xb = cc.normalize(x_b[s : s + step].to(dev, torch.float32), "b")
        scorer.update(xa, xb)
    r2 = _fill_scores(cols, feats, side, scorer)
    _control_summary(info, r2, scorer, cand, controls, config)
    return cols, info


def _check_columns(f: int, *, tokenization: bool) -> dict[str, np.ndarray]:
    """The per-feature columns the check fills (NaN, 0 or '' where a feature is not scored);
    the tokenization regression's two only where pass 2 streams the store."""
    cols = {
        "cross_r2": np.full(f, np.nan),
        "test_active": np.zeros(f, dtype=np.int64),
        "check_side": np.full(f, "", dtype=object),
    }
    if tokenization:
        cols["tok_r2"] = np.full(f, np.nan)
        cols["cross_tok_r2"] = np.full(f, np.nan)
    cols["out_beta_own"] = np.full(f, np.nan)
    cols["out_beta_mapped"] = np.full(f, np.nan)
    return cols


def _fill_scores(
    cols: dict[str, np.ndarray], feats: np.ndarray, side: list[str], scorer: CrossPredictionScorer
) -> np.ndarray:
    """Write a scorer's R^2, activation counts and sides into ``cols``; return the R^2."""
    r2 = scorer.r2().cpu().numpy()
    cols["cross_r2"][feats] = r2
    own, mapped = (t.cpu().numpy() for t in scorer.output_betas())
    cols["out_beta_own"][feats] = own
    cols["out_beta_mapped"][feats] = mapped
    cols["test_active"][feats] = scorer.active.cpu().numpy()
    cols["check_side"][feats] = np.array(side, dtype=object)
    return r2


def run_crossfit_check(
    store: Any,
    state: PassState,
    cc: Crosscoder,
    config: AnalysisConfig,
    klass: np.ndarray,
    alive: np.ndarray,
    dev: torch.device,
    descriptors: Any,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Pass 2 of the cross-fitted check: stream the store, score each row by its fold's
    out-of-fold maps; returns per-feature columns (cross_r2, test_active, check_side,
    tok_r2, cross_tok_r2) and the check's summary."""
    cols = _check_columns(len(klass), tokenization=True)
    k = config.probe_folds
    total = state.moments
    info: dict[str, Any] = {"scheme": f"cross-fitted over {k} folds of documents"}
    cand = np.flatnonzero((klass != "S") & alive)
    controls = _controls(klass, alive, config.shared_controls, config.seed)
    fold_rows = [m.n for m in state.fold_moments]
    info["fold_rows"] = fold_rows
    if min(fold_rows) < 2 or total.n - max(fold_rows) < 2:
        info["skipped"] = (
            f"not enough rows to cross-fit ({fold_rows} per fold); harvest more documents"
        )
        return cols, info
    maps = [fit_stitch_maps(total.minus(m), config.ridge) for m in state.fold_moments]
    _map_info(info, fit_stitch_maps(total, config.ridge))
    feats, side, thr = _scored(cand, controls, klass, cc, state)
    feats_t = torch.as_tensor(feats, dtype=torch.long)
    output = mapped_output(cc, config)
    scorers = [CrossPredictionScorer(cc, mp, feats_t, side, thr, output=output) for mp in maps]
    _score_rows(store, cc, config, scorers, descriptors, dev, state.rows)
    scorer = scorers[0]
    for other in scorers[1:]:
        scorer.merge(other)
    r2 = _fill_scores(cols, feats, side, scorer)
    tok, cross_tok = (t.cpu().numpy() for t in scorer.tokenization_r2())
    cols["tok_r2"][feats] = tok
    cols["cross_tok_r2"][feats] = cross_tok
    info["fit_rows"] = int(total.n)
    info["test_rows"] = int(scorer.n)
    info["test_rows_available"] = int(scorer.n)
    _control_summary(info, r2, scorer, cand, controls, config)
    return cols, info


def _score_rows(
    store: Any,
    cc: Crosscoder,
    config: AnalysisConfig,
    scorers: list[CrossPredictionScorer],
    descriptors: Any,
    dev: torch.device,
    total_rows: int,
) -> None:
    """Pass 2 proper: stream the store (the rows pass 1 analysed) and feed each row to the
    scorer of its document's fold; a step because it is the check's one pass over the data."""
    from crossdiff.analysis.tokenization import design

    k = config.probe_folds
    bar = None
    if config.progress:
        from tqdm import tqdm

        bar = tqdm(total=total_rows, desc="exclusivity check", unit="pair", unit_scale=True)
    seen = 0
    try:
        for x_a, x_b, meta in store.iter_rows(config.batch_size, dtype=torch.bfloat16):
            if config.max_rows is not None and seen >= config.max_rows:
                break
            if config.max_rows is not None and seen + x_a.shape[0] > config.max_rows:
                cut = config.max_rows - seen
                x_a, x_b = x_a[:cut], x_b[:cut]
                meta = {key: v[:cut] for key, v in meta.items()}
            seen += x_a.shape[0]
            xa = cc.normalize(x_a.to(dev, torch.float32), "a")
            xb = cc.normalize(x_b.to(dev, torch.float32), "b")
            if config.outlier_factor:
                keep = cc.inlier_mask(xa, xb, config.outlier_factor)
                keep_np = keep.cpu().numpy()
                xa, xb = xa[keep], xb[keep]
                meta = {key: v[keep_np] for key, v in meta.items()}
            z = design(descriptors.rows(meta["row"])).to(dev)
            fold = fold_of(meta["doc_index"], k)
            for j in range(k):
                sel = np.flatnonzero(fold == j)
                if sel.size:
                    t = torch.from_numpy(sel).to(dev)
                    scorers[j].update(xa[t], xb[t], z[t])
            if bar is not None:
                bar.update(int(x_a.shape[0]))
    finally:
        if bar is not None:
            bar.close()


def mapped_output(cc: Crosscoder, config: AnalysisConfig) -> bool:
    """Whether the check also reads the output check through the cross-model map
    (``AnalysisConfig.mapped_output``; DFCs only: a standard crosscoder has latent scaling)."""
    return bool(config.mapped_output) and cc.partition.n_a + cc.partition.n_b > 0


def _map_info(info: dict[str, Any], maps: Any) -> None:
    info.update(
        {
            "map_fve_b_to_a": maps.fve_ba,
            "map_fve_a_to_b": maps.fve_ab,
            "ridge_b_to_a": maps.ridge_ba,
            "ridge_a_to_b": maps.ridge_ab,
        }
    )


def _scored(cand, controls, klass, cc, state) -> tuple[np.ndarray, list[str], torch.Tensor]:
    """The features the check scores (candidates, then controls), the side whose part is
    predicted from the other model, and their firing thresholds."""
    feats = np.concatenate([cand, controls])
    side = ["a" if klass[i] == "A" else "b" for i in cand]
    side += ["a" if j % 2 == 0 else "b" for j in range(len(controls))]
    return feats, side, firing_thresholds(cc, state.stats.min_pos)


def _control_summary(info, r2, scorer, cand, controls, config) -> None:
    if not len(controls):
        return
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
