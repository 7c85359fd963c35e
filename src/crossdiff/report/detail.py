"""A feature's detail view (``#f-<index>``): its statistics, its top and quantile-band
examples in both models' own renderings, and the steering section the page hands in.

The view is shown by CSS ``:target``, so a link to ``#f-<index>`` opens it without script.
"""

from __future__ import annotations

from typing import Any

from crossdiff.analysis.ranking import verdict_reason
from crossdiff.analysis.results import AnalysisResult
from crossdiff.report.html import context_html, e, fmt, model_name, num_td


def _examples_table(exs: list[dict[str, Any]], meta: dict[str, Any], n_top: int) -> str:
    """The examples table: the first ``n_top`` top examples, then one per quantile band."""
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
            f"<tr><td>{e(label)}</td>{num_td(x['activation'])}"
            f"<td>{context_html(x.get('pre_a'), x.get('tok_a'), x.get('post_a'), short=False)}"
            f"</td><td>{context_html(x.get('pre_b'), x.get('tok_b'), x.get('post_b'), short=False)}"
            f'</td><td class="note">doc {e(x["doc_index"])}, window {e(x["window"])}, char '
            f"{e(x['content_end'])}, pos A {e(x['pos_a'])} / B {e(x['pos_b'])}</td></tr>"
        )
    if not rows:
        return '<p class="note">No examples (the feature never fired).</p>'
    return (
        "<table><thead><tr><th>example</th><th>activation</th><th>"
        + e(f"A: {model_name(meta, 'a')}")
        + "</th><th>"
        + e(f"B: {model_name(meta, 'b')}")
        + "</th><th>where</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def detail_html(
    result: AnalysisResult,
    f: dict[str, Any],
    exs: list[dict[str, Any]],
    steering: str,
    n_top: int,
) -> str:
    """Feature ``f``'s detail view with its examples ``exs`` (at most ``n_top`` top ones)
    and its rendered ``steering`` section ("" when it was not steered)."""
    i = int(f["feature"])
    meta = result.meta
    standard = meta.get("crosscoder", {}).get("kind") != "dfc"
    stats = [
        ("partition", f["partition"]),
        ("class", f["klass"]),
        ("verdict", f["verdict"] or "–"),
        ("why", verdict_reason(f) or "–"),
        ("rank", fmt(f["rank"])),
        ("exclusivity", fmt(f["exclusivity"], 3)),
        (
            "cross-model R² (held out)",
            f"{fmt(f['cross_r2'], 3)} over {fmt(f['test_active'])} held-out activations "
            f"(its {'A' if f['check_side'] == 'a' else 'B'} part predicted from the other model)"
            if f["check_side"]
            else "–",
        ),
    ]
    if standard:
        stats.append(
            (
                "latent scaling",
                f"beta own {fmt(f['ls_beta_own'])}, other {fmt(f['ls_beta_other'])}, "
                f"ratio {fmt(f['ls_ratio'])}",
            )
        )
    stats += [
        (
            "decoder norms",
            f"A {fmt(f['dec_norm_a'])}, B {fmt(f['dec_norm_b'])}, relative {fmt(f['rel_norm'])}",
        ),
        ("frequency", f"{fmt(f['frequency'])} ({fmt(f['count'])} activations)"),
        (
            "activation",
            f"mean {fmt(f['mean_act'])}, std {fmt(f['std_act'])}, s_max {fmt(f['s_max'])}",
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
