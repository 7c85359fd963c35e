"""crossdiff.corpus: file formats, folders, errors, and the built-in default corpus."""

from __future__ import annotations

import importlib.util
import itertools
import json
import random
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crossdiff.corpus import Document, builtin_chats, load_corpus
from crossdiff.corpus.mix import pair_estimate
from crossdiff.corpus.wiki import (
    CHUNK_WORDS,
    MIN_CHUNK_WORDS,
    chunk_article,
    strip_markup,
    wiki_chunks,
    wiki_sample_path,
)
from crossdiff.errors import CrossdiffError

CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]


def _write_jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


# ------------------------------------------------------------------------- files
def test_txt_documents_are_separated_by_blank_lines(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("\n\nFirst doc line one.\nline two\n\n \t \n\nSecond doc.\n\n\n你好 🍕\n")
    docs = list(load_corpus(path))
    assert [d.text for d in docs] == ["First doc line one.\nline two", "Second doc.", "你好 🍕"]
    assert [d.doc_id for d in docs] == ["notes.txt:0", "notes.txt:1", "notes.txt:2"]
    assert all(d.source == "notes.txt" and d.messages is None and not d.is_chat for d in docs)


def test_jsonl_text_and_messages(tmp_path):
    path = tmp_path / "mixed.jsonl"
    records = [
        {"text": "A document.", "id": 7},
        {"messages": CHAT},
        {"conversation": CHAT, "model": "x"},  # LMSYS-Chat-1M style
        {"text": "   "},  # blank: skipped
    ]
    _write_jsonl(path, records)
    with path.open("a") as handle:
        handle.write("\n")  # blank line: skipped
    docs = list(load_corpus(str(path)))
    assert len(docs) == 3
    assert docs[0].text == "A document." and docs[0].messages is None
    assert docs[1].messages == CHAT and docs[1].text is None and docs[1].is_chat
    assert docs[2].messages == CHAT
    assert [d.doc_id for d in docs] == ["mixed.jsonl:0", "mixed.jsonl:1", "mixed.jsonl:2"]
    assert docs[1].to_json() == {
        "doc_id": "mixed.jsonl:1",
        "source": "mixed.jsonl",
        "messages": CHAT,
    }


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"title": "no text"}, r"line 2: no 'text' or 'messages' field"),
        ({"text": 5}, r"line 2: 'text' must be a string"),
        ({"messages": []}, r"line 2: 'messages' must be a non-empty list"),
        ({"messages": [{"role": "robot", "content": "x"}]}, r"line 2: message 0 has role 'robot'"),
        ({"messages": [{"role": "user"}]}, r"line 2: message 0 has no string 'content'"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    _write_jsonl(path, [{"text": "fine"}, line])
    with pytest.raises(CrossdiffError, match=message) as info:
        list(load_corpus(path))
    assert str(path) in str(info.value)


def test_jsonl_invalid_json(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(CrossdiffError, match=r"broken.jsonl line 2: not valid JSON"):
        list(load_corpus(path))


def test_parquet_text_and_messages(tmp_path):
    texts = pa.table({"text": ["one", None, "", "two"], "other": [1, 2, 3, 4]})
    pq.write_table(texts, tmp_path / "texts.parquet")
    docs = list(load_corpus(tmp_path / "texts.parquet"))
    assert [d.text for d in docs] == ["one", "two"]
    assert [d.doc_id for d in docs] == ["texts.parquet:0", "texts.parquet:1"]

    chats = pa.table({"messages": [CHAT, CHAT[:1]]})
    pq.write_table(chats, tmp_path / "chats.parquet")
    docs = list(load_corpus(tmp_path / "chats.parquet"))
    assert [d.messages for d in docs] == [CHAT, CHAT[:1]]

    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "nocol.parquet")
    with pytest.raises(CrossdiffError, match="no 'text' or 'messages' column"):
        list(load_corpus(tmp_path / "nocol.parquet"))


def test_folder_is_read_recursively_in_sorted_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a.txt").write_text("alpha\n\nbeta\n")
    _write_jsonl(tmp_path / "b" / "c.jsonl", [{"messages": CHAT}])
    pq.write_table(pa.table({"text": ["gamma"]}), tmp_path / "b" / "a.parquet")
    (tmp_path / "readme.md").write_text("ignored")
    (tmp_path / ".hidden.txt").write_text("ignored")
    docs = list(load_corpus(tmp_path))
    assert [d.doc_id for d in docs] == ["a.txt:0", "a.txt:1", "b/a.parquet:0", "b/c.jsonl:0"]
    assert docs == list(load_corpus(tmp_path))  # deterministic


def test_limit(tmp_path):
    path = tmp_path / "many.txt"
    path.write_text("\n\n".join(f"doc {i}" for i in range(10)))
    assert [d.text for d in load_corpus(path, limit=3)] == ["doc 0", "doc 1", "doc 2"]
    for bad in (0, -1, 1.5):
        with pytest.raises(CrossdiffError, match="limit"):
            load_corpus(path, limit=bad)


def test_bad_specs(tmp_path):
    with pytest.raises(CrossdiffError, match=r"corpus 'nope\.txt' does not exist"):
        load_corpus("nope.txt")
    (tmp_path / "data.csv").write_text("text\nx\n")
    with pytest.raises(CrossdiffError, match=r"unknown extension '\.csv'"):
        load_corpus(tmp_path / "data.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CrossdiffError, match=r"has no \.txt, \.jsonl, \.parquet files"):
        load_corpus(tmp_path / "empty")
    with pytest.raises(CrossdiffError, match="hf:NAME"):
        load_corpus("hf:")
    with pytest.raises(CrossdiffError, match="hf:NAME"):
        load_corpus("hf:a:b:c:d")


@pytest.mark.parametrize("content", ["", "\n \n\n", '{"text": ""}\n\n{"text": "  "}\n'])
def test_empty_corpus(tmp_path, content):
    path = tmp_path / ("empty.jsonl" if "text" in content else "empty.txt")
    path.write_text(content)
    documents = load_corpus(path)  # the spec itself is fine ...
    with pytest.raises(CrossdiffError, match=r"corpus '.*empty\..*' has no documents"):
        next(documents)  # ... but iteration finds nothing


def test_hf_without_datasets_or_offline():
    if importlib.util.find_spec("datasets") is None:
        with pytest.raises(CrossdiffError, match="pip install datasets"):
            load_corpus("hf:someone/some-dataset")
    else:
        with pytest.raises(CrossdiffError, match="offline"):
            load_corpus("hf:someone/some-dataset:default:train")


# ---------------------------------------------------------------------- built-in
def _shares(docs, weight=pair_estimate):
    chat = sum(weight(d) for d in docs if d.is_chat)
    return chat / max(1, sum(weight(d) for d in docs))


def test_builtin_corpus_mixes_text_and_chats_half_and_half_in_every_prefix():
    docs = list(load_corpus("builtin"))
    assert docs == list(load_corpus())  # default spec, deterministic
    ids = [d.doc_id for d in docs]
    assert len(ids) == len(set(ids))
    chats = [d for d in docs if d.is_chat]
    texts = [d for d in docs if not d.is_chat]
    assert len(chats) == len(builtin_chats())  # the mix ends when the chats run out
    assert len(texts) > 100
    assert {d.source for d in chats} == {"builtin:chats"}
    assert {d.source for d in texts} == {"builtin:wiki"}
    total = 0
    for n in (2, 10, 50, 200, len(docs) // 2, len(docs)):  # every prefix keeps the mix
        prefix = docs[:n]
        total = sum(pair_estimate(d) for d in prefix)
        largest = max(pair_estimate(d) for d in prefix)
        assert abs(_shares(prefix) - 0.5) <= largest / total + 1e-9, n
    assert total > 200_000  # enough for the default run's 250k-pair budget at ~1 pair/unit
    # the prefix covers several articles, not one article's chunks
    first_words = {d.text.split()[0] for d in texts[:10]}
    assert len(first_words) >= 8


def test_mix_spec_keeps_its_shares_in_every_prefix_and_stops_with_a_source(tmp_path):
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "epsilon"]
    for name, n, size in (("a", 400, 30), ("b", 60, 200), ("c", 1000, 5)):
        lines = [
            json.dumps({"text": " ".join(rng.choices(words, k=rng.randint(1, 2 * size)))})
            for _ in range(n)
        ]
        (tmp_path / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    a, b, c = (str(tmp_path / f"{x}.jsonl") for x in "abc")
    spec = f"{a}=2,{b}=1,{c}=1"
    docs = list(load_corpus(spec))
    assert docs == list(load_corpus({a: 0.5, b: 0.25, c: 0.25}))  # same mix as a mapping
    by = {x: str(tmp_path / f"{x}.jsonl") for x in "abc"}
    sources = [next(k for k, v in by.items() if d.source.endswith(Path(v).name)) for d in docs]
    weights = [pair_estimate(d) for d in docs]
    running = {x: 0 for x in "abc"}
    total = 0
    for k, (src, w) in enumerate(zip(sources, weights), start=1):
        running[src] += w
        total += w
        if k >= 20:
            largest = max(weights[:k])
            for x, share in (("a", 0.5), ("b", 0.25), ("c", 0.25)):
                assert abs(running[x] / total - share) <= 2 * largest / total, (k, x)
    # it ended when one source ran out, not after
    counts = {x: sources.count(x) for x in "abc"}
    assert counts["b"] == 60 or counts["a"] == 400 or counts["c"] == 1000
    assert list(load_corpus(spec, limit=7)) == docs[:7]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("builtin:wiki=0.5", "at least two"),
        ("builtin:wiki=0.5,builtin:wiki=0.5", "more than once"),
        ("builtin:wiki=0,builtin:chats=1", "positive number"),
        ({"builtin:wiki": "x", "builtin:chats": 1}, "positive number"),
        ("builtin:wiki=0.5,/no/such/file.jsonl=0.5", "does not exist"),
    ],
)
def test_bad_mix_specs_are_rejected_with_the_value(spec, match):
    with pytest.raises(CrossdiffError, match=match):
        list(load_corpus(spec))


def test_pair_estimate_counts_words_marks_and_cjk_characters():
    assert pair_estimate(Document("x:0", "Hello, world! 42", None, "x")) == 5
    assert pair_estimate(Document("x:1", "天安门广场", None, "x")) == 5
    chat = Document("x:2", None, [{"role": "user", "content": "Hi there"}], "x")
    assert pair_estimate(chat) == 2
    assert pair_estimate(Document("x:3", "", None, "x")) == 1


def test_builtin_chats_cover_the_topics_where_models_differ():
    chats = builtin_chats()
    assert len(chats) >= 150
    contents = [m["content"] for d in chats for m in d.messages]
    joined = "\n".join(contents)
    for needle in (
        "Tiananmen",
        "Taiwan",
        "American exceptionalism",
        "Russia",
        "election",
        "lyrics",
        "chapter",
        "Who made you",
        "SQL",
        "JavaScript",
        "Python",
        "derivative",
        "symptoms",
    ):
        assert needle in joined, needle
    scripts = {
        "chinese": r"[\u4e00-\u9fff]",
        "korean": r"[\uac00-\ud7af]",
        "arabic": r"[\u0600-\u06ff]",
        "japanese": r"[\u3040-\u30ff]",
        "emoji": r"[\U0001F300-\U0001FAFF]",
    }
    for name, pattern in scripts.items():
        assert re.search(pattern, joined), name
    for word in ("Quelle", "¿Cuáles", "Was waren"):  # French, Spanish, German
        assert word in joined
    multi_turn = [d for d in chats if sum(m["role"] == "user" for m in d.messages) > 1]
    with_reply = [d for d in chats if d.messages[-1]["role"] == "assistant"]
    with_system = [d for d in chats if d.messages[0]["role"] == "system"]
    assert len(multi_turn) >= 5 and len(with_reply) >= 10 and len(with_system) >= 2
    for d in chats:  # roles alternate after an optional system prompt
        roles = [m["role"] for m in d.messages if m["role"] != "system"]
        assert roles[0] == "user"
        assert all(a != b for a, b in itertools.pairwise(roles))


@pytest.mark.parametrize(("arch", "tok"), [("llama", "bpe"), ("gemma3", "sentencepiece")])
def test_builtin_chats_render_on_chat_templates(tiny_loaded, arch, tok):
    lm = tiny_loaded(arch, tok)
    for document in builtin_chats():
        rendered = lm.render_chat(document.messages)
        expected = [m["content"] for m in document.messages]
        if tok == "sentencepiece":  # that template trims contents
            expected = [c.strip() for c in expected]
        assert rendered.contents() == expected


def test_wiki_chunks_are_clean_text():
    chunks = wiki_chunks()
    assert len(chunks) > 1000
    markup = re.compile(r"\[\[|\]\]|\{\{|\}\}|<ref|'''|\[http|==|&nbsp;|&amp;")
    dirty = [text for _, text in chunks if markup.search(text)]
    assert len(dirty) <= len(chunks) // 200, dirty[:3]
    for _, text in chunks:
        words = len(text.split())
        assert MIN_CHUNK_WORDS <= words <= 2 * CHUNK_WORDS
        assert "\n\n\n" not in text and text == text.strip()


def test_strip_markup_and_chunking():
    raw = (
        "{{Infobox thing|name=X|size={{convert|3|m}}}}\n"
        "'''Widgets''' are [[small object|small]] [[machine]]s used in "
        "[[Category:Objects]][[File:W.png|thumb|A [[widget]] photo]]"
        "factories.<ref>Some source</ref> They were named in 1900 by engineers "
        "<!-- hidden --> of the [http://example.com Widget Society] in the city.\n\n"
        "{| class=wikitable\n|-\n| cell || cell\n|}\n"
        "== History ==\n"
        "* Widgets were first made of wood and later of iron and steel alloys.\n\n"
        "== References ==\n"
        "Everything after this heading is dropped, however long it may be.\n"
    )
    text = strip_markup(raw)
    assert text == (
        "Widgets are small machines used in factories. They were named in 1900 by engineers "
        "of the Widget Society in the city.\n\n"
        "Widgets were first made of wood and later of iron and steel alloys."
    )
    long_article = "\n\n".join(" ".join(f"w{p}_{i}." for i in range(120)) for p in range(6))
    chunks = chunk_article(long_article)
    assert all(len(c.split()) <= CHUNK_WORDS for c in chunks)
    assert " ".join(" ".join(chunks).split()) == " ".join(long_article.split())


def test_missing_gensim_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gensim" else real(name, *a)
    )
    with pytest.raises(CrossdiffError, match=r"pip install 'gensim>=4.3'"):
        wiki_sample_path()


def test_document_is_a_plain_dataclass():
    doc = Document("x:0", "text", None, "x")
    assert doc.to_json() == {"doc_id": "x:0", "source": "x", "text": "text"}
