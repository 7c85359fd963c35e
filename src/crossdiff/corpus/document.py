"""One corpus document: a plain text, or a chat (a list of role/content messages)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from crossdiff.errors import CrossdiffError

CHAT_ROLES = ("system", "user", "assistant")
REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")


def repair_text(text: str) -> tuple[str, int]:
    """``text`` with every lone surrogate (invalid Unicode: JSON's ``"\\ud83d"`` without its
    pair) replaced by U+FFFD, and how many were replaced. No tokenizer can encode them."""
    if _SURROGATE.search(text) is None:
        return text, 0
    return _SURROGATE.subn(REPLACEMENT, text)


@dataclass
class Document:
    """A document of a corpus.

    doc_id: stable and unique within a corpus, ``"<source>:<index>"`` (index counts the
    documents of that source from 0). text: the plain document, or None for a chat.
    messages: the chat (``[{"role": "user"|"assistant"|"system", "content": ...}]``), or None.
    source: where it came from (a file path, ``hf:<name>``, ``builtin:wiki``, ``builtin:chats``).
    repaired: how many invalid characters (lone surrogates) of the text or messages were
    replaced by U+FFFD when the document was made (done here, so every reader repairs).
    """

    doc_id: str
    text: str | None
    messages: list[dict[str, str]] | None
    source: str
    repaired: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.text, str):
            self.text, n = repair_text(self.text)
            self.repaired += n
        if self.messages is not None:
            clean = []
            for message in self.messages:
                content = message.get("content") if isinstance(message, dict) else None
                if isinstance(content, str):
                    fixed, n = repair_text(content)
                    if n:
                        message = {**message, "content": fixed}
                        self.repaired += n
                clean.append(message)
            self.messages = clean

    @property
    def is_chat(self) -> bool:
        return self.messages is not None

    def to_json(self) -> dict[str, object]:
        """A JSON-serializable dict (e.g. for storing the documents a store was built from)."""
        record: dict[str, object] = {"doc_id": self.doc_id, "source": self.source}
        if self.messages is not None:
            record["messages"] = self.messages
        else:
            record["text"] = self.text
        return record


def check_messages(value: object, where: str) -> list[dict[str, str]]:
    """Validate a chat from untrusted input; ``where`` names the file and line for errors."""
    if not isinstance(value, list) or not value:
        raise CrossdiffError(f"{where}: 'messages' must be a non-empty list of messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise CrossdiffError(f"{where}: message {i} must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in CHAT_ROLES:
            raise CrossdiffError(
                f"{where}: message {i} has role {role!r}; use one of {', '.join(CHAT_ROLES)}"
            )
        if not isinstance(content, str):
            raise CrossdiffError(f"{where}: message {i} has no string 'content'")
        messages.append({"role": role, "content": content})
    return messages
