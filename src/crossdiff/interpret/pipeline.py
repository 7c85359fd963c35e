"""``interpret(run, config)``: explain and score the ranked candidates of a run folder."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from crossdiff.errors import CrossdiffError
from crossdiff.interpret.backends import Explainer, Explanation, Judge, make_backends
from crossdiff.interpret.config import INTERPRETABLE_AT, InterpretConfig
from crossdiff.interpret.results import (
    FORMAT_NAME,
    FORMAT_VERSION,
    META_FILE,
    SCHEMA,
    TABLE_FILE,
    InterpretResult,
    load_interpretations,
)
from crossdiff.interpret.samples import FeatureJob, decoy, feature_rng
from crossdiff.interpret.scores import Score, score
from crossdiff.paths import RunPaths

KLASS_ORDER = {"A": 0, "B": 1, "S": 2}


def _nan_score() -> Score:
    return Score(math.nan, math.nan, math.nan, 0, math.nan, 0)


def process(job: FeatureJob, explainer: Explainer, judge: Judge, seed: int) -> dict[str, Any]:
    """Explain one feature, then score the explanation on its held-out samples."""
    exp = explainer.explain(job)
    det, fuz = _nan_score(), _nan_score()
    cats: list[str] = []
    harm_status = "skipped"
    unparsed = 0
    if exp.usable:
        if job.held_out and job.negatives:
            ctxs = job.held_out + job.negatives
            labels = [True] * len(job.held_out) + [False] * len(job.negatives)
            probs, bad = judge.probabilities(exp, "detection", ctxs, job.feature)
            det, unparsed = score(labels, probs), unparsed + bad
        rng = feature_rng(seed, job.feature, "decoy")
        pairs = [(c, decoy(c, rng)) for c in job.held_out]
        pairs = [(c, d) for c, d in pairs if d is not None]
        if pairs:
            ctxs = [c for c, _ in pairs] + [d for _, d in pairs]
            labels = [True] * len(pairs) + [False] * len(pairs)
            probs, bad = judge.probabilities(exp, "fuzzing", ctxs, job.feature)
            fuz, unparsed = score(labels, probs), unparsed + bad
        cats, harm_status = judge.harm(exp, job)
    return _row(job, exp, det, fuz, unparsed, cats, harm_status, explainer, judge)


def _row(
    job: FeatureJob,
    exp: Explanation,
    det: Score,
    fuz: Score,
    unparsed: int,
    cats: list[str],
    harm_status: str,
    explainer: Explainer,
    judge: Judge,
) -> dict[str, Any]:
    return {
        "feature": job.feature,
        "klass": job.klass,
        "rank": job.rank,
        "verdict": job.verdict,
        "side": job.side,
        "explanation": exp.text,
        "top_terms": exp.top_terms(),
        "parse_status": exp.status,
        "n_explain": len(job.explain),
        "detection": det.value,
        "detection_ci_low": det.ci_low,
        "detection_ci_high": det.ci_high,
        "detection_n": det.n,
        "detection_hard_n": job.hard_n,
        "auroc": det.auroc,
        "fuzzing": fuz.value,
        "fuzzing_ci_low": fuz.ci_low,
        "fuzzing_ci_high": fuz.ci_high,
        "fuzzing_n": fuz.n,
        "fuzzing_auroc": fuz.auroc,
        "judge_unparsed": unparsed,
        "harm_flagged": bool(cats),
        "harm_categories": list(cats),
        "harm_status": harm_status,
        "interpretable": bool(math.isfinite(det.value) and det.value >= INTERPRETABLE_AT),
        "explainer": explainer.name,
        "judge": judge.name,
    }


def _failed_row(job: FeatureJob, error: Exception, explainer: Explainer, judge: Judge) -> dict:
    exp = Explanation("", f"error: {type(error).__name__}: {str(error)[:200]}")
    return _row(job, exp, _nan_score(), _nan_score(), 0, [], "skipped", explainer, judge)


def review_key(row: dict[str, Any]) -> tuple:
    """Flagged features first (more categories first), then A, B, shared, each by rank."""
    return (
        not row["harm_flagged"],
        -len(row["harm_categories"]),
        KLASS_ORDER.get(row["klass"], 3),
        row["rank"] or 1 << 30,
        row["feature"],
    )


def estimate(jobs: list[FeatureJob], config: InterpretConfig) -> dict[str, Any]:
    """Requests and tokens the LLM backends will need at most (cache hits make fewer)."""
    ctx_tokens = int(config.context_chars * 1.34 / 4) + 12
    calls = tokens_in = tokens_out = 0
    for job in jobs:
        if config.explainer != "stats":
            calls += 1
            tokens_in += 150 + len(job.explain) * ctx_tokens
            tokens_out += config.max_new_tokens
        if config.judge_spec != "stats":
            n = len(job.held_out)
            batches = 2 * math.ceil(2 * n / config.judge_batch) + 1
            calls += batches
            tokens_in += batches * (160 + config.judge_batch * ctx_tokens)
            tokens_out += batches * (8 * config.judge_batch + 16)
    cost = (tokens_in + tokens_out) / 1e6 * config.price_per_mtok
    return {"calls": calls, "tokens_in": tokens_in, "tokens_out": tokens_out, "cost": cost}


def interpret(
    run: str | Path,
    config: InterpretConfig | None = None,
    *,
    log: Callable[[str], Any] = print,
) -> InterpretResult:
    """Explain and score the features of run folder ``run``; write RUN/interpret/ and return it.

    Needs ``crossdiff analyze RUN`` first (and RUN/store for non-activating contexts). See
    :class:`InterpretConfig` for the settings and docs/interpret.md for the method.
    """
    from crossdiff.analysis import load_analysis
    from crossdiff.analysis.results import write_meta, write_parquet
    from crossdiff.interpret.samples import build_jobs

    config = config or InterpretConfig()
    config.validate()
    run = Path(run)
    if not run.is_dir():
        raise CrossdiffError(f"run folder {run} does not exist; check the path")
    paths = RunPaths(run)
    t0 = time.perf_counter()
    result = load_analysis(run)
    explainer, judge, callers = make_backends(config, paths.interpret_cache)
    t_backends = time.perf_counter()
    jobs, notes = build_jobs(run, result, config)
    t_samples = time.perf_counter()
    est = estimate(jobs, config)
    counts = {k: sum(j.klass == k for j in jobs) for k in ("A", "B", "S")}
    log(_plan_line(len(jobs), counts, explainer, judge, est, config))
    rows, failures = _run_jobs(jobs, explainer, judge, callers, config)
    done = sorted((r for r in rows if r is not None), key=review_key)
    t_run = time.perf_counter()
    table = pa.Table.from_pylist(done, schema=SCHEMA)
    folder = paths.interpret
    folder.mkdir(parents=True, exist_ok=True)
    write_parquet(table, folder / TABLE_FILE)
    calls = {c.name: dict(c.counts, first_error=c.first_error) for c in callers}
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": str(run),
        "explainer": explainer.name,
        "judge": judge.name,
        "config": config.to_dict(),
        "interpretable_at": INTERPRETABLE_AT,
        "samples": notes,
        "counts": _counts(done, counts, failures),
        "calls": calls,
        "estimate": est,
        "review_first": [r["feature"] for r in done if r["harm_flagged"]],
        "timing": {
            "backends_s": round(t_backends - t0, 3),
            "samples_s": round(t_samples - t_backends, 3),
            "explain_and_score_s": round(t_run - t_samples, 3),
            "total_s": round(time.perf_counter() - t0, 3),
        },
        "versions": _versions(),
    }
    write_meta(meta, folder / META_FILE)
    return load_interpretations(folder)


def _plan_line(
    n: int,
    counts: dict[str, int],
    explainer: Explainer,
    judge: Judge,
    est: dict[str, Any],
    config: InterpretConfig,
) -> str:
    """The line said before any LLM call: what will be asked of which backends, and at most
    what it costs, so that a user can stop an expensive run before it starts."""
    line = (
        f"interpret: {n} features (A {counts['A']}, B {counts['B']}, shared "
        f"{counts['S']}); explainer {explainer.name}, judge {judge.name}"
    )
    if est["calls"]:
        line += (
            f"; at most {est['calls']:,} LLM requests, ~{est['tokens_in']:,} tokens in and "
            f"~{est['tokens_out']:,} out"
            + (f", ~${est['cost']:.2f}" if config.price_per_mtok else "")
            + " (cached replies are free)"
        )
    return line


def _run_jobs(
    jobs: list[FeatureJob],
    explainer: Explainer,
    judge: Judge,
    callers: list[Any],
    config: InterpretConfig,
) -> tuple[list[dict[str, Any] | None], int]:
    """Every job through :func:`process` on ``config.concurrency`` threads: its row per job
    (in job order) and the number of features that failed. A step because one feature's
    failure must never stop the others (only a CrossdiffError, a wrong setup, does)."""
    rows: list[dict[str, Any] | None] = [None] * len(jobs)
    failures = 0
    bar = None
    if config.progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), desc="interpret", unit="feature")
    try:
        with ThreadPoolExecutor(max_workers=config.concurrency) as pool:
            futures = {
                pool.submit(process, job, explainer, judge, config.seed): k
                for k, job in enumerate(jobs)
            }
            for fut in as_completed(futures):
                k = futures[fut]
                try:
                    rows[k] = fut.result()
                except CrossdiffError:
                    raise
                except Exception as exc:  # one feature's failure never stops the others
                    failures += 1
                    rows[k] = _failed_row(jobs[k], exc, explainer, judge)
                if bar is not None:
                    bar.update(1)
                    if callers:
                        t_in = sum(c.counts["tokens_in"] for c in callers)
                        t_out = sum(c.counts["tokens_out"] for c in callers)
                        bar.set_postfix_str(f"tokens {t_in:,} in / {t_out:,} out", refresh=False)
    finally:
        if bar is not None:
            bar.close()
    return rows, failures


def _counts(done: list[dict[str, Any]], by_class: dict[str, int], failures: int) -> dict:
    """interpret.json's tallies of the rows: what a reader checks first (how many features
    are interpretable, flagged by the harm screen, unparsed or failed)."""
    return {
        "features": len(done),
        "by_class": by_class,
        "interpretable": sum(r["interpretable"] for r in done),
        "flagged": sum(r["harm_flagged"] for r in done),
        "explanation_status": _tally(r["parse_status"] for r in done),
        "judge_unparsed": sum(r["judge_unparsed"] for r in done),
        "feature_errors": failures,
    }


def _tally(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        key = v.split(":")[0] if v.startswith("error") else v
        out[key] = out.get(key, 0) + 1
    return out


def _versions() -> dict[str, str]:
    from crossdiff import __version__

    return {"crossdiff": __version__}
