"""Harvest options that decide which pairs a store holds: corpus mixes (shares kept in every
prefix, and across a resume) and word-end-only pairing; and the per-row roles the analysis
reads from a store's provenance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crossdiff.analysis.tokenization import ROLES, shard_descriptors
from crossdiff.corpus import load_corpus
from crossdiff.corpus.mix import pair_estimate
from crossdiff.errors import CrossdiffError
from crossdiff.harvest import HarvestConfig, harvest
from crossdiff.store import ActivationStore
from tiny import TRAINING_TEXT

A, B = ("llama", "bpe"), ("gemma3", "sentencepiece")  # ChatML vs a trimming Gemma template


pytestmark = pytest.mark.usefixtures("one_thread_module")


def _sources(tmp_path: Path) -> tuple[Path, Path]:
    """A plain-text corpus and a chat corpus (jsonl), made of the tiny tokenizers' text."""
    lines = [line for line in TRAINING_TEXT.splitlines() if line.strip()]
    texts = tmp_path / "web.jsonl"
    chats = tmp_path / "chats.jsonl"
    with texts.open("w", encoding="utf-8") as fh:
        for i in range(40):
            text = " ".join(lines[(i + j) % len(lines)] for j in range(1 + i % 3))
            fh.write(json.dumps({"text": text}) + "\n")
    with chats.open("w", encoding="utf-8") as fh:
        for i in range(40):
            messages = [
                {"role": "user", "content": lines[i % len(lines)]},
                {"role": "assistant", "content": lines[(i * 7 + 3) % len(lines)]},
            ]
            if i % 4 == 0:
                messages.insert(0, {"role": "system", "content": "You answer briefly."})
            fh.write(json.dumps({"messages": messages}) + "\n")
    return texts, chats


def _config(out: Path, corpus: str, a: Path, b: Path, **kw) -> HarvestConfig:
    base = {
        "max_seq_len": 48,
        "batch_size": 3,
        "block_batches": 1,
        "shard_rows": 120,
        "dtype": "float32",
        "device": "cpu",
        "progress": False,
    }
    base.update(kw)
    return HarvestConfig(model_a=str(a), model_b=str(b), corpus=corpus, out=str(out), **base)


@pytest.fixture(scope="module")
def mixed(tiny_model, tiny_loaded, tmp_path_factory):
    """(spec, models, model folders, the store of the half-web, half-chat mix), harvested once."""
    root = tmp_path_factory.mktemp("mix")
    web, chats = _sources(root)
    spec = f"{web}=0.5,{chats}=0.5"
    models = (tiny_loaded(*A), tiny_loaded(*B))
    a, b = tiny_model(*A), tiny_model(*B)
    return spec, models, (a, b), harvest(_config(root / "ref", spec, a, b), models=models)


def test_mixed_corpus_store_keeps_its_shares_and_a_resume_continues_the_interleaving(
    mixed, tmp_path
) -> None:
    spec, models, (a, b), ref = mixed
    docs = list(load_corpus(spec))
    stored = list(ref.documents())
    assert [d["doc_id"] for d in stored] == [d.doc_id for d in docs[: len(stored)]]
    # every prefix of the store keeps the mix, by the estimate the mixer balances ...
    total = chat = 0
    for k, d in enumerate(docs[: len(stored)], start=1):
        w = pair_estimate(d)
        total += w
        chat += w if d.is_chat else 0
        if k >= 10:
            assert abs(chat / total - 0.5) <= max(map(pair_estimate, docs[:k])) / total
    # ... and the store reports the real shares, by pairs
    comp = ref.composition()
    assert comp["chat_pairs"] + comp["text_pairs"] == ref.n_rows
    assert 0.35 <= comp["chat_share"] <= 0.65, comp
    assert set(comp["sources"]) == {d.source for d in docs}
    assert "pairs from chats" in ref.summary()

    cfg = _config(tmp_path / "s", spec, a, b)
    commits = []

    def crash(shard) -> None:
        commits.append(shard)
        if len(commits) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        harvest(cfg, on_commit=crash, models=models)
    assert not ActivationStore.open(cfg.out).is_complete
    resumed = harvest(cfg, models=models)
    assert [s.sha256 for s in resumed.manifest.shards] == [s.sha256 for s in ref.manifest.shards]
    assert [s.docs_sha256 for s in resumed.manifest.shards] == [
        s.docs_sha256 for s in ref.manifest.shards
    ]


def test_mix_given_as_a_mapping_is_recorded_as_its_canonical_spec(tiny_model, tmp_path) -> None:
    web, chats = _sources(tmp_path)
    cfg = _config(tmp_path / "s", {str(web): 1, str(chats): 3}, tiny_model(*A), tiny_model(*B))
    assert cfg.corpus == f"{web}=0.25,{chats}=0.75"


def test_word_end_pairing_keeps_only_word_ends_and_counts_what_it_removes(mixed, tmp_path) -> None:
    spec, models, (a, b), full = mixed
    ends = harvest(_config(tmp_path / "end", spec, a, b, pair_positions="word_end"), models=models)
    comp = ends.composition()
    assert comp["pair_positions"] == "word_end"
    assert 0 < comp["pairs_removed"] < full.n_rows
    # same documents, same windows: the filtered store is the full one minus the removed pairs
    assert ends.n_documents == full.n_documents
    assert ends.n_rows + comp["pairs_removed"] == full.n_rows
    docs = list(ends.documents())
    internal = 0
    for _, _, meta in ends.iter_rows(10_000):
        for r in range(len(meta["row"])):
            window = docs[meta["doc_index"][r]]["windows"][meta["window"][r]]
            text, e = window["a"]["text"], int(meta["span_a"][r][1])
            spans = window["a"]["content_spans"]
            inside = any(s < e < t for s, t in spans)
            internal += bool(inside and e < len(text) and text[e].isalnum())
    assert internal == 0
    shards = range(len(full.manifest.shards))
    full_internal = sum(shard_descriptors(full, k)["word_internal"].sum() for k in shards)
    assert full_internal > 0  # the full store had word-internal pairs to remove
    assert "pair positions: word_end only" in ends.summary()
    # the setting is part of what a store is: extending it without the option is refused
    small = _config(tmp_path / "small", spec, a, b, pair_positions="word_end", tokens=30)
    harvest(small, models=models)
    with pytest.raises(CrossdiffError, match="pair_positions"):
        harvest(_config(tmp_path / "small", spec, a, b, tokens=10**9), models=models)


def test_rows_know_the_role_of_the_message_they_lie_in(mixed) -> None:
    store = mixed[3]
    docs = list(store.documents())
    seen = set()
    for k in range(len(store.manifest.shards)):
        role = shard_descriptors(store, k)["role"]
        from crossdiff.store.shard import read_columns

        cols = read_columns(store.path / store.manifest.shards[k].file, ("doc_index", "span_a"))
        for r in range(role.shape[0]):
            doc = docs[int(cols["doc_index"][r])]
            if doc["messages"] is None:
                assert role[r] == ROLES.index("text")
                continue
            e = int(cols["span_a"][r][1])
            window = doc["windows"][0]["a"]
            # model A's ChatML template drops no message: its j-th content span is message j
            spans = window["content_spans"]
            assert len(spans) <= len(doc["messages"])
            holder = [j for j, (s, t) in enumerate(spans) if s < e <= t]
            assert len(holder) == 1
            expected = doc["messages"][holder[0]]["role"]
            assert ROLES[role[r]] == expected
            seen.add(expected)
    assert seen == {"system", "user", "assistant"}
    assert np.isin(shard_descriptors(store, 0)["role"], range(len(ROLES))).all()
