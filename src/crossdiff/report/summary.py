"""The top of the report: the summary (models, data, crosscoder, loss balance, partitions,
the exclusivity check and how to read it) and the overview plot.

Everything here reads ``analysis.json`` (the plot also the feature table), so a number on the
page is the one the analysis recorded, explained in the notes beside it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from crossdiff.analysis.plots import partition_activity, relative_norm_histogram
from crossdiff.analysis.results import AnalysisResult
from crossdiff.report.html import e, fmt, model_name, num_td, pct


def summary_html(meta: dict[str, Any]) -> str:
    """The summary section: warnings, the summary table, the partitions and the check."""
    diag = meta.get("diagnostics") or {}
    warn_html = "".join(
        f'<p class="warning"><strong>Warning:</strong> {e(w)}</p>'
        for w in diag.get("warnings") or []
    )
    part_rows = []
    for name, p in meta.get("partitions", {}).items():
        if not p.get("size"):
            continue
        part_rows.append(
            f"<tr><td>{e(name.replace('_', ' '))}</td>{num_td(p['size'])}{num_td(p['alive'])}"
            f"{num_td(p['near_dead'])}{num_td(p['activations'])}</tr>"
        )
    classes = meta.get("classes", {})
    check_rows = []
    for c in ("A", "B"):
        k = classes.get(c, {})
        check_rows.append(
            f'<tr><td class="model-{c.lower()}">{e(c)}-exclusive candidates</td>'
            f"{num_td(k.get('size'))}{num_td(k.get('alive'))}{num_td(k.get('reviewable'))}"
            f"{num_td(k.get('confirmed'))}{num_td(k.get('conditional', 0))}"
            f"{num_td(k.get('untested'))}"
            f"{num_td(k.get('tokenization', 0))}{num_td(k.get('twin', 0))}"
            f"{num_td(k.get('refuted'))}</tr>"
        )
    return (
        '<section id="summary"><h2>Summary</h2>'
        + warn_html
        + '<table class="summary">'
        + "".join(_summary_rows(meta))
        + '</table><div class="cards"><div><h3>Partitions</h3><table><thead><tr><th>partition'
        "</th><th>size</th><th>alive</th><th>near-dead</th><th>activations</th></tr></thead>"
        "<tbody>" + "".join(part_rows) + "</tbody></table></div>"
        "<div><h3>Exclusivity check</h3><table><thead><tr><th></th><th>candidates</th>"
        "<th>alive</th><th>reviewable</th><th>confirmed</th><th>conditional</th><th>too rare</th>"
        "<th>tokenization</th>"
        "<th>twin</th><th>refuted</th>"
        "</tr></thead><tbody>"
        + "".join(check_rows)
        + "</tbody></table>"
        + "".join(f'<p class="note">{e(n)}</p>' for n in _check_notes(meta))
        + "</div></div></section>"
    )


def _summary_rows(meta: dict[str, Any]) -> list[str]:
    """The summary table's rows: the models, the data, the crosscoder and the loss balance;
    a step apart from the cards because each row reads its own part of analysis.json."""
    ev = meta.get("eval", {})
    store = meta.get("store", {})
    cc = meta.get("crosscoder", {})
    rows = []
    for m in ("a", "b"):
        info = meta.get("models", {}).get(m, {})
        rows.append(
            f'<tr><td class="model-{m}">Model {m.upper()}</td><td>{e(model_name(meta, m))}'
            f"</td><td>layer {e(info.get('layer'))} of {e(info.get('n_layers'))}, width "
            f"{e(info.get('d_model'))}, tokenizer {e(info.get('tokenizer'))}</td>"
            f"<td>FVE {e(fmt(ev.get(f'fve_{m}')))}</td></tr>"
        )
    rows.append(
        f"<tr><td>Data</td><td>{e(fmt(store.get('rows')))} aligned pairs</td><td>"
        f"{e(fmt(store.get('documents')))} documents; {e(fmt(store.get('content_tokens_a')))} "
        f"content tokens of A, {e(fmt(store.get('content_tokens_b')))} of B</td>"
        f"<td>{e(fmt(meta.get('rows_analysed')))} analysed</td></tr>"
    )
    rows.append(
        f"<tr><td>Crosscoder</td><td>{e(cc.get('kind', '').upper())}, "
        f"{e(fmt(cc.get('n_features')))} features</td><td>{e(cc.get('activation'))}"
        + (f", k={e(cc.get('k'))}" if cc.get("activation") != "relu" else "")
        + f"; FVE and L0 on the {e(ev.get('split'))} split "
        f"({e(fmt(ev.get('rows')))} rows), L0 {e(fmt(ev.get('l0')))}</td>"
        f"<td>dead {e(fmt(100 * float(meta.get('dead_fraction', float('nan')))))}%</td></tr>"
    )
    diag = meta.get("diagnostics") or {}
    if diag.get("loss_share_b") is not None:
        share_b = float(diag["loss_share_b"])
        gam = (
            f"gamma |mean|/|std|: A {fmt(diag.get('gamma_a'), 2)}, B {fmt(diag.get('gamma_b'), 2)}"
            if "gamma_a" in diag
            else ""
        )
        rows.append(
            f"<tr><td>Balance</td><td>{e(diag.get('normalization'))} normalization</td>"
            f"<td>share of the loss weight: A {100 * (1 - share_b):.1f}%, "
            f"B {100 * share_b:.1f}%</td><td>{e(gam)}</td></tr>"
        )
    return rows


def _check_notes(meta: dict[str, Any]) -> list[str]:
    """The notes under the exclusivity check: how it was scored, what flags tokenization,
    where the pairs come from, the shared controls; a step because they explain the check's
    numbers rather than show them."""
    check = meta.get("check", {})
    cfg = meta.get("config", {})
    if cfg.get("probe_split") == "crossfit":
        rows_note = (
            f"Check rows: all {fmt(check.get('test_rows'))} analysed pairs, each scored by "
            f"cross-model maps fitted on the other {fmt(cfg.get('probe_folds'))} folds of "
            "documents (cross-fitted). "
        )
    else:
        rows_note = (
            f"Check rows: {fmt(check.get('fit_rows'))} to fit the cross-model maps, "
            f"{fmt(check.get('test_rows'))} held out to score them (documents of the "
            f"{cfg.get('probe_split', 'eval')} split). "
        )
    notes = [
        rows_note + f"Map FVE: "
        f"B→A {fmt(check.get('map_fve_b_to_a'))}, "
        f"A→B {fmt(check.get('map_fve_a_to_b'))}. A candidate is refuted when the other model "
        f"predicts it with held-out R² ≥ {fmt(cfg.get('exclusive_max_r2'))}"
        + (
            f" or its latent scaling ratio is ≥ {fmt(cfg.get('latent_scaling_max'))}"
            if meta.get("crosscoder", {}).get("kind") != "dfc"
            else ""
        )
        + f"; too rare to judge (untested) with fewer than {fmt(cfg.get('min_test_active'))} "
        "scored activations.",
    ]
    tok = check.get("tokenization") or {}
    if tok:
        notes.append(
            "Tokenization: "
            + (
                "the two models share one tokenizer, so nothing is flagged."
                if tok.get("same_tokenizer")
                else f"{100 * float(tok.get('word_internal_base_rate', 0)):.1f}% of the pairs "
                "end inside a word; a candidate with at least "
                f"{100 * float(tok.get('flag_share', 0)):.0f}% of its top examples or activation "
                "there, or with at least that share of its top tokens being later pieces of a "
                "word its own tokenizer split (at least 3x that model's base rate), or explained "
                "by descriptors of the tokenization plus the other model, is "
                "flagged 'tokenization'. Twins: an A- and a B-exclusive feature whose activations "
                f"correlate ≥ {fmt(cfg.get('twin_min_corr'))} on the same rows."
            )
        )
    where = meta.get("where") or {}
    if where:
        notes.append(_where_note(where))
    ctrl = check.get("controls")
    if ctrl and ctrl.get("tested"):
        notes.append(
            f"Control: {ctrl['tested']} shared features through the same check have median "
            f"R² {fmt(ctrl.get('cross_r2_median'))}; "
            f"{fmt(100 * (ctrl.get('frac_refuted_at_threshold') or 0))}% of them would be "
            "refuted (what 'the other model has it' looks like on this pair)."
        )
    for key in ("skipped", "warning"):
        if check.get(key):
            notes.append(f"{key.capitalize()}: {check[key]}")
    return notes


def _where_note(where: dict[str, Any]) -> str:
    """Where the analysed pairs come from (chats, roles, sources): the base rates the lists'
    'in chats' and 'assistant' columns are read against."""
    comp = where.get("store") or {}
    sources = comp.get("sources") or {}
    total = max(1, sum(int(v.get("pairs", 0)) for v in sources.values()))
    split = ", ".join(
        f"{name} {100 * int(v.get('pairs', 0)) / total:.1f}%" for name, v in sources.items()
    )
    return (
        f"Where the pairs come from: {pct(where.get('chat_rows_share'))} of the analysed "
        f"pairs are in chats ({pct(where.get('user_rows_share_of_chat'))} of those in user "
        f"messages, {pct(where.get('assistant_rows_share_of_chat'))} in assistant ones"
        + (
            f", {pct(where['decision_rows_share_of_chat'])} at prompts' decision pairs"
            if where.get("decision_rows_share_of_chat")
            else ""
        )
        + ")"
        + (f"; by source: {split}" if split else "")
        + (
            f"; harvested at {comp.get('pair_positions')} positions only "
            f"({fmt(comp.get('pairs_removed'))} pairs removed)"
            if comp.get("pair_positions", "all") != "all"
            else ""
        )
        + ". The lists give each feature's share of activation in chats and, within chats, "
        "in assistant messages: compare with these base rates."
    )


def plot_html(result: AnalysisResult) -> str:
    """The overview plot: partition activity for DFC, relative decoder norms otherwise."""
    t = result.features
    meta = result.meta
    alive = ~np.asarray(t["dead"].to_numpy(zero_copy_only=False), dtype=bool)
    if meta.get("crosscoder", {}).get("kind") == "dfc":
        names = {
            "A": f"A-exclusive ({model_name(meta, 'a')})",
            "B": f"B-exclusive ({model_name(meta, 'b')})",
            "S": "shared",
        }
        svg = partition_activity(
            np.asarray(t["klass"].to_pylist()), t["frequency"].to_numpy(), alive, names
        )
    else:
        cfg = meta.get("config", {})
        svg = relative_norm_histogram(
            t["rel_norm"].to_numpy().astype(np.float64),
            alive,
            float(cfg.get("rel_lo", 0.1)),
            float(cfg.get("rel_hi", 0.9)),
        )
    return f'<section id="plot"><h2>Overview</h2>{svg}</section>'
