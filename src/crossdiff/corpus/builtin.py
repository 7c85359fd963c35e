"""The built-in default corpus: Wikipedia text and the project's own chats, half and half.

- ``builtin:wiki``: chunks of the English Wikipedia sample in gensim's test data (see
  :mod:`crossdiff.corpus.wiki`): 1,819 chunks of up to 300 words from 106 articles,
  436k words in all, taken round-robin over articles (every article's lead first).
- ``builtin:chats``: the project's conversations. First 200 chats written by hand
  (``crossdiff/data/chats.jsonl``): single-turn prompts, some with a short assistant reply, and
  a few multi-turn chats with and without system prompts, covering topics where models tend to
  differ (politics of China, Taiwan, the US, Russia; history; safety refusals; requests for
  copyrighted text; identity questions; code; math; medicine; many languages; emoji). Then
  1,286 generated ones (``crossdiff/data/chats_generated.jsonl``, rebuilt by
  ``scripts/make_chats.py``): user prompts made by the project from templates (politics and
  history of 36 countries, comparisons of nations and products, requests for copyrighted text,
  medical and legal questions, requests that instruction-tuned models refuse, sycophancy
  probes, everyday tasks, identity; ten languages), each answered once, greedy, by one of the
  two built-in models (the record says which: half each).

Order: ``builtin`` mixes text and chats half and half by (estimated) pairs in every prefix
(:mod:`crossdiff.corpus.mix`) and ends when the chats run out. Chats are taken round-robin over
their topics, and texts round-robin over articles, so any prefix (a small ``--tokens`` budget)
holds text and chats of many topics.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib.resources import files

from crossdiff.corpus.document import Document, check_messages
from crossdiff.corpus.wiki import wiki_chunks

WIKI_SOURCE = "builtin:wiki"
CHATS_SOURCE = "builtin:chats"


CHAT_FILES = ("chats.jsonl", "chats_generated.jsonl")
"""The hand-written chats, then the generated ones (``scripts/make_chats.py``)."""


def _chat_records() -> list[tuple[str, Document]]:
    """(topic, chat) in file order; doc ids ``builtin:chats:<index>`` count the chats of both
    files in order (the hand-written ones keep the ids they had before the generated ones)."""
    records = []
    for name in CHAT_FILES:
        resource = files("crossdiff.data").joinpath(name)
        if not resource.is_file():
            continue
        for lineno, line in enumerate(resource.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                record = json.loads(line)
                messages = check_messages(record["messages"], f"{name} line {lineno}")
                doc_id = f"{CHATS_SOURCE}:{len(records)}"
                document = Document(doc_id, None, messages, CHATS_SOURCE)
                records.append((record.get("topic", ""), document))
    return records


def builtin_chats() -> list[Document]:
    """The project's chats, round-robin over topics (doc ids keep the file's line order)."""
    by_topic: dict[str, list[Document]] = {}
    for topic, document in _chat_records():
        by_topic.setdefault(topic, []).append(document)
    return _round_robin(list(by_topic.values()))


def _round_robin(groups: list[list[Document]]) -> list[Document]:
    """First item of every group, then the second of every group, and so on."""
    ordered = []
    for rank in range(max(map(len, groups), default=0)):
        ordered.extend(group[rank] for group in groups if rank < len(group))
    return ordered


def builtin_texts() -> Iterator[Document]:
    """The Wikipedia chunks, round-robin over articles (each article's lead comes first).

    Doc ids ``builtin:wiki:<index>`` number the chunks in the sample's file order.
    """
    by_article: dict[str, list[Document]] = {}
    for index, (title, text) in enumerate(wiki_chunks()):
        document = Document(f"{WIKI_SOURCE}:{index}", text, None, WIKI_SOURCE)
        by_article.setdefault(title, []).append(document)
    yield from _round_robin(list(by_article.values()))


BUILTIN_MIX = {WIKI_SOURCE: 0.5, CHATS_SOURCE: 0.5}
"""The default corpus's shares of pairs: the method's half web text, half chat."""
