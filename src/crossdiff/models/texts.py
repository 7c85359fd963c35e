"""What a model reads: rendered text with its content spans, and its tokenization.

These two records are the contract between the models package and alignment: alignment only
pairs tokens that lie inside ``content_spans`` (the words both models really share), never chat
template text, BOS/EOS or padding, which differ from model to model.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RenderedText:
    """The exact string a model reads, and which parts of it are content.

    ``content_spans`` are ``(start, end)`` character spans of ``text`` holding the message contents
    (for a chat: one span per message, in order, zero-length for an empty message) or the whole
    document (plain text). Everything outside them is template text. ``add_special_tokens`` says
    whether tokenization should let the tokenizer add its special tokens (BOS etc.): False when
    the chat template already wrote BOS into ``text``, so BOS is never doubled. ``dropped``
    lists the messages the chat template did not write at all (Phi-3's drops system messages);
    their spans are empty, and alignment treats them as content the other model alone read.
    """

    text: str
    content_spans: list[tuple[int, int]]
    add_special_tokens: bool
    dropped: tuple[int, ...] = field(default=())

    def contents(self) -> list[str]:
        """The content strings, in order (``text[start:end]`` for each span)."""
        return [self.text[a:b] for a, b in self.content_spans]


@dataclass
class TokenizedText:
    """A tokenization with the character span of every token in ``RenderedText.text``.

    ``offsets`` are exactly what the fast tokenizer reports (never fabricated): ``(0, 0)`` for
    special tokens the tokenizer added itself; several byte-level tokens of one multi-byte
    character may share (overlapping) spans. ``special_mask`` is True for BOS/EOS/pad and every
    added special token (e.g. ``<|im_start|>`` written by a chat template).
    """

    input_ids: list[int]
    offsets: list[tuple[int, int]]
    special_mask: list[bool]

    def __len__(self) -> int:
        return len(self.input_ids)
