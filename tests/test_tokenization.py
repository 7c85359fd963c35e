"""Verdicts for every candidate: tokenizer artifacts told from concepts, twins, and the
cross-fitted exclusivity check.

The store is written by hand with the real writer: rows at every word end, plus a row inside
each long word where both "tokenizers" happen to share an internal boundary. Model A carries a
word-piece signal (dim 0, on at word-internal rows only) and a concept signal (dim 1, on at
the word "fox"); both exist in A only. A planted crosscoder reads them with A-exclusive
features; a third A-exclusive feature and a B-exclusive one read a signal both models carry at
the word "dog" (twins).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from crossdiff.analysis import AnalysisConfig, analyze
from crossdiff.analysis.tokenization import RowDescriptors
from crossdiff.paths import RunPaths
from crossdiff.store import ActivationStore, make_rows
from crossdiff_bench.synthetic import WORDS, planted_crosscoder, synthetic_manifest

D_A, D_B = 16, 12
LONG = ("pentecostal", "philosophorum", "margall", "odontiformes")


def _rows_of(text: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(span ends, span starts, word) per row: each word's end, and the middle of long words."""
    ends, starts, words, pos = [], [], [], 0
    for word in text.split(" "):
        if len(word) >= 7:
            mid = pos + len(word) // 2
            starts.append(pos)
            ends.append(mid)
            words.append("<internal>")
            starts.append(mid)
        else:
            starts.append(pos)
        ends.append(pos + len(word))
        words.append(word)
        pos += len(word) + 1
    return np.array(ends), np.array(starts), words


def write_store(
    path, *, same_tokenizer: bool = False, n_docs: int = 160, seed: int = 0, decision: bool = False
):
    """``decision``: each document ends with a decision pair (the generation prompt's last token,
    after the last content row: longer in B, so its descriptors set it apart), where A's dim 4
    is on."""
    rng = np.random.default_rng(seed)
    man = synthetic_manifest(D_A, D_B)
    if same_tokenizer:
        man.model_b.tokenizer = man.model_a.tokenizer
    store = ActivationStore.create(path, man)
    vocab = list(WORDS[:12]) + list(LONG)
    with store.writer(shard_rows=1500) as w:
        for i in range(n_docs):
            text = " ".join(vocab[j] for j in rng.integers(len(vocab), size=30))
            ends, starts, words = _rows_of(text)
            n = len(ends)
            span_b = np.stack([starts, ends], 1).astype(np.int32)
            if decision:  # a template token after the content: one more row, same content end
                ends, starts = np.r_[ends, ends[-1]], np.r_[starts, len(text)]
                span_b = np.r_[span_b, [[len(text), len(text) + 4]]].astype(np.int32)
                ends_a = np.r_[ends[:-1], len(text) + 1]
                words = [*words, "<decision>"]
                n += 1
            w.add_document(
                {
                    "index": i,
                    "doc_id": f"d{i}",
                    "source": "test",
                    "text": text,
                    "messages": None,
                    "windows": [
                        {
                            "content_start": 0,
                            "pairs": n,
                            "a": {"text": text, "content_spans": [[0, len(text)]]},
                            "b": {"text": text, "content_spans": [[0, len(text)]]},
                            **({"decision_pair": [n - 1, n - 1]} if decision else {}),
                        }
                    ],
                    "content_tokens_a": n,
                    "content_tokens_b": n,
                    "pairs": n,
                    "truncated": False,
                    "skipped": None,
                }
            )
            gen = torch.Generator().manual_seed(seed * 10_000 + i)
            x_a = torch.randn(n, D_A, generator=gen) * 0.3
            x_b = torch.randn(n, D_B, generator=gen) * 0.3
            internal = torch.tensor([wd == "<internal>" for wd in words])
            fox = torch.tensor([wd == "fox" for wd in words])
            dog = torch.tensor([wd == "dog" for wd in words])
            x_a[:, 0] = torch.where(internal, 2.0 + torch.rand(n, generator=gen), -1.0)
            x_a[:, 1] = torch.where(fox, 2.0 + torch.rand(n, generator=gen), -1.0)
            # a word's later piece: the row right after a long word's internal end
            later = torch.tensor([j > 0 and words[j - 1] == "<internal>" for j in range(n)])
            x_a[:, 3] = torch.where(later, 2.0 + torch.rand(n, generator=gen), -1.0)
            # the twins' signal: both models carry it at "dog", each its own non-linear way
            x_a[:, 2] = torch.where(dog, 2.0 + torch.rand(n, generator=gen), -1.0)
            x_b[:, 2] = torch.where(dog, 2.0 + torch.rand(n, generator=gen), -1.0)
            at_decision = torch.tensor([wd == "<decision>" for wd in words])
            x_a[:, 4] = torch.where(at_decision, 2.0 + torch.rand(n, generator=gen), -1.0)
            spans = np.stack([starts, ends_a if decision else ends], 1).astype(np.int32)
            w.add_rows(
                make_rows(
                    x_a,
                    x_b,
                    doc_index=i,
                    window=0,
                    content_end=ends.astype(np.int64),
                    pos_a=np.arange(n),
                    pos_b=np.arange(n),
                    span_a=spans,
                    span_b=span_b,
                )
            )
            w.commit_if_full()
        w.finish("test store complete")
    return store.reload()


def make_run(root, **kw):
    """A planted DFC over ``write_store(**kw)``; with ``decision=True`` A-exclusive local 3
    reads the decision pair (A's dim 4) instead of later word pieces."""
    paths = RunPaths(root)
    paths.root.mkdir(parents=True, exist_ok=True)
    write_store(paths.store, **kw)
    cc, roles = planted_crosscoder("dfc", D_A, D_B)
    p = cc.partition
    with torch.no_grad():  # A-exclusive local 2 reads A dim 2; B-exclusive 1 reads B dim 2
        cc.W_enc_a[:, 2] = torch.eye(D_A)[2]
        cc.W_dec_a[2] = torch.eye(D_A)[2]
        cc.b_enc[2] = -0.5
        dim = 4 if kw.get("decision") else 3  # local 3: the decision pair or later word pieces
        cc.W_enc_a[:, 3] = torch.eye(D_A)[dim]
        cc.W_dec_a[3] = torch.eye(D_A)[dim]
        cc.b_enc[3] = -0.5
    roles["a_twin"] = 2
    roles["a_later"] = 3
    roles["b_twin"] = p.n_a + 1  # planted_crosscoder's B local 1 already reads B dim 2
    cc.save_pretrained(paths.crosscoder)
    return roles


def quiet(**kw):
    return AnalysisConfig(progress=False, device="cpu", **kw)


def test_descriptors_mark_word_internal_rows(tmp_path):
    store = write_store(tmp_path / "s", n_docs=4)
    desc = RowDescriptors(store).rows(np.arange(store.n_rows))
    rows = next(iter(store.iter_rows(10_000)))[2]
    docs = {r["index"]: r["text"] for r in store.documents()}
    for i in range(store.n_rows):
        text = docs[int(rows["doc_index"][i])]
        e = int(rows["content_end"][i])
        inside = e < len(text) and text[e - 1].isalnum() and text[e].isalnum()
        assert bool(desc["word_internal"][i]) == inside
    assert desc["word_internal"].any() and not desc["word_internal"].all()
    # a word's second piece has taken 2 pieces; a short word after a boundary, 1
    assert set(np.unique(desc["pieces_a"][desc["word_internal"]]).tolist()) == {1}
    after = np.flatnonzero(desc["word_internal"]) + 1
    assert (desc["pieces_a"][after] == 2).all()
    # the piece after an internal end starts inside the word: a later piece, in both models
    assert desc["later_a"][after].all() and desc["later_b"][after].all()
    assert desc["later_a"].sum() == desc["word_internal"].sum()
    assert (desc["same_start"]).all()  # the same spans in both models here


def test_word_piece_feature_is_flagged_and_concept_feature_is_not(tmp_path):
    roles = make_run(tmp_path / "run")
    res = analyze(tmp_path / "run", config=quiet())
    t = res.features.to_pydict()
    a_only, a_concept = roles["a_only"], roles["a_shared"]
    assert t["verdict"][a_only] == "tokenization"
    assert t["internal_top_share"][a_only] == pytest.approx(1.0)
    assert t["verdict"][a_concept] == "confirmed"
    assert t["internal_top_share"][a_concept] == pytest.approx(0.0)
    # a feature of a word's later piece (S|inking) ends at word ends, yet is a tokenizer artifact
    a_later = roles["a_later"]
    assert t["verdict"][a_later] == "tokenization"
    assert t["later_top_share"][a_later] == pytest.approx(1.0)
    assert t["internal_top_share"][a_later] == pytest.approx(0.0)
    assert t["later_top_share"][a_concept] == pytest.approx(0.0)
    # cross-fitted: every candidate is scored on all its activations in the store
    assert t["test_active"][a_concept] == t["count"][a_concept]
    # twins: the two exclusive features reading the same rows point at each other
    assert t["twin_of"][roles["a_twin"]] == roles["b_twin"]
    assert t["twin_of"][roles["b_twin"]] == roles["a_twin"]
    assert t["twin_corr"][roles["a_twin"]] > 0.9
    assert t["verdict"][roles["a_twin"]] in ("twin", "refuted")
    # flagged candidates rank after concept candidates
    assert 0 < t["rank"][a_concept] < t["rank"][a_only]
    assert res.meta["classes"]["A"]["tokenization"] >= 1


def test_a_feature_of_the_decision_pair_is_not_a_tokenizer_artifact(tmp_path):
    """A feature that fires where the model is about to answer (the generation prompt's last
    token) sits on template text aligned by construction: the tokenization descriptors tell
    that row from content (here: B's token is longer), but that is where it is, not how a
    tokenizer split a word, so the regression rule must not call it an artifact."""
    roles = make_run(tmp_path / "run", decision=True)
    desc = RowDescriptors(ActivationStore.open(tmp_path / "run" / "store")).rows(np.arange(40))
    assert (desc["role"] == 4).sum() >= 1 and not desc["same_start"][desc["role"] == 4].any()
    res = analyze(tmp_path / "run", config=quiet())
    t = res.features.to_pydict()
    f = roles["a_later"]  # local 3, reading the decision pair here
    assert t["decision_share"][f] == pytest.approx(1.0)
    # the descriptors alone do "explain" it: without the exemption this is the flag's rule
    assert t["cross_tok_r2"][f] >= 0.5 > t["cross_r2"][f]
    assert t["verdict"][f] == "confirmed"
    assert t["verdict"][roles["a_only"]] == "tokenization"  # the word-piece feature still is


def test_same_tokenizer_pair_flags_nothing(tmp_path):
    make_run(tmp_path / "run", same_tokenizer=True)
    res = analyze(tmp_path / "run", config=quiet())
    assert "tokenization" not in res.features.column("verdict").to_pylist()
    assert res.meta["check"]["tokenization"]["same_tokenizer"]


def test_rare_candidates_get_no_perfect_score(tmp_path):
    make_run(tmp_path / "run")
    res = analyze(tmp_path / "run", config=quiet(min_test_active=10**6))
    t = res.features.to_pydict()
    for v, s in zip(t["verdict"], t["exclusivity"]):
        if v == "untested":
            assert s != s  # NaN: "too rare to judge", never a score


def test_ranking_puts_recurring_features_first_within_a_verdict():
    from crossdiff.analysis.ranking import rank_candidates

    klass = np.array(["A", "A", "A", "A"])
    verdict = np.array(["confirmed", "confirmed", "confirmed", "tokenization"], dtype=object)
    score = np.ones(4)
    freq = np.full(4, 0.005)
    strength = np.array([3.0, 2.0, 1.0, 9.0])
    ok = np.ones(4, dtype=bool)
    assert rank_candidates(klass, verdict, score, freq, strength, ok).tolist() == [1, 2, 3, 4]
    recurs = np.array([0, 4, 2, 4])
    ranked = rank_candidates(klass, verdict, score, freq, strength, ok, recurs).tolist()
    assert ranked == [3, 1, 2, 4]  # 4 of 4 first, then 2, then 0; the artifact stays last
