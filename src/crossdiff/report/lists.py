"""The report's lists: per model, its exclusive candidates in review order, one row each.

Two lists per model: the concept candidates (confirmed, or too rare to judge) and, after them,
the flagged ones (tokenizer artifacts, twins, refuted), so the reviewer reads the likely
concepts first. The page's script sorts and filters these tables; a row links to the
feature's detail view.
"""

from __future__ import annotations

from typing import Any

from crossdiff.analysis.ranking import CONCEPT_VERDICTS, verdict_reason
from crossdiff.analysis.results import AnalysisResult
from crossdiff.report.html import context_html, e, model_name, num_td, pct


def ranked(
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


def feature_list_html(
    result: AnalysisResult,
    m: str,
    feats: list[dict[str, Any]],
    top_example: dict[int, Any],
    flagged: bool = False,
) -> str:
    """Model ``m``'s list of ``feats`` (concept candidates, or the flagged ones), each row
    with its strongest example from ``top_example``."""
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
        + e(pct(where.get("chat_rows_share")))
        + ' of pairs)">in chats</th><th title="of its activation in chats, the share in '
        "assistant messages (store: "
        + e(pct(where.get("assistant_rows_share_of_chat")))
        + ')">assistant</th>'
        + "<th>why</th><th>strongest example ("
        + e(model_name(result.meta, m))
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
            f"{e(model_name(result.meta, m))}"
        )
        intro = (
            "Tokenizer artifacts (the features fire where the two tokenizers split a word "
            "differently), twins (an exclusive feature of the other model fires on the same "
            "rows: a shared concept split in two) and candidates the other model predicts. "
            "Kept for completeness, ranked after the concept candidates, not steered by "
            "<code>crossdiff run</code>."
        )
    else:
        title = f"Exclusive to {m.upper()}: {e(model_name(result.meta, m))}"
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
        f'<tr data-verdict="{e(f["verdict"])}">{num_td(f["rank"])}'
        f'<td class="num" data-v="{i}"><a href="#f-{i}">{i}</a></td>'
        f'<td class="verdict-{e(f["verdict"])}">{e(f["verdict"])}</td>'
        f"{num_td(f['exclusivity'], 2)}{num_td(f['cross_r2'], 2)}"
        + (num_td(f["ls_ratio"], 2) if standard else "")
        + f"{num_td(f['frequency'], 2)}{num_td(f['mean_act'])}{num_td(f['s_max'])}"
        f"{num_td(f.get('chat_share'), 2)}{num_td(f.get('assistant_share'), 2)}"
        f'<td class="why">{e(verdict_reason(f, min_active))}</td>'
        f'<td class="snippet">{snippet}</td></tr>'
    )
