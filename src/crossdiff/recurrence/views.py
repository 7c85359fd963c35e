"""Where rediscovery shows: a feature-table column, a report section, ``show`` lines, a summary.

Each view reads ``RUN/recurrence`` (written by ``crossdiff compare``) and returns None / "" /
[] when it is absent or stale (the reference was retrained since), so callers can wire them in
unconditionally: a run without members looks exactly as before.
"""

from __future__ import annotations

import math
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from crossdiff.recurrence.comparison import RecurrenceResult, load_recurrence


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _f(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{float(x):.{digits}f}"


def recurrence_column(run: str | Path) -> np.ndarray | None:
    """(F,) int32 per feature index of the reference: how many other crosscoders found it
    again, -1 where unknown (shared features, or no recurrence results: then None)."""
    res = load_recurrence(run)
    if res is None:
        return None
    out = np.full(int(res.meta["n_features"]), -1, dtype=np.int32)
    feats = np.asarray(res.table["feature"].to_pylist(), dtype=np.int64)
    out[feats] = np.asarray(res.table["recurs"].to_pylist(), dtype=np.int32)
    return out


def recurrence_counts(res: RecurrenceResult, klass: str) -> dict[str, int]:
    """For one model's block: exclusive features, alive ones, and alive ones found again in
    all N others / in at least N - 1 (the paper's "5 of 5" and "4 of 5" counts N + 1 runs)."""
    n = int(res.meta["n_others"])
    rows = [
        r
        for r in res.table.select(["klass", "active", "recurs"]).to_pylist()
        if r["klass"] == klass
    ]
    alive = [r for r in rows if r["active"] > 0]
    return {
        "features": len(rows),
        "alive": len(alive),
        "all": sum(r["recurs"] >= n for r in alive),
        "all_but_one": sum(r["recurs"] >= max(n - 1, 1) for r in alive),
        "none": sum(r["recurs"] == 0 for r in alive),
        "n_others": n,
    }


def recurrence_summary(run: str | Path) -> str | None:
    """One line for the run summary, or None without (current) results, e.g.
    'rediscovery over 4 other crosscoders: A 12 of 50 alive exclusive features in all 4
    (20 in >= 3), B ...'."""
    res = load_recurrence(run)
    if res is None:
        return None
    n = int(res.meta["n_others"])
    parts = []
    for k in ("A", "B"):
        c = recurrence_counts(res, k)
        if c["features"]:
            extra = f" ({c['all_but_one']} in >= {n - 1})" if n > 1 else ""
            parts.append(
                f"{k} {c['all']} of {c['alive']} alive exclusive features in all {n}" + extra
            )
    return f"rediscovery over {n} other crosscoders: " + "; ".join(parts)


def recurrence_lines(run: str | Path, feature: int) -> list[str]:
    """Lines for ``crossdiff show`` (indented like its others); [] when there are no current
    results or the feature is not an exclusive feature of the reference."""
    res = load_recurrence(run)
    if res is None:
        return []
    row = res.row(int(feature))
    if row is None:
        return []
    names = [m["name"] for m in res.meta["members"]]
    lines = [
        f"  rediscovery    found again in {row['recurs']} of {row['n_others']} other "
        f"crosscoders (decoder cosine and activation correlation on "
        f"{res.meta['rows']['used']:,} held-out rows)"
    ]
    for j, name in enumerate(names):
        idx = row["matched"][j]
        if idx >= 0:
            lines.append(
                f"    {name}: #{idx}  cosine {_f(row['cosine'][j])}  r {_f(row['correlation'][j])}"
            )
        else:
            lines.append(
                f"    {name}: no match (best cosine {_f(row['best_cosine'][j])}, best r "
                f"{_f(row['best_correlation'][j])})"
            )
    return lines


def recurrence_html(run: str | Path) -> str:
    """A small report section: the members, the matching rule, and per model how many alive
    exclusive features were found again in k of N others. "" without current results."""
    res = load_recurrence(run)
    if res is None:
        return ""
    meta = res.meta
    n = int(meta["n_others"])
    cfg = meta.get("config") or {}
    members = ", ".join(
        f"{m['name']} (seed {m['seed']}, {100 * float(m['exclusive']):g}% exclusive)"
        for m in meta["members"]
    )
    ref = meta["reference"]
    rule = {"both": "and", "either": "or"}.get(cfg.get("rule"), cfg.get("rule"))
    note = (
        f"The reference crosscoder (seed {ref['seed']}, {100 * float(ref['exclusive']):g}% "
        f"exclusive) against {n} others trained on the same store: {members}. Two features "
        f"match when their decoder rows into their own model have cosine ≥ "
        f"{cfg.get('min_cosine')} {rule} their activations on {meta['rows']['used']:,} "
        f"held-out rows correlate ≥ {cfg.get('min_correlation')}, one to one "
        f"({meta.get('one_to_one')}). A feature found again across seeds and fractions is "
        "less likely an accident of one training run."
    )
    head = "".join(f"<th>{_e(j)} of {n}</th>" for j in range(n, -1, -1))
    body = []
    for k in ("A", "B"):
        rows = [
            r
            for r in res.table.select(["klass", "active", "recurs"]).to_pylist()
            if r["klass"] == k and r["active"] > 0
        ]
        if not any(r["klass"] == k for r in res.table.select(["klass"]).to_pylist()):
            continue
        cells = "".join(
            f'<td class="num">{_e(sum(r["recurs"] == j for r in rows))}</td>'
            for j in range(n, -1, -1)
        )
        body.append(
            f'<tr><td class="model-{_e(k.lower())}">{_e(k)}-exclusive</td>'
            f'<td class="num">{_e(len(rows))}</td>{cells}</tr>'
        )
    return (
        '<section id="recurrence"><h2>Rediscovery across crosscoders</h2>'
        f'<p class="note">{_e(note)}</p>'
        "<table><thead><tr><th>block</th><th>alive</th>"
        + head
        + "</tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table></section>"
    )
