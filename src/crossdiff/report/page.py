"""The page itself: the sections in order, the inlined CSS and script, the Content Security
Policy, and the atomic write to ``RUN/report/index.html``.

The CSP allows only *this* page's own script, by its SHA-256, so even a bug in the escaping
could not run injected script; CSS and JS come from ``report/templates/`` and are inlined, so
the page fetches nothing.
"""

from __future__ import annotations

import base64
import hashlib
from importlib import resources
from pathlib import Path
from typing import Any

from crossdiff.analysis.results import AnalysisResult
from crossdiff.errors import CrossdiffError
from crossdiff.paths import RunPaths
from crossdiff.report.detail import detail_html
from crossdiff.report.explanations import interpret_html
from crossdiff.report.html import e, model_name
from crossdiff.report.lists import feature_list_html, ranked
from crossdiff.report.steering import steering_section
from crossdiff.report.summary import plot_html, summary_html

DEFAULT_MAX_FEATURES = 300
"""Features listed per model (concept candidates; the flagged ones have a list of their own)."""
DEFAULT_EXAMPLES = 10
"""Top examples per feature in its detail view."""


def _template(name: str) -> str:
    return resources.files("crossdiff.report").joinpath("templates", name).read_text("utf-8")


def _csp(script: str) -> str:
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    return (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'"
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
    lists = {m: ranked(result, m.upper(), max_features, concepts=True) for m in ("a", "b")}
    flagged = {m: ranked(result, m.upper(), max_features, concepts=False) for m in ("a", "b")}
    listed = sorted({int(f["feature"]) for fs in (*lists.values(), *flagged.values()) for f in fs})
    ex_table = result.examples.filter(pc.is_in(result.examples["feature"], pa_array(listed)))
    by_feature: dict[int, list[dict[str, Any]]] = {}
    for x in ex_table.to_pylist():
        by_feature.setdefault(int(x["feature"]), []).append(x)
    for xs in by_feature.values():
        xs.sort(key=lambda r: (r["kind"] != "top", r["order"], -r["activation"]))
    top_example = {i: xs[0] for i, xs in by_feature.items() if xs and xs[0]["kind"] == "top"}
    sections = [summary_html(meta), plot_html(result)]
    for m in ("a", "b"):
        sections.append(feature_list_html(result, m, lists[m], top_example))
    for m in ("a", "b"):
        if flagged[m]:
            sections.append(feature_list_html(result, m, flagged[m], top_example, flagged=True))
    sections.append(interpret_html(result.folder))
    from crossdiff.recurrence import recurrence_html

    sections.append(recurrence_html(result.folder))
    details = []
    for m in ("a", "b"):
        for f in lists[m] + flagged[m]:
            i = int(f["feature"])
            details.append(
                detail_html(
                    result, f, by_feature.get(i, []), steering_section(steering_dir, i), examples
                )
            )
    script = _template("report.js")
    css = _template("report.css")
    title = f"crossdiff: {model_name(meta, 'a')} vs {model_name(meta, 'b')}"
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
    """``values`` as an int64 pyarrow array (the type of the examples' feature column)."""
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
