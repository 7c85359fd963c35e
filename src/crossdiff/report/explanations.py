"""The explanations in the report and in ``crossdiff show``.

Each view returns nothing (an empty string or list) when the run has no explanations yet, so
the report and ``show`` can always call it. Explanations are model output: in HTML every
value goes through :func:`~crossdiff.report.html.e`; in the terminal, control characters are
made visible (:func:`crossdiff.textsafe.safe_text`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from crossdiff.interpret.results import has_interpretations, load_interpretations
from crossdiff.paths import RunPaths
from crossdiff.report.html import e, num_td
from crossdiff.textsafe import safe_text


def _ci(row: dict[str, Any], name: str) -> str:
    v, lo, hi = row[name], row[f"{name}_ci_low"], row[f"{name}_ci_high"]
    if v is None or not math.isfinite(v):
        return "–"
    return f"{v:.2f} [{lo:.2f}, {hi:.2f}] n={row[f'{name}_n']}"


def interpret_html(run: str | Path) -> str:
    """An HTML section listing every explained feature: a sortable, filterable table (the
    report's own script sorts ``table.sortable`` and filters ``.filter`` boxes), flagged
    features first. Empty string when there are no explanations."""
    root = RunPaths.containing(run).root
    if not has_interpretations(root):
        return ""
    res = load_interpretations(root)
    meta = res.meta
    body = []
    for k, r in enumerate(res.rows()):
        i = int(r["feature"])
        status = (
            "flagged"
            if r["harm_flagged"]
            else "interpretable"
            if r["interpretable"]
            else "uninterpretable"
        )
        link = f'<a href="#f-{i}">{i}</a>' if r["klass"] in ("A", "B") else str(i)
        det = r["detection"]
        body.append(
            f'<tr data-verdict="{e(status)}">{num_td(k + 1)}'
            f'<td class="num" data-v="{i}">{link}</td>'
            f'<td class="model-{e(r["side"])}">{e(r["klass"])}</td>'
            f'<td class="snippet">{e(r["explanation"])}'
            + (
                f'<br><span class="note">{e(", ".join(r["top_terms"]))}</span>'
                if r["top_terms"]
                else ""
            )
            + f'</td><td class="num" data-v="{e("" if not math.isfinite(det) else repr(det))}">'
            f"{e(_ci(r, 'detection'))}</td>"
            f"{num_td(r['auroc'], 2)}"
            f'<td class="num" data-v="{e(_v(r["fuzzing"]))}">{e(_ci(r, "fuzzing"))}</td>'
            f"<td>{e(', '.join(r['harm_categories']) or '–')}</td>"
            f'<td class="note">{e(r["parse_status"])}'
            + (f", {e(r['judge_unparsed'])} judge replies unparsed" if r["judge_unparsed"] else "")
            + "</td></tr>"
        )
    c = meta.get("counts", {})
    note = (
        f"{c.get('features', 0)} features explained by {meta.get('explainer')} and judged by "
        f"{meta.get('judge')} on held-out examples in the feature's own model's tokenization: "
        f"{c.get('interpretable', 0)} interpretable (detection ≥ "
        f"{meta.get('interpretable_at', 0.8)}), {c.get('flagged', 0)} flagged by the harm "
        "screen (listed first). Detection: held-out activating vs non-activating tokens; "
        "fuzzing: the right marked token vs a wrongly marked one; balanced accuracy with a "
        "Wilson 95% interval over n answered examples."
    )
    return (
        '<section id="interpret"><h2>Explanations</h2>'
        f'<p class="note">{e(note)}</p>'
        '<div class="filter" data-table="list-interpret">'
        '<input type="search" placeholder="filter by text or number" aria-label="filter">'
        '<select aria-label="status"><option value="">any</option>'
        '<option value="flagged">flagged</option><option value="interpretable">interpretable'
        '</option><option value="uninterpretable">not interpretable</option></select>'
        '<span class="count"></span></div>'
        '<table class="sortable" id="list-interpret"><thead><tr><th>review</th>'
        "<th>feature</th><th>class</th><th>explanation</th><th>detection</th><th>AUROC</th>"
        "<th>fuzzing</th><th>harm screen</th><th>status</th></tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table></section>"
    )


def _v(x: Any) -> str:
    return "" if x is None or not math.isfinite(x) else repr(float(x))


def interpret_lines(run: str | Path, feature: int) -> list[str]:
    """Lines for ``crossdiff show`` (indented like its other lines); [] when the feature was
    not explained."""
    root = RunPaths.containing(run).root
    if not has_interpretations(root):
        return []
    row = load_interpretations(root).feature(int(feature))
    if row is None:
        return []
    text, status = safe_text(row["explanation"]) or "-", safe_text(row["parse_status"])
    lines = [f"  explanation    {text}  ({status})"]
    if row["top_terms"]:
        lines.append(f"  top terms      {safe_text(', '.join(row['top_terms']))}")
    hard = row.get("detection_hard_n")  # absent in folders written before hard negatives
    lines.append(
        f"  scores         detection {_ci(row, 'detection')}"
        + (f" ({hard} hard negatives)" if hard else "")
        + f"  fuzzing {_ci(row, 'fuzzing')}  "
        f"-> {'interpretable' if row['interpretable'] else 'not interpretable'}"
    )
    lines.append(
        "  harm screen    "
        + (
            f"FLAGGED: {', '.join(row['harm_categories'])}"
            if row["harm_flagged"]
            else f"nothing flagged ({safe_text(row['harm_status'])})"
        )
        + f"  [{row['explainer']} / {row['judge']}]"
    )
    return lines
