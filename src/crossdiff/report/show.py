"""``crossdiff show RUN FEATURE``: one feature's evidence in the terminal.

The same facts as the report's detail view: partition/class, decoder norms, frequency,
s_max, the exclusivity check, top and quantile-band examples with the activating token marked
(``[[token]]``, or reverse video on a terminal), in both models' renderings. Control
characters in corpus text are made visible so a document cannot drive the terminal (no
escape sequences from the corpus reach it).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from crossdiff.analysis.examples import CONTEXT_COLUMNS, cut_contexts
from crossdiff.analysis.ranking import verdict_reason
from crossdiff.analysis.results import AnalysisResult, load_analysis
from crossdiff.errors import CrossdiffError
from crossdiff.paths import RunPaths
from crossdiff.report.explanations import interpret_lines
from crossdiff.textsafe import safe_text

_MARK_ANSI = ("\x1b[7m", "\x1b[0m")
_MARK_PLAIN = ("[[", "]]")


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    if isinstance(x, (int, np.integer)):
        return f"{int(x):,}"
    return f"{float(x):.{digits}g}"


def _context(ex: dict[str, Any], m: str, width: int, color: bool) -> str:
    pre, tok, post = ex.get(f"pre_{m}"), ex.get(f"tok_{m}"), ex.get(f"post_{m}")
    if tok is None:
        return "(text not available: the store is gone and the analysis did not copy it)"
    left, right = _MARK_ANSI if color else _MARK_PLAIN
    pre, tok, post = safe_text(pre or ""), safe_text(tok or "") or "∅", safe_text(post or "")
    room = max(20, width - len(tok) - 8)
    keep_pre = room * 2 // 3
    if len(pre) > keep_pre:
        pre = "…" + pre[-keep_pre:]
    keep_post = room - len(pre)
    if len(post) > keep_post:
        post = post[: max(keep_post, 0)] + "…"
    return f"{pre}{left}{tok}{right}{post}"


def _fill_missing_contexts(
    result: AnalysisResult, exs: list[dict[str, Any]], run: Path | None
) -> None:
    """Cut texts from the store for examples the analysis did not copy (if the store exists)."""
    missing = [x for x in exs if x.get("tok_a") is None]
    if not missing or run is None:
        return
    paths = RunPaths(run)
    if not paths.has_store():
        return
    store = paths.open_store()
    prov = {
        "doc_index": np.array([x["doc_index"] for x in missing], dtype=np.int64),
        "window": np.array([x["window"] for x in missing], dtype=np.int64),
        "span_a": np.array([[x["span_a_start"], x["span_a_end"]] for x in missing]),
        "span_b": np.array([[x["span_b_start"], x["span_b_end"]] for x in missing]),
    }
    cfg = result.meta.get("config", {})
    ctx = cut_contexts(
        store,
        prov,
        np.ones(len(missing), dtype=bool),
        int(cfg.get("context_before", 240)),
        int(cfg.get("context_after", 80)),
    )
    for j, x in enumerate(missing):
        for c in CONTEXT_COLUMNS:
            x[c] = ctx[c][j]


def format_feature(
    result: AnalysisResult,
    feature: int,
    *,
    examples: int = 10,
    width: int = 100,
    color: bool = False,
    run: Path | None = None,
) -> str:
    """The terminal text for one feature."""
    f = result.feature(feature)
    lines = _stat_lines(f, result.meta)
    lines += interpret_lines(run, feature) if run is not None else []
    from crossdiff.recurrence import recurrence_lines

    lines += recurrence_lines(run, feature) if run is not None else []
    exs = result.feature_examples(feature)
    _fill_missing_contexts(result, exs, run)
    tops = [x for x in exs if x["kind"] == "top"][:examples]
    bands = [x for x in exs if x["kind"] == "band"]
    n_bands = int(result.meta.get("config", {}).get("quantile_bands", 4))
    if not tops and not bands:
        lines.append("  no examples: the feature never fired on the analysed rows")
    for title, group in (("top activations", tops), ("quantile bands", bands)):
        if not group:
            continue
        lines.append(f"  {title}:")
        for x in group:
            if x["kind"] == "top":
                tag = f"#{int(x['order']) + 1}"
            else:
                tag = f"{100 * x['order'] // n_bands}-{100 * (x['order'] + 1) // n_bands}%"
            lines.append(
                f"   {tag:>8} act {_fmt(x['activation'])}  doc {x['doc_index']} window "
                f"{x['window']} char {x['content_end']}"
            )
            for m in ("a", "b"):
                lines.append(f"       {m.upper()}: {_context(x, m, width - 10, color)}")
    return "\n".join(lines)


def _stat_lines(f: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    """The feature's numbers from features.parquet, one topic a line: a step apart from the
    examples because it needs nothing but the feature's row."""
    min_active = int(meta.get("config", {}).get("min_test_active", 10))
    names = {m: meta.get("models", {}).get(m, {}).get("model_id", m.upper()) for m in ("a", "b")}
    standard = meta.get("crosscoder", {}).get("kind") != "dfc"
    lines = [
        f"feature {f['feature']}: {f['partition']} (class {f['klass']})"
        + (f", rank {f['rank']} of the {f['klass']}-exclusive list" if f["rank"] else ""),
        f"  A = {names['a']}   B = {names['b']}",
        f"  decoder norms  A {_fmt(f['dec_norm_a'])}  B {_fmt(f['dec_norm_b'])}  relative "
        f"{_fmt(f['rel_norm'])}",
        f"  frequency      {_fmt(f['frequency'])} ({_fmt(f['count'])} activations)"
        + ("  DEAD" if f["dead"] else "  near-dead" if f["near_dead"] else ""),
        f"  activation     mean {_fmt(f['mean_act'])}  std {_fmt(f['std_act'])}  s_max "
        f"{_fmt(f['s_max'])}",
    ]
    if f["verdict"] == "untested":
        lines.append(f"  exclusivity    untested: {verdict_reason(f, min_active)} (no score)")
    elif f["verdict"]:
        lines.append(
            f"  exclusivity    {f['verdict']}  score {_fmt(f['exclusivity'], 3)}  cross-model "
            f"R^2 {_fmt(f['cross_r2'], 3)} over {_fmt(f['test_active'])} scored activations"
        )
        lines.append(f"  why            {verdict_reason(f, min_active)}")
    if f.get("internal_top_share") is not None and f["verdict"]:
        lines.append(
            f"  tokenization   {_fmt(f.get('internal_top_share'), 2)} of top examples and "
            f"{_fmt(f.get('internal_mass_share'), 2)} of activation inside words, "
            f"{_fmt(f.get('later_top_share'), 2)} of top tokens later word pieces; R^2 on "
            f"descriptors {_fmt(f.get('tok_r2'), 3)}, with the other model "
            f"{_fmt(f.get('cross_tok_r2'), 3)}"
            + (f"; twin #{f['twin_of']}" if (f.get("twin_of") or -1) >= 0 else "")
        )
    if f.get("chat_share") is not None and not f["dead"]:
        lines.append(
            f"  where          {_fmt(f.get('chat_share'), 2)} of activation in chats; in chats "
            f"{_fmt(f.get('user_share'), 2)} user, {_fmt(f.get('assistant_share'), 2)} assistant"
            + (
                f", {_fmt(f['decision_share'], 2)} at decision pairs"
                if (f.get("decision_share") or 0) > 0
                else ""
            )
        )
    if not (f.get("internal_top_share") is not None and f["verdict"]) and f["check_side"]:
        lines.append(
            f"  control check  cross-model R^2 {_fmt(f['cross_r2'], 3)} (a shared feature "
            "checked for comparison)"
        )
    if standard and f["verdict"]:
        lines.append(
            f"  latent scaling beta own {_fmt(f['ls_beta_own'])}  other "
            f"{_fmt(f['ls_beta_other'])}  ratio {_fmt(f['ls_ratio'], 3)}"
        )
    return lines


def show_feature(
    run: str | Path,
    feature: int,
    *,
    examples: int = 10,
    width: int = 100,
    color: bool = False,
) -> str:
    """Load the analysis of ``run`` and format one feature (raises CrossdiffError on bad input)."""
    run = Path(run)
    if not run.exists():
        raise CrossdiffError(f"run folder {run} does not exist; check the path")
    result = load_analysis(run)
    try:
        index = int(feature)
    except (TypeError, ValueError):
        raise CrossdiffError(f"feature {feature!r} is not an integer index") from None
    return format_feature(result, index, examples=examples, width=width, color=color, run=run)
