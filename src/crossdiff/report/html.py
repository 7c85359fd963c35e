"""The escaping and formatting every section of the report shares.

Corpus text and model output are hostile input: every value reaches the page through
:func:`e` (:func:`html.escape`, quotes included), so a section builds its markup from escaped
pieces only. Numbers in sortable tables carry their exact value in ``data-v`` (what the page's
script sorts by) beside the rounded text a reader sees.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

import numpy as np

SNIPPET_BEFORE = 70
"""Characters of context before the token in a list's snippet (the detail view shows all)."""
SNIPPET_AFTER = 30
"""Characters of context after the token in a list's snippet."""


def e(value: Any) -> str:
    """Escape anything for HTML text or attribute values."""
    return escape("" if value is None else str(value), quote=True)


def fmt(x: Any, digits: int = 3) -> str:
    """A number for the page: '–' when missing or not finite, large integers with commas,
    others to ``digits`` significant digits."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if isinstance(x, (int, np.integer)) or (float(x).is_integer() and abs(float(x)) >= 1000):
        return f"{int(x):,}"
    return f"{float(x):.{digits}g}"


def num_td(x: Any, digits: int = 3) -> str:
    """A numeric table cell: the value to sort by in ``data-v``, :func:`fmt`'s text shown."""
    v = "" if x is None or (isinstance(x, float) and not math.isfinite(x)) else repr(float(x))
    return f'<td class="num" data-v="{e(v)}">{e(fmt(x, digits))}</td>'


def pct(value: object) -> str:
    """A share as a percentage, '—' when unknown."""
    try:
        return f"{100 * float(value):.0f}%"  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "—"


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


def model_name(meta: dict[str, Any], m: str) -> str:
    """Model ``m``'s name as analysis.json records it (its id, else its spec, else A/B)."""
    info = meta.get("models", {}).get(m, {})
    return str(info.get("model_id") or info.get("spec") or m.upper())
