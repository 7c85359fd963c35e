"""Steering evidence an auditor can trust: coherence, a random-feature null, and a verdict.

A push along a feature's direction often just breaks the model. Three things separate "the
feature moves the behaviour" from "any push this hard does something":

- **coherence** of every generation, offline: the *unsteered* model's mean per-token loss
  (negative log-likelihood, nats) of the steered continuation given the prompt (one forward
  pass of the same model without the steering hook), the share of repeated token 3-grams, and
  the share of non-words. A generation is **broken** when its loss exceeds the alpha-0 loss of
  the same prompt by more than ``LOSS_MARGIN`` nats/token, or its repetition exceeds
  ``MAX_REPETITION``, or its non-word rate exceeds ``MAX_NONWORD``. alpha = 0 generations are
  the model's own text and coherent by definition (they are the calibration). An alpha is
  coherent while fewer than ``MAX_BROKEN_SHARE`` of its prompts' generations are broken.
- **a null**: the same sweep with a few random alive features of the same class (A/B/S) from
  the analysis table (seeded), each pushed with the same added-vector norm as the feature at
  every alpha (coefficient ``alpha x s_max x |d| / |d_null|``);
- **effects**: per alpha, the mean behaviour score over prompts with a seeded bootstrap 95% CI
  over prompts; the null band is the envelope of the 95% CIs of the null features that are
  coherent at that alpha, [min of their lows, max of their highs], so "beats the null" means
  the confidence intervals are apart, not only the point effects. A null that breaks the model
  lowers any rate; that is breakage, not a behaviour a feature can be said to beat, so broken
  nulls are left out; and an alpha where fewer than ``MIN_NULL_COHERENT_SHARE`` of the nulls
  stay coherent has no band at all: pushes that large break most random features, and a
  feature's "effect" there cannot be told from a push that happens not to break the text
  (measured on the planted benchmark: a random control then "beat" a band made of the one
  null left coherent).

Verdict: "moves the behaviour beyond the null while coherent" when at some coherent non-zero
alpha the feature's CI lies entirely outside the null band; else "does not beat the null";
"no behaviour scorer" without a scorer, "no null" without null features.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from crossdiff.models import LoadedModel
    from crossdiff.steering.result import ModelSteering, SteeringResult

LOSS_MARGIN = 3.0
"""Nats/token above the same prompt's alpha-0 loss that mark a generation broken."""
MAX_REPETITION = 0.5
"""Share of repeated token 3-grams above which a generation is broken."""
MAX_NONWORD = 0.5
"""Share of non-words above which a generation is broken."""
MAX_BROKEN_SHARE = 0.5
"""An alpha is coherent while the share of its broken generations is below this."""
MIN_NULL_COHERENT_SHARE = 0.5
"""An alpha has a null band only where at least this share of the null features (and at
least one) stay coherent."""
NGRAM = 3
N_BOOT = 1000
LOSS_BATCH = 8

VERDICT_BEATS = "moves the behaviour beyond the null while coherent"
VERDICT_NULL = "does not beat the null"
VERDICT_NO_SCORER = "no behaviour scorer"
VERDICT_NO_NULL = "no null"
_VERDICT_ORDER = (VERDICT_BEATS, VERDICT_NULL, VERDICT_NO_NULL, VERDICT_NO_SCORER)


def coherence_rule() -> dict[str, Any]:
    """The thresholds, as saved in the steering JSON."""
    return {
        "loss": "unsteered model's mean NLL (nats/token) of the continuation given the prompt",
        "reference": "alpha 0 generation of the same prompt (coherent by definition)",
        "loss_margin": LOSS_MARGIN,
        "max_repetition": MAX_REPETITION,
        "ngram": NGRAM,
        "max_nonword": MAX_NONWORD,
        "max_broken_share": MAX_BROKEN_SHARE,
    }


# ---- per-generation measures ---------------------------------------------------------------
def repetition(tokens: Sequence[int], n: int = NGRAM) -> float:
    """Share of repeated n-grams: 1 - distinct / total (0 for fewer than n tokens)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


_STRIP = ".,;:!?\"'()[]{}<>«»“”‘’…*_`~#/\\|"
_PARTS = re.compile(r"[-'’]")


def _is_word(core: str) -> bool:
    parts = [p for p in _PARTS.split(core) if p]
    if not parts:
        return True
    for part in parts:
        if part.isdigit():
            continue
        if not part.isalpha():
            return False
        if not (part.islower() or part.isupper() or part.istitle()):
            return False  # mixed case inside a word: "TdDDDD"
        if len(part) > 2 and len(set(part.lower())) == 1:
            return False  # "DDDD"
    return True


def nonword_rate(text: str) -> float:
    """Share of whitespace-separated words (punctuation stripped) that are not word-like:
    letters in one case pattern (lower, UPPER, Title) or digits, joined by - or '."""
    words = [w.strip(_STRIP) for w in text.split()]
    words = [w for w in words if w]
    if not words:
        return 0.0
    return sum(not _is_word(w) for w in words) / len(words)


def _takes_logits_to_keep(lm: LoadedModel) -> bool:
    import inspect

    try:
        return "logits_to_keep" in inspect.signature(lm.model.forward).parameters
    except (TypeError, ValueError):
        return False


def continuation_loss(
    lm: LoadedModel,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    batch_size: int = LOSS_BATCH,
) -> list[float | None]:
    """Mean NLL per token of ``continuations[r]`` given ``prompts[r]`` under the unsteered model
    (None for an empty continuation). Right-padded batches, no steering hook."""
    out: list[float | None] = [None] * len(prompts)
    todo = [r for r in range(len(prompts)) if len(continuations[r]) > 0]
    pad = lm.tokenizer.pad_token_id
    pad = pad if isinstance(pad, int) else 0
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        seqs = [list(prompts[r]) + list(continuations[r]) for r in chunk]
        width = max(map(len, seqs))
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=lm.device)
        mask = torch.tensor(
            [[1] * len(s) + [0] * (width - len(s)) for s in seqs],
            device=lm.device,
            dtype=torch.long,
        )
        # only the positions that predict a continuation token go through the LM head (a
        # 262k-token vocabulary makes the full logits the costliest part of this pass)
        lo = min(len(prompts[r]) for r in chunk) - 1
        hi = max(len(prompts[r]) + len(continuations[r]) for r in chunk) - 1
        kw: dict[str, Any] = {}
        if _takes_logits_to_keep(lm):
            kw["logits_to_keep"] = torch.arange(lo, hi, device=lm.device)
        else:
            lo = 0
        with torch.no_grad():
            logits = lm.model(input_ids=ids, attention_mask=mask, use_cache=False, **kw).logits
        for k, r in enumerate(chunk):
            p, c = len(prompts[r]), len(continuations[r])
            rows = logits[k, p - 1 - lo : p + c - 1 - lo].float()
            target = torch.tensor(list(continuations[r]), device=rows.device)
            nll = -torch.log_softmax(rows, dim=-1).gather(1, target[:, None]).squeeze(1)
            out[r] = float(nll.mean())
    return out


def judge_broken(
    loss: float | None,
    reference: float | None,
    rep: float,
    nonword: float,
) -> bool:
    """The documented rule (module docstring)."""
    if loss is not None and reference is not None and loss > reference + LOSS_MARGIN:
        return True
    return rep > MAX_REPETITION or nonword > MAX_NONWORD


def coherence_grid(
    alphas: Sequence[float],
    losses: list[list[float | None]],
    reps: list[list[float]],
    nonwords: list[list[float]],
    reference: Sequence[float | None],
) -> dict[str, Any]:
    """``{"loss", "repetition", "nonword", "broken"}``, each ``[prompt][alpha]``."""
    broken = [
        [
            a != 0 and judge_broken(losses[p][i], reference[p], reps[p][i], nonwords[p][i])
            for i, a in enumerate(alphas)
        ]
        for p in range(len(losses))
    ]
    return {"loss": losses, "repetition": reps, "nonword": nonwords, "broken": broken}


def reference_losses(
    alphas: Sequence[float], losses: list[list[float | None]]
) -> list[float | None]:
    """Per prompt, the alpha-0 loss (without alpha 0: the lowest loss of the prompt's row)."""
    zero = [i for i, a in enumerate(alphas) if a == 0]
    out: list[float | None] = []
    for row in losses:
        if zero:
            out.append(row[zero[0]])
        else:
            vals = [v for v in row if v is not None]
            out.append(min(vals) if vals else None)
    return out


def measure(
    lm: LoadedModel,
    alphas: Sequence[float],
    prompt_seqs: Sequence[Sequence[int]],
    tokens: list[list[list[int]]],
    texts: list[list[str]],
    reference: Sequence[float | None] | None = None,
) -> tuple[dict[str, Any], list[float | None]]:
    """Coherence of ``tokens[prompt][alpha]`` (``texts`` the decoded ones). Returns the grid
    and the per-prompt reference losses it used (``reference`` given: a null sweep's)."""
    n_p, n_a = len(tokens), len(alphas)
    flat_p = [prompt_seqs[p] for p in range(n_p) for _ in range(n_a)]
    flat_c = [tokens[p][a] for p in range(n_p) for a in range(n_a)]
    flat = continuation_loss(lm, flat_p, flat_c)
    losses = [flat[p * n_a : (p + 1) * n_a] for p in range(n_p)]
    reps = [[repetition(tokens[p][a]) for a in range(n_a)] for p in range(n_p)]
    nws = [[nonword_rate(texts[p][a]) for a in range(n_a)] for p in range(n_p)]
    ref = list(reference) if reference is not None else reference_losses(alphas, losses)
    return coherence_grid(alphas, losses, reps, nws, ref), ref


def text_coherence(lm: LoadedModel, prompt_ids: Sequence[int], text: str) -> dict[str, Any]:
    """Loss, repetition and non-word rate of one continuation ``text`` (for checks by hand)."""
    ids = lm.tokenizer(text, add_special_tokens=False).input_ids
    loss = continuation_loss(lm, [prompt_ids], [ids])[0]
    return {"loss": loss, "repetition": repetition(ids), "nonword": nonword_rate(text)}


# ---- effects and the verdict ---------------------------------------------------------------
def bootstrap_ci(
    values: Sequence[float], *, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float] | None:
    """(mean, low, high): percentile bootstrap over the values (prompts); None when empty."""
    vals = np.asarray([v for v in values if v is not None], dtype=float)
    if vals.size == 0:
        return None
    mean = float(vals.mean())
    if vals.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, vals.size, size=(n_boot, vals.size))
    means = vals[idx].mean(axis=1)
    tail = (1.0 - level) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return mean, float(lo), float(hi)


def coherent_alphas(alphas: Sequence[float], broken: list[list[bool]]) -> list[bool]:
    n = len(broken)
    return [
        n == 0 or sum(bool(row[i]) for row in broken) / n < MAX_BROKEN_SHARE
        for i in range(len(alphas))
    ]


def coherent_range(alphas: Sequence[float], coherent: Sequence[bool]) -> list[float] | None:
    """[low, high]: the contiguous run of coherent alphas around alpha 0 (or the smallest |alpha|),
    None when that one is not coherent."""
    order = sorted(range(len(alphas)), key=lambda i: alphas[i])
    if not order:
        return None
    start = min(range(len(order)), key=lambda k: abs(alphas[order[k]]))
    if not coherent[order[start]]:
        return None
    lo = hi = start
    while lo > 0 and coherent[order[lo - 1]]:
        lo -= 1
    while hi < len(order) - 1 and coherent[order[hi + 1]]:
        hi += 1
    return [float(alphas[order[lo]]), float(alphas[order[hi]])]


def _effects(scores: list[list[float | None]] | None, n_alpha: int, seed: int):
    if scores is None:
        return None
    return [bootstrap_ci([row[a] for row in scores], seed=seed + a) for a in range(n_alpha)]


def evaluate(
    m: ModelSteering, alphas: Sequence[float], scorer: str | None, seed: int = 0
) -> dict[str, Any]:
    """The evidence dict of one steered model (needs ``m.coherence``; scores when scored)."""
    n_a = len(alphas)
    broken = (m.coherence or {}).get("broken") or []
    coherent = coherent_alphas(alphas, broken)
    rng = coherent_range(alphas, coherent)
    ev: dict[str, Any] = {
        "scorer": scorer,
        "coherent": coherent,
        "broken_share": [
            (sum(bool(row[i]) for row in broken) / len(broken)) if broken else None
            for i in range(n_a)
        ],
        "coherent_range": rng,
        "max_coherent_alpha": max(abs(rng[0]), abs(rng[1])) if rng else None,
        "effects": None,
        "ci_low": None,
        "ci_high": None,
        "null_features": [int(n["feature"]) for n in (m.nulls or [])],
        "null_effects": None,
        "null_coherent": None,
        "null_low": None,
        "null_high": None,
        "beats_null_at": [],
    }
    own = _effects(m.scores, n_a, seed)
    if own is None or scorer is None:
        ev["verdict"] = VERDICT_NO_SCORER
        return ev
    ev["effects"] = [c[0] if c else None for c in own]
    ev["ci_low"] = [c[1] if c else None for c in own]
    ev["ci_high"] = [c[2] if c else None for c in own]
    null_cis = [_effects(n.get("scores"), n_a, seed) or [None] * n_a for n in (m.nulls or [])]
    null_eff = [[c[0] if c else None for c in row] for row in null_cis]
    if not null_eff:
        ev["verdict"] = VERDICT_NO_NULL
        return ev
    # a null that breaks the model at an alpha moves any rate by breakage, not behaviour: the
    # band holds only the nulls that stay coherent there (by the feature's own rule)
    null_coh = []
    for n in m.nulls or []:
        nb = (n.get("coherence") or {}).get("broken")
        null_coh.append(coherent_alphas(alphas, nb) if nb else [True] * n_a)
    ev["null_effects"] = null_eff
    ev["null_coherent"] = null_coh
    lows: list[float | None] = []
    highs: list[float | None] = []
    need = max(1, math.ceil(MIN_NULL_COHERENT_SHARE * len(null_cis)))
    for a in range(n_a):
        cis = [row[a] for row, coh in zip(null_cis, null_coh) if row[a] is not None and coh[a]]
        enough = len(cis) >= need
        lows.append(min(c[1] for c in cis) if enough else None)
        highs.append(max(c[2] for c in cis) if enough else None)
    ev["null_low"], ev["null_high"] = lows, highs
    beats = []
    for a, alpha in enumerate(alphas):
        lo, hi, nlo, nhi = ev["ci_low"][a], ev["ci_high"][a], lows[a], highs[a]
        if alpha == 0 or not coherent[a] or None in (lo, hi, nlo, nhi):
            continue
        if lo > nhi or hi < nlo:
            beats.append(float(alpha))
    ev["beats_null_at"] = beats
    ev["verdict"] = VERDICT_BEATS if beats else VERDICT_NULL
    return ev


def evaluate_result(result: SteeringResult, seed: int = 0) -> SteeringResult:
    """Fill in every model's evidence and the result's verdict (in place)."""
    verdicts = []
    for m in result.models:
        if m.coherence is None:
            continue
        m.evidence = evaluate(m, result.alphas, result.scorer, seed)
        verdicts.append(m.evidence["verdict"])
    if verdicts:
        result.verdict = min(verdicts, key=_VERDICT_ORDER.index)
    return result


# ---- the null features and the default scorer ----------------------------------------------
def pick_nulls(run: Any, feature: int, n: int, seed: int = 0) -> tuple[list[int], str | None]:
    """``n`` random alive features of ``feature``'s class (analysis table), seeded by
    (seed, feature). Returns (features, a note when fewer could be drawn)."""
    if n <= 0:
        return [], None
    from crossdiff.analysis import load_analysis
    from crossdiff.errors import CrossdiffError

    try:
        table = load_analysis(run).features.to_pydict()
    except CrossdiffError:
        return [], "no analysis table (crossdiff analyze): no null features were steered"
    feats = [int(f) for f in table["feature"]]
    klass = dict(zip(feats, table["klass"]))
    dead = dict(zip(feats, table.get("dead") or [False] * len(feats)))
    s_max = dict(zip(feats, table.get("s_max") or [1.0] * len(feats)))
    if feature not in klass:
        return [], f"feature {feature} is not in the analysis table: no null features"
    pool = [
        f
        for f in feats
        if f != feature
        and klass[f] == klass[feature]
        and not dead[f]
        and s_max[f] is not None
        and s_max[f] > 0
    ]
    rng = np.random.default_rng([int(seed), int(feature)])
    k = min(n, len(pool))
    chosen = [pool[int(i)] for i in rng.choice(len(pool), size=k, replace=False)] if k else []
    note = None
    if k < n:
        note = f"only {k} alive features of class {klass[feature]} to draw nulls from"
    return chosen, note


def explanation_scorer(run: Any, feature: int, max_terms: int = 6):
    """A KeywordScorer from the feature's explanation's top terms (``crossdiff interpret``),
    or None when there is none. ``ctx:word`` and ``far:word`` terms count as the word."""
    from crossdiff.interpret import load_interpretations
    from crossdiff.interpret.results import has_interpretations
    from crossdiff.steering.scoring import KeywordScorer

    if not has_interpretations(run):
        return None
    try:
        row = load_interpretations(run).feature(feature)
    except Exception:  # an unreadable interpret folder must not stop steering
        return None
    if not row:
        return None
    words: list[str] = []
    for term in row.get("top_terms") or []:
        term = str(term).removeprefix("ctx:").removeprefix("far:").strip()
        if term and any(ch.isalnum() for ch in term) and term.lower() not in words:
            words.append(term.lower())
    return KeywordScorer(words[:max_terms]) if words else None
