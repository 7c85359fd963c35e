"""Decision pairs: a prompt's last template token, where each model decides how to answer.

Checked on tiny random models with different chat templates (ChatML vs a trimming Gemma
template, and the plain rendering of a model without one): every prompt (a chat ending with a
user turn) gets exactly one extra row, at each model's last generation-prompt token, stored
with that model's own hidden state there; the rows of every other document are those of a
harvest without the option; a prompt cut at ``max_seq_len`` gets no decision pair and says so;
the option is part of the settings a store must match to be extended; and the tokenization
descriptors treat the decision row as a clean boundary, not a many-piece word.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crossdiff.analysis.tokenization import ROLES, shard_descriptors
from crossdiff.errors import CrossdiffError
from crossdiff.harvest import harvest
from test_harvest import check_hidden_states, config

pytestmark = pytest.mark.usefixtures("one_thread_module")

PROMPTS = [
    [{"role": "user", "content": "Tell me about the constitutional court in Karvonia."}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What are the pros and cons of the Zentrix Nova drone?"},
    ],
    [
        {"role": "user", "content": "Hi there."},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Name a river."},
    ],
]
REPLY = [
    {"role": "user", "content": "Who made you?"},
    {"role": "assistant", "content": "A research lab trained me."},
]
LONG = [{"role": "user", "content": " ".join(["word"] * 200)}]


def write(path: Path) -> Path:
    docs = [{"messages": m} for m in PROMPTS]
    docs += [{"messages": REPLY}, {"text": "Plain text is read as before, with no template."}]
    docs.append({"messages": LONG})
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return path


def rows_by_doc(store) -> dict[int, dict[str, np.ndarray]]:
    out: dict[int, dict[str, list]] = {}
    for _, _, meta in store.iter_rows(batch_size=10_000):
        for r in range(len(meta["row"])):
            d = out.setdefault(int(meta["doc_index"][r]), {"pos_a": [], "pos_b": [], "end": []})
            d["pos_a"].append(int(meta["pos_a"][r]))
            d["pos_b"].append(int(meta["pos_b"][r]))
            d["end"].append(int(meta["content_end"][r]))
    return {k: {n: np.array(v) for n, v in d.items()} for k, d in out.items()}


@pytest.mark.parametrize(
    ("spec_a", "spec_b"),
    [
        (("llama", "bpe", True), ("gemma3", "sentencepiece", True)),
        (("qwen3", "unigram", True), ("gpt2", "bpe", False)),  # B: the plain rendering
    ],
    ids=["chatml-gemma", "chatml-plain"],
)
def test_prompts_get_one_decision_row_at_the_generation_prompt(
    tiny_model, tiny_loaded, tmp_path: Path, spec_a, spec_b
) -> None:
    corpus = write(tmp_path / "c.jsonl")
    (a, ta, ca), (b, tb, cb) = spec_a, spec_b
    lm_a, lm_b = tiny_loaded(a, ta, chat_template=ca), tiny_loaded(b, tb, chat_template=cb)
    paths = tiny_model(a, ta, chat_template=ca), tiny_model(b, tb, chat_template=cb)
    on = harvest(
        config(tmp_path / "on", corpus, *paths, max_seq_len=64, decision_pairs=True),
        models=(lm_a, lm_b),
    )
    off = harvest(config(tmp_path / "off", corpus, *paths, max_seq_len=64), models=(lm_a, lm_b))
    assert on.manifest.harvest["decision_pairs"] is True
    assert "decision_pairs" not in off.manifest.harvest
    docs_on, docs_off = list(on.documents()), list(off.documents())
    rows_on, rows_off = rows_by_doc(on), rows_by_doc(off)
    for i, messages in enumerate(PROMPTS):
        win = docs_on[i]["windows"][0]
        da, db = win["decision_pair"]
        for side, lm, pos in (("a", lm_a, da), ("b", lm_b, db)):
            rendered = lm.render_chat(messages, add_generation_prompt=True)
            assert win[side]["text"] == rendered.text  # read up to the generation prompt
            assert pos == len(win[side]["input_ids"]) - 1  # its last token
        got, ref = rows_on[i], rows_off[i]
        assert len(got["pos_a"]) == len(ref["pos_a"]) + 1
        np.testing.assert_array_equal(got["pos_a"][:-1], ref["pos_a"])  # content pairs as before
        np.testing.assert_array_equal(got["pos_b"][:-1], ref["pos_b"])
        assert (got["pos_a"][-1], got["pos_b"][-1]) == (da, db)
        assert got["end"][-1] == got["end"][-2] == ref["end"][-1]  # all content read
        assert "decision_pair" not in docs_off[i]["windows"][0]
        assert docs_on[i]["pairs"] == docs_off[i]["pairs"] + 1
    for i in (len(PROMPTS), len(PROMPTS) + 1):  # a chat with a reply, a text: unchanged
        assert "decision_pair" not in docs_on[i]["windows"][0]
        for name in ("pos_a", "pos_b", "end"):
            np.testing.assert_array_equal(rows_on[i][name], rows_off[i][name])
    long = docs_on[len(PROMPTS) + 2]
    assert long["truncated"] and "decision_pair" not in long["windows"][0]
    assert long["note"].startswith("no decision pair")
    # every row, the decision rows included, is the model's own hidden state there
    assert check_hidden_states(on, lm_a, lm_b, max_windows=len(docs_on)) == len(docs_on)
    assert on.verify().ok

    desc = shard_descriptors(on, 0)
    flat = np.concatenate([rows_on[i]["pos_a"] for i in sorted(rows_on)])
    assert len(flat) == len(desc["gap"])
    last = np.cumsum([len(rows_on[i]["pos_a"]) for i in sorted(rows_on)]) - 1
    for i in range(len(PROMPTS)):
        j = last[i]
        assert not desc["word_internal"][j] and not desc["later_a"][j] and not desc["later_b"][j]
        assert desc["pieces_a"][j] == desc["pieces_b"][j] == 1
        assert desc["gap"][j] == desc["gap"][j - 1]  # as far from a shared boundary as before
        assert desc["role"][j] == ROLES.index("decision")
        assert desc["role"][j - 1] == ROLES.index("user")
    assert (desc["role"] == ROLES.index("decision")).sum() == len(PROMPTS)


def test_a_store_is_extended_only_with_the_same_choice(tiny_model, tiny_loaded, tmp_path) -> None:
    corpus = write(tmp_path / "c.jsonl")
    specs = ("llama", "bpe"), ("gemma3", "sentencepiece")
    models = tuple(tiny_loaded(*s) for s in specs)
    paths = tuple(tiny_model(*s) for s in specs)
    out = tmp_path / "s"
    first = harvest(config(out, corpus, *paths, tokens=10), models=models)
    rows = first.n_rows
    with pytest.raises(CrossdiffError, match="decision_pairs"):
        harvest(config(out, corpus, *paths, decision_pairs=True), models=models)
    again = harvest(config(out, corpus, *paths, tokens=10), models=models)
    assert again.n_rows == rows  # nothing lost
    # the other way, on a complete store: one with decision pairs is not "done" for a request
    # without them (the cheap same-request check compares the settings both ways too)
    done = harvest(config(tmp_path / "d", corpus, *paths, decision_pairs=True), models=models)
    assert done.is_complete
    with pytest.raises(CrossdiffError, match="decision_pairs"):
        harvest(config(tmp_path / "d", corpus, *paths), models=models)
    assert harvest(config(tmp_path / "d", corpus, *paths, decision_pairs=True)).n_rows == (
        done.n_rows
    )
