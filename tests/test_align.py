"""Cross-tokenizer alignment: properties on real tokenizers of different families.

Tokenizers are trained on the fly (``tests/tiny.py``: byte-level BPE, SentencePiece-style BPE
with byte fallback, Unigram; plus a WordPiece built here). Every text is rendered for each
model (plain, or as a chat in two different templates, one of which trims messages), tokenized
with real offsets, aligned, and checked against:

- an independent O(n^2) brute-force implementation of the pairing rule;
- what each model has actually consumed: the content characters before each paired token's end
  are the same text in both models, and decoding the token prefix gives back that text (no
  pair lands inside a multi-byte character).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from crossdiff.align import (
    Segment,
    align,
    align_rendered,
    common_segments,
    content_of,
    identity_segments,
)
from crossdiff.errors import CrossdiffError
from tiny import TRAINING_TEXT, make_tokenizer

TEXTS: dict[str, str] = {
    "english": "The quick brown fox jumps over the lazy dog. It's 3.14159 degrees, isn't it?",
    "code": "def add(a, b):\n    return a + b\n\nfor i in range(10):\n\tprint(i * i)  # square\n",
    "cjk": "你好，世界。今天天气很好。東京は日本の首都です。안녕하세요, 반갑습니다.",
    "emoji": "I love pizza 🍕 and coffee ☕! Family: 👨‍👩‍👧 thumbs 👍🏽 flags 🇫🇷🇯🇵.",
    "arabic": "مرحبا بالعالم. كيف حالك اليوم؟ Hello مرحبا mixed.",
    "unseen": "Math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ℵ₀ café e\u0301 ﬁx naïve Ωmega ∑∫ ¿Qué?",
    "whitespace": "  leading spaces\n\n\ttabs and   runs   of spaces  \n trailing  ",
}

CHATS: list[list[dict[str, str]]] = [
    [
        {"role": "user", "content": "Who made you? Answer in one sentence."},
        {"role": "assistant", "content": " I was trained by a research lab. 🙂 "},
        {"role": "user", "content": "Translate to Chinese: good morning\n"},
        {"role": "assistant", "content": "早上好！"},
    ],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "  def f(x):\n    return x  "},
        {"role": "assistant", "content": "مرحبا — that's a function."},
    ],
]


def _wordpiece() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=500, special_tokens=["[UNK]", "[CLS]", "[SEP]", "[PAD]"], show_progress=False
    )
    tok.train_from_iterator([ln for ln in TRAINING_TEXT.splitlines() if ln.strip()], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")


_TOKENIZERS: dict[str, PreTrainedTokenizerFast] = {}


def tokenizer(kind: str) -> PreTrainedTokenizerFast:
    if kind not in _TOKENIZERS:
        base = kind.removesuffix("-nospace")
        _TOKENIZERS[kind] = _wordpiece() if base == "wordpiece" else make_tokenizer(base)
    return _TOKENIZERS[kind]


@dataclass
class Rendered:
    text: str
    content_spans: list[tuple[int, int]]


@dataclass
class Tokens:
    ids: list[int]
    offsets: list[tuple[int, int]]
    special_mask: list[bool]


def special_ids(tok: PreTrainedTokenizerFast) -> set[int]:
    ids = set(tok.all_special_ids)
    ids |= {i for i, t in tok.added_tokens_decoder.items() if t.special}
    return ids


def tokenize(kind: str, rendered: Rendered, add_special: bool) -> Tokens:
    tok = tokenizer(kind)
    enc = tok(rendered.text, add_special_tokens=add_special, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    if kind.endswith("-nospace"):
        # Tokenizers whose offsets for "▁word" exclude the space: move such starts past it.
        offsets = [
            (s + 1, e) if e - s > 1 and rendered.text[s] == " " else (s, e) for s, e in offsets
        ]
    sp = special_ids(tok)
    return Tokens(ids, offsets, [i in sp for i in ids])


def render_plain(text: str) -> Rendered:
    return Rendered(text, [(0, len(text))])


def render_chatml(messages: list[dict[str, str]]) -> Rendered:
    text, spans = "", []
    for m in messages:
        text += f"<|im_start|>{m['role']}\n"
        spans.append((len(text), len(text) + len(m["content"])))
        text += m["content"] + "<|im_end|>\n"
    return Rendered(text + "<|im_start|>assistant\n", spans)


def render_gemma_like(messages: list[dict[str, str]]) -> Rendered:
    """Gemma-style turns that trim every message, so content differs from ChatML's."""
    text, spans = "<start_of_turn>", []
    for m in messages:
        role = "model" if m["role"] == "assistant" else m["role"]
        text += f"{role}\n"
        content = m["content"].strip()
        spans.append((len(text), len(text) + len(content)))
        text += content + "<end_of_turn>\n<start_of_turn>"
    return Rendered(text + "model\n", spans)


# -- an independent reference ---------------------------------------------------------------
def extended_stop(text: str, tok: Tokens, stop: int) -> int:
    """Move past characters no token covers unless they are whitespace (see crossdiff.align)."""
    covered = {c for s, e in tok.offsets for c in range(s, e)}
    while stop < len(text) and stop not in covered and not text[stop].isspace():
        stop += 1
    return stop


def brute_force_pairs(
    ra: Rendered,
    tok_a: Tokens,
    segs_a: list[Segment],
    rb: Rendered,
    tok_b: Tokens,
    segs_b: list[Segment],
) -> list[tuple[int, int, int]]:
    """The pairing rule, written as directly as possible (quadratic)."""

    def candidates(r: Rendered, tok: Tokens, segs: list[Segment]) -> dict[int, int]:
        cmap = {}
        for g in segs:
            for c in range(g.start, g.end):
                cmap[c] = g.common_start + c - g.start
        out = {}
        n = len(tok.offsets)
        for i, (s, e) in enumerate(tok.offsets):
            if tok.special_mask[i] or e <= s:
                continue
            later = [
                tok.offsets[j][0] for j in range(i + 1, n) if tok.offsets[j][1] > tok.offsets[j][0]
            ]
            if any(start < e for start in later):
                continue  # a later token starts inside this one: not a character boundary
            e = extended_stop(r.text, tok, e)
            if e - 1 in cmap:  # the last character consumed is content
                assert cmap[e - 1] + 1 not in out
                out[cmap[e - 1] + 1] = i
        return out

    ca, cb = candidates(ra, tok_a, segs_a), candidates(rb, tok_b, segs_b)
    return [(ca[end], cb[end], end) for end in sorted(set(ca) & set(cb))]


def consumed_content(rendered: Rendered, segs: list[Segment], stop: int) -> str:
    """The common-content characters a model has read once it has read ``text[:stop]``."""
    return "".join(
        rendered.text[max(g.start, 0) : min(g.end, stop)] for g in segs if g.start < stop
    )


def _squash(s: str) -> str:
    return "".join(unicodedata.normalize("NFKC", s).split())


def check_pairs(
    kind_a: str, ra: Rendered, ta: Tokens, kind_b: str, rb: Rendered, tb: Tokens
) -> None:
    al = align_rendered(ra, ta, rb, tb)
    segs_a, segs_b, common, complete = common_segments(
        ra.text, ra.content_spans, rb.text, rb.content_spans
    )
    assert complete
    # 1. the vectorized implementation equals the brute-force rule
    expected = brute_force_pairs(ra, ta, segs_a, rb, tb, segs_b)
    got = list(zip(al.pos_a.tolist(), al.pos_b.tolist(), al.content_end.tolist()))
    assert got == expected
    # 2. order
    for arr in (al.pos_a, al.pos_b, al.content_end):
        assert np.all(np.diff(arr) > 0)
    for k in range(al.n_pairs):
        pa, pb, end = int(al.pos_a[k]), int(al.pos_b[k]), int(al.content_end[k])
        stop_a = extended_stop(ra.text, ta, ta.offsets[pa][1])
        stop_b = extended_stop(rb.text, tb, tb.offsets[pb][1])
        # 3. both models have consumed exactly the same content text
        assert consumed_content(ra, segs_a, stop_a) == common[:end]
        assert consumed_content(rb, segs_b, stop_b) == common[:end]
        assert not ta.special_mask[pa] and not tb.special_mask[pb]
        # 4. decoding the token prefix gives back that text, never half a character
        for kind, r, t, p, stop in ((kind_a, ra, ta, pa, stop_a), (kind_b, rb, tb, pb, stop_b)):
            tok = tokenizer(kind)
            decoded = tok.decode(t.ids[: p + 1], skip_special_tokens=False)
            assert not decoded.endswith("\ufffd"), (kind, decoded[-10:])
            if kind == "bpe":  # byte-level BPE round-trips exactly
                assert decoded == r.text[:stop]
            elif "[UNK]" not in decoded and "<unk>" not in decoded:
                # the current message's content up to the pair (normalizers rewrite the
                # text, so compare NFKC without whitespace)
                seg_start = max(g.common_start for g in segs_a if g.common_start < end)
                tail = common[seg_start:end]
                assert _squash(decoded).endswith(_squash(tail)), (kind, decoded[-20:], tail)


PAIRS = [
    ("bpe", "sentencepiece"),
    ("bpe", "unigram"),
    ("sentencepiece", "unigram"),
    ("bpe", "wordpiece"),
    ("sentencepiece-nospace", "bpe"),
]
ADD_SPECIAL = {"bpe": False, "sentencepiece": True, "unigram": True, "wordpiece": True}


def _add_special(kind: str) -> bool:
    return ADD_SPECIAL[kind.removesuffix("-nospace")]


@pytest.mark.parametrize(("kind_a", "kind_b"), PAIRS)
@pytest.mark.parametrize("name", sorted(TEXTS))
def test_plain_text_pairs_consume_same_text(kind_a: str, kind_b: str, name: str) -> None:
    r = render_plain(TEXTS[name])
    ta = tokenize(kind_a, r, _add_special(kind_a))
    tb = tokenize(kind_b, r, _add_special(kind_b))
    check_pairs(kind_a, r, ta, kind_b, r, tb)


@pytest.mark.parametrize(("kind_a", "kind_b"), PAIRS)
@pytest.mark.parametrize("chat", range(len(CHATS)))
def test_chat_templates_pair_only_message_content(kind_a: str, kind_b: str, chat: int) -> None:
    ra = render_chatml(CHATS[chat])
    rb = render_gemma_like(CHATS[chat])
    ta = tokenize(kind_a, ra, _add_special(kind_a))
    tb = tokenize(kind_b, rb, _add_special(kind_b))
    check_pairs(kind_a, ra, ta, kind_b, rb, tb)
    al = align_rendered(ra, ta, rb, tb)
    # every pair ends inside a message (never in "<|im_start|>user\n" or "<start_of_turn>")
    for p in al.pos_a.tolist():
        end = ta.offsets[p][1]
        assert any(s < end <= e for s, e in ra.content_spans)
    # the trimmed whitespace is not common content
    common = common_segments(ra.text, ra.content_spans, rb.text, rb.content_spans)[2]
    assert common == "".join(m["content"].strip() for m in CHATS[chat])


def test_coverage_on_prose_is_high_and_counts_content_tokens_only() -> None:
    text = " ".join(TRAINING_TEXT.split("\n")[:6])
    r = render_plain(text)
    ta = tokenize("bpe", r, False)
    tb = tokenize("sentencepiece", r, True)
    al = align_rendered(r, ta, r, tb)
    assert al.content_tokens_a == len(ta.ids)
    assert al.content_tokens_b == len(tb.ids) - 1  # BOS is not content
    assert al.coverage_a > 0.8 and al.coverage_b > 0.8


def test_multibyte_pieces_never_pair_but_last_piece_does() -> None:
    # "東" as three byte pieces sharing span (0, 1); a piece that ends one char and starts the
    # next ((1, 3) then (2, 3)) is not a boundary either.
    offsets_a = [(0, 1), (0, 1), (0, 1), (1, 3), (2, 3)]
    offsets_b = [(0, 1), (1, 2), (2, 3)]
    al = align(offsets_a, [False] * 5, [(0, 3)], offsets_b, [False] * 3, [(0, 3)])
    assert al.pos_a.tolist() == [2, 4]
    assert al.pos_b.tolist() == [0, 2]
    assert al.content_end.tolist() == [1, 3]
    assert al.content_tokens_a == 5 and al.content_tokens_b == 3


def test_specials_padding_and_template_never_pair() -> None:
    # text: "<bos>ab<eot>" with content "ab" at (5, 7); padding has offsets (0, 0)
    offsets = [(0, 5), (5, 6), (6, 7), (7, 12), (0, 0), (0, 0)]
    special = [True, False, False, True, True, True]
    al = align(offsets, special, [(5, 7)], offsets, special, [(5, 7)])
    assert al.pos_a.tolist() == [1, 2]
    assert al.content_end.tolist() == [1, 2]


def test_token_straddling_template_and_content_pairs_at_its_end() -> None:
    # A merges the template's "\n" with "Hi" into one token; it has read the same content.
    al = align([(0, 5), (5, 8)], [False, False], [(6, 8)], [(0, 2), (2, 4)], [False] * 2, [(2, 4)])
    assert al.pos_a.tolist() == [1] and al.pos_b.tolist() == [1]


def test_prefix_counts_pairs_inside_a_window() -> None:
    offsets = [(i, i + 1) for i in range(10)]
    al = align(offsets, [False] * 10, [(0, 10)], offsets[:], [False] * 10, [(0, 10)])
    assert al.prefix(4, 10) == 4
    assert al.prefix(10, 3) == 3
    assert al.prefix(100, 100) == 10


def test_common_segments_stop_at_rewritten_message() -> None:
    text_a, text_b = "xHELLOyWORLD", "xhelloyWORLD"
    seg_a, seg_b, common, complete = common_segments(
        text_a, [(1, 6), (7, 12)], text_b, [(1, 6), (7, 12)]
    )
    assert not complete and common == "" and seg_a == [] and seg_b == []
    seg_a, _, common, complete = common_segments("a b ", [(0, 4)], "a b", [(0, 3)])
    assert complete and common == "a b" and seg_a == [Segment(0, 3, 0)]
    assert identity_segments([(2, 4), (4, 4), (6, 9)]) == [Segment(2, 4, 0), Segment(6, 9, 2)]
    assert content_of("abcdef", [(0, 2), (4, 6)]) == "abef"


def test_bad_spans_are_rejected() -> None:
    with pytest.raises(CrossdiffError, match="spans"):
        align([(0, 1)], [False], [(3, 2)], [(0, 1)], [False], [(0, 1)])
    with pytest.raises(CrossdiffError, match="special_mask"):
        align([(0, 1)], [False, True], [(0, 1)], [(0, 1)], [False], [(0, 1)])


def test_empty_inputs() -> None:
    al = align([], [], [], [], [], [])
    assert al.n_pairs == 0 and al.coverage_a == 1.0


def test_character_composed_by_normalizer_is_read_by_the_token_before_it() -> None:
    # NFKC composes "e" + U+0301 into "é", whose byte pieces report the span of the "e" only;
    # the model has nevertheless read the accent, so the pair must land after it.
    text = "x e\u0301 y"
    r = render_plain(text)
    ta = tokenize("bpe", r, False)
    tb = tokenize("sentencepiece", r, True)
    assert not any(s <= 3 < e for s, e in tb.offsets)  # nobody covers the accent in B
    al = align_rendered(r, ta, r, tb)
    assert 3 not in al.content_end.tolist()  # not between "e" and its accent
    assert 4 in al.content_end.tolist()


def test_offsets_without_the_space_change_no_pair() -> None:
    r = render_plain(TEXTS["english"])
    with_space = tokenize("sentencepiece", r, True)
    without = tokenize("sentencepiece-nospace", r, True)
    assert with_space.offsets != without.offsets
    ref = tokenize("bpe", r, False)
    a1 = align_rendered(r, with_space, r, ref)
    a2 = align_rendered(r, without, r, ref)
    assert a1.pos_a.tolist() == a2.pos_a.tolist() and a1.pos_b.tolist() == a2.pos_b.tolist()
