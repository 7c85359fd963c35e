"""The built-in default corpus: Wikipedia text interleaved with the project's own chats.

- ``builtin:wiki``: chunks of the English Wikipedia sample in gensim's test data (see
  :mod:`crossdiff.corpus.wiki`): 1,819 chunks of up to 300 words from 106 articles,
  436k words in all, taken round-robin over articles (every article's lead first).
- ``builtin:chats``: 200 chats written for this project (``crossdiff/data/chats.jsonl``):
  single-turn prompts, some with a short assistant reply, and a few multi-turn chats with and
  without system prompts, covering topics where models tend to differ (politics of China,
  Taiwan, the US, Russia; history; safety refusals; requests for copyrighted text; identity
  questions; code; math; medicine; Chinese, Korean, Arabic, French, Spanish, German, Japanese
  and other languages; emoji) as well as everyday ones.

Order: text and chats alternate (text, chat, text, chat, ...) until the chats run out, then the
remaining text follows. Chats are taken round-robin over their topics (politics, history,
safety, ..., then the second chat of each topic, ...), so any prefix (a small ``--tokens``
budget) holds text and chats of many topics; all chats come within the first ~90k tokens.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib.resources import files

from crossdiff.corpus.document import Document, check_messages
from crossdiff.corpus.wiki import wiki_chunks

WIKI_SOURCE = "builtin:wiki"
CHATS_SOURCE = "builtin:chats"


def _chat_records() -> list[tuple[str, Document]]:
    """(topic, chat) in file order; doc ids ``builtin:chats:<line index>``."""
    resource = files("crossdiff.data").joinpath("chats.jsonl")
    records = []
    for lineno, line in enumerate(resource.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            record = json.loads(line)
            messages = check_messages(record["messages"], f"chats.jsonl line {lineno}")
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


def builtin_corpus() -> Iterator[Document]:
    """The default corpus: text and chats alternating, then the rest of the text."""
    chats = iter(builtin_chats())
    for text in builtin_texts():
        yield text
        chat = next(chats, None)
        if chat is not None:
            yield chat
    yield from chats  # only if there were fewer texts than chats
