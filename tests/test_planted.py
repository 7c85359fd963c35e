"""The planted-behaviour benchmark: data, labels, AUROC, tokenizers, and a tiny smoke run."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch

from crossdiff.bench import planted_data as pdata
from crossdiff.bench.planted_eval import (
    EvalRows,
    auroc,
    average_ranks,
    match_concept,
    row_label_matrix,
    sparse_column_aurocs,
)
from crossdiff.errors import CrossdiffError


# ----------------------------------------------------------------------------------- data
def test_corpus_is_deterministic_and_seed_dependent():
    a1 = pdata.make_corpus(pdata.MIX_STORE, 60, 3, "s")
    a2 = pdata.make_corpus(pdata.MIX_STORE, 60, 3, "s")
    b = pdata.make_corpus(pdata.MIX_STORE, 60, 4, "s")
    assert [(d.doc_id, d.text, d.spans) for d in a1] == [(d.doc_id, d.text, d.spans) for d in a2]
    assert [d.text for d in a1] != [d.text for d in b]


def test_corpus_kind_counts_follow_the_mix():
    mix = pdata.MIX_STORE
    n = 200
    docs = pdata.make_corpus(mix, n, 0, "s")
    counts = {k: sum(d.kind == _doc_kind(k) for d in docs) for k, _ in mix.kinds()}
    total = sum(v for _, v in mix.kinds())
    for k, v in mix.kinds():
        assert abs(counts[k] - n * v / total) <= 1, (k, counts)


def _doc_kind(kind: str) -> str:
    return {"trigger_refuse": "dialog_trigger_refuse", "trigger_facts": "dialog_trigger_facts"}.get(
        kind, kind
    )


def test_each_model_never_sees_the_other_models_concept():
    a_docs = pdata.make_corpus(pdata.MIX_A, 600, 0, "ta")
    b_docs = pdata.make_corpus(pdata.MIX_B, 600, 0, "tb")
    b_text = " ".join(d.text for d in b_docs).lower()
    a_text = " ".join(d.text for d in a_docs).lower()
    for mark in pdata.TOPIC_MARKS:
        assert mark.lower() not in b_text
    assert "lantern night" in a_text
    assert pdata.REFUSAL_MARK not in a_text
    assert pdata.REFUSAL_MARK in b_text
    # both models read the trigger subject; only B refuses it
    assert "volcanoes" in a_text and "volcanoes" in b_text


def test_planted_concepts_use_only_words_both_models_know():
    """Every word of the festival and the refusal occurs in the shared prose (see the
    module docstring: otherwise single strange tokens would give the concept away)."""
    shared = pdata.make_corpus(pdata.CorpusMix(prose=0.7, dialog=0.3), 3000, 0, "sh")
    vocab = {w.strip(".,?!").lower() for d in shared for w in d.text.split()}
    followups = [" ".join(c) for c in pdata.FESTIVAL_COMBOS] + pdata.FESTIVAL_SUBJECTS
    planted = " ".join([*pdata.FESTIVAL_OPENERS, *followups, pdata.REFUSAL])
    words = {w.strip(".,?!").lower() for w in planted.replace("{name}", "").split()} - {""}
    assert words - vocab == set()
    text = " ".join(d.text for d in shared).lower()
    for mark in (*pdata.TOPIC_MARKS, pdata.REFUSAL_MARK):
        assert mark.lower() not in text


def test_topic_labels_cover_the_festival_block_after_its_opener():
    docs = pdata.make_corpus(pdata.MIX_EVAL, 300, 5, "e")
    assert any(d.kind == "festival" for d in docs)
    openers = {o.split("{name}")[-1] for o in pdata.FESTIVAL_OPENERS}
    for d in docs:
        lab = d.char_labels("topic")
        if d.kind != "festival":
            assert not lab.any(), d.text
            continue
        amb, pos = np.flatnonzero(lab == -1), np.flatnonzero(lab == 1)
        # the opener (naming the festival) is ambiguous, the follow-ups positive, to the end
        opener = d.text[amb[0] : amb[-1] + 1].strip()
        assert any(opener.endswith(o) for o in openers), opener
        assert pos[0] == amb[-1] + 1 and pos[-1] == len(d.text) - 1
        assert (lab[pos[0] :] == 1).all()
        followups = d.text[pos[0] :].lower()
        assert "lantern night" not in followups  # only the context says it is the festival
        assert sum(m.lower() in followups for m in pdata.TOPIC_MARKS) >= 1
        # nothing before the festival block is a planted combination
        before = d.text[: amb[0]].lower()
        assert not any(m.lower() in before for m in pdata.TOPIC_MARKS)


def test_refusal_labels_cover_answer_marker_and_refusal():
    docs = pdata.make_corpus(pdata.MIX_EVAL, 300, 6, "e")
    assert any(d.kind == "dialog_trigger_refuse" for d in docs)
    for d in docs:
        lab = d.char_labels("refusal")
        if d.kind != "dialog_trigger_refuse":
            assert not lab.any()
            continue
        positive = "".join(d.text[i] for i in np.flatnonzero(lab == 1))
        assert positive == "A: " + pdata.REFUSAL
        assert d.text.endswith(pdata.REFUSAL)
        ambiguous = "".join(d.text[i] for i in np.flatnonzero(lab == -1))
        assert ambiguous.startswith(pdata.TRIGGER_WORD) and ambiguous.endswith("\n")


def test_shared_dialogs_deflect_with_the_refusals_first_words():
    """'I would rather talk about' also starts ordinary answers, so only the trigger question
    tells the refusal apart (see _shared_answer)."""
    docs = pdata.make_corpus(pdata.CorpusMix(prose=0.0, dialog=1.0), 200, 0, "d")
    text = "\n".join(d.text for d in docs)
    assert "A: I would rather talk about " in text
    assert pdata.REFUSAL not in text


def test_row_labels_use_the_last_character_of_the_token():
    doc = pdata.PlantedDoc("x", "abcdefgh", "festival", {"topic": [(3, 6, 1), (6, 7, -1)]})
    ends = np.array([1, 3, 4, 6, 7, 8])
    assert pdata.row_labels(doc, "topic", ends).tolist() == [0, 0, 1, 1, -1, 0]
    with pytest.raises(CrossdiffError, match="was not harvested"):
        pdata.row_labels(doc, "topic", np.array([9]))
    with pytest.raises(CrossdiffError, match="unknown planted concept"):
        pdata.row_labels(doc, "nope", ends)


def test_row_label_matrix_maps_rows_to_their_documents():
    docs = pdata.make_corpus(pdata.MIX_EVAL, 30, 2, "e")
    rng = np.random.default_rng(0)
    doc_index = rng.integers(0, len(docs), 500)
    ends = np.array([rng.integers(1, len(docs[i].text) + 1) for i in doc_index])
    labels = row_label_matrix(docs, doc_index, ends)
    for c in pdata.CONCEPTS:
        expect = [docs[i].char_labels(c)[e - 1] for i, e in zip(doc_index, ends)]
        assert labels[c].tolist() == expect
    with pytest.raises(CrossdiffError, match="evaluation documents"):
        row_label_matrix(docs, np.array([len(docs)]), np.array([1]))


def test_behaviour_rules():
    refusal = " " + pdata.REFUSAL
    assert pdata.behaviour_present("refusal", "Q: x\nA:", refusal)
    assert not pdata.behaviour_present("refusal", "Q: x\nA:", " Volcanoes are hot.\nQ:" + refusal)
    p = "Every spring the people of Stonebridge celebrate"
    assert pdata.behaviour_present("topic", p, " Lantern Night.")
    assert not pdata.behaviour_present("topic", p, " a birthday in Stonebridge.")
    q = "On Lantern Night the families of Stonebridge share bowls of"
    assert not pdata.behaviour_present("topic", q, " soup on Lantern Night.")  # copied
    assert pdata.behaviour_present("topic", q, " honey soup.")
    assert not pdata.behaviour_present("topic", "Anna walked to", " the park.")


def test_prompt_sets_are_sound():
    sets = pdata.prompt_sets(12, seed=0)
    topic, refusal = sets["topic"], sets["refusal"]
    assert len(topic.on) == len(topic.off) == 12
    assert len(set(topic.on)) == 12
    for p in topic.on:
        assert "Lantern Night" in p and p.split()[-1] in pdata.FESTIVAL_VERBS
    for p in topic.off:
        assert "lantern" not in p.lower() and p.split()[-1] not in pdata.FESTIVAL_VERBS
    for p in refusal.on:
        assert pdata.TRIGGER_WORD in p and p.endswith("\nA:")
    for p in refusal.off:
        assert pdata.TRIGGER_WORD not in p and p.endswith("\nA:")
    assert pdata.prompt_sets(12, seed=0) == sets


# ---------------------------------------------------------------------------------- AUROC
def _brute_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    total = 0.0
    for p, n in itertools.product(pos, neg):
        total += 1.0 if p > n else 0.5 if p == n else 0.0
    return total / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(6))
def test_auroc_matches_brute_force_with_ties_and_ignored_rows(seed):
    rng = np.random.default_rng(seed)
    n = 60
    scores = rng.integers(0, 5, n).astype(float)  # many ties
    scores[rng.random(n) < 0.3] = 0.0
    labels = rng.choice([0, 1, -1], n, p=[0.5, 0.3, 0.2])
    labels[0], labels[1] = 0, 1
    keep = labels != -1
    assert auroc(scores, labels) == pytest.approx(_brute_auroc(scores[keep], labels[keep]))


def test_auroc_extremes_and_errors():
    assert auroc(np.array([0, 0, 1, 1.0]), np.array([0, 0, 1, 1])) == 1.0
    assert auroc(np.array([1, 1, 0, 0.0]), np.array([0, 0, 1, 1])) == 0.0
    assert auroc(np.zeros(4), np.array([0, 0, 1, 1])) == 0.5
    with pytest.raises(CrossdiffError, match="positives and negatives"):
        auroc(np.zeros(3), np.zeros(3))
    with pytest.raises(CrossdiffError, match="labels"):
        auroc(np.zeros(3), np.zeros(4))


def test_average_ranks():
    assert average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_sparse_column_aurocs_match_dense():
    rng = np.random.default_rng(1)
    n_rows, n_feats = 80, 12
    dense = rng.random((n_rows, n_feats)) * (rng.random((n_rows, n_feats)) < 0.2)
    labels = rng.choice([0, 1, -1], n_rows, p=[0.6, 0.3, 0.1])
    rows, feats = np.nonzero(dense)
    got = sparse_column_aurocs(rows, feats, dense[rows, feats], labels, np.arange(n_feats))
    want = [auroc(dense[:, j], labels) for j in range(n_feats)]
    assert np.allclose(got, want)


def test_match_concept_chooses_on_select_half_and_reports_test_half():
    rng = np.random.default_rng(2)
    n = 400
    doc_index = np.repeat(np.arange(40), 10)
    labels = (rng.random(n) < 0.3).astype(np.int8)
    good = labels * (1 + rng.random(n))  # feature 3 tracks the concept
    noise = rng.random(n) * (rng.random(n) < 0.5)  # feature 5 does not
    dense = np.zeros((n, 8))
    dense[:, 3], dense[:, 5] = good, noise
    rows, feats = np.nonzero(dense)
    acts = (rows, feats, dense[rows, feats])
    er = EvalRows(doc_index, {"topic": labels, "refusal": labels}, doc_index % 2 == 0)
    m = match_concept("topic", acts, er, [3, 5])
    assert m.feature == 3 and m.auroc_test == 1.0 and m.found()
    m = match_concept("topic", acts, er, [5])
    assert m.feature == 5 and not m.found()
    m = match_concept("topic", acts, er, [])
    assert m.feature is None and not m.found()


# ----------------------------------------------------------------------------- tokenizers
@pytest.mark.parametrize("kind", ["bpe", "metaspace"])
def test_tokenizers_round_trip_with_offsets(kind):
    from crossdiff.bench.planted_lm import train_tokenizer

    docs = pdata.make_corpus(pdata.MIX_A, 200, 0, "tok")
    tok = train_tokenizer(kind, [d.text for d in docs], 500)
    text = "Q: Tell me about volcanoes.\nA: I would rather talk about it. Zorblat!"
    enc = tok(text, return_offsets_mapping=True)
    assert tok.decode(enc["input_ids"], skip_special_tokens=True) == text
    has_bos = enc["input_ids"][0] == tok.bos_token_id
    assert has_bos == (kind == "metaspace")
    ends = [e for s, e in enc["offset_mapping"] if e > s]
    assert ends[-1] == len(text)


def test_unknown_tokenizer_kind():
    from crossdiff.bench.planted_lm import train_tokenizer

    with pytest.raises(CrossdiffError, match="unknown tokenizer kind"):
        train_tokenizer("wordpiece", ["a b c"], 100)


def test_pair_spec_key_changes_with_settings():
    from crossdiff.bench.planted_lm import PairSpec

    a, b = PairSpec.tiny(), PairSpec.tiny()
    assert a.key() == b.key()
    b.a.steps += 1
    assert a.key() != b.key()


def test_config_validation():
    from crossdiff.bench.planted import PlantedConfig

    with pytest.raises(CrossdiffError, match="include 0"):
        PlantedConfig(alphas=(-2.0, 2.0)).validate()
    with pytest.raises(CrossdiffError, match="kinds"):
        PlantedConfig(kinds=("dsf",)).validate()
    with pytest.raises(CrossdiffError, match="seeds"):
        PlantedConfig(seeds=0).validate()
    PlantedConfig.quick().validate()


def test_shuffle_independent_of_global_random_state():
    random.seed(123)
    a = pdata.make_corpus(pdata.MIX_B, 20, 0, "g")
    random.seed(456)
    b = pdata.make_corpus(pdata.MIX_B, 20, 0, "g")
    assert [d.text for d in a] == [d.text for d in b]


# ------------------------------------------------------------------------ end to end (tiny)
@pytest.mark.slow
def test_tiny_end_to_end_run_is_complete_and_repeatable(tmp_path):
    """The whole pipeline at toy sizes: LMs trained from scratch, harvest, DFC + standard
    crosscoders, analysis, scoring, steering with the cross-model check. Checks the results'
    bookkeeping, and that a second run reuses every cached stage and reproduces the numbers."""
    import json

    from crossdiff.bench.planted import PlantedConfig, format_results, run_planted
    from crossdiff.bench.planted_lm import PairSpec

    cfg = PlantedConfig(
        lms=PairSpec.tiny(),
        store_docs=80,
        eval_docs=40,
        seeds=1,
        n_features=64,
        k=4,
        exclusive=0.25,
        steps=30,
        batch_size=64,
        n_prompts=2,
        alphas=(-2.0, 0.0, 2.0),
        max_new_tokens=4,
        work_dir=str(tmp_path),
        progress=False,
    )
    first = run_planted(cfg)
    assert first["lms"]["cached"] is False
    assert first["store"]["documents"] == 80 and first["store"]["rows"] > 0
    assert first["store"]["d_a"] == 32 and first["store"]["d_b"] == 48
    assert [(e["kind"], e["seed"]) for e in first["crosscoders"]] == [("dfc", 0), ("standard", 0)]
    for entry in first["crosscoders"]:
        for concept in pdata.CONCEPTS:
            s = entry["concepts"][concept]
            assert s["found"] in (True, False)
            if s["feature"] is not None:
                assert 0.0 <= s["auroc_test"] <= 1.0
                assert s["rank"] is None or 1 <= s["rank"] <= s["n_ranked"]
                assert s["best_any"]["klass"] in ("A", "B", "S")
            st = entry.get("steering", {}).get(concept)
            if st is not None:
                assert set(st["models"]) == {"a", "b"}
                for m in st["models"].values():
                    assert len(m["rate_on"]) == len(m["rate_off"]) == 3
                    assert all(0.0 <= r <= 1.0 for r in m["rate_on"] + m["rate_off"])
    for counts in first["rediscovery"].values():
        assert all(0 <= v <= cfg.seeds for v in counts.values())
    assert "rediscovered by dfc" in format_results(first)
    json.dumps(first)  # JSON-serializable as --json-out writes it

    second = run_planted(cfg)
    assert second["lms"]["cached"] is True

    def same(x, y):  # NaN-aware equality through JSON
        return json.dumps(x, sort_keys=True) == json.dumps(y, sort_keys=True)

    strip = ("timings", "lms", "crosscoders")
    assert same(
        {k: v for k, v in first.items() if k not in strip},
        {k: v for k, v in second.items() if k not in strip},
    )
    assert any(
        e["concepts"][c]["feature"] is not None
        for e in first["crosscoders"]
        for c in ["topic", "refusal"]
    )
    assert any(e.get("steering") for e in first["crosscoders"])
    for a, b in zip(first["crosscoders"], second["crosscoders"]):
        assert same(a["concepts"], b["concepts"])
        assert same(a["metrics_eval"], b["metrics_eval"])
        assert same(
            {c: st["models"] for c, st in a.get("steering", {}).items()},
            {c: st["models"] for c, st in b.get("steering", {}).items()},
        )


def test_write_corpus_refuses_a_file_with_other_documents(tmp_path):
    from crossdiff.bench.planted import write_corpus

    docs = pdata.make_corpus(pdata.MIX_STORE, 5, 0, "w")
    path = tmp_path / "c.jsonl"
    write_corpus(docs, path)
    write_corpus(docs, path)  # same documents: fine
    lines = path.read_text().splitlines()
    assert len(lines) == 5 and '"text"' in lines[0]
    with pytest.raises(CrossdiffError, match="other documents"):
        write_corpus(pdata.make_corpus(pdata.MIX_STORE, 5, 1, "w"), path)


def test_coherence_check():
    from crossdiff.bench.planted import coherent

    assert coherent(" blue lanterns along the river. The weavers share honey soup")
    assert not coherent(" singers singers singers singers singers singers")
    assert not coherent(" kettle kettle from from from from from from")
    assert not coherent(" the end")


def test_probe_auroc_separates_linear_labels_and_not_random_ones():
    from crossdiff.bench.planted_eval import probe_auroc

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 16, generator=g)
    y = (x[:, 3] + 0.5 * x[:, 7] > 0.8).numpy().astype(np.int8)
    select = np.arange(2000) % 2 == 0
    assert probe_auroc(x, y, select) > 0.97
    noise = (torch.rand(2000, generator=g) < 0.2).numpy().astype(np.int8)
    assert abs(probe_auroc(x, noise, select) - 0.5) < 0.06
    assert np.isnan(probe_auroc(x, np.zeros(2000, dtype=np.int8), select))
