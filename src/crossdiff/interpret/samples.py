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

Contexts are trimmed to ``context_chars`` characters before the token and a third of that
after it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crossdiff.errors import CrossdiffError

MARK_OPEN, MARK_CLOSE = "<<", ">>"
CHUNK = re.compile(r"\w+|[^\w\s]")
BACKGROUND = 200


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
        from crossdiff.analysis.show import safe_text

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


def _read_rows(store: Any, rows: np.ndarray) -> tuple[Any, Any]:
    """x_a, x_b (bf16) of sorted store rows, one slice per row (safetensors reads just them)."""
    import torch
    from safetensors import safe_open

    shards = store.manifest.shards
    ends = np.cumsum([s.rows for s in shards])
    xa, xb = [], []
    shard_of = np.searchsorted(ends, rows, side="right")
    for k in np.unique(shard_of):
        start = int(ends[k] - shards[k].rows)
        with safe_open(str(store.path / shards[k].file), framework="pt") as fh:
            sa, sb = fh.get_slice("x_a"), fh.get_slice("x_b")
            for r in rows[shard_of == k]:
                local = int(r) - start
                xa.append(sa[local : local + 1])
                xb.append(sb[local : local + 1])
    return torch.cat(xa), torch.cat(xb)


def build_pool(run: Path, store: Any, n_rows: int, seed: int, before: int, after: int) -> Pool:
    """Draw the pool (see the module docstring)."""
    from crossdiff.analysis.examples import cut_contexts, lookup_rows

    total = store.n_rows
    if total == 0:
        return Pool(np.zeros(0, np.int64), {"a": [], "b": []}, None, "empty store")
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
    active, source = _encode_pool(run, store, rows)
    return Pool(rows, contexts, active, source)


def _encode_pool(
    run: Path, store: Any, rows: np.ndarray
) -> tuple[list[frozenset[int]] | None, str]:
    from crossdiff.paths import RunPaths

    folder = RunPaths(run).crosscoder
    from crossdiff.crosscoder.model import CONFIG_FILE

    if not (folder / CONFIG_FILE).is_file():
        return None, "random rows not among the feature's examples (no crosscoder to check them)"
    import torch

    from crossdiff.analysis.encoding import encode_batch
    from crossdiff.crosscoder import Crosscoder

    try:
        cc = Crosscoder.from_pretrained(folder).eval()
    except (OSError, ValueError) as error:
        return None, f"random rows not among the feature's examples (crosscoder: {error})"
    x_a, x_b = _read_rows(store, rows)
    active: list[set[int]] = [set() for _ in range(len(rows))]
    with torch.no_grad():
        for s in range(0, len(rows), 512):
            xa = cc.normalize(x_a[s : s + 512].float(), "a")
            xb = cc.normalize(x_b[s : s + 512].float(), "b")
            enc = encode_batch(cc, xa, xb)
            for r, f in zip(enc.rows.tolist(), enc.feats.tolist()):
                active[s + r].add(f)
    return [frozenset(a) for a in active], "random store rows where the crosscoder says it is 0"


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
    import pyarrow as pa
    import pyarrow.compute as pc

    from crossdiff.paths import RunPaths
    from crossdiff.store.manifest import MANIFEST_NAME

    chosen = select_features(result.features, config)
    cfg = result.meta.get("config", {})
    before, after = int(cfg.get("context_before", 240)), int(cfg.get("context_after", 80))
    store = None
    store_path = RunPaths(run).store
    if (store_path / MANIFEST_NAME).is_file():
        from crossdiff.store import ActivationStore

        store = ActivationStore.open(store_path)
    wanted = pa.array([int(f["feature"]) for f in chosen], type=pa.int64())
    ex_table = result.examples.filter(pc.is_in(result.examples["feature"], wanted))
    by_feature: dict[int, list[dict[str, Any]]] = {}
    for x in ex_table.to_pylist():
        by_feature.setdefault(int(x["feature"]), []).append(x)
    all_examples = [x for xs in by_feature.values() for x in xs]
    fill_contexts(all_examples, store, before, after)
    if store is not None and config.pool_rows:
        pool = build_pool(run, store, config.pool_rows, config.seed, before, after)
    else:
        pool = Pool(
            np.zeros(0, np.int64),
            {"a": [], "b": []},
            None,
            "none (no store next to the analysis, or pool_rows=0)",
        )
    jobs = []
    for f in chosen:
        i = int(f["feature"])
        m = side_of(str(f["klass"]))
        exs = by_feature.get(i, [])
        explain, held = split_examples(exs, m, config.explain_examples, config.score_examples)
        exclude = {int(x["row"]) for x in exs}
        picks = pool.negatives_for(i, exclude, len(held) + BACKGROUND, config.seed, m)
        neg = [pool.contexts[m][j] for j in picks[: len(held)]]
        bg = [pool.contexts[m][j] for j in picks[len(held) :]]
        trim = config.context_chars
        jobs.append(
            FeatureJob(
                feature=i,
                klass=str(f["klass"]),
                rank=int(f["rank"] or 0),
                verdict=str(f["verdict"] or ""),
                side=m,
                frequency=float(f["frequency"]),
                explain=[c.trimmed(trim) for c in explain],
                held_out=[c.trimmed(trim) for c in held],
                negatives=[c.trimmed(trim) for c in neg],
                background=[c.trimmed(trim) for c in bg],
            )
        )
    notes = {
        "non_activating": pool.source,
        "pool_rows": len(pool.rows),
        "store": str(store_path) if store is not None else None,
    }
    return jobs, notes
