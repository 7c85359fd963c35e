"""What each feature's explanation is written from and scored on.

Per feature (a :class:`FeatureJob`), all text in **the feature's own model's tokenization**
(A-exclusive: model A's rendering ``*_a``; B-exclusive: ``*_b``; shared: A's):

- ``explain``: activating examples the explanation is written from: the analysis's top and
  quantile-band examples, taken alternately (top 1, 3, 5, ...; every other example of each
  band), at most ``explain_examples``;
- ``held_out``: the other activating examples (never shown to the explainer), at most
  ``score_examples``;
- ``negatives``: as many *non-activating* contexts, for detection;
- ``background``: more non-activating contexts, the contrast of the ``stats`` explainer
  (disjoint from ``negatives``, so detection is scored on contexts it never saw).

Non-activating contexts. The analysis keeps only activating examples, so we draw
``pool_rows`` random store rows once (seeded), read their activations, encode them with the
crosscoder and keep, per feature, the rows where that feature is exactly zero (and that are
not among its examples); each context is cut from the store's documents around that row's
token, the same way the analysis cuts its examples. Without a crosscoder folder (or its
weights) the rows are only "not among the feature's examples", which is wrong with
probability about the feature's frequency; ``interpret.json`` says which was used.

Hard negatives (``negatives``: ``hard`` or ``mixed``). Against random tokens almost any
token-level feature is easy to detect, so a *hard* negative is a non-activating context whose
marked token (in the feature's own model, compared by :func:`token_key`) is the token of one
of the feature's held-out examples while the feature is exactly 0 there: the judge has to use
the context, not the token. The store's rows (up to ``search_rows``) are scanned once for the
tokens of every selected feature's examples; of each such token a seeded sample of
:data:`OVERDRAW` times the silent occurrences any feature asks for (at most
:data:`SAME_TOKEN_MAX`) is encoded with the crosscoder (:class:`SameToken`). Each held-out
example (``mixed``: every other one) gets a silent occurrence of its own token; where none is
left (a token the feature fires on every time) a random negative takes its place, and
``FeatureJob.hard_n`` counts the hard ones. The ``stats`` explainer's background then holds
up to :data:`BACKGROUND_HARD` further silent occurrences of the explanation examples' tokens
(in proportion to their share of the examples; never a detection negative) and random
contexts up to :data:`BACKGROUND`: a token term survives only where the token is distinctive
against its own silent occurrences too, and the context terms that separate firing from
silent occurrences come forward. A feature that fires on every occurrence of its tokens has
no same-token contexts and keeps the random contrast.

Contexts are trimmed to ``context_chars`` characters before the token and a third of that
after it.

Size: the example sets of one job (top, quantile bands, random and same-token negatives,
held-out splits) are drawn from one pass over the store and must stay disjoint, so they
are drawn together.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crossdiff.errors import CrossdiffError
from crossdiff.textsafe import safe_text

MARK_OPEN, MARK_CLOSE = "<<", ">>"
CHUNK = re.compile(r"\w+|[^\w\s]")
BACKGROUND = 200
"""Non-activating contexts in the stats explainer's contrast (besides detection's negatives)."""
BACKGROUND_HARD = BACKGROUND // 2
"""At most this many of them are same-token contexts (``negatives``: ``hard``/``mixed``)."""
OVERDRAW = 2
"""Occurrences of a token encoded per silent one a feature asks for (some of them fire)."""
SAME_TOKEN_MAX = 256
"""At most this many occurrences of one token are encoded (a seeded sample)."""


@dataclass(frozen=True)
class Context:
    """One token in its context: the text before it, the token, the text after it."""

    pre: str
    tok: str
    post: str
    activation: float = 0.0
    row: int = -1

    def marked(self) -> str:
        """The context with its token marked <<like this>> (control characters made visible)."""
        pre, tok, post = safe_text(self.pre), safe_text(self.tok), safe_text(self.post)
        return f"{pre}{MARK_OPEN}{tok}{MARK_CLOSE}{post}"

    def trimmed(self, before: int) -> Context:
        after = max(1, before // 3)
        return Context(self.pre[-before:], self.tok, self.post[:after], self.activation, self.row)


@dataclass
class FeatureJob:
    """Everything needed to explain and score one feature."""

    feature: int
    klass: str
    rank: int
    verdict: str
    side: str
    frequency: float
    explain: list[Context] = field(default_factory=list)
    held_out: list[Context] = field(default_factory=list)
    negatives: list[Context] = field(default_factory=list)
    background: list[Context] = field(default_factory=list)
    hard_n: int = 0
    """How many of ``negatives`` are hard (same token, feature silent)."""
    hard_wanted: int = 0
    """How many hard negatives were asked for (the rest, up to this, are random fill)."""
    background_hard_n: int = 0
    """How many of ``background`` are same-token contexts."""

    @property
    def max_activation(self) -> float:
        acts = [c.activation for c in self.explain + self.held_out]
        return max(acts) if acts else 0.0


def feature_rng(seed: int, feature: int, purpose: str) -> np.random.Generator:
    """A generator for one (feature, purpose), independent of processing order."""
    digest = hashlib.sha256(f"{seed}|{feature}|{purpose}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def decoy(ctx: Context, rng: np.random.Generator) -> Context | None:
    """The same context with another chunk (a word or a punctuation mark) marked instead of the
    token: the analysis keeps the token's span but not its neighbours' token boundaries, so the
    decoy is cut at word level. None when the context has no other chunk."""
    target = ctx.tok.strip().lower()
    options: list[tuple[str, int, int]] = []
    for where, text in (("pre", ctx.pre), ("post", ctx.post)):
        for m in CHUNK.finditer(text):
            if m.group(0).lower() != target:
                options.append((where, m.start(), m.end()))
    if not options:
        return None
    where, s, e = options[int(rng.integers(len(options)))]
    if where == "pre":
        return Context(ctx.pre[:s], ctx.pre[s:e], ctx.pre[e:] + ctx.tok + ctx.post, 0.0, ctx.row)
    return Context(ctx.pre + ctx.tok + ctx.post[:s], ctx.post[s:e], ctx.post[e:], 0.0, ctx.row)


# ---- feature selection -----------------------------------------------------------------------
def select_features(features: Any, config: Any) -> list[dict[str, Any]]:
    """The features to explain: explicit ``features``, else the first ``max_features``
    reviewable (ranked) candidates of each model in ranking order, then ``shared`` alive,
    not near-dead shared features (a seeded sample, in index order)."""
    table = features.to_pydict()
    n = len(table["feature"])
    rows = [{k: table[k][i] for k in table} for i in range(n)]
    if config.features is not None:
        bad = [f for f in config.features if not 0 <= f < n]
        if bad:
            raise CrossdiffError(
                f"features {bad} out of range: the crosscoder has {n} features (0-{n - 1})"
            )
        return [rows[f] for f in dict.fromkeys(config.features)]
    out: list[dict[str, Any]] = []
    for klass in ("A", "B"):
        ranked = sorted(
            (r for r in rows if r["klass"] == klass and r["rank"]), key=lambda r: r["rank"]
        )
        out += ranked[: config.max_features]
    shared = [r for r in rows if r["klass"] == "S" and not r["dead"] and not r["near_dead"]]
    if shared and config.shared:
        rng = np.random.default_rng(config.seed)
        pick = rng.choice(len(shared), size=min(config.shared, len(shared)), replace=False)
        out += [shared[i] for i in sorted(pick)]
    return out


def side_of(klass: str) -> str:
    """Whose tokenization a feature is shown in: B for B-exclusive, A otherwise."""
    return "b" if klass == "B" else "a"


# ---- the non-activating pool -----------------------------------------------------------------
@dataclass
class Pool:
    """Random store rows, their contexts per model, and which features fire on each."""

    rows: np.ndarray
    contexts: dict[str, list[Context]]
    active: list[frozenset[int]] | None
    source: str

    def negatives_for(
        self, feature: int, exclude: set[int], k: int, seed: int, side: str
    ) -> list[int]:
        """Indices into the pool: up to k rows where ``feature`` does not fire (and whose token
        in model ``side`` has text), in a seeded order of its own per feature."""
        order = feature_rng(seed, feature, "pool").permutation(len(self.rows))
        out = []
        for j in order:
            if int(self.rows[j]) in exclude:
                continue
            if self.active is not None and feature in self.active[j]:
                continue
            if not self.contexts[side][j].tok.strip():
                continue
            out.append(int(j))
            if len(out) >= k:
                break
        return out


def _empty_pool(source: str) -> Pool:
    return Pool(np.zeros(0, np.int64), {"a": [], "b": []}, None, source)


def load_crosscoder(run: Path) -> tuple[Any | None, str]:
    """The run's crosscoder in eval mode, or None and the pool's description of why not."""
    from crossdiff.crosscoder.model import CONFIG_FILE
    from crossdiff.paths import RunPaths

    paths = RunPaths(run)
    if not (paths.crosscoder / CONFIG_FILE).is_file():
        return None, "random rows not among the feature's examples (no crosscoder to check them)"
    try:
        return paths.load_crosscoder().eval(), ""
    except (OSError, ValueError) as error:
        return None, f"random rows not among the feature's examples (crosscoder: {error})"


def encode_active(cc: Any, store: Any, rows: np.ndarray) -> list[frozenset[int]]:
    """The features that fire at each of the sorted store rows ``rows``."""
    import torch

    from crossdiff.analysis.encoding import encode_batch

    if len(rows) == 0:
        return []
    x_a, x_b = store.rows_at(rows)
    active: list[set[int]] = [set() for _ in range(len(rows))]
    with torch.no_grad():
        for s in range(0, len(rows), 512):
            xa = cc.normalize(x_a[s : s + 512].float(), "a")
            xb = cc.normalize(x_b[s : s + 512].float(), "b")
            enc = encode_batch(cc, xa, xb)
            for r, f in zip(enc.rows.tolist(), enc.feats.tolist()):
                active[s + r].add(f)
    return [frozenset(a) for a in active]


def build_pool(
    store: Any, n_rows: int, seed: int, before: int, after: int, cc: Any, why: str = ""
) -> Pool:
    """Draw the pool (see the module docstring); ``cc`` None: no crosscoder (``why``)."""
    from crossdiff.analysis.examples import cut_contexts, lookup_rows

    total = store.n_rows
    if total == 0:
        return _empty_pool("empty store")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(total, size=min(n_rows, total), replace=False)).astype(np.int64)
    prov = lookup_rows(store, rows)
    ctx = cut_contexts(store, prov, np.ones(len(rows), dtype=bool), before, after)
    contexts = {
        m: [
            Context(
                ctx[f"pre_{m}"][j] or "",
                ctx[f"tok_{m}"][j] or "",
                ctx[f"post_{m}"][j] or "",
                0.0,
                int(rows[j]),
            )
            for j in range(len(rows))
        ]
        for m in ("a", "b")
    }
    if cc is None:
        return Pool(rows, contexts, None, why)
    active = encode_active(cc, store, rows)
    return Pool(rows, contexts, active, "random store rows where the crosscoder says it is 0")


# ---- same-token contexts (hard negatives) ----------------------------------------------------
def token_key(text: str) -> str:
    """How tokens are compared for hard negatives: stripped and lower-cased, as the stats
    backend compares them (a whitespace-only token as it is)."""
    return text.strip().lower() or text


@dataclass
class SameToken:
    """Occurrences of the wanted tokens in the store, encoded: the candidate hard negatives."""

    contexts: dict[tuple[str, str], list[Context]]
    """(side, token key) -> a seeded sample of the token's occurrences (rows in ``row``)."""
    active: dict[int, frozenset[int]]
    """Store row -> the features that fire there, for every sampled occurrence."""
    searched: int
    """Store rows searched."""
    occurrences: int
    """Occurrences of the wanted tokens found in them (before sampling)."""

    def silent(
        self, feature: int, side: str, key: str, exclude: set[int], seed: int
    ) -> list[Context]:
        """The sampled occurrences of ``key`` where ``feature`` is 0 (and that are not in
        ``exclude``), in a seeded order of its own per feature."""
        cands = self.contexts.get((side, key), [])
        order = feature_rng(seed, feature, f"hard|{side}|{key}").permutation(len(cands))
        return [
            cands[j]
            for j in order
            if cands[j].row not in exclude and feature not in self.active[cands[j].row]
        ]


def build_same_token(
    store: Any,
    cc: Any,
    demand: dict[tuple[str, str], int],
    limit: int,
    seed: int,
    before: int,
    after: int,
) -> SameToken:
    """Scan the store's rows (all, or a seeded sample of ``limit``) for the tokens of
    ``demand`` ((side, token key) -> occurrences wanted), keep a seeded sample of that many
    occurrences of each, cut their contexts as the analysis cuts its examples, and encode
    them."""
    from crossdiff.analysis.examples import cut_context, iter_documents, lookup_rows

    total = store.n_rows
    if limit and total > limit:
        pick = feature_rng(seed, -1, "search").choice(total, size=limit, replace=False)
        rows = np.sort(pick).astype(np.int64)
    else:
        rows = np.arange(total, dtype=np.int64)
    wanted: dict[str, set[str]] = {}
    for m, key in demand:
        wanted.setdefault(m, set()).add(key)
    if not len(rows) or not wanted:
        return SameToken({}, {}, len(rows), 0)
    prov = lookup_rows(store, rows)
    docs = prov["doc_index"].tolist()
    windows_of = prov["window"].tolist()
    starts = {m: prov[f"span_{m}"][:, 0].tolist() for m in wanted}
    ends = {m: prov[f"span_{m}"][:, 1].tolist() for m in wanted}
    found: dict[tuple[str, str], list[tuple[int, str]]] = {}  # (row index, window text)
    j, n = 0, len(rows)  # rows are in corpus order: by document, window, position
    for record in iter_documents(store, sorted(set(docs))):
        d = int(record["index"])
        windows = record.get("windows") or []
        while j < n and docs[j] == d:
            w = windows_of[j]
            if 0 <= w < len(windows):
                for m, keys in wanted.items():
                    text = windows[w].get(m, {}).get("text", "")
                    tok = cut_context(text, (starts[m][j], ends[m][j]), 0, 0)[1]
                    if tok and token_key(tok) in keys:
                        found.setdefault((m, token_key(tok)), []).append((j, text))
            j += 1
    contexts: dict[tuple[str, str], list[Context]] = {}
    for (m, key), occ in found.items():
        k = demand[(m, key)]
        if len(occ) > k:
            pick = feature_rng(seed, -1, f"same-token|{m}|{key}").choice(
                len(occ), size=k, replace=False
            )
            occ = [occ[i] for i in sorted(pick)]
        contexts[(m, key)] = [
            Context(*cut_context(text, prov[f"span_{m}"][i], before, after), 0.0, int(rows[i]))
            for i, text in occ
        ]
    encode = np.array(sorted({c.row for occ in contexts.values() for c in occ}), dtype=np.int64)
    active = dict(zip(encode.tolist(), encode_active(cc, store, encode)))
    return SameToken(contexts, active, len(rows), sum(len(o) for o in found.values()))


@dataclass
class Negatives:
    """One feature's detection negatives and stats background."""

    negatives: list[Context]
    background: list[Context]
    hard_n: int = 0
    hard_wanted: int = 0
    background_hard_n: int = 0


def _asked(n: int, mode: str) -> list[int]:
    """The held-out examples that get a hard negative: all (hard), every other one (mixed)."""
    return list(range(n)) if mode == "hard" else list(range(0, n, 2)) if mode == "mixed" else []


def _background_quota(explain: list[Context]) -> dict[str, int]:
    """Same-token contexts wanted in the background per token: :data:`BACKGROUND_HARD` shared
    in proportion to the token's share of the explanation examples."""
    counts = Counter(token_key(c.tok) for c in explain)
    return {k: math.ceil(BACKGROUND_HARD * v / len(explain)) for k, v in counts.items()}


def token_demand(explain: list[Context], held: list[Context], mode: str) -> Counter[str]:
    """Occurrences of each token to encode for one feature: :data:`OVERDRAW` per silent one
    it asks for (its asked held-out examples' and its background's), at most
    :data:`SAME_TOKEN_MAX`."""
    need: Counter[str] = Counter(token_key(held[p].tok) for p in _asked(len(held), mode))
    need.update(_background_quota(explain))
    return Counter({k: min(SAME_TOKEN_MAX, OVERDRAW * v) for k, v in need.items()})


def choose_negatives(
    feature: int,
    side: str,
    explain: list[Context],
    held: list[Context],
    exclude: set[int],
    pool: Pool,
    same: SameToken | None,
    mode: str,
    seed: int,
) -> Negatives:
    """Detection negatives (one per held-out example) and the background (module docstring).

    ``random``: the pool's first rows in the feature's seeded order, then the background (the
    selection of every version before hard negatives). ``hard``/``mixed``: each asked
    held-out example (:func:`_asked`) gets a silent occurrence of its own token where one is
    left; the others, and those that found none, get random ones from the pool. The
    background takes further silent occurrences of the explanation examples' tokens
    (:func:`_background_quota`), then random contexts up to :data:`BACKGROUND`."""
    n = len(held)
    if mode == "random":
        picks = pool.negatives_for(feature, exclude, n + BACKGROUND, seed, side)
        return Negatives(
            [pool.contexts[side][j] for j in picks[:n]],
            [pool.contexts[side][j] for j in picks[n:]],
        )
    ask = _asked(n, mode)
    quota = _background_quota(explain)
    keys = {token_key(held[p].tok) for p in ask} | set(quota)
    silent = {k: iter(same.silent(feature, side, k, exclude, seed) if same else []) for k in keys}
    hard = {p: c for p in ask if (c := next(silent[token_key(held[p].tok)], None)) is not None}
    bg_hard: list[Context] = []
    for k in sorted(quota, key=lambda k: (-quota[k], k)):
        bg_hard += [c for _, c in zip(range(quota[k]), silent[k])]
    bg_hard = bg_hard[:BACKGROUND_HARD]
    taken = exclude | {c.row for c in hard.values()} | {c.row for c in bg_hard}
    n_random = n - len(hard)
    picks = pool.negatives_for(feature, taken, n_random + BACKGROUND - len(bg_hard), seed, side)
    randoms = iter([pool.contexts[side][j] for j in picks[:n_random]])
    negatives = [c for c in (hard.get(p) or next(randoms, None) for p in range(n)) if c]
    background = bg_hard + [pool.contexts[side][j] for j in picks[n_random:]]
    return Negatives(negatives, background, len(hard), len(ask), len(bg_hard))


# ---- jobs ------------------------------------------------------------------------------------
def _example_context(x: dict[str, Any], m: str) -> Context | None:
    if x.get(f"tok_{m}") is None:
        return None
    return Context(
        x.get(f"pre_{m}") or "",
        x[f"tok_{m}"],
        x.get(f"post_{m}") or "",
        float(x["activation"]),
        int(x["row"]),
    )


def fill_contexts(examples: list[dict[str, Any]], store: Any, before: int, after: int) -> None:
    """Cut the texts the analysis did not copy (shared features by default) from the store."""
    from crossdiff.analysis.examples import CONTEXT_COLUMNS, cut_contexts

    missing = [x for x in examples if x.get("tok_a") is None]
    if not missing or store is None:
        return
    prov = {
        "doc_index": np.array([x["doc_index"] for x in missing], dtype=np.int64),
        "window": np.array([x["window"] for x in missing], dtype=np.int64),
        "span_a": np.array([[x["span_a_start"], x["span_a_end"]] for x in missing]),
        "span_b": np.array([[x["span_b_start"], x["span_b_end"]] for x in missing]),
    }
    ctx = cut_contexts(store, prov, np.ones(len(missing), dtype=bool), before, after)
    for j, x in enumerate(missing):
        for c in CONTEXT_COLUMNS:
            x[c] = ctx[c][j]


def split_examples(
    examples: list[dict[str, Any]], m: str, n_explain: int, n_score: int
) -> tuple[list[Context], list[Context]]:
    """Alternate each kind's examples (top by rank, each band in order) between the explanation
    and the held-out set, so both see strong and typical activations."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for x in examples:
        key = ("top", 0) if x["kind"] == "top" else ("band", int(x["order"]))
        groups.setdefault(key, []).append(x)
    explain: list[Context] = []
    held: list[Context] = []
    # tops first (the explainer's strongest evidence), then the bands from strongest down
    keys = sorted(groups, key=lambda k: (k[0] != "top", -k[1]))
    for key in keys:
        xs = sorted(
            groups[key],
            key=lambda r: (
                (r["order"], -r["activation"]) if key[0] == "top" else (-r["activation"], r["row"])
            ),
        )
        for i, x in enumerate(xs):
            c = _example_context(x, m)
            if c is None:
                continue
            (explain if i % 2 == 0 else held).append(c)
    return explain[:n_explain], held[:n_score]


def build_jobs(
    run: Path, result: Any, config: Any, log: Any = print
) -> tuple[list[FeatureJob], dict[str, Any]]:
    """One job per selected feature, and notes on how the samples were made."""
    from crossdiff.paths import RunPaths

    chosen = select_features(result.features, config)
    cfg = result.meta.get("config", {})
    before, after = int(cfg.get("context_before", 240)), int(cfg.get("context_after", 80))
    paths = RunPaths(run)
    store = paths.open_store() if paths.has_store() else None
    by_feature = _examples_by_feature(result, chosen, store, before, after)
    mode = config.negatives
    need_cc = store is not None and (config.pool_rows > 0 or mode != "random")
    cc, why = load_crosscoder(run) if need_cc else (None, "")
    if store is not None and config.pool_rows:
        pool = build_pool(store, config.pool_rows, config.seed, before, after, cc, why)
    else:
        pool = _empty_pool("none (no store next to the analysis, or pool_rows=0)")
    splits = []
    for f in chosen:
        i = int(f["feature"])
        m = side_of(str(f["klass"]))
        exs = by_feature.get(i, [])
        explain, held = split_examples(exs, m, config.explain_examples, config.score_examples)
        splits.append((f, i, m, explain, held, {int(x["row"]) for x in exs}))
    same, hard_notes = None, {}
    if mode != "random":
        if store is None or cc is None:
            hard_notes = {"unavailable": "no store and crosscoder to find silent same-token rows"}
        else:
            same, hard_notes = _same_token_rows(store, cc, splits, config, before, after)
    jobs = []
    for f, i, m, explain, held, exclude in splits:
        neg = choose_negatives(i, m, explain, held, exclude, pool, same, mode, config.seed)
        jobs.append(_job(f, i, m, explain, held, neg, config.context_chars))
    notes = {
        "non_activating": pool.source,
        "pool_rows": len(pool.rows),
        "store": str(paths.store) if store is not None else None,
        "negatives": mode,
    }
    if mode != "random":
        hard_notes.update(
            wanted=sum(j.hard_wanted for j in jobs),
            used=sum(j.hard_n for j in jobs),
            features_all_hard=sum(j.hard_n == j.hard_wanted > 0 for j in jobs),
            features_no_hard=sum(j.hard_n == 0 for j in jobs),
            background_hard=sum(j.background_hard_n for j in jobs),
        )
        notes["hard"] = hard_notes
    return jobs, notes


def _examples_by_feature(
    result: Any, chosen: list[dict[str, Any]], store: Any, before: int, after: int
) -> dict[int, list[dict[str, Any]]]:
    """The analysis's examples of the chosen features, by feature, with their contexts filled
    from the store where the analysis kept none: a step because every sample is cut from them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    wanted = pa.array([int(f["feature"]) for f in chosen], type=pa.int64())
    ex_table = result.examples.filter(pc.is_in(result.examples["feature"], wanted))
    by_feature: dict[int, list[dict[str, Any]]] = {}
    for x in ex_table.to_pylist():
        by_feature.setdefault(int(x["feature"]), []).append(x)
    all_examples = [x for xs in by_feature.values() for x in xs]
    fill_contexts(all_examples, store, before, after)
    return by_feature


def _same_token_rows(
    store: Any, cc: Any, splits: list[tuple], config: Any, before: int, after: int
) -> tuple[SameToken, dict[str, Any]]:
    """The silent same-token rows for the hard negatives (every job's demand of each token,
    found in one search of the store), and notes on the search: a step because it is the one
    part of sampling that encodes store rows."""
    demand: dict[tuple[str, str], int] = {}
    for _, _, m, explain, held, _ in splits:
        for k, v in token_demand(explain, held, config.negatives).items():
            demand[(m, k)] = max(v, demand.get((m, k), 0))
    same = build_same_token(store, cc, demand, config.search_rows, config.seed, before, after)
    return same, {
        "searched_rows": same.searched,
        "tokens": len(demand),
        "occurrences": same.occurrences,
        "encoded_rows": len(same.active),
    }


def _job(
    f: dict[str, Any],
    i: int,
    m: str,
    explain: list[Context],
    held: list[Context],
    neg: Negatives,
    trim: int,
) -> FeatureJob:
    """One feature's job: its samples trimmed to ``context_chars`` (the prompts' budget)."""
    return FeatureJob(
        feature=i,
        klass=str(f["klass"]),
        rank=int(f["rank"] or 0),
        verdict=str(f["verdict"] or ""),
        side=m,
        frequency=float(f["frequency"]),
        explain=[c.trimmed(trim) for c in explain],
        held_out=[c.trimmed(trim) for c in held],
        negatives=[c.trimmed(trim) for c in neg.negatives],
        background=[c.trimmed(trim) for c in neg.background],
        hard_n=neg.hard_n,
        hard_wanted=neg.hard_wanted,
        background_hard_n=neg.background_hard_n,
    )
