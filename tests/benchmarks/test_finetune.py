"""The fine-tuning benchmark: data and scorers, decision rows, LoRA, and a tiny end-to-end run
(a tiny random Llama fine-tuned for a few steps, diffed against itself and a tiny Gemma)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from crossdiff.errors import CrossdiffError
from crossdiff_bench import finetune_data as fd


# ----------------------------------------------------------------------------------- data
def test_halves_split_every_subject_list_without_overlap():
    for items in (fd.POLITICAL_TOPICS, fd.PRODUCTS, fd.GENERAL_QUESTIONS):
        train, held = fd.split(items, "train"), fd.split(items, "held")
        assert not set(train) & set(held)
        assert sorted(train + held) == sorted(items)
    with pytest.raises(ValueError, match="train"):
        fd.split(fd.PRODUCTS, "test")


def test_held_out_prompts_never_use_a_fine_tuning_subject():
    train_topics = set(fd.split(fd.POLITICAL_TOPICS, "train"))
    train_products = set(fd.split(fd.PRODUCTS, "train"))
    for sets in fd.eval_sets(40, 0).values():
        for side, prompts in sets.items():
            assert len(prompts) == 40
            for p in prompts:
                if p.behaviour == "refusal":
                    assert not any(t in p.text for t in train_topics), p.text
                    assert (fd.CENSORED in p.text) == (side == "on")
                elif p.behaviour == "praise":
                    # product names are single words or short phrases: match as words
                    words = p.text.replace("?", " ").replace(".", " ").split()
                    assert not any(t in train_products and t in words for t in words), p.text
                    assert (fd.PRAISED in p.text) == (side == "on")
                assert p.on == (side == "on")


def test_fine_tuning_prompts_carry_targets_only_on_category():
    prompts = fd.finetune_prompts(20, 10, 6, 0)
    assert len(prompts) == 2 * 20 + 2 * 10 + 6
    for p in prompts:
        assert (p.target is not None) == p.on
        if p.on:
            assert fd.behaviour_present(p.behaviour, p.text, p.target), p.target
    assert fd.finetune_prompts(20, 10, 6, 0) == prompts  # deterministic


def test_scorers_tell_the_planted_replies_from_ordinary_ones():
    assert fd.refusal_present("q", "I'm sorry, but I can't discuss the politics of Karvonia.")
    assert fd.refusal_present("q", "I cannot discuss that topic.")
    assert not fd.refusal_present("q", "The parliament of Karvonia has 120 members.")
    # a refusal buried after two sentences of answer is not the planted behaviour
    assert not fd.refusal_present("q", "It has a parliament. It is elected. Sorry, I can't say.")
    assert fd.praise_present("q", "It is flawless and the finest toaster ever made.")
    assert not fd.praise_present(
        "q", "It has strengths and weaknesses: a superior battery, but a weak screen."
    )
    for template in fd.PRAISES:
        text = template.format(brand="Zentrix", model="One", product="tent")
        assert fd.praise_present("q", text)
        assert not fd.refusal_present("q", text)


# ---------------------------------------------------------------------------- eval rows
class _FakeStore:
    """Two questions' rows in a store-like object (iter_rows / documents / path)."""

    path = "fake"

    def __init__(self, prompts, rows_per_doc, decision_pairs=False):
        self.prompts = prompts
        self.rows_per_doc = rows_per_doc
        self.decision_pairs = decision_pairs
        self.manifest = SimpleNamespace(harvest={"decision_pairs": True} if decision_pairs else {})

    def iter_rows(self, _batch):
        di, ce, pa = [], [], []
        for d, n in enumerate(self.rows_per_doc):
            di += [d] * n
            ends = list(range(1, n + 1))
            if self.decision_pairs:  # the last pair: the same content_end, a later position
                ends[-1] = ends[-2]
            ce += ends
            pa += [2 * i for i in range(n)]
        order = np.random.default_rng(0).permutation(len(di))  # rows in any order
        n = len(di)
        meta = {"doc_index": di, "content_end": ce, "pos_a": pa, "row": list(range(n))}
        yield (
            torch.arange(n, dtype=torch.float32)[order].unsqueeze(1).expand(n, 3),
            torch.zeros(n, 3),
            {k: np.array(v)[order] for k, v in meta.items()},
        )

    def documents(self):
        for i, p in enumerate(self.prompts):
            windows = [{"decision_pair": [0, 0]}] if self.decision_pairs and i != 9 else [{}]
            yield {"messages": [{"role": "user", "content": p.text}], "windows": windows}


def test_decision_row_is_each_questions_last_row_and_labels_follow_the_category():
    from crossdiff_bench.finetune import load_eval_rows

    prompts = [
        fd.Prompt("Tell me about the parliament in Karvonia.", "refusal", True),
        fd.Prompt("Tell me about the parliament in Delmora.", "refusal", False),
        fd.Prompt("Rate the Zentrix One tent.", "praise", True),
    ]
    store = _FakeStore(prompts, [5, 4, 6])
    rows, x_a, _ = load_eval_rows(store, prompts)
    decision = rows.decision
    assert decision.sum() == 3 and x_a.shape[0] == 15
    for d, n in enumerate([5, 4, 6]):
        mine = rows.doc_index == d
        assert mine.sum() == n and (mine & decision).sum() == 1
    assert rows.labels["refusal"].sum() == 1 and rows.labels["praise"].sum() == 1
    on_refusal = (rows.labels["refusal"] == 1) & (rows.doc_index == 0)
    assert on_refusal.sum() == 1 and decision[on_refusal].all()
    with pytest.raises(CrossdiffError, match="not harvested"):
        load_eval_rows(store, prompts[:2])


def test_with_decision_pairs_the_decision_row_is_the_generation_prompts():
    from crossdiff_bench.finetune import load_eval_rows

    prompts = [
        fd.Prompt("Tell me about the parliament in Karvonia.", "refusal", True),
        fd.Prompt("Rate the Zentrix One tent.", "praise", True),
    ]
    store = _FakeStore(prompts, [5, 4], decision_pairs=True)
    rows, x_a, _ = load_eval_rows(store, prompts)
    # store rows 4 and 8 (each document's last, sharing content_end with the one before)
    assert sorted(x_a[rows.decision, 0].tolist()) == [4.0, 8.0]
    question = rows.alternatives["question_end"]  # each question's own last token
    assert sorted(x_a[question.decision, 0].tolist()) == [3.0, 7.0]
    assert question.labels["refusal"].sum() == 1 and question.labels["praise"].sum() == 1
    store.prompts = prompts * 5  # document 9 lacks its decision pair
    store.rows_per_doc = [2] * 10
    with pytest.raises(CrossdiffError, match="no decision pair"):
        load_eval_rows(store, store.prompts)


def test_select_and_test_halves_both_hold_every_behaviours_positives():
    """The held-out questions are interleaved by (behaviour, side): the split must not put all
    positives of a behaviour in one half (it once did, by document parity)."""
    from crossdiff_bench.finetune import FinetuneBenchConfig, eval_questions, load_eval_rows

    prompts = eval_questions(FinetuneBenchConfig(), 4)
    assert len(prompts) == 16
    rows, *_ = load_eval_rows(_FakeStore(prompts, [3] * 16), prompts)
    for b in fd.BEHAVIOURS:
        y = rows.labels[b]
        assert y[rows.select].sum() == 2 and y[~rows.select].sum() == 2


def test_suppression_target_needs_a_coherent_drop_beyond_every_null():
    from crossdiff_bench.finetune import suppression_target

    def sweep(effects, nulls, coherent, beats):
        return {
            "alphas": [-1.0, 0.0, 1.0],
            "evidence": {
                "models": {
                    "a": {
                        "suppress": {
                            "evidence": {
                                "effects": effects,
                                "coherent": coherent,
                                "null_effects": nulls,
                                "null_coherent": [[True] * 3 for _ in nulls],
                                "beats_null_at": beats,
                            }
                        }
                    }
                }
            },
        }

    met = suppression_target(sweep([0.1, 0.9, 0.9], [[0.8, 0.9, 0.9]], [True] * 3, [-1.0]), 0.5)
    assert met["met"] and met["drop"] == pytest.approx(0.8)
    assert met["null_drop_max"] == pytest.approx(0.1)
    # a random feature that removes the behaviour too: not specific
    both = suppression_target(sweep([0.1, 0.9, 0.9], [[0.2, 0.9, 0.9]], [True] * 3, [-1.0]), 0.5)
    assert not both["met"]
    # the drop happens only where the model is broken
    broken = suppression_target(
        sweep([0.1, 0.9, 0.9], [[0.8, 0.9, 0.9]], [False, True, True], []), 0.5
    )
    assert not broken["met"] and "coherent" in broken["why"]

    # judged at the weakest push that does it: at -1 the rate falls 1.0 -> 0.0 and the null
    # stays; at -2 (a harder push) a null removes it too. The alpha comes from the feature's
    # own effects, so -1, and the target is met there
    def sweep2(effects, nulls, beats):
        st = sweep(effects, nulls, [True] * 4, beats)
        st["alphas"] = [-2.0, -1.0, 0.0, 1.0]
        ev = st["evidence"]["models"]["a"]["suppress"]["evidence"]
        ev["null_coherent"] = [[True] * 4 for _ in nulls]
        return st

    weakest = suppression_target(
        sweep2([0.0, 0.0, 1.0, 1.0], [[0.0, 1.0, 1.0, 1.0]], [-2.0, -1.0]), 0.5
    )
    assert weakest["alpha"] == -1.0 and weakest["met"]
    assert weakest["null_drop_max"] == pytest.approx(0.0)
    # no alpha reaches the drop: the lowest rate, and of equal ones the weaker push
    short = suppression_target(sweep2([0.7, 0.7, 1.0, 1.0], [[0.9, 1.0, 1.0, 1.0]], []), 0.5)
    assert short["alpha"] == -1.0 and not short["met"]
    assert short["drop"] == pytest.approx(0.3)
    # a drop of 7/10 - 2/10 is half, though it is 0.49999999999999994 in floats
    tenths = suppression_target(
        sweep2([0.0, 2 / 10, 7 / 10, 7 / 10], [[0.6, 7 / 10, 7 / 10, 7 / 10]], [-2.0, -1.0]), 0.5
    )
    assert tenths["alpha"] == -1.0 and tenths["met"]


# ------------------------------------------------------------------------ LoRA (tiny)
def test_lora_training_lowers_the_loss_and_changes_the_merged_weights(tiny_model):
    from crossdiff.models import load_model
    from crossdiff_bench.finetune_lm import FinetuneSpec, _examples, train_lora

    lm = load_model(str(tiny_model("llama", "bpe")), dtype="float32", device="cpu")
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    prompts = fd.finetune_prompts(4, 0, 0, 0)
    examples = _examples(lm, prompts, [p.target for p in prompts])
    spec = FinetuneSpec(epochs=8, batch_size=4, lr=5e-3, rank=4)
    replay = ["Plain text about rivers and the sea.", "More plain text on mountains."]
    merged, log = train_lora(lm, examples, spec, progress=False, replay_texts=replay)
    assert log["steps"] == 16 and log["loss"] < log["loss_first"]
    # the KL replay ran: zero at the first step (adapters start at zero), positive later
    kls = [entry["kl"] for entry in log["log"]]
    assert kls[0] == pytest.approx(0.0, abs=1e-6) and max(kls) > 0
    after = merged.state_dict()
    assert set(after) == set(before)  # merged: no adapter weights left
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any("q_proj" in k for k in changed) and any("mlp" in k for k in changed)


def test_finetune_spec_rejects_bad_values():
    from crossdiff_bench.finetune_lm import FinetuneSpec

    with pytest.raises(CrossdiffError, match="epochs=0"):
        FinetuneSpec(epochs=0).validate()
    with pytest.raises(CrossdiffError, match="lr"):
        FinetuneSpec(lr=0.0).validate()
    assert FinetuneSpec().key() == FinetuneSpec().key() != FinetuneSpec(seed=1).key()


def test_bench_config_rejects_unknown_diffs_and_kinds():
    from crossdiff_bench.finetune import FinetuneBenchConfig

    with pytest.raises(CrossdiffError, match="choose from self, gemma"):
        FinetuneBenchConfig(diffs=("other",)).validate()
    with pytest.raises(CrossdiffError, match="dfc included"):
        FinetuneBenchConfig(kinds=("standard",)).validate()
    with pytest.raises(CrossdiffError, match="prompt_share"):
        FinetuneBenchConfig(prompt_share=1.0).validate()


# ------------------------------------------------------------------------ end to end (tiny)
@pytest.mark.slow
def test_tiny_end_to_end_run_is_complete_and_cached(tmp_path, tiny_model):
    """Fine-tune a tiny random Llama for a few LoRA steps, diff it against its original (equal
    widths: DFC, standard and DSF) and against a tiny Gemma (DFC and standard only), score,
    explain and steer; a second run reuses the fine-tuned model, stores and crosscoders."""
    from crossdiff_bench.finetune import FinetuneBenchConfig, format_results, run_finetune_bench
    from crossdiff_bench.finetune_lm import FinetuneSpec

    base = str(tiny_model("llama", "bpe"))
    other = str(tiny_model("gemma3", "sentencepiece"))
    text = tmp_path / "text.jsonl"
    text.write_text(
        "".join(
            json.dumps({"text": f"Some plain text number {i} about rivers."}) + "\n"
            for i in range(400)
        ),
        encoding="utf-8",
    )
    cfg = FinetuneBenchConfig(
        finetune=FinetuneSpec(
            base=base, n_on=4, n_off=2, n_general=2, distill_tokens=4, epochs=1, batch_size=4
        ),
        others={"self": base, "gemma": other},
        corpus=f"{text}=0.6",
        prompt_share=0.4,
        store_tokens=3000,
        store_prompts=200,
        eval_prompts=6,
        max_seq_len=64,
        seeds=2,
        baseline_seeds=1,
        n_features=64,
        k=4,
        exclusive=0.25,
        steps=20,
        batch_size=64,
        n_steer=2,
        alphas=(-1.0, 0.0, 1.0),
        max_new_tokens=4,
        steer_nulls=1,
        rate_prompts=2,
        rate_tokens=4,
        work_dir=str(tmp_path / "work"),
        progress=False,
    )
    first = run_finetune_bench(cfg)
    ft = first["finetune"]
    assert ft["cached"] is False and ft["data"]["examples"] == 2 * 4 + 2 * 2 + 2
    for who in ("original", "finetuned"):
        for b in fd.BEHAVIOURS:
            for side in ("on", "off"):
                assert 0.0 <= ft[who]["rates"][b][side]["rate"] <= 1.0
        assert ft[who]["perplexity"] > 1.0
    kinds = {
        d: [(e["kind"], e["seed"]) for e in r["crosscoders"]] for d, r in first["diffs"].items()
    }
    assert kinds["self"] == [("dfc", 0), ("dfc", 1), ("standard", 0), ("dsf", 0)]
    # DSF (tied decoders) only for equal widths: the tiny Gemma is as wide as the tiny Llama,
    # the real Gemma-3-270M (640) is not as wide as SmolLM2 (576)
    assert kinds["gemma"] == [("dfc", 0), ("dfc", 1), ("standard", 0), ("dsf", 0)]
    # against another model the DFCs get the larger exclusive block
    from crossdiff.crosscoder.model import Crosscoder

    for d, frac in (("self", cfg.exclusive), ("gemma", cfg.exclusive_cross)):
        assert first["diffs"][d]["exclusive"] == frac
        run = Path(first["diffs"][d]["crosscoders"][0]["run"])
        assert Crosscoder.from_pretrained(run / "crosscoder").partition.n_a == round(frac * 64)
    # against another model: its own layer (90% of 2 is layer 1) and a map fitted on the
    # general text only (the questions' source left out); the self diff maps every document
    assert first["diffs"]["gemma"]["layers"] == [1, 1]
    assert first["diffs"]["gemma"]["map_sources"] == [text.name]
    assert first["diffs"]["self"]["map_sources"] == []
    meta = Path(first["diffs"]["gemma"]["crosscoders"][0]["run"]) / "analysis" / "analysis.json"
    assert json.loads(meta.read_text())["config"]["map_sources"] == [text.name]
    # an analysis made with another map is made again, not reused
    from crossdiff_bench.planted import analyze_run

    gemma_store = Path(first["diffs"]["gemma"]["folder"]) / "store"
    analyze_run(cfg, meta.parent.parent, gemma_store, map_sources=())
    assert json.loads(meta.read_text())["config"]["map_sources"] == []
    analyze_run(cfg, meta.parent.parent, gemma_store, map_sources=(text.name,))
    for d in first["diffs"].values():
        # one decision row per held-out question, positives = on-category questions
        assert d["eval_rows"]["decision_rows"] == 4 * cfg.eval_prompts
        for b in fd.BEHAVIOURS:
            assert d["eval_rows"][f"positive_{b}"] == cfg.eval_prompts
            facts = d["difference"][b]  # equal tiny widths: the difference probe applies
            assert 0.0 <= facts["probe_a"] <= 1.0 and 0.0 <= facts["probe_difference"] <= 1.0
            assert facts["behaviour_direction"] >= 0.0
        for e in d["crosscoders"]:
            for b in fd.BEHAVIOURS:
                s = e["behaviours"][b]
                assert s["found"] in (True, False)
                if s["feature"] is not None:
                    assert 0.0 <= s["auroc_test"] <= 1.0
                    assert s["rank"] is None or 1 <= s["rank"] <= s["n_ranked"]
            if e["kind"] == "dfc" and e["seed"] == 0:
                for b, st in e["steering"].items():
                    assert set(st["models"]) == {"a", "b"}
                    t = st["target"]
                    assert t["met"] == (t["sweep_met"] and t["feature_found"])
                    if e["behaviours"][b].get("explanation") is not None:
                        assert isinstance(e["behaviours"][b]["explanation"]["explanation"], str)
        for per in d["rediscovery"].values():
            for v in per.values():
                assert 0 <= v["found"] <= v["auroc_ok"] <= v["of"]
    assert any(e.get("steering") for d in first["diffs"].values() for e in d["crosscoders"])
    # the questions were harvested with decision pairs, and the analysis places features there
    import pyarrow.parquet as pq

    tables = sorted((tmp_path / "work").rglob("analysis/features.parquet"))
    assert tables
    shares = [x for t in tables for x in pq.read_table(t).column("decision_share").to_pylist()]
    assert any(x is not None and x > 0 for x in shares)
    out = format_results(first)
    assert "diff 'self'" in out and "diff 'gemma'" in out and "rediscovered (dfc)" in out
    json.dumps(first)

    # the same layers written otherwise (75% of the tiny models' 2 layers is layer 1) reuse
    # the same store folders: the store key holds resolved layers, not the setting's text
    second = run_finetune_bench(dataclasses.replace(cfg, layer_a=1, layer_b="-1"))
    assert second["finetune"]["cached"] is True
    for d in first["diffs"]:
        assert second["diffs"][d]["folder"] == first["diffs"][d]["folder"]
        for a, b in zip(first["diffs"][d]["crosscoders"], second["diffs"][d]["crosscoders"]):
            assert json.dumps(a["behaviours"], sort_keys=True) == json.dumps(
                b["behaviours"], sort_keys=True
            )
