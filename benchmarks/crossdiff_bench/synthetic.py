"""Synthetic activation stores written with the real store writer (benchmarks and tests).

A real store comes from two language models reading a corpus; for measuring the analysis pass
at millions of pairs, or for tests that need exact control over the activations, the content
of the activations does not matter but the *format* must be the real one. This module writes
documents (texts with hostile-text support), per-window renderings for both "models" (model B
renders with a prefix, so the two token spans differ), aligned rows with their provenance, and
activations from a caller-supplied function, through :class:`crossdiff.store.StoreWriter`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from crossdiff.store import ActivationStore, Manifest, ModelInfo, TokenizerInfo, make_rows

B_PREFIX = "<bos>"
WORDS = (
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "model",
    "reads",
    "text",
    "as",
    "tokens",
    "and",
    "two",
    "models",
    "rarely",
    "cut",
    "same",
    "places",
    "when",
    "we",
    "compare",
    "pair",
    "positions",
    "where",
    "both",
    "have",
    "read",
    "exactly",
)

Activations = Callable[[int, int, np.random.Generator], tuple[torch.Tensor, torch.Tensor]]
"""(document index, number of rows, rng) -> (x_a, x_b) for that document's rows."""


def synthetic_manifest(
    d_a: int, d_b: int, *, name: str = "synthetic", one_vocabulary: bool = False
) -> Manifest:
    """A manifest for two made-up models of widths d_a and d_b. Their tokenizers differ: B's
    vocabulary also holds the ``<bos>`` it renders before every text; ``one_vocabulary``:
    the same vocabulary (the same tokens, though recorded under another hash, as a fine-tune
    whose saved tokenizer carries other padding settings)."""
    vocab = {"a": len(WORDS), "b": len(WORDS) + (0 if one_vocabulary else 1)}

    def info(side: str, d: int) -> ModelInfo:
        return ModelInfo(
            spec=f"{name}-{side}",
            model_id=f"{name}/model-{side}",
            revision=None,
            layer=1,
            layer_spec="1",
            n_layers=2,
            d_model=d,
            dtype="float32",
            tokenizer=TokenizerInfo(name=f"{name}-{side}", vocab_size=vocab[side], hash=side),
        )

    return Manifest(
        model_a=info("a", d_a),
        model_b=info("b", d_b),
        corpus={"spec": f"{name} corpus"},
        harvest={"synthetic": True},
    )


def gaussian_activations(d_a: int, d_b: int) -> Activations:
    """Independent N(0, 1) activations for both models."""

    def make(doc: int, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        seed = int(rng.integers(2**62))
        gen = torch.Generator().manual_seed(seed)
        return torch.randn(n, d_a, generator=gen), torch.randn(n, d_b, generator=gen)

    return make


def _document(i: int, n_words: int, rng: np.random.Generator, texts: dict[int, str]) -> str:
    if i in texts:
        return texts[i]
    idx = rng.integers(len(WORDS), size=n_words)
    return " ".join(WORDS[j] for j in idx)


def _word_spans(text: str) -> np.ndarray:
    spans, pos = [], 0
    for word in text.split(" "):
        if word:
            spans.append((pos, pos + len(word)))
        pos += len(word) + 1
    return np.asarray(spans, dtype=np.int32).reshape(-1, 2)


def write_synthetic_store(
    path: str | Path,
    *,
    n_docs: int,
    words_per_doc: int,
    d_a: int,
    d_b: int,
    activations: Activations | None = None,
    texts: dict[int, str] | None = None,
    shard_rows: int = 16384,
    seed: int = 0,
    progress: bool = False,
    one_vocabulary: bool = False,
    sources: Callable[[int], str] | None = None,
) -> ActivationStore:
    """Write a store of ``n_docs`` documents, one row per word (about ``words_per_doc`` each).

    ``texts`` overrides the text of chosen documents (e.g. hostile HTML); a document's rows are
    its words, paired at each word's end; model A renders the text as is, model B with the
    prefix ``<bos>`` (so B's spans are shifted). ``activations(doc, n, rng)`` gives (x_a, x_b) for
    document ``doc``'s n rows (default: Gaussian). ``one_vocabulary``: see
    :func:`synthetic_manifest`. ``sources(doc)`` names a document's corpus source (default:
    ``synthetic`` for all).
    """
    rng = np.random.default_rng(seed)
    texts = texts or {}
    make = activations or gaussian_activations(d_a, d_b)
    store = ActivationStore.create(
        path, synthetic_manifest(d_a, d_b, one_vocabulary=one_vocabulary)
    )
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_docs, desc="synthetic store", unit="doc")
    with store.writer(shard_rows=shard_rows) as writer:
        for i in range(n_docs):
            text = _document(i, words_per_doc, rng, texts)
            spans = _word_spans(text)
            n = len(spans)
            record = {
                "index": i,
                "doc_id": f"doc{i}",
                "source": sources(i) if sources else "synthetic",
                "text": text,
                "messages": None,
                "windows": [
                    {
                        "content_start": 0,
                        "pairs": n,
                        "a": {"text": text, "content_spans": [[0, len(text)]]},
                        "b": {
                            "text": B_PREFIX + text,
                            "content_spans": [[len(B_PREFIX), len(B_PREFIX) + len(text)]],
                        },
                    }
                ],
                "content_tokens_a": n,
                "content_tokens_b": n,
                "pairs": n,
                "truncated": False,
                "skipped": None,
            }
            writer.add_document(record)
            if n:
                x_a, x_b = make(i, n, rng)
                writer.add_rows(
                    make_rows(
                        x_a,
                        x_b,
                        doc_index=i,
                        window=0,
                        content_end=spans[:, 1].astype(np.int64),
                        pos_a=np.arange(n),
                        pos_b=np.arange(n) + 1,
                        span_a=spans,
                        span_b=spans + len(B_PREFIX),
                    )
                )
            writer.commit_if_full()
            if bar is not None:
                bar.update(1)
        writer.finish("synthetic store complete")
    if bar is not None:
        bar.close()
    return store.reload()


# ---- a run with planted exclusive and shared signals (tests, examples) ------------------------
HOSTILE_TEXT = (
    "hostile <script>document.title='pwned'</script> text "
    '<img src=x onerror="document.title=\'pwned\'"> & "quoted" it\'s </td></table> \x1b[31mred'
)
"""A document text that would run script, break the page or colour a terminal if not escaped."""

PLANTED = {
    "a_only": 0,  # feature reading a concept only model A has
    "a_shared": 1,  # labelled A-exclusive, but model B has the concept too
    "b_only": 2,  # (standard: feature index; DFC: see planted_features)
    "b_shared": 3,
}


def planted_activations(
    d_a: int, d_b: int, *, p: float = 0.15, noise: float = 0.3, hot_doc: int | None = None
) -> Activations:
    """Gaussian noise plus four sparse signals with magnitudes in [1, 2): one only in A (A's
    dim 0), one in both (A's dim 1 = B's dim 0), one only in B (B's dim 1), one in both (A's
    dim 2 = B's dim 2). In document ``hot_doc`` the A-only signal fires at 5 on every row, so
    that document holds the A-only feature's top examples."""

    def make(doc: int, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x_a = rng.normal(0.0, noise, size=(n, d_a))
        x_b = rng.normal(0.0, noise, size=(n, d_b))
        sig = (rng.random((n, 4)) < p) * rng.uniform(1.0, 2.0, size=(n, 4))
        if doc == hot_doc:
            sig[:, 0] = 5.0
        x_a[:, 0] += sig[:, 0]
        x_a[:, 1] += sig[:, 1]
        x_b[:, 0] += sig[:, 1]
        x_b[:, 1] += sig[:, 2]
        x_a[:, 2] += sig[:, 3]
        x_b[:, 2] += sig[:, 3]
        return torch.from_numpy(x_a).float(), torch.from_numpy(x_b).float()

    return make


def planted_crosscoder(kind: str, d_a: int, d_b: int, seed: int = 0):
    """A hand-built ReLU crosscoder whose first features read the planted signals.

    ``kind='dfc'``: 32 features, 4 A-exclusive (0: A-only signal, 1: the shared signal of A's
    dim 1), 4 B-exclusive (4: B-only signal, 5: the shared signal of B's dim 2), the rest
    random. ``kind='standard'``: 16 features; 0 reads the A-only signal and writes almost only
    A; 1 reads the shared signal and writes almost only A (its tiny B decoder points along the
    signal's B direction: the "complete shrinkage" artifact); 2 the B-only signal; the rest
    random. Returns (crosscoder, {role: feature index}).
    """
    from crossdiff.crosscoder import Crosscoder, CrosscoderConfig

    gen = torch.Generator().manual_seed(seed)
    if kind == "dfc":
        cfg = CrosscoderConfig.dfc(d_a, d_b, 32, exclusive=0.125, activation="relu")
    elif kind == "standard":
        cfg = CrosscoderConfig.standard(d_a, d_b, 16, activation="relu")
    else:
        raise ValueError(f"kind {kind!r}: use 'dfc' or 'standard'")
    cc = Crosscoder(cfg, seed=seed)
    p = cc.partition
    with torch.no_grad():
        for w in (cc.W_enc_a, cc.W_enc_b, cc.W_dec_a, cc.W_dec_b):
            w.copy_(torch.randn(w.shape, generator=gen) * 0.15)
        cc.b_enc.fill_(-0.6)
        eye_a, eye_b = torch.eye(d_a), torch.eye(d_b)
        tiny = 0.01

        def set_a(local: int, dim: int) -> None:
            cc.W_enc_a[:, local] = eye_a[dim]
            cc.W_dec_a[local] = eye_a[dim]

        def set_b(local: int, dim: int) -> None:
            cc.W_enc_b[:, local] = eye_b[dim]
            cc.W_dec_b[local] = eye_b[dim]

        if kind == "dfc":
            set_a(0, 0)
            set_a(1, 1)
            set_b(0, 1)
            set_b(1, 2)
            roles = {"a_only": 0, "a_shared": 1, "b_only": p.n_a, "b_shared": p.n_a + 1}
            for f in roles.values():
                cc.b_enc[f] = -0.5
        else:
            for f, (m, dim) in enumerate((("a", 0), ("a", 1), ("b", 1))):
                (set_a if m == "a" else set_b)(f, dim)
                other_enc = cc.W_enc_b if m == "a" else cc.W_enc_a
                other_enc[:, f] = 0.0
                cc.b_enc[f] = -0.5
            rnd = torch.randn(d_b, generator=gen)
            cc.W_dec_b[0] = tiny * rnd / rnd.norm()
            cc.W_dec_b[1] = tiny * eye_b[0]  # shrunk decoder along the signal's B direction
            rnd = torch.randn(d_a, generator=gen)
            cc.W_dec_a[2] = tiny * rnd / rnd.norm()
            roles = {"a_only": 0, "a_shared": 1, "b_only": 2}
    return cc.eval(), roles


def make_planted_run(
    root: str | Path,
    *,
    kind: str = "dfc",
    n_docs: int = 120,
    words_per_doc: int = 30,
    hostile_doc: int = 3,
    d_a: int = 16,
    d_b: int = 12,
    seed: int = 0,
) -> dict[str, int]:
    """Write RUN/store (planted signals; document ``hostile_doc`` holds :data:`HOSTILE_TEXT`
    and the A-only feature's strongest activations) and RUN/crosscoder. Returns the roles."""
    from crossdiff.paths import RunPaths

    paths = RunPaths(root)
    paths.root.mkdir(parents=True, exist_ok=True)
    write_synthetic_store(
        paths.store,
        n_docs=n_docs,
        words_per_doc=words_per_doc,
        d_a=d_a,
        d_b=d_b,
        activations=planted_activations(d_a, d_b, hot_doc=hostile_doc),
        texts={hostile_doc: HOSTILE_TEXT},
        shard_rows=600,
        seed=seed,
    )
    cc, roles = planted_crosscoder(kind, d_a, d_b, seed=seed)
    cc.save_pretrained(paths.crosscoder)
    return roles
