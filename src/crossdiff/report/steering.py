"""A feature's steering section: prompt x alpha, each model's generation side by side, with
the coherence check, the effect against the random-feature null and the verdict.

It renders a :class:`~crossdiff.steering.result.SteeringResult` as the steering package's
loader reads it, never the raw JSON, so an old file and a new one read the same way; a file
that does not load shows as a note.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossdiff.errors import CrossdiffError
from crossdiff.report.html import e, fmt, num_td

if TYPE_CHECKING:
    from crossdiff.steering.result import ModelSteering, SteeringResult


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
            cells = "".join(num_td(r, 2) for r in mdl.rates)
            rate_rows.append(f"<tr><td>rate {e(mdl.model.upper())}</td>{cells}</tr>")
        rate_rows += _evidence_rows(mdl, len(alphas))
    notes = [*result.notes]
    for mdl in models:
        notes += [f"{mdl.model.upper()}: {n}" for n in mdl.notes]
    intro = (
        f"Mode {mode}, s_max {fmt(result.s_max)} ({result.s_max_source}); "
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
        f"Mode add, s_max {fmt(None)} (); scorer none.",
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
        f"loss {fmt(cell['loss'])} nats/token, repetition {fmt(cell['repetition'], 2)}, "
        f"non-words {fmt(cell['nonword'], 2)}"
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
            f"<td>{e(fmt(at('effects', i), 2))} [{e(fmt(at('ci_low', i), 2))}, "
            f"{e(fmt(at('ci_high', i), 2))}]</td>"
            for i in range(n)
        )
        out.append(f"<tr><td>effect {name} (95% CI)</td>{cells}</tr>")
    if ev.get("null_low") is not None:
        cells = "".join(
            f"<td>[{e(fmt(at('null_low', i), 2))}, {e(fmt(at('null_high', i), 2))}]</td>"
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
        f"coherent for alpha {fmt(rng[0])} to {fmt(rng[1])} "
        f"(largest |alpha| {fmt(ev.get('max_coherent_alpha'))})"
        if rng
        else "no coherent alpha"
    )
    nulls = ev.get("null_features") or []
    beats = ev.get("beats_null_at") or []
    parts = [where, f"null: {len(nulls)} random feature(s) {', '.join(map(str, nulls))}".strip()]
    if beats:
        parts.append("beats the null at alpha " + ", ".join(fmt(a) for a in beats))
    return (
        f"<p><b>Verdict {e(mdl.model.upper())}: {e(ev['verdict'])}</b> "
        f'<span class="note">({e("; ".join(parts))})</span></p>'
    )


def steering_section(steering_dir: Path | None, feature: int) -> str:
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
