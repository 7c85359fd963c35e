"""``crossdiff analyze``: one streaming pass over the store, then the exclusivity check.

Pass 1 reads every row of the store once, in store order, a batch at a time, and folds each
batch's sparse activations into fixed-size per-feature state (statistics, top activations, a
uniform sample for the quantile bands; :mod:`crossdiff.analysis.streaming`). Rows of the
held-out split also feed the cross-model moments (fit part) or a bounded in-memory cache (test
part). Memory is therefore O(F x (top_n + sample_size) + d^2 + cache), never O(rows).

Pass 2 is the exclusivity check (:mod:`crossdiff.analysis.check`): by default a second
streaming pass over the whole store, cross-fitted by document, which also regresses each
candidate's activation on descriptors of the tokenization (:mod:`crossdiff.analysis.
tokenization`); pass 1 also collects each feature's activation mass at word-internal
positions and the correlations of the two exclusive blocks (:mod:`crossdiff.analysis.twins`).
Then the provenance of the chosen examples is read
from the store's small columns and their texts from its documents files, and everything is
written to RUN/analysis/ (:mod:`crossdiff.analysis.results`).

Size: the analysis's one streaming pass and its schema; the per-feature columns, twins,
ranking and check already live in their own modules, and what stays here is their order.
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from crossdiff.analysis.check import (
    fold_of,
    map_documents,
    probe_masks,
    run_check,
    run_crossfit_check,
)
from crossdiff.analysis.config import AnalysisConfig
from crossdiff.analysis.encoding import encode_batch
from crossdiff.analysis.examples import examples_table
from crossdiff.analysis.exclusivity import (
    CrossMoments,
    LatentScaling,
    same_residual_basis,
    same_tokenization,
)
from crossdiff.analysis.metadata import build_meta
from crossdiff.analysis.ranking import (
    exclusivity_score,
    rank_candidates,
    relative_norm_class,
    verdicts,
)
from crossdiff.analysis.results import (
    EXAMPLES_FILE,
    FEATURES_FILE,
    META_FILE,
    AnalysisResult,
    write_meta,
    write_parquet,
)
from crossdiff.analysis.streaming import FeatureStats, PerFeatureTopK, sample_keys
from crossdiff.analysis.tokenization import ROLES, RowDescriptors
from crossdiff.analysis.twins import TwinStats
from crossdiff.crosscoder.model import Crosscoder
from crossdiff.errors import CrossdiffError
from crossdiff.paths import RunPaths
from crossdiff.runtime.device import resolve_device as _resolve_device


def crosscoder_kind(cc: Crosscoder) -> str:
    p = cc.partition
    if p.n_a or p.n_b:
        return "dfc"
    return "dsf" if p.n_designated else "standard"


def feature_classes(cc: Crosscoder, config: AnalysisConfig) -> tuple[np.ndarray, np.ndarray]:
    """(partition label, class 'A'/'B'/'S') per feature: the DFC's partition, or for standard
    (and DSF) crosscoders the relative-norm class (designated shared features are 'S')."""
    p = cc.partition
    part = np.full(p.n_features, "shared", dtype=object)
    part[p.a_exclusive.start : p.a_exclusive.stop] = "A-exclusive"
    part[p.b_exclusive.start : p.b_exclusive.stop] = "B-exclusive"
    part[p.designated.start : p.designated.stop] = "designated shared"
    if crosscoder_kind(cc) == "dfc":
        return part, p.labels()
    rel = cc.relative_norm().detach().float().cpu().numpy()
    klass = relative_norm_class(rel, config.rel_lo, config.rel_hi)
    klass[p.designated.start : p.designated.stop] = "S"
    return part, klass


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@dataclass
class PassState:
    """What pass 1 accumulates (all bounded in size)."""

    stats: FeatureStats
    top: PerFeatureTopK
    sample: PerFeatureTopK
    moments: CrossMoments
    latent: LatentScaling | None
    descriptors: RowDescriptors | None = None
    fold_moments: list[CrossMoments] = field(default_factory=list)
    twins: TwinStats | None = None
    internal_mass: torch.Tensor | None = None  # (F,) activation at word-internal rows
    internal_rows: int = 0  # analysed rows that are word-internal (the base rate)
    later_rows: dict[str, int] = field(default_factory=lambda: {"a": 0, "b": 0})
    role_mass: torch.Tensor | None = None  # (5, F) activation per role (ROLES: text, system, ...)
    role_rows: np.ndarray = field(default_factory=lambda: np.zeros(len(ROLES), np.int64))
    where_info: dict[str, Any] = field(default_factory=dict)
    tokenization_info: dict[str, Any] = field(default_factory=dict)
    test_a: list[torch.Tensor] = field(default_factory=list)
    test_b: list[torch.Tensor] = field(default_factory=list)
    test_rows: int = 0
    outliers: int = 0  # huge-norm pairs left out (Crosscoder.inlier_mask)
    fit_rows: int = 0
    test_rows_seen: int = 0
    rows: int = 0
    map_docs: np.ndarray | None = None  # (n_documents,) fit the map (None: every document)


def _open_inputs(
    run: str | Path | None, store: Any, crosscoder: Any, out: str | Path | None
) -> tuple[Any, Crosscoder, RunPaths | None, Path]:
    """The store and crosscoder an analysis reads, checked to belong together, and the folder
    it writes: a step so that every wrong input fails before any work."""
    from crossdiff.store import ActivationStore

    paths = RunPaths(run) if run is not None else None
    if run is not None and not Path(run).is_dir():
        raise CrossdiffError(f"run folder {run} does not exist; check the path")
    if store is None:
        if paths is None:
            raise CrossdiffError("analyze needs a run folder, or both store= and crosscoder=")
        if not paths.has_store():
            raise CrossdiffError(
                f"no activation store at {paths.store}; create it with "
                f"`crossdiff harvest --out {paths.store}` (or `crossdiff run`)"
            )
        store = paths.open_store()
    elif not isinstance(store, ActivationStore):
        store = ActivationStore.open(store)
    if crosscoder is None:
        if paths is None:
            raise CrossdiffError("analyze needs a run folder, or both store= and crosscoder=")
        if not paths.has_crosscoder():
            raise CrossdiffError(
                f"no trained crosscoder at {paths.crosscoder}; train it with "
                f"`crossdiff train {paths.root}`"
            )
        crosscoder = paths.load_crosscoder()
    elif not isinstance(crosscoder, Crosscoder):
        crosscoder = Crosscoder.from_pretrained(crosscoder)
    cfg = crosscoder.config
    if (cfg.d_a, cfg.d_b) != (store.d_a, store.d_b):
        raise CrossdiffError(
            f"the crosscoder reads widths d_a={cfg.d_a}, d_b={cfg.d_b} but store {store.path} "
            f"holds {store.d_a} and {store.d_b}; analyse it with the store it was trained on"
        )
    if store.n_rows == 0:
        raise CrossdiffError(f"store {store.path} has no rows; harvest into it first")
    if out is None:
        if paths is None:
            raise CrossdiffError("give out= (the analysis folder) when analysing without a run")
        out = paths.analysis
    return store, crosscoder, paths, Path(out)


def _first_pass(
    store: Any,
    cc: Crosscoder,
    config: AnalysisConfig,
    klass: np.ndarray,
    dev: torch.device,
    eval_fraction: float,
    standard: bool,
) -> PassState:
    f = cc.config.n_features
    cand = torch.as_tensor(np.flatnonzero(klass != "S"), dtype=torch.long)
    latent = None
    shared_basis = not standard and same_residual_basis(store.manifest)
    if (standard or shared_basis) and len(cand):
        own = ["a" if klass[i] == "A" else "b" for i in cand.tolist()]
        latent = LatentScaling(cc, cand, own, shared_basis=shared_basis)
    state = PassState(
        stats=FeatureStats(f, dev),
        top=PerFeatureTopK(f, config.top_n, device=dev),
        sample=PerFeatureTopK(f, config.sample_size, score_dtype=torch.int64, device=dev),
        moments=CrossMoments(cc.config.d_a, cc.config.d_b, dev),
        latent=latent,
        descriptors=RowDescriptors(store),
        internal_mass=torch.zeros(f, dtype=torch.float64, device=dev),
        role_mass=torch.zeros(len(ROLES), f, dtype=torch.float64, device=dev),
        map_docs=map_documents(store, config.map_sources),
    )
    if config.probe_split == "crossfit":
        state.fold_moments = [
            CrossMoments(cc.config.d_a, cc.config.d_b, dev) for _ in range(config.probe_folds)
        ]
    if not standard:
        p = cc.partition
        state.twins = TwinStats(p.a_exclusive, p.b_exclusive, dev)
    total = store.n_rows if config.max_rows is None else min(store.n_rows, config.max_rows)
    bar = None
    if config.progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="analyze", unit="pair", unit_scale=True)
    try:
        for x_a, x_b, meta in store.iter_rows(config.batch_size, dtype=torch.bfloat16):
            left = total - state.rows
            if left <= 0:
                break
            if x_a.shape[0] > left:
                x_a, x_b = x_a[:left], x_b[:left]
                meta = {k: v[:left] for k, v in meta.items()}
            _fold_batch(state, cc, config, x_a, x_b, meta, dev, eval_fraction)
            if bar is not None:
                bar.update(x_a.shape[0])
    finally:
        if bar is not None:
            bar.close()
    return state


@torch.no_grad()
def _fold_batch(
    state: PassState,
    cc: Crosscoder,
    config: AnalysisConfig,
    x_a: torch.Tensor,
    x_b: torch.Tensor,
    meta: dict[str, np.ndarray],
    dev: torch.device,
    eval_fraction: float,
) -> None:
    xa = cc.normalize(x_a.to(dev, torch.float32), "a")
    xb = cc.normalize(x_b.to(dev, torch.float32), "b")
    # huge-norm positions (attention sinks) are left out, as training leaves them out
    keep = cc.inlier_mask(xa, xb, config.outlier_factor) if config.outlier_factor else None
    if keep is not None and not bool(keep.all()):
        state.outliers += int((~keep).sum())
        keep_np = keep.cpu().numpy()
        xa, xb = xa[keep], xb[keep]
        x_a, x_b = x_a[keep_np], x_b[keep_np]
        meta = {k: v[keep_np] for k, v in meta.items()}
    n = x_a.shape[0]
    if n == 0:
        return
    enc = encode_batch(cc, xa, xb, recon=state.latent is not None)
    grow = torch.from_numpy(meta["row"]).to(dev)[enc.rows]
    state.stats.update(enc.feats, enc.vals, n)
    state.top.update(enc.feats, enc.vals, grow, enc.vals)
    keys = sample_keys(grow, enc.feats, config.seed)
    state.sample.update(enc.feats, -keys, grow, enc.vals)
    if state.latent is not None:
        state.latent.update(enc.rows, enc.feats, enc.vals, xa - enc.recon_a, xb - enc.recon_b)
    desc = state.descriptors.rows(meta["row"])
    internal = desc["word_internal"]
    state.internal_rows += int(internal.sum())
    for m in "ab":
        state.later_rows[m] += int(desc[f"later_{m}"].sum())
    at_internal = torch.from_numpy(internal).to(dev)[enc.rows]
    state.internal_mass.index_add_(0, enc.feats[at_internal], enc.vals[at_internal].double())
    role = desc["role"].astype(np.int64)
    state.role_rows += np.bincount(role, minlength=len(ROLES))
    role_t = torch.from_numpy(role).to(dev)[enc.rows]
    state.role_mass.index_put_((role_t, enc.feats), enc.vals.double(), accumulate=True)
    if state.twins is not None:
        state.twins.update(enc.rows, enc.feats, enc.vals, n)
    state.rows += n
    docs = meta["doc_index"]
    in_map = None if state.map_docs is None else state.map_docs[docs]  # map_sources' rows
    if config.probe_split == "crossfit":
        fit_a, fit_b = xa, xb
        if in_map is not None:
            t = torch.from_numpy(np.flatnonzero(in_map)).to(dev)
            fit_a, fit_b, docs = xa[t], xb[t], docs[in_map]
        state.moments.update(fit_a, fit_b)
        fold = fold_of(docs, config.probe_folds)
        for j, mom in enumerate(state.fold_moments):
            mom.share_shift(state.moments)
            sel = np.flatnonzero(fold == j)
            if sel.size:
                t = torch.from_numpy(sel).to(dev)
                mom.update(fit_a[t], fit_b[t])
        return
    fit, test = probe_masks(docs, config, eval_fraction)
    if in_map is not None:
        fit &= in_map
    if fit.any():
        m = torch.from_numpy(fit).to(dev)
        state.moments.update(xa[m], xb[m])
        state.fit_rows += int(fit.sum())
    if test.any():
        state.test_rows_seen += int(test.sum())
        room = config.probe_test_rows - state.test_rows
        if room > 0:
            idx = torch.from_numpy(np.flatnonzero(test)[:room])
            state.test_a.append(x_a[idx].clone())  # raw bf16, on the CPU
            state.test_b.append(x_b[idx].clone())
            state.test_rows += len(idx)


def _recurrence(paths: RunPaths | None, f: int) -> np.ndarray:
    """(F,) how many other crosscoders of the run found each exclusive feature again
    (``crossdiff compare``; -1 where unknown: shared features, no or stale results)."""
    if paths is not None:
        from crossdiff.recurrence import recurrence_column

        col = recurrence_column(paths.root)
        if col is not None and col.shape[0] == f:
            return col.astype(np.int32)
    return np.full(f, -1, dtype=np.int32)


def _top_shares(state: PassState, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Per feature, the share of its top examples where each boolean descriptor holds."""
    filled = state.top.filled().cpu().numpy()
    rows = state.top.row.cpu().numpy()
    f = rows.shape[0]
    out = {name: np.full(f, np.nan) for name in names}
    if filled.any():
        desc = state.descriptors.rows(rows[filled])
        n = filled.sum(1)
        for name in names:
            per = np.zeros(rows.shape, dtype=np.float64)
            per[filled] = desc[name]
            out[name] = np.where(n > 0, per.sum(1) / np.maximum(n, 1), np.nan)
    return out


DECISION_EXEMPT_SHARE = 0.5
"""A feature with at least this share of its activation mass at prompts' decision pairs is never
flagged 'tokenization' by the regression rule (tokenization_columns)."""


def tokenization_columns(
    state: PassState,
    store: Any,
    config: AnalysisConfig,
    check_cols: dict[str, np.ndarray],
    act_sum: np.ndarray,
    klass: np.ndarray,
) -> dict[str, np.ndarray]:
    """Per feature: the share of its top examples and of its activation mass at word-internal
    positions, the share of its top examples where its own model's token is a later piece of
    a split word, and the 'tokenization' flag (see AnalysisConfig.tokenization_*). A pair of
    identical tokenizers never flags: there is no cross-tokenizer artifact to find."""
    f = act_sum.shape[0]
    shares = _top_shares(state, ("word_internal", "later_a", "later_b"))
    top_share = shares["word_internal"]
    # an A feature reads A's tokens, a B feature B's (shared features: A's, for the column)
    later_share = np.where(klass == "B", shares["later_b"], shares["later_a"])
    with np.errstate(invalid="ignore", divide="ignore"):
        mass_share = np.where(
            act_sum > 0, state.internal_mass.cpu().numpy() / np.maximum(act_sum, 1e-30), np.nan
        )
    base = state.internal_rows / max(state.rows, 1)
    min_share = max(config.tokenization_min_share, config.tokenization_min_ratio * base)
    by_share = (np.nan_to_num(top_share) >= min_share) | (np.nan_to_num(mass_share) >= min_share)
    later_base = {m: state.later_rows[m] / max(state.rows, 1) for m in "ab"}
    later_min = {
        m: max(config.tokenization_min_share, config.tokenization_min_ratio * later_base[m])
        for m in "ab"
    }
    later_min_own = np.where(klass == "B", later_min["b"], later_min["a"])
    by_share |= (klass != "S") & (np.nan_to_num(later_share) >= later_min_own)
    cross = check_cols["cross_r2"]
    cross_tok = check_cols.get("cross_tok_r2", np.full(f, np.nan))
    by_regression = (np.nan_to_num(cross_tok, nan=-1.0) >= config.exclusive_max_r2) & ~(
        np.nan_to_num(cross, nan=-1.0) >= config.exclusive_max_r2
    )
    # a feature that lives at prompts' decision pairs reads template text aligned by
    # construction: there the descriptors only tell the decision pair from content, and with
    # the other model's reading of the question they "explain" a behaviour feature
    with np.errstate(invalid="ignore", divide="ignore"):
        decision_mass = state.role_mass[ROLES.index("decision")].cpu().numpy()
        at_decisions = np.where(act_sum > 0, decision_mass / np.maximum(act_sum, 1e-30), 0.0)
    by_regression &= at_decisions < DECISION_EXEMPT_SHARE
    flag = by_share | by_regression
    same_tokenizer = same_tokenization(store.manifest)
    if same_tokenizer:
        flag = np.zeros(f, dtype=bool)
    state.tokenization_info = {
        "word_internal_base_rate": base,
        "flag_share": min_share,
        "later_piece_base_rate": later_base,
        "later_piece_flag_share": later_min,
        "same_tokenizer": bool(same_tokenizer),
    }
    return {
        "internal_top_share": top_share,
        "internal_mass_share": mass_share,
        "later_top_share": later_share,
        "tokenization": flag,
    }


def where_columns(state: PassState, act_sum: np.ndarray) -> dict[str, np.ndarray]:
    """Per feature, where its activation mass lies: the share in chats (vs plain text) and,
    of its mass in chats, the shares in user messages, in assistant messages and at prompts'
    decision pairs (a store harvested with ``decision_pairs``; elsewhere 0); the store's base
    rates (shares of analysed rows) go to ``state.where_info`` for the report to compare."""
    mass = state.role_mass.cpu().numpy()
    chat = mass[1:].sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        chat_share = np.where(act_sum > 0, chat / np.maximum(act_sum, 1e-30), np.nan)
        shares = {
            name: np.where(chat > 0, mass[ROLES.index(name)] / np.maximum(chat, 1e-30), np.nan)
            for name in ("user", "assistant", "decision")
        }
    rows = state.role_rows.astype(np.float64)
    chat_rows = rows[1:].sum()
    state.where_info = {
        "rows_by_role": {name: int(n) for name, n in zip(ROLES, state.role_rows.tolist())},
        "chat_rows_share": float(chat_rows / max(rows.sum(), 1)),
    }
    for name in shares:
        share = float(rows[ROLES.index(name)] / max(chat_rows, 1))
        state.where_info[f"{name}_rows_share_of_chat"] = share
    return {"chat_share": chat_share, **{f"{k}_share": v for k, v in shares.items()}}


def analyze(
    run: str | Path | None = None,
    *,
    store: Any = None,
    crosscoder: Crosscoder | str | Path | None = None,
    out: str | Path | None = None,
    config: AnalysisConfig | None = None,
) -> AnalysisResult:
    """Analyse a trained crosscoder over its activation store; write RUN/analysis/.

    Give a run folder (``RUN/store`` + ``RUN/crosscoder``, output ``RUN/analysis``), or
    ``store=`` (an ActivationStore or its folder) and ``crosscoder=`` (a Crosscoder or its
    folder) with ``out=``. Returns the written :class:`AnalysisResult`.
    """
    config = config or AnalysisConfig()
    config.validate()
    t_start = time.perf_counter()
    store, cc, paths, out = _open_inputs(run, store, crosscoder, out)
    dev = _resolve_device(config.device)
    from crossdiff.store.reader import DEFAULT_EVAL_FRACTION

    eval_fraction = config.eval_fraction or DEFAULT_EVAL_FRACTION
    was_training = cc.training
    cc = cc.to(dev).eval()
    kind = crosscoder_kind(cc)
    part, klass = feature_classes(cc, config)
    try:
        t0 = time.perf_counter()
        state = _first_pass(store, cc, config, klass, dev, eval_fraction, kind != "dfc")
        pass_seconds = time.perf_counter() - t0
        alive = state.stats.count.cpu().numpy() > 0
        t1 = time.perf_counter()
        if config.probe_split == "crossfit":
            check_cols, check_info = run_crossfit_check(
                store, state, cc, config, klass, alive, dev, state.descriptors
            )
        else:
            check_cols, check_info = run_check(state, cc, config, klass, alive, dev)
        check_seconds = time.perf_counter() - t1
        fve = _fve(cc, store, eval_fraction, dev)
    finally:
        cc.train(was_training)

    cols = _feature_columns(state, store, cc, config, klass, check_cols, paths)
    features = _features_table(cols, part, klass, check_cols)
    f = len(klass)  # the features whose examples keep their texts, by contexts_for:
    texts = {"all": np.ones(f, bool), "exclusive": klass != "S", "none": np.zeros(f, bool)}
    t2 = time.perf_counter()
    examples = examples_table(state.top, state.sample, store, config, texts[config.contexts_for])
    examples_seconds = time.perf_counter() - t2

    near_dead, verdict = cols["near_dead"], cols["verdict"]
    meta = build_meta(
        store, cc, config, kind, part, klass, alive, near_dead, verdict, state, fve, check_info
    )
    meta["timing"] = {
        "pass_seconds": pass_seconds,
        "check_seconds": check_seconds,
        "examples_seconds": examples_seconds,
        "total_seconds": time.perf_counter() - t_start,
        "pairs_per_second": state.rows / max(pass_seconds, 1e-9),
        "peak_rss_mib": peak_rss_mib(),
        "device": str(dev),
    }
    out.mkdir(parents=True, exist_ok=True)
    write_parquet(features, out / FEATURES_FILE)
    write_parquet(examples, out / EXAMPLES_FILE)
    write_meta(meta, out / META_FILE)  # last: its presence marks a complete analysis
    return AnalysisResult(out, features, examples, meta)


def _feature_columns(
    state: PassState,
    store: Any,
    cc: Crosscoder,
    config: AnalysisConfig,
    klass: np.ndarray,
    check_cols: dict[str, np.ndarray],
    paths: RunPaths | None,
) -> dict[str, np.ndarray]:
    """Every per-feature number of features.parquet, unrounded (the table casts them): a step
    of its own because it is the one place pass 1's state and the check turn into verdicts."""
    stats = state.stats
    count = stats.count.cpu().numpy()
    alive = count > 0
    freq = count / max(state.rows, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_act = np.where(alive, stats.sum.cpu().numpy() / np.maximum(count, 1), np.nan)
        var = stats.sumsq.cpu().numpy() / np.maximum(count, 1) - np.nan_to_num(mean_act) ** 2
        std_act = np.where(alive, np.sqrt(np.clip(var, 0, None)), np.nan)
    near_dead = alive & ((count < config.min_count) | (freq < config.min_frequency))
    norms = cc.decoder_norms().detach().float().cpu().numpy()
    f = len(klass)
    ls_own, ls_other = _latent_betas(state.latent, f)
    mapped = state.latent is None and "out_beta_mapped" in check_cols
    mapped = mapped and bool(np.isfinite(check_cols["out_beta_mapped"]).any())
    if mapped:  # the output check through the map (AnalysisConfig.mapped_output)
        ls_own, ls_other = check_cols["out_beta_own"], check_cols["out_beta_mapped"]
    with np.errstate(invalid="ignore", divide="ignore"):
        ls_ratio = np.where(np.abs(ls_own) > 1e-12, ls_other / ls_own, np.nan)
    exclusive = klass != "S"
    ls_for_check = np.where(exclusive & alive, ls_ratio, np.nan)
    act_sum = stats.sum.cpu().numpy()
    tok = tokenization_columns(state, store, config, check_cols, act_sum, klass)
    if state.twins is not None:
        twin_of, twin_corr = state.twins.twins(f, config.twin_min_corr)
    else:
        twin_of, twin_corr = np.full(f, -1, dtype=np.int64), np.full(f, np.nan)
    twin_of = np.where(alive, twin_of, -1)
    cross_r2 = check_cols["cross_r2"]
    verdict = verdicts(
        exclusive & alive,
        cross_r2,
        check_cols["test_active"],
        ls_for_check,
        config,
        tokenization=tok["tokenization"],
        twin=twin_of >= 0,
        # the DFC output check (a shared basis) can turn 'refuted' into 'conditional'
        output_check=mapped or (state.latent is not None and state.latent.shared_basis),
    )
    score = np.where(exclusive & alive, exclusivity_score(cross_r2, ls_for_check), np.nan)
    # 'conditional': the other model predicts when it fires, so its score is its output's
    score = np.where(verdict == "conditional", 1.0 - np.clip(ls_for_check, 0.0, 1.0), score)
    score = np.where(verdict == "untested", np.nan, score)  # too rare to judge: no score
    recurs = _recurrence(paths, f)
    rank = rank_candidates(klass, verdict, score, freq, mean_act, alive & ~near_dead, recurs)
    return {
        "norms": norms,
        "rel_norm": norms[:, 0] / np.maximum(norms[:, 0] + norms[:, 1], 1e-12),
        "count": count,
        "frequency": freq,
        "mean_act": mean_act,
        "std_act": std_act,
        "s_max": stats.max.cpu().numpy().astype(np.float64),
        "dead": ~alive,
        "near_dead": near_dead,
        "ls_beta_own": ls_own,
        "ls_beta_other": ls_other,
        "ls_ratio": ls_ratio,
        **tok,
        **where_columns(state, act_sum),
        "twin_of": twin_of,
        "twin_corr": twin_corr,
        "exclusivity": score,
        "verdict": verdict,
        "recurs": recurs,
        "rank": rank,
    }


def _latent_betas(latent: LatentScaling | None, f: int) -> tuple[np.ndarray, np.ndarray]:
    """(F,) latent-scaling betas, own and other model (NaN where not measured): a step because
    only standard crosscoders measure them, on their candidates only."""
    ls_own = np.full(f, np.nan)
    ls_other = np.full(f, np.nan)
    if latent is not None:
        own, other = latent.betas()
        idx = latent.feats.cpu().numpy()
        ls_own[idx] = own.cpu().numpy()
        ls_other[idx] = other.cpu().numpy()
    return ls_own, ls_other


def _features_table(
    cols: dict[str, np.ndarray],
    part: np.ndarray,
    klass: np.ndarray,
    check_cols: dict[str, np.ndarray],
) -> pa.Table:
    """features.parquet's columns, in their order and stored types: a step apart so that the
    file's schema reads in one place."""
    f = len(klass)
    nan = np.full(f, np.nan)

    def f32(name: str) -> np.ndarray:
        return cols[name].astype(np.float32)

    return pa.table(
        {
            "feature": np.arange(f, dtype=np.int64),
            "partition": part.tolist(),
            "klass": klass.tolist(),
            "dec_norm_a": cols["norms"][:, 0].astype(np.float32),
            "dec_norm_b": cols["norms"][:, 1].astype(np.float32),
            "rel_norm": f32("rel_norm"),
            "count": cols["count"].astype(np.int64),
            "frequency": cols["frequency"].astype(np.float64),
            "mean_act": f32("mean_act"),
            "std_act": f32("std_act"),
            "s_max": f32("s_max"),
            "dead": cols["dead"],
            "near_dead": cols["near_dead"],
            "cross_r2": check_cols["cross_r2"].astype(np.float32),
            "test_active": check_cols["test_active"],
            "check_side": check_cols["check_side"].tolist(),
            "ls_beta_own": f32("ls_beta_own"),
            "ls_beta_other": f32("ls_beta_other"),
            "ls_ratio": f32("ls_ratio"),
            "tok_r2": check_cols.get("tok_r2", nan).astype(np.float32),
            "cross_tok_r2": check_cols.get("cross_tok_r2", nan).astype(np.float32),
            "internal_top_share": f32("internal_top_share"),
            "internal_mass_share": f32("internal_mass_share"),
            "later_top_share": f32("later_top_share"),
            "chat_share": f32("chat_share"),
            "user_share": f32("user_share"),
            "assistant_share": f32("assistant_share"),
            "decision_share": f32("decision_share"),
            "twin_of": cols["twin_of"],
            "twin_corr": f32("twin_corr"),
            "exclusivity": f32("exclusivity"),
            "verdict": cols["verdict"].tolist(),
            "recurs": cols["recurs"],
            "rank": cols["rank"],
        }
    )


def _fve(cc: Crosscoder, store: Any, eval_fraction: float, dev: torch.device) -> dict[str, Any]:
    """FVE per model on the eval split (metrics.evaluate); the whole store if it has none."""
    from crossdiff.crosscoder.metrics import evaluate

    split = "eval"
    try:
        source = store.source("eval", eval_fraction=eval_fraction)
    except CrossdiffError:
        split = "all"
        source = store.source("all")
    n = len(source)
    batch = min(2048, n)
    n_batches = max(1, min(8, n // batch))  # no row twice
    result = evaluate(cc, source, n_batches=n_batches, batch_size=batch, device=dev)
    return {"split": split, **result}
