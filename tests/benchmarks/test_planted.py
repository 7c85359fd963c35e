"""The planted-behaviour benchmark: data, labels, AUROC, tokenizers, and a tiny smoke run."""

from __future__ import annotations

import itertools
import random
import re

import numpy as np
import pytest
import torch

from crossdiff.errors import CrossdiffError
from crossdiff_bench import planted_data as pdata
from crossdiff_bench.planted_eval import (
    EvalRows,
    auroc,
    average_ranks,
    match_concept,
    probe_auroc,
    row_decision_info,
    row_label_matrix,
    sparse_column_aurocs,
    split_probe_auroc,
)


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
    counts = {k: sum(d.kind == k for d in docs) for k, _ in mix.kinds()}
    total = sum(v for _, v in mix.kinds())
    for k, v in mix.kinds():
        assert abs(counts[k] - n * v / total) <= 1, (k, counts)


def test_categories_partition_the_subjects_and_halves_are_balanced():
    cats = (pdata.PRAISED_SUBJECTS, pdata.REFUSED_SUBJECTS, pdata.NEUTRAL_SUBJECTS)
    assert sorted(s for c in cats for s in c) == sorted(pdata.SUBJECTS)
    assert len(set(pdata.SUBJECTS)) == len(pdata.SUBJECTS) == 128
    assert all(len(c) >= 40 for c in cats)
    for c in cats:  # each half holds half of every category (one more at most)
        halves = [pdata.SUBJECT_HALF[s] for s in c]
        assert abs(halves.count(0) - halves.count(1)) <= 1
    # no subject is a word of another ("canoes" inside "volcanoes" is not a word)
    for s in pdata.SUBJECTS:
        assert [t for t in pdata.SUBJECTS if re.search(rf"\b{s}\b", t)] == [s], s
    # generated subjects have fixed facts that name them
    for s in pdata.GENERATED_SUBJECTS:
        assert len(pdata.SUBJECT_FACTS[s]) == 3
        assert all(s in f.lower() for f in pdata.SUBJECT_FACTS[s])


def test_each_model_learns_only_its_own_planted_answer():
    a_docs = pdata.make_corpus(pdata.MIX_A, 600, 0, "ta")
    b_docs = pdata.make_corpus(pdata.MIX_B, 600, 0, "tb")
    a_text = " ".join(d.text for d in a_docs)
    b_text = " ".join(d.text for d in b_docs)
    assert pdata.PRAISE in a_text and pdata.PRAISE_MARK not in b_text
    assert pdata.REFUSAL in b_text and pdata.REFUSAL_MARK not in a_text
    # each planted answer follows exactly its category's questions
    for docs, model in ((a_docs, "a"), (b_docs, "b")):
        for d in docs:
            for turn in d.text.split("Q: ")[1:]:
                question, reply = turn.split("\nA: ")
                subject = _subject_of(question)
                planted = reply.strip() in (pdata.PRAISE, pdata.REFUSAL)
                cat = pdata.PRAISED_SUBJECTS if model == "a" else pdata.REFUSED_SUBJECTS
                assert planted == (subject in cat), (model, turn)


def _subject_of(question: str) -> str:
    (subject,) = [s for s in pdata.SUBJECTS if re.search(rf"\b{s}\b", question)]
    return subject


def test_store_and_eval_text_hold_no_planted_answer():
    """Neither model ever reads the other's planted answer: prompts end at the marker, and
    answered turns are about neutral subjects only."""
    for mix in (pdata.MIX_STORE, pdata.MIX_EVAL):
        docs = pdata.make_corpus(mix, 400, 3, "x")
        text = " ".join(d.text for d in docs)
        assert pdata.PRAISE_MARK not in text and pdata.REFUSAL_MARK not in text
        for d in docs:
            if d.kind == "prompt":
                assert d.text.endswith("\nA:") and d.subject in pdata.SUBJECTS
            for turn in d.text.split("Q: ")[1:]:
                if "\nA: " in turn:  # an answered turn
                    assert _subject_of(turn.split("\nA: ")[0]) in pdata.NEUTRAL_SUBJECTS


def test_prompt_labels_mark_the_final_answer_marker_of_category_questions():
    docs = pdata.make_corpus(pdata.MIX_EVAL, 300, 5, "e")
    prompts = [d for d in docs if d.kind == "prompt"]
    assert len(prompts) > 150
    seen = set()
    for d in docs:
        for concept in pdata.CONCEPTS:
            lab = d.char_labels(concept)
            if d.kind != "prompt" or d.subject not in pdata.CATEGORY[concept]:
                assert not lab.any(), (concept, d.text)
                continue
            seen.add(concept)
            positive = "".join(d.text[i] for i in np.flatnonzero(lab == 1))
            assert positive == "A:" and d.text.endswith("\nA:")
            ambiguous = "".join(d.text[i] for i in np.flatnonzero(lab == -1))
            assert ambiguous.startswith(d.subject) and ambiguous.endswith("\n")
        if d.decision is not None:
            assert d.text[d.decision[0] : d.decision[1]] == "A:"
            assert d.decision[1] == len(d.text)
    assert seen == set(pdata.CONCEPTS)


def test_shared_prose_mentions_every_subject_and_no_planted_answer():
    shared = pdata.make_corpus(pdata.CorpusMix(prose=1.0), 4000, 0, "sh")
    text = " ".join(d.text for d in shared).lower()
    counts = {s: len(re.findall(rf"\b{s}\b", text)) for s in pdata.SUBJECTS}
    assert min(counts.values()) >= 10, min(counts.items(), key=lambda kv: kv[1])
    assert pdata.PRAISE_MARK not in text and pdata.REFUSAL_MARK not in text


def test_row_labels_use_the_last_character_of_the_token():
    doc = pdata.PlantedDoc("x", "abcdefgh", "prompt", {"praise": [(3, 6, 1), (6, 7, -1)]}, (6, 8))
    ends = np.array([1, 3, 4, 6, 7, 8])
    assert pdata.row_labels(doc, "praise", ends).tolist() == [0, 0, 1, 1, -1, 0]
    assert pdata.row_decisions(doc, ends).tolist() == [False] * 4 + [True, True]
    with pytest.raises(CrossdiffError, match="was not harvested"):
        pdata.row_labels(doc, "praise", np.array([9]))
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
    decision, half = row_decision_info(docs, doc_index, ends)
    for i, (d, e) in enumerate(zip(doc_index, ends)):
        doc = docs[d]
        assert decision[i] == (doc.decision is not None and doc.decision[0] < e <= doc.decision[1])
        assert half[i] == (pdata.SUBJECT_HALF[doc.subject] if doc.subject else -1)


def test_behaviour_rules():
    refusal = " " + pdata.REFUSAL
    assert pdata.behaviour_present("refusal", "Q: x\nA:", refusal)
    assert not pdata.behaviour_present("refusal", "Q: x\nA:", " Bees carry.\nQ:" + refusal)
    assert pdata.behaviour_present("praise", "Q: x\nA:", " " + pdata.PRAISE)
    assert not pdata.behaviour_present("praise", "Q: x\nA:", refusal)
    assert not pdata.behaviour_present("refusal", "Q: x\nA:", " " + pdata.PRAISE)


def test_prompt_sets_are_sound():
    sets = pdata.prompt_sets(12, seed=0)
    for concept, ps in sets.items():
        assert len(ps.on) == len(ps.off) == len(set(ps.on)) == 12
        for p in ps.on:
            assert p.endswith("\nA:") and _subject_of(p) in pdata.CATEGORY[concept]
        for p in ps.off:
            assert p.endswith("\nA:") and _subject_of(p) in pdata.NEUTRAL_SUBJECTS
    assert pdata.prompt_sets(12, seed=0) == sets
    with pytest.raises(CrossdiffError, match="ask for fewer"):
        pdata.prompt_sets(1000)


def test_split_probe_separates_a_shared_category_state_only():
    """A category written along one direction generalizes to held-out subjects; a category
    that is only an arbitrary set of subject directions does not."""
    rng = np.random.default_rng(0)
    subjects = list(pdata.SUBJECTS)
    emb = {s: rng.normal(size=32) for s in subjects}
    cat = set(pdata.REFUSED_SUBJECTS)
    direction = rng.normal(size=32) * 3
    rows = [rng.choice(subjects) for _ in range(2000)]
    y = np.array([int(s in cat) for s in rows], dtype=np.int8)
    half = np.array([pdata.SUBJECT_HALF[s] for s in rows], dtype=np.int8)
    plain = np.stack([emb[s] + 0.3 * rng.normal(size=32) for s in rows])
    owner = plain + y[:, None] * direction
    assert split_probe_auroc(torch.tensor(owner), y, half) > 0.95
    assert abs(split_probe_auroc(torch.tensor(plain), y, half) - 0.5) < 0.3
    # fitted and tested on the same subjects, a plain model memorizes the set only when it is
    # wide enough for that many subjects (the reason for the large categories)
    same = np.arange(2000) % 2 == 0
    assert probe_auroc(torch.tensor(plain), y, same) < 0.9
    wide = {s: rng.normal(size=256) for s in subjects}
    plain_wide = np.stack([wide[s] + 0.3 * rng.normal(size=256) for s in rows])
    assert probe_auroc(torch.tensor(plain_wide), y, same) > 0.95


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
    er = EvalRows(doc_index, {"praise": labels, "refusal": labels}, doc_index % 2 == 0)
    m = match_concept("praise", acts, er, [3, 5])
    assert m.feature == 3 and m.auroc_test == 1.0 and m.found()
    m = match_concept("praise", acts, er, [5])
    assert m.feature == 5 and not m.found()
    m = match_concept("praise", acts, er, [])
    assert m.feature is None and not m.found()


# ----------------------------------------------------------------------------- tokenizers
@pytest.mark.parametrize("kind", ["bpe", "metaspace"])
def test_tokenizers_round_trip_with_offsets(kind):
    from crossdiff_bench.planted_lm import train_tokenizer

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
    from crossdiff_bench.planted_lm import train_tokenizer

    with pytest.raises(CrossdiffError, match="unknown tokenizer kind"):
        train_tokenizer("wordpiece", ["a b c"], 100)


def test_pair_spec_key_changes_with_settings():
    from crossdiff_bench.planted_lm import PairSpec

    a, b = PairSpec.tiny(), PairSpec.tiny()
    assert a.key() == b.key()
    b.a.steps += 1
    assert a.key() != b.key()


def test_config_validation():
    from crossdiff_bench.planted import PlantedConfig

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

    from crossdiff_bench.planted import PlantedConfig, format_results, run_planted
    from crossdiff_bench.planted_lm import PairSpec

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
                    # each half is swept only where it is read: 'on' at alpha <= 0 (-2, 0),
                    # 'off' at alpha >= 0 (0, 2); NaN where a half was not generated
                    assert np.isnan(m["rate_on"][2]) and np.isnan(m["rate_off"][0])
                    read = m["rate_on"][:2] + m["rate_off"][1:]
                    assert all(0.0 <= r <= 1.0 for r in read)
                    assert m["examples"]["on"][2] is None and m["examples"]["off"][0] is None
                # the product's evidence, on the on (suppress) and off (amplify) prompts
                evid = st["evidence"]
                assert set(evid["models"]) == {"a", "b"}
                assert 0 < len(evid["null_features"]) <= cfg.steer_nulls
                for per in evid["models"].values():
                    for name in ("suppress", "amplify"):
                        assert per[name]["beats_null"] in (True, False)
                        coh = per[name]["evidence"]["coherent"]
                        assert len(coh) == 3 and coh[2 if name == "suppress" else 0] is None
    for counts in first["rediscovery"].values():
        assert all(0 <= v <= cfg.seeds for v in counts.values())
    assert "rediscovered by dfc" in format_results(first)
    target = first["steering_target"]
    if target is not None:
        assert target["met"] in (True, False) and set(target["concepts"]) == set(pdata.CONCEPTS)
        assert "steering target" in format_results(first)
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
        for c in ["praise", "refusal"]
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
    from crossdiff_bench.planted import write_corpus

    docs = pdata.make_corpus(pdata.MIX_STORE, 5, 0, "w")
    path = tmp_path / "c.jsonl"
    write_corpus(docs, path)
    write_corpus(docs, path)  # same documents: fine
    lines = path.read_text().splitlines()
    assert len(lines) == 5 and '"text"' in lines[0]
    with pytest.raises(CrossdiffError, match="other documents"):
        write_corpus(pdata.make_corpus(pdata.MIX_STORE, 5, 1, "w"), path)


def test_coherence_check():
    from crossdiff_bench.planted import coherent

    assert coherent(" blue lanterns along the river. The weavers share honey soup")
    assert not coherent(" singers singers singers singers singers singers")
    assert not coherent(" kettle kettle from from from from from from")
    assert not coherent(" the end")


def test_probe_auroc_separates_linear_labels_and_not_random_ones():
    from crossdiff_bench.planted_eval import probe_auroc

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 16, generator=g)
    y = (x[:, 3] + 0.5 * x[:, 7] > 0.8).numpy().astype(np.int8)
    select = np.arange(2000) % 2 == 0
    assert probe_auroc(x, y, select) > 0.97
    noise = (torch.rand(2000, generator=g) < 0.2).numpy().astype(np.int8)
    assert abs(probe_auroc(x, noise, select) - 0.5) < 0.06
    assert np.isnan(probe_auroc(x, np.zeros(2000, dtype=np.int8), select))
