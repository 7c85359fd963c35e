"""``crossdiff report``: the auditor's page, RUN/report/index.html, one self-contained file.

Offline by construction: CSS and JS are inlined from ``analysis/templates/``, plots are inline
SVG, nothing is fetched. Corpus text is hostile input (web pages, chats, code): every piece of
it goes through :func:`html.escape` before it reaches the page, and the page carries a Content
Security Policy that allows only *this* page's own script (by its SHA-256), so even a bug in
the escaping could not run injected script. The JS only sorts and filters rows that are
already in the page; it never inserts HTML.

Layout: summary (models, layers, pairs, FVE, dead %, partitions, the exclusivity check), a plot
(relative decoder norms for standard crosscoders, partition activity for DFC), one sortable,
filterable list per model of its exclusive candidates in review order, and a detail view per
listed feature (``#f-<index>``; CSS ``:target``, so it works without JS) with its statistics,
top and quantile-band examples in both models' own renderings, and steering results when
``RUN/steering/feature-<i>.json`` exists.

Size: one self-contained HTML page (markup, CSS, escaping) whose sections share the
escaping and layout helpers; moving the report into a package of its own is still to do.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Mapping
from html import escape
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crossdiff.analysis.plots import partition_activity, relative_norm_histogram
from crossdiff.analysis.ranking import CONCEPT_VERDICTS, verdict_reason
from crossdiff.analysis.results import AnalysisResult
from crossdiff.errors import CrossdiffError
from crossdiff.paths import RunPaths

if TYPE_CHECKING:
    from crossdiff.steering.result import ModelSteering, SteeringResult

DEFAULT_MAX_FEATURES = 300
DEFAULT_EXAMPLES = 10
SNIPPET_BEFORE = 70
SNIPPET_AFTER = 30


def e(value: Any) -> str:
    """Escape anything for HTML text or attribute values."""
    return escape("" if value is None else str(value), quote=True)


def _template(name: str) -> str:
    return resources.files("crossdiff.analysis").joinpath("templates", name).read_text("utf-8")


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, (int, np.integer)) or (float(x).is_integer() and abs(float(x)) >= 1000):
        return f"{int(x):,}"
    return f"{float(x):.{digits}g}"


def _num_td(x: Any, digits: int = 3) -> str:
    v = "" if x is None or (isinstance(x, float) and not math.isfinite(x)) else repr(float(x))
    return f'<td class="num" data-v="{e(v)}">{e(_fmt(x, digits))}</td>'


def _visible(text: str) -> str:
    """Make a token's invisible characters visible (a newline or a space would vanish)."""
    if text == "":
        return "∅"
    if text.strip() == "":
        return text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥")
    return text


def context_html(pre: str | None, tok: str | None, post: str | None, *, short: bool) -> str:
    """Escaped context with the activating token marked."""
    if tok is None:
        return '<span class="note">(text not in the analysis)</span>'
    pre, post = pre or "", post or ""
    if short:
        pre = ("…" + pre[-SNIPPET_BEFORE:]) if len(pre) > SNIPPET_BEFORE else pre
        post = (post[:SNIPPET_AFTER] + "…") if len(post) > SNIPPET_AFTER else post
        pre, post = pre.replace("\n", "⏎ "), post.replace("\n", "⏎ ")
    return f'<span class="ctx">{e(pre)}<mark>{e(_visible(tok))}</mark>{e(post)}</span>'


def _csp(script: str) -> str:
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'"
    )


def _model_name(meta: dict[str, Any], m: str) -> str:
    info = meta.get("models", {}).get(m, {})
    return str(info.get("model_id") or info.get("spec") or m.upper())


# ---- sections --------------------------------------------------------------------------------
def _summary(meta: dict[str, Any]) -> str:
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
            f"<tr><td>{e(name.replace('_', ' '))}</td>{_num_td(p['size'])}{_num_td(p['alive'])}"
            f"{_num_td(p['near_dead'])}{_num_td(p['activations'])}</tr>"
        )
    classes = meta.get("classes", {})
    check_rows = []
    for c in ("A", "B"):
        k = classes.get(c, {})
        check_rows.append(
            f'<tr><td class="model-{c.lower()}">{e(c)}-exclusive candidates</td>'
            f"{_num_td(k.get('size'))}{_num_td(k.get('alive'))}{_num_td(k.get('reviewable'))}"
            f"{_num_td(k.get('confirmed'))}{_num_td(k.get('untested'))}"
            f"{_num_td(k.get('tokenization', 0))}{_num_td(k.get('twin', 0))}"
            f"{_num_td(k.get('refuted'))}</tr>"
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
        "<th>alive</th><th>reviewable</th><th>confirmed</th><th>too rare</th><th>tokenization</th>"
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
            f'<tr><td class="model-{m}">Model {m.upper()}</td><td>{e(_model_name(meta, m))}'
            f"</td><td>layer {e(info.get('layer'))} of {e(info.get('n_layers'))}, width "
            f"{e(info.get('d_model'))}, tokenizer {e(info.get('tokenizer'))}</td>"
            f"<td>FVE {e(_fmt(ev.get(f'fve_{m}')))}</td></tr>"
        )
    rows.append(
        f"<tr><td>Data</td><td>{e(_fmt(store.get('rows')))} aligned pairs</td><td>"
        f"{e(_fmt(store.get('documents')))} documents; {e(_fmt(store.get('content_tokens_a')))} "
        f"content tokens of A, {e(_fmt(store.get('content_tokens_b')))} of B</td>"
        f"<td>{e(_fmt(meta.get('rows_analysed')))} analysed</td></tr>"
    )
    rows.append(
        f"<tr><td>Crosscoder</td><td>{e(cc.get('kind', '').upper())}, "
        f"{e(_fmt(cc.get('n_features')))} features</td><td>{e(cc.get('activation'))}"
        + (f", k={e(cc.get('k'))}" if cc.get("activation") != "relu" else "")
        + f"; FVE and L0 on the {e(ev.get('split'))} split "
        f"({e(_fmt(ev.get('rows')))} rows), L0 {e(_fmt(ev.get('l0')))}</td>"
        f"<td>dead {e(_fmt(100 * float(meta.get('dead_fraction', float('nan')))))}%</td></tr>"
    )
    diag = meta.get("diagnostics") or {}
    if diag.get("loss_share_b") is not None:
        share_b = float(diag["loss_share_b"])
        gam = (
            f"gamma |mean|/|std|: A {_fmt(diag.get('gamma_a'), 2)}, "
            f"B {_fmt(diag.get('gamma_b'), 2)}"
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
            f"Check rows: all {_fmt(check.get('test_rows'))} analysed pairs, each scored by "
            f"cross-model maps fitted on the other {_fmt(cfg.get('probe_folds'))} folds of "
            "documents (cross-fitted). "
        )
    else:
        rows_note = (
            f"Check rows: {_fmt(check.get('fit_rows'))} to fit the cross-model maps, "
            f"{_fmt(check.get('test_rows'))} held out to score them (documents of the "
            f"{cfg.get('probe_split', 'eval')} split). "
        )
    notes = [
        rows_note + f"Map FVE: "
        f"B→A {_fmt(check.get('map_fve_b_to_a'))}, "
        f"A→B {_fmt(check.get('map_fve_a_to_b'))}. A candidate is refuted when the other model "
        f"predicts it with held-out R² ≥ {_fmt(cfg.get('exclusive_max_r2'))}"
        + (
            f" or its latent scaling ratio is ≥ {_fmt(cfg.get('latent_scaling_max'))}"
            if meta.get("crosscoder", {}).get("kind") != "dfc"
            else ""
        )
        + f"; too rare to judge (untested) with fewer than {_fmt(cfg.get('min_test_active'))} "
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
                f"correlate ≥ {_fmt(cfg.get('twin_min_corr'))} on the same rows."
            )
        )
    where = meta.get("where") or {}
    if where:
        notes.append(_where_note(where))
    ctrl = check.get("controls")
    if ctrl and ctrl.get("tested"):
        notes.append(
            f"Control: {ctrl['tested']} shared features through the same check have median "
            f"R² {_fmt(ctrl.get('cross_r2_median'))}; "
            f"{_fmt(100 * (ctrl.get('frac_refuted_at_threshold') or 0))}% of them would be "
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
        f"Where the pairs come from: {_pct(where.get('chat_rows_share'))} of the analysed "
        f"pairs are in chats ({_pct(where.get('user_rows_share_of_chat'))} of those in user "
        f"messages, {_pct(where.get('assistant_rows_share_of_chat'))} in assistant ones)"
        + (f"; by source: {split}" if split else "")
        + (
            f"; harvested at {comp.get('pair_positions')} positions only "
            f"({_fmt(comp.get('pairs_removed'))} pairs removed)"
            if comp.get("pair_positions", "all") != "all"
            else ""
        )
        + ". The lists give each feature's share of activation in chats and, within chats, "
        "in assistant messages: compare with these base rates."
    )


def _pct(value: object) -> str:
    """A share as a percentage, '—' when unknown."""
    try:
        return f"{100 * float(value):.0f}%"  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "—"


def _plot(result: AnalysisResult) -> str:
    t = result.features
    meta = result.meta
    alive = ~np.asarray(t["dead"].to_numpy(zero_copy_only=False), dtype=bool)
    if meta.get("crosscoder", {}).get("kind") == "dfc":
        names = {
            "A": f"A-exclusive ({_model_name(meta, 'a')})",
            "B": f"B-exclusive ({_model_name(meta, 'b')})",
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


def _ranked(
    result: AnalysisResult, klass: str, limit: int, concepts: bool | None = None
) -> list[dict[str, Any]]:
    """The model's ranked candidates; ``concepts`` True: only concept candidates (confirmed /
    untested), False: only the flagged ones (twin / tokenization / refuted), None: all."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = result.features
    cond = pc.and_(pc.equal(t["klass"], klass), pc.greater(t["rank"], 0))
    if concepts is not None:
        is_concept = pc.is_in(t["verdict"], pa.array(list(CONCEPT_VERDICTS)))
        cond = pc.and_(cond, is_concept if concepts else pc.invert(is_concept))
    sel = t.filter(cond)
    sel = sel.sort_by([("rank", "ascending")]).slice(0, limit)
    return sel.to_pylist()


def _feature_list(
    result: AnalysisResult,
    m: str,
    feats: list[dict[str, Any]],
    top_example: dict[int, Any],
    flagged: bool = False,
) -> str:
    klass = m.upper()
    counts = result.meta.get("classes", {}).get(klass, {})
    groups = ("twin", "tokenization", "refuted") if flagged else CONCEPT_VERDICTS
    total = sum(int(counts.get(v, 0)) for v in groups) if counts else len(feats)
    min_active = int(result.meta.get("config", {}).get("min_test_active", 10))
    standard = result.meta.get("crosscoder", {}).get("kind") != "dfc"
    where = result.meta.get("where") or {}
    head = (
        "<tr><th>rank</th><th>feature</th><th>verdict</th><th>exclusivity</th><th>cross R²</th>"
        + ("<th>latent scaling</th>" if standard else "")
        + "<th>frequency</th><th>mean</th><th>s_max</th>"
        + '<th title="share of its activation in chats (store: '
        + e(_pct(where.get("chat_rows_share")))
        + ' of pairs)">in chats</th><th title="of its activation in chats, the share in '
        "assistant messages (store: "
        + e(_pct(where.get("assistant_rows_share_of_chat")))
        + ')">assistant</th>'
        + "<th>why</th><th>strongest example ("
        + e(_model_name(result.meta, m))
        + ")</th></tr>"
    )
    body = [
        _feature_row(f, m, top_example.get(int(f["feature"])), standard, min_active) for f in feats
    ]
    what = "flagged candidates" if flagged else "concept candidates"
    shown = f"Top {len(feats)} of {total} {what}" if len(feats) < total else f"{len(feats)} {what}"
    table_id = f"list-{m}" + ("-flagged" if flagged else "")
    options = "".join(f'<option value="{v}">{v}</option>' for v in groups)
    if flagged:
        title = (
            f"Flagged for {m.upper()}: probably not concepts exclusive to "
            f"{e(_model_name(result.meta, m))}"
        )
        intro = (
            "Tokenizer artifacts (the features fire where the two tokenizers split a word "
            "differently), twins (an exclusive feature of the other model fires on the same "
            "rows: a shared concept split in two) and candidates the other model predicts. "
            "Kept for completeness, ranked after the concept candidates, not steered by "
            "<code>crossdiff run</code>."
        )
    else:
        title = f"Exclusive to {m.upper()}: {e(_model_name(result.meta, m))}"
        intro = (
            "Candidates that may be concepts of this model alone: confirmed by the "
            "exclusivity check, or too rare to judge."
        )
    return (
        f'<section id="{"flagged" if flagged else "exclusive"}-{m}"><h2 class="model-{m}">'
        f'{title}</h2><p class="note">{intro} {e(shown)}, in review order '
        "(verdict, exclusivity, frequency band, strength). Click a column to sort; click a "
        f'feature for its evidence.</p><div class="filter" data-table="{table_id}">'
        '<input type="search" placeholder="filter by text or number" aria-label="filter">'
        f'<select aria-label="verdict"><option value="">any verdict</option>{options}'
        '</select><span class="count">'
        f'</span></div><table class="sortable" id="{table_id}"><thead>{head}</thead><tbody>'
        + "".join(body)
        + "</tbody></table></section>"
    )


def _feature_row(
    f: dict[str, Any], m: str, ex: dict[str, Any] | None, standard: bool, min_active: int
) -> str:
    """One candidate's row in its model's list: a step so that the list's header and the
    cells below it can be read side by side."""
    i = int(f["feature"])
    snippet = (
        context_html(ex.get(f"pre_{m}"), ex.get(f"tok_{m}"), ex.get(f"post_{m}"), short=True)
        if ex
        else ""
    )
    return (
        f'<tr data-verdict="{e(f["verdict"])}">{_num_td(f["rank"])}'
        f'<td class="num" data-v="{i}"><a href="#f-{i}">{i}</a></td>'
        f'<td class="verdict-{e(f["verdict"])}">{e(f["verdict"])}</td>'
        f"{_num_td(f['exclusivity'], 2)}{_num_td(f['cross_r2'], 2)}"
        + (_num_td(f["ls_ratio"], 2) if standard else "")
        + f"{_num_td(f['frequency'], 2)}{_num_td(f['mean_act'])}{_num_td(f['s_max'])}"
        f"{_num_td(f.get('chat_share'), 2)}{_num_td(f.get('assistant_share'), 2)}"
        f'<td class="why">{e(verdict_reason(f, min_active))}</td>'
        f'<td class="snippet">{snippet}</td></tr>'
    )


def _examples_table(exs: list[dict[str, Any]], meta: dict[str, Any], n_top: int) -> str:
    rows = []
    tops = [x for x in exs if x["kind"] == "top"][:n_top]
    bands = [x for x in exs if x["kind"] == "band"]
    n_bands = int(meta.get("config", {}).get("quantile_bands", 4))
    for x in tops + bands:
        if x["kind"] == "top":
            label = f"top {int(x['order']) + 1}"
        else:
            lo = 100 * int(x["order"]) // n_bands
            hi = 100 * (int(x["order"]) + 1) // n_bands
            label = f"{lo}-{hi}% band"
        rows.append(
            f"<tr><td>{e(label)}</td>{_num_td(x['activation'])}"
            f"<td>{context_html(x.get('pre_a'), x.get('tok_a'), x.get('post_a'), short=False)}"
            f"</td><td>{context_html(x.get('pre_b'), x.get('tok_b'), x.get('post_b'), short=False)}"
            f'</td><td class="note">doc {e(x["doc_index"])}, window {e(x["window"])}, char '
            f"{e(x['content_end'])}, pos A {e(x['pos_a'])} / B {e(x['pos_b'])}</td></tr>"
        )
    if not rows:
        return '<p class="note">No examples (the feature never fired).</p>'
    return (
        "<table><thead><tr><th>example</th><th>activation</th><th>"
        + e(f"A: {_model_name(meta, 'a')}")
        + "</th><th>"
        + e(f"B: {_model_name(meta, 'b')}")
        + "</th><th>where</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _prompt_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, dict) and isinstance(prompt.get("prompt"), str):
        return prompt["prompt"]
    return json.dumps(prompt, ensure_ascii=False)


def steering_html(result: SteeringResult | Mapping[str, Any]) -> str:
    """The steering section of a feature: prompt x alpha, each model's generation side by side.

    ``result`` as :func:`crossdiff.steering.result.load_result` reads it (a saved file's
    mapping is read the same way, through :meth:`SteeringResult.from_dict`)."""
    from crossdiff.steering.result import SteeringResult

    if not isinstance(result, SteeringResult):
        result = SteeringResult.from_dict(dict(result))
    alphas, mode, models = result.alphas, result.mode, result.models
    head = "".join(
        f"<th>{e(('clamp x' if mode == 'clamp' else 'alpha ') + format(float(a), 'g'))}</th>"
        for a in alphas
    )
    rows = []
    for pi, prompt in enumerate(result.prompts):
        rows.append(
            f'<tr><td colspan="{len(alphas) + 1}"><b>prompt {pi + 1}:</b> '
            f'<span class="gen">{e(_prompt_text(prompt))}</span></td></tr>'
        )
        for mdl in models:
            gens = mdl.generations
            row = gens[pi] if pi < len(gens) else []
            cells = "".join(_gen_td(g, _cell(mdl, pi, ai)) for ai, g in enumerate(row))
            rows.append(f"<tr><td>{e(mdl.label)}</td>{cells}</tr>")
    rate_rows = []
    for mdl in models:
        if mdl.rates:
            cells = "".join(_num_td(r, 2) for r in mdl.rates)
            rate_rows.append(f"<tr><td>rate {e(mdl.model.upper())}</td>{cells}</tr>")
        rate_rows += _evidence_rows(mdl, len(alphas))
    notes = [*result.notes]
    for mdl in models:
        notes += [f"{mdl.model.upper()}: {n}" for n in mdl.notes]
    intro = (
        f"Mode {mode}, s_max {_fmt(result.s_max)} ({result.s_max_source}); "
        f"scorer {result.scorer or 'none'}."
    )
    return _steering_table(
        intro, "".join(_verdict_p(mdl) for mdl in models), head, rows + rate_rows, notes
    )


def _steering_table(intro: str, verdicts: str, head: str, rows: list[str], notes: list[str]) -> str:
    """The steering section's frame: intro, verdicts, the prompt x alpha table, notes."""
    return (
        f'<h3>Steering</h3><p class="note">{e(intro)}</p>'
        + verdicts
        + f"<table><thead><tr><th>model</th>{head}"
        "</tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
        + "".join(f'<p class="note">{e(n)}</p>' for n in notes)
    )


def _unreadable_steering_html(path: Path) -> str:
    """The steering section of a feature whose result file does not load: says so."""
    return _steering_table(
        f"Mode add, s_max {_fmt(None)} (); scorer none.",
        "",
        "",
        [],
        [f"{path.name} could not be read"],
    )


def _cell(mdl: ModelSteering, p: int, a: int) -> dict[str, Any] | None:
    """One generation's coherence measures ({loss, repetition, nonword, broken}) or None."""
    coh = mdl.coherence
    if not isinstance(coh, dict):
        return None
    out = {}
    for key in ("loss", "repetition", "nonword", "broken"):
        try:
            out[key] = coh[key][p][a]
        except (KeyError, IndexError, TypeError):
            return None
    return out


def _gen_td(text: str, cell: dict[str, Any] | None) -> str:
    """A generation cell, flagged when the coherence check calls it broken."""
    if cell is None:
        return f'<td class="gen">{e(text)}</td>'
    why = (
        f"loss {_fmt(cell['loss'])} nats/token, repetition {_fmt(cell['repetition'], 2)}, "
        f"non-words {_fmt(cell['nonword'], 2)}"
    )
    flag = "⚠ broken" if cell["broken"] else "coherent"
    color = "#b00" if cell["broken"] else "#080"
    return (
        f'<td class="gen" title="{e(why)}">{e(text)}'
        f'<br><small style="color:{color}">{e(flag)} · {e(why)}</small></td>'
    )


def _evidence_rows(mdl: ModelSteering, n: int) -> list[str]:
    """Effect with its 95% CI, the null band and coherence per alpha (when computed)."""
    ev = mdl.evidence
    if not isinstance(ev, dict):
        return []
    name = e(mdl.model.upper())

    def at(key: str, i: int) -> Any:
        vals = ev.get(key)
        return vals[i] if isinstance(vals, list) and i < len(vals) else None

    out = []
    if ev.get("effects") is not None:
        cells = "".join(
            f"<td>{e(_fmt(at('effects', i), 2))} [{e(_fmt(at('ci_low', i), 2))}, "
            f"{e(_fmt(at('ci_high', i), 2))}]</td>"
            for i in range(n)
        )
        out.append(f"<tr><td>effect {name} (95% CI)</td>{cells}</tr>")
    if ev.get("null_low") is not None:
        cells = "".join(
            f"<td>[{e(_fmt(at('null_low', i), 2))}, {e(_fmt(at('null_high', i), 2))}]</td>"
            for i in range(n)
        )
        out.append(f"<tr><td>null band {name}</td>{cells}</tr>")
    if ev.get("coherent") is not None:
        cells = "".join(f"<td>{'yes' if at('coherent', i) else '⚠ no'}</td>" for i in range(n))
        out.append(f"<tr><td>coherent {name}</td>{cells}</tr>")
    return out


def _verdict_p(mdl: ModelSteering) -> str:
    """The verdict line of one steered model (nothing for files without evidence)."""
    ev = mdl.evidence
    if not isinstance(ev, dict) or not ev.get("verdict"):
        return ""
    rng = ev.get("coherent_range")
    where = (
        f"coherent for alpha {_fmt(rng[0])} to {_fmt(rng[1])} "
        f"(largest |alpha| {_fmt(ev.get('max_coherent_alpha'))})"
        if rng
        else "no coherent alpha"
    )
    nulls = ev.get("null_features") or []
    beats = ev.get("beats_null_at") or []
    parts = [where, f"null: {len(nulls)} random feature(s) {', '.join(map(str, nulls))}".strip()]
    if beats:
        parts.append("beats the null at alpha " + ", ".join(_fmt(a) for a in beats))
    return (
        f"<p><b>Verdict {e(mdl.model.upper())}: {e(ev['verdict'])}</b> "
        f'<span class="note">({e("; ".join(parts))})</span></p>'
    )


def _steering_section(steering_dir: Path | None, feature: int) -> str:
    """The feature's steering section, read through the steering package's loader; "" when
    it was not steered, a note when its file does not load."""
    if steering_dir is None:
        return ""
    from crossdiff.steering.result import load_result, result_path

    try:
        result = load_result(steering_dir, feature)
    except CrossdiffError:
        return _unreadable_steering_html(result_path(steering_dir, feature))
    return "" if result is None else steering_html(result)


def _detail(
    result: AnalysisResult,
    f: dict[str, Any],
    exs: list[dict[str, Any]],
    steering: str,
    n_top: int,
) -> str:
    i = int(f["feature"])
    meta = result.meta
    standard = meta.get("crosscoder", {}).get("kind") != "dfc"
    stats = [
        ("partition", f["partition"]),
        ("class", f["klass"]),
        ("verdict", f["verdict"] or "–"),
        ("why", verdict_reason(f) or "–"),
        ("rank", _fmt(f["rank"])),
        ("exclusivity", _fmt(f["exclusivity"], 3)),
        (
            "cross-model R² (held out)",
            f"{_fmt(f['cross_r2'], 3)} over {_fmt(f['test_active'])} held-out activations "
            f"(its {'A' if f['check_side'] == 'a' else 'B'} part predicted from the other model)"
            if f["check_side"]
            else "–",
        ),
    ]
    if standard:
        stats.append(
            (
                "latent scaling",
                f"beta own {_fmt(f['ls_beta_own'])}, other {_fmt(f['ls_beta_other'])}, "
                f"ratio {_fmt(f['ls_ratio'])}",
            )
        )
    stats += [
        (
            "decoder norms",
            f"A {_fmt(f['dec_norm_a'])}, B {_fmt(f['dec_norm_b'])}, relative {_fmt(f['rel_norm'])}",
        ),
        ("frequency", f"{_fmt(f['frequency'])} ({_fmt(f['count'])} activations)"),
        (
            "activation",
            f"mean {_fmt(f['mean_act'])}, std {_fmt(f['std_act'])}, s_max {_fmt(f['s_max'])}",
        ),
    ]
    table = "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in stats)
    return (
        f'<section class="detail" id="f-{i}"><a class="back" href="#exclusive-'
        f'{e(str(f["klass"]).lower())}">close</a><h2>Feature {i}</h2>'
        f'<table class="summary">{table}</table><h3>Examples</h3>'
        + _examples_table(exs, meta, n_top)
        + steering
        + "</section>"
    )


def render_report(
    result: AnalysisResult,
    *,
    steering_dir: Path | None = None,
    max_features: int = DEFAULT_MAX_FEATURES,
    examples: int = DEFAULT_EXAMPLES,
) -> str:
    """The whole page as a string."""
    import pyarrow.compute as pc

    if max_features < 1 or examples < 1:
        raise CrossdiffError(
            f"max_features={max_features} and examples={examples} must be positive"
        )
    meta = result.meta
    lists = {m: _ranked(result, m.upper(), max_features, concepts=True) for m in ("a", "b")}
    flagged = {m: _ranked(result, m.upper(), max_features, concepts=False) for m in ("a", "b")}
    listed = sorted({int(f["feature"]) for fs in (*lists.values(), *flagged.values()) for f in fs})
    ex_table = result.examples.filter(pc.is_in(result.examples["feature"], pa_array(listed)))
    by_feature: dict[int, list[dict[str, Any]]] = {}
    for x in ex_table.to_pylist():
        by_feature.setdefault(int(x["feature"]), []).append(x)
    for xs in by_feature.values():
        xs.sort(key=lambda r: (r["kind"] != "top", r["order"], -r["activation"]))
    top_example = {i: xs[0] for i, xs in by_feature.items() if xs and xs[0]["kind"] == "top"}
    sections = [_summary(meta), _plot(result)]
    for m in ("a", "b"):
        sections.append(_feature_list(result, m, lists[m], top_example))
    for m in ("a", "b"):
        if flagged[m]:
            sections.append(_feature_list(result, m, flagged[m], top_example, flagged=True))
    from crossdiff.interpret import interpret_html

    sections.append(interpret_html(result.folder))
    from crossdiff.recurrence import recurrence_html

    sections.append(recurrence_html(result.folder))
    details = []
    for m in ("a", "b"):
        for f in lists[m] + flagged[m]:
            i = int(f["feature"])
            details.append(
                _detail(
                    result, f, by_feature.get(i, []), _steering_section(steering_dir, i), examples
                )
            )
    script = _template("report.js")
    css = _template("report.css")
    title = f"crossdiff: {_model_name(meta, 'a')} vs {_model_name(meta, 'b')}"
    created = meta.get("created", "")
    version = meta.get("versions", {}).get("crossdiff", "")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{e(_csp(script))}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{e(title)}</title><style>{css}</style></head><body>"
        f'<header><h1>{e(title)}</h1><p class="sub">Which concepts does one model represent '
        "that the other does not? Exclusive-feature candidates of a crosscoder, checked and "
        "ranked for review.</p></header><main>"
        + "".join(sections)
        + '<section id="details">'
        + "".join(details)
        + "</section>"
        + f"<footer>crossdiff {e(version)}, analysis of {e(created)}.</footer></main>"
        + f"<script>{script}</script></body></html>\n"
    )


def pa_array(values: list[int]):
    import pyarrow as pa

    return pa.array(values, type=pa.int64())


def build_report(
    run: str | Path,
    *,
    out: str | Path | None = None,
    max_features: int = DEFAULT_MAX_FEATURES,
    examples: int = DEFAULT_EXAMPLES,
) -> Path:
    """Write the report of run folder ``run`` (default ``RUN/report/index.html``); return its
    path. Needs ``crossdiff analyze RUN`` first; shows steering results found in RUN/steering/."""
    run = Path(run)
    if not run.is_dir():
        raise CrossdiffError(f"run folder {run} does not exist; check the path")
    paths = RunPaths(run)
    result = paths.load_analysis()
    html = render_report(
        result,
        steering_dir=paths.steering if paths.steering.is_dir() else None,
        max_features=max_features,
        examples=examples,
    )
    target = Path(out) if out is not None else paths.report
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name("." + target.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(target)
    return target
