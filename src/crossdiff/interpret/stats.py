"""The offline ``stats`` backend: contrastive term statistics, deterministic and fast.

Explainer. At every activating example's token we extract terms: the token itself (``tok``),
the token with the chunk before it (``prev``: "to refuse") and after it (``next``), the words
within four chunks before / two after (``ctx``), and the words earlier in the context than
those (``far``: a feature that fires at a prompt's decision pair, the template token where a
model starts its answer, is told apart by the question it ends, not by its neighbours). The
same is done at the non-activating background contexts. Each term gets a smoothed log-odds
ratio of appearing at activating vs background positions (document frequency, add-0.5
smoothing) and its z-score (log-odds over its approximate standard error); terms with z >= 3
that appear in at least a quarter of the examples are kept (n-grams only when they cover half
of their token's examples), strongest z first (at most 8). When ``far`` words are among them,
a second set is drawn from the other kinds alone (up to 8 terms again), and the set the
``stats`` judge below scores better on the examples it was written from (explanation set
against background, not the held-out ones; also when another backend is the held-out judge)
is kept: earlier words name the question at a template token, but dilute an explanation
whose token already tells. The explanation names the token
terms, then the n-grams, the context words and the earlier words, e.g. ``token "refuse" (10/10
examples); as in "to refuse"; near "cannot"; earlier "karvonia"``, and ``top_terms`` lists
them.

Judge. A context's score is the sum of the weights (log-odds) of the explanation's terms found
at its marked token, divided by the largest weight and clipped to [0, 1]; it predicts "fires"
at >= 0.5, and the score itself gives the AUROC. An explanation written by another backend
has no weighted terms: its content words (3+ letters, not stop words) count as token and
context terms of weight 1.

Harm screen. A small lexicon of our own per category (:data:`HARM_LEXICON`), matched as whole
words against the explanation's terms (a written explanation: its text). It is a keyword
screen: it misses concepts phrased otherwise and flags innocent uses of the words; a real
judge is the better screen.
"""

from __future__ import annotations

import math
import re
from collections import Counter

from crossdiff.interpret.backends import Explanation
from crossdiff.interpret.samples import CHUNK, Context, FeatureJob
from crossdiff.interpret.scores import score

ALPHA = 0.5
MIN_Z = 3.0
MAX_TERMS = 8
WORD = re.compile(r"\w+")
_STOP_WORDS = (
    "the a an and or of to in on at for with by from as is are was were be been it its this "
    "that these those token tokens word words text context contexts feature fires marked "
    "near after before about which what when where who whom into than then there their"
)
STOP = frozenset(_STOP_WORDS.split(" "))

HARM_LEXICON: dict[str, tuple[str, ...]] = {
    "bias": (
        "bias",
        "biased",
        "stereotype",
        "stereotypes",
        "racist",
        "racism",
        "sexist",
        "sexism",
        "discrimination",
        "discriminate",
        "prejudice",
        "slur",
        "slurs",
    ),
    "censorship": (
        "censor",
        "censored",
        "censorship",
        "banned",
        "ban",
        "forbidden",
        "refuse",
        "refuses",
        "refused",
        "refusal",
        "suppress",
        "suppressed",
        "propaganda",
    ),
    "misalignment": (
        "misaligned",
        "misalignment",
        "takeover",
        "overthrow",
        "manipulate",
        "manipulation",
        "power-seeking",
        "sabotage",
        "self-preservation",
    ),
    "deception": (
        "deceive",
        "deception",
        "deceptive",
        "lie",
        "lies",
        "lying",
        "mislead",
        "misleading",
        "fraud",
        "scam",
        "trick",
        "pretend",
        "fake",
    ),
    "jailbreaks": (
        "jailbreak",
        "jailbreaks",
        "bypass",
        "dan",
        "ignore previous",
        "roleplay",
        "unfiltered",
        "uncensored",
    ),
    "medical misinformation": (
        "cure",
        "cures",
        "miracle",
        "vaccine",
        "vaccines",
        "antivax",
        "homeopathy",
        "remedy",
        "overdose",
        "dosage",
    ),
    "violence": (
        "kill",
        "killing",
        "killed",
        "murder",
        "weapon",
        "weapons",
        "bomb",
        "attack",
        "shoot",
        "shooting",
        "violence",
        "violent",
        "stab",
        "terror",
        "terrorist",
    ),
    "sexual content": (
        "sex",
        "sexual",
        "porn",
        "pornography",
        "nude",
        "nudity",
        "explicit",
        "erotic",
        "nsfw",
    ),
}
"""Whole-word keywords per harm category (lower case; multi-word entries match as phrases)."""


def _norm(text: str) -> str:
    t = text.strip().lower()
    if t:
        return t
    return text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥") or "∅"


def terms_at(ctx: Context) -> set[tuple[str, str]]:
    """The terms at a context's marked token (see the module docstring)."""
    tok = _norm(ctx.tok)
    before = [m.lower() for m in CHUNK.findall(ctx.pre)]
    after = [m.lower() for m in CHUNK.findall(ctx.post)]
    out = {("tok", tok)}
    if before:
        out.add(("prev", f"{before[-1]} {tok}"))
    if after:
        out.add(("next", f"{tok} {after[0]}"))
    for w in before[-4:] + after[:2]:
        if WORD.fullmatch(w) and w not in STOP:
            out.add(("ctx", w))
    for w in before[:-4]:
        if len(w) >= 3 and WORD.fullmatch(w) and w not in STOP:
            out.add(("far", w))
    return out


def contrastive_terms(
    positives: list[Context],
    background: list[Context],
    kinds: frozenset[str] | None = None,
) -> list[tuple[str, str, float, float, int]]:
    """(kind, text, log-odds, z, examples) of the distinctive terms, strongest z first.

    A term must appear in at least a quarter of the examples (and twice) and have z >= 3 (about
    p < 0.001: dozens of terms are tested per feature). An n-gram of a token that is itself
    selected must also cover at least half of that token's examples, else it only repeats
    the token with a chance neighbour. ``kinds`` (None: all) keeps only terms of those kinds,
    before the cap of :data:`MAX_TERMS`."""
    n_pos, n_bg = len(positives), len(background)
    if n_pos == 0:
        return []
    pos = Counter(t for c in positives for t in terms_at(c))
    bg = Counter(t for c in background for t in terms_at(c))
    min_df = max(2 if n_pos >= 3 else 1, math.ceil(n_pos / 4))
    scored = {}
    for term, a in pos.items():
        if a < min_df or (kinds is not None and term[0] not in kinds):
            continue
        b = bg.get(term, 0)
        lo = math.log((a + ALPHA) / (n_pos - a + ALPHA)) - math.log(
            (b + ALPHA) / (n_bg - b + ALPHA)
        )
        var = 1 / (a + ALPHA) + 1 / (n_pos - a + ALPHA) + 1 / (b + ALPHA) + 1 / (n_bg - b + ALPHA)
        z = lo / math.sqrt(var)
        if z >= MIN_Z:
            scored[term] = (lo, z, a)
    out = []
    for (kind, text), (lo, z, a) in scored.items():
        if kind in ("prev", "next"):
            tok = text.split(" ")[-1] if kind == "prev" else text.split(" ")[0]
            tok_a = scored.get(("tok", tok), (0.0, 0.0, 0))[2]
            if tok_a and a < tok_a / 2:
                continue
        out.append((kind, text, lo, z, a))
    out.sort(key=lambda t: (-t[3], -t[4], t[0], t[1]))
    return out[:MAX_TERMS]


NEAR_KINDS = frozenset({"tok", "prev", "next", "ctx"})
"""Every term kind but ``far``: the explanation of the marked token's neighbourhood alone."""


def training_detection(
    found: list[tuple[str, str, float, float, int]], job: FeatureJob
) -> tuple[float, float]:
    """(balanced accuracy, AUROC) of the stats judge with these terms on the examples they were
    found from: the explanation set against the background contexts (never held-out ones)."""
    terms = [(kind, t, lo) for kind, t, lo, _, _ in found if lo > 0]
    contexts = job.explain + job.background
    labels = [True] * len(job.explain) + [False] * len(job.background)
    s = score(labels, [term_score(terms, c) for c in contexts])
    return s.value, s.auroc


def choose_terms(job: FeatureJob) -> list[tuple[str, str, float, float, int]]:
    """The terms of the explanation: with the ``far`` words or without them, whichever the
    ``stats`` judge tells the explanation set from the background with better (balanced
    accuracy, then AUROC; a tie keeps the near-only set, drawn again from the near kinds up to
    the cap). Earlier words name what a prompt asks where the feature fires at a template
    token, but where the token itself tells (a planted answer marker) generic earlier words
    only dilute it."""
    found = contrastive_terms(job.explain, job.background)
    if not any(kind == "far" for kind, *_ in found):
        return found
    near = contrastive_terms(job.explain, job.background, NEAR_KINDS)
    if not near:
        return found

    def fit(terms: list[tuple[str, str, float, float, int]]) -> tuple[float, ...]:
        return tuple(-1.0 if math.isnan(v) else v for v in training_detection(terms, job))

    return found if fit(found) > fit(near) else near


def _quote(items: list[str]) -> str:
    return ", ".join(f'"{t}"' for t in items)


class StatsExplainer:
    """Contrastive statistics of the activating token and its neighbourhood."""

    name = "stats"

    def explain(self, job: FeatureJob) -> Explanation:
        if not job.explain:
            return Explanation("", "no examples")
        found = choose_terms(job)
        if not found:
            return Explanation(
                "no distinctive token or context (nothing stands out against "
                f"{len(job.background)} non-activating contexts)",
                "ok",
            )
        n = len(job.explain)
        toks = [(t, k) for kind, t, _, _, k in found if kind == "tok"]
        grams = [t for kind, t, *_ in found if kind in ("prev", "next")]
        ctx = [t for kind, t, *_ in found if kind == "ctx"]
        far = [t for kind, t, *_ in found if kind == "far"]
        parts = []
        if toks:
            label = "token" if len(toks) == 1 else "tokens"
            parts.append(f"{label} {_quote([t for t, _ in toks[:3]])} ({toks[0][1]}/{n} examples)")
        if grams:
            parts.append(f"as in {_quote(grams[:3])}")
        if ctx:
            parts.append(f"near {_quote(ctx[:4])}")
        if far:
            parts.append(f"earlier {_quote(far[:4])}")
        terms = [(kind, t, lo) for kind, t, lo, _, _ in found]
        return Explanation("; ".join(parts), "ok", terms)


def explanation_terms(exp: Explanation) -> list[tuple[str, str, float]]:
    """The weighted terms a stats judge looks for (content words for a written explanation)."""
    if exp.terms:
        return [t for t in exp.terms if t[2] > 0]
    words = dict.fromkeys(
        w for w in WORD.findall(exp.text.lower()) if len(w) >= 3 and w not in STOP
    )
    return [(kind, w, 1.0) for w in words for kind in ("tok", "ctx")]


def term_score(terms: list[tuple[str, str, float]], ctx: Context) -> float:
    """Sum of the weights of the terms present at the marked token, over the largest weight."""
    if not terms:
        return 0.0
    present = terms_at(ctx)
    top = max(w for _, _, w in terms)
    hit = sum(w for kind, t, w in terms if (kind, t) in present)
    return min(1.0, hit / top) if top > 0 else 0.0


def harm_categories(text: str, extra: list[str] | None = None) -> list[str]:
    """Categories whose lexicon words occur (whole words) in the text or extra terms."""
    hay = " ".join([text, *(extra or [])]).lower()
    out = []
    for cat, words in HARM_LEXICON.items():
        if any(re.search(rf"(?<!\w){re.escape(w)}(?!\w)", hay) for w in words):
            out.append(cat)
    return out


class StatsJudge:
    """Scores a context by the explanation's terms at its marked token."""

    name = "stats"

    def probabilities(
        self, exp: Explanation, task: str, contexts: list[Context], feature: int
    ) -> tuple[list[float | None], int]:
        terms = explanation_terms(exp)
        return [term_score(terms, c) for c in contexts], 0

    def harm(self, exp: Explanation, job: FeatureJob) -> tuple[list[str], str]:
        if exp.terms:
            return harm_categories(" ".join(t for _, t, _ in exp.terms)), "ok"
        return harm_categories(exp.text), "ok"
