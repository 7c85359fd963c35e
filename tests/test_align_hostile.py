"""No wrong pair on any tokenizer (issue 12): regression cases and a hostile-alphabet property.

Every kept pair is checked against what each model really *read*, independently of the offsets
alignment used: the token strings up to the paired token (decoded, with a special token standing
for the characters it covers) must spell the same content prefix as the other model's, up to
Unicode decomposition (NFKD; and whitespace, for tokenizers whose decoders rewrite spaces).
"""

from __future__ import annotations

import json
import random
import unicodedata

import numpy as np
import pytest
from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import PreTrainedTokenizerFast

from crossdiff.align import align, align_rendered, prefix_consistent, unstable_ends
from crossdiff.corpus.files import read_file
from crossdiff.harvest import plan_document
from crossdiff.models.rendering import render_with_template, special_token_ids, tokenize_rendered
from crossdiff.models.texts import RenderedText
from crossdiff.store.manifest import ShardInfo
from tiny import TRAINING_TEXT, make_tokenizer

LITERALS = ["<|im_start|>", "<start_of_turn>", "<bos>", "<|endoftext|>"]
HOSTILE = [
    *"ab xyz.,!?\n\t",
    *["\r\n", "   ", "    ", "\n\n"],
    *["\u0301", "\u0308", "\u0323", "\u0327", "e\u0301", "\u00e9", "\u00e4\u0323", "q\u0308\u0323"],
    *["\u05d1\u05bc\u05b0", "\u05e9\u05c1", "\u0645\u0651\u064e", "\u0627\u0644", "\u200f"],
    *["\U0001f468\u200d\U0001f469\u200d\U0001f467", "\U0001f44d\U0001f3fd", "\U0001f1eb\U0001f1f7"],
    *["\uac00", "\u6771", "\ufb01", "\u2126", "\u212b"],
    *LITERALS,
]


def _chars() -> list[str]:
    text = "".join(HOSTILE) + TRAINING_TEXT
    forms = {unicodedata.normalize(f, text) for f in ("NFC", "NFD", "NFKC", "NFKD")}
    return sorted(set("".join(forms)))


def char_level(
    nfc: bool, *, unk: str = "[UNK]", extra: tuple[str, ...] = ()
) -> PreTrainedTokenizerFast:
    """One token per character (WordLevel), optionally behind an NFC normalizer."""
    vocab = {unk: 0, **{t: i + 1 for i, t in enumerate(extra)}}
    for c in _chars():
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    out = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=unk)
    out.add_special_tokens({"additional_special_tokens": [t for t in extra if t != unk]})
    return out


def byte_level(trim: bool) -> PreTrainedTokenizerFast:
    """GPT-2 style byte-level BPE; ``trim``: a ByteLevel post-processor that trims offsets."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>", "<|im_start|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [ln for ln in TRAINING_TEXT.splitlines() if ln.strip()]
    tok.train_from_iterator(lines + ["a:\n\n    b\n\n    c   d"] * 20, trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=trim)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


_CACHE: dict[str, PreTrainedTokenizerFast] = {}


def kind(name: str) -> PreTrainedTokenizerFast:
    if name not in _CACHE:
        _CACHE[name] = {
            "char": lambda: char_level(False),
            "char-nfc": lambda: char_level(True),
            "bytes": lambda: byte_level(False),
            "bytes-trim": lambda: byte_level(True),
            "sentencepiece": lambda: make_tokenizer("sentencepiece"),
            "unigram": lambda: make_tokenizer("unigram"),
        }[name]()
    return _CACHE[name]


LOSSLESS = {"char", "char-nfc", "bytes", "bytes-trim"}  # decoding keeps every space


def read_text(tok, rendered: RenderedText, tokens, upto: int) -> str:
    """What the model read with tokens ``[0, upto]``: decoded runs of ordinary tokens, and for
    each special token the characters it covers (none for BOS the tokenizer added)."""
    parts: list[str] = []
    run: list[int] = []
    for i in range(upto + 1):
        if tokens.special_mask[i]:
            parts.append(tok.decode(run, skip_special_tokens=False))
            run = []
            s, e = tokens.offsets[i]
            parts.append(rendered.text[s:e])
        else:
            run.append(tokens.input_ids[i])
    parts.append(tok.decode(run, skip_special_tokens=False))
    return "".join(parts)


def canon(text: str, squash: bool) -> str:
    text = unicodedata.normalize("NFKD", text)
    return "".join(text.split()) if squash else text


def check_plain(name_a: str, name_b: str, text: str) -> int:
    """Align ``text`` in two tokenizers; assert every pair read the same prefix; count pairs."""
    r = RenderedText(text, [(0, len(text))], add_special_tokens=True)
    tok_a, tok_b = kind(name_a), kind(name_b)
    ta, tb = tokenize_rendered(tok_a, r), tokenize_rendered(tok_b, r)
    al = align_rendered(r, ta, r, tb)
    squash = not ({name_a, name_b} <= LOSSLESS)
    for pa, pb, end in zip(al.pos_a.tolist(), al.pos_b.tolist(), al.content_end.tolist()):
        want = canon(text[:end], squash)
        got_a = canon(read_text(tok_a, r, ta, pa), squash)
        got_b = canon(read_text(tok_b, r, tb, pb), squash)
        if "\ufffd" in got_a + got_b:  # a byte-fallback decode of an unknown char
            continue
        if (
            tok_a.unk_token_id in ta.input_ids[: pa + 1]
            or tok_b.unk_token_id in tb.input_ids[: pb + 1]
        ):
            continue  # what an unk read (after a normalizer) cannot be spelled back
        assert got_a == want and got_b == want, (name_a, name_b, text[:end], got_a, got_b)
    return al.n_pairs


# -- 1. normalizers that reorder combining marks -------------------------------------------
@pytest.mark.parametrize("text", ["q\u0308\u0323", "\u05d1\u05bc\u05b0", "\u0645\u0651\u064e"])
def test_reordered_combining_marks_never_pair_inside(text: str) -> None:
    r = RenderedText(text, [(0, len(text))], add_special_tokens=True)
    ta = tokenize_rendered(kind("char-nfc"), r)
    tb = tokenize_rendered(kind("char"), r)
    al = align_rendered(r, ta, r, tb)
    assert al.content_end.tolist() == [1, 3]  # never 2: inside the reordered marks
    assert check_plain("char-nfc", "char", text) == 2
    assert unstable_ends(text).tolist() == [False, False, True, False]
    assert not unstable_ends("e\u0301 x").any()  # in canonical order: nothing to fear


# -- 2. an unk token that is also a control token ------------------------------------------
def test_unk_that_is_endoftext_is_special() -> None:
    tok = char_level(False, unk="<|endoftext|>", extra=("<|endoftext|>",))
    tok.eos_token = "<|endoftext|>"
    assert tok.unk_token_id in special_token_ids(tok)
    text = "ab<|endoftext|>xy"
    r = RenderedText(text, [(0, len(text))], add_special_tokens=False)
    t = tokenize_rendered(tok, r)
    s = t.offsets.index((2, 15))
    assert t.special_mask[s]
    other = tokenize_rendered(kind("char"), r)
    al = align_rendered(r, t, r, other)
    assert s not in al.pos_a.tolist()


# -- 3. trimmed offsets --------------------------------------------------------------------
def test_trimmed_offsets_are_untrimmed_before_pairing() -> None:
    text = "a:\n\n    b"
    trimmed = kind("bytes-trim")
    raw = trimmed.backend_tokenizer.encode(text)
    assert any(e - s < len(tok) for tok, (s, e) in zip(raw.tokens, raw.offsets))  # it trims
    r = RenderedText(text, [(0, len(text))], add_special_tokens=True)
    t = tokenize_rendered(trimmed, r)
    assert t.offsets == [tuple(o) for o in kind("bytes").backend_tokenizer.encode(text).offsets]
    check_plain("bytes-trim", "char", text)
    check_plain("bytes-trim", "sentencepiece", text)


# -- 4. a system message the chat template drops ------------------------------------------
PHI3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '<|user|>\n' + message['content'] + '<|end|>\n<|assistant|>\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + '<|end|>\n' }}"
    "{% endif %}{% endfor %}"
)


def test_dropped_system_message_is_not_common_content() -> None:
    chat = [
        {"role": "system", "content": "user"},  # also a word of the template's own text
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello you"},
    ]
    phi = make_tokenizer("bpe")
    phi.chat_template = PHI3_TEMPLATE
    ra = render_with_template(phi, chat, False, "phi3-like")
    assert ra.dropped == (0,) and ra.content_spans[0][0] == ra.content_spans[0][1]
    assert [ra.text[s:e] for s, e in ra.content_spans] == ["", "Hi there", "Hello you"]
    chatml = make_tokenizer("bpe")
    rb = render_with_template(chatml, chat, False, "chatml")
    assert rb.dropped == ()
    ta, tb = tokenize_rendered(phi, ra), tokenize_rendered(chatml, rb)
    al = align_rendered(ra, ta, rb, tb)
    assert al.content_complete and al.n_pairs > 0
    for p in al.pos_b.tolist():  # no pair inside B's system message
        assert ta.offsets[0] is not None and tb.offsets[p][1] > rb.content_spans[0][1]
    assert max(al.content_end.tolist()) == len("Hi there") + len("Hello you")


# -- 5. invalid Unicode in the corpus ------------------------------------------------------
def test_lone_surrogate_is_repaired_and_counted(tmp_path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "broken \\ud83d half"}\n{"text": "fine \\ud83d\\ude00"}\n')
    docs = list(read_file(path))
    assert docs[0].text == "broken \ufffd half" and docs[0].repaired == 1
    assert docs[1].text == "fine \U0001f600" and docs[1].repaired == 0
    lm = FakeModel(kind("bytes"))
    plan = plan_document(0, docs[0], lm, FakeModel(kind("sentencepiece")), 64)
    assert plan.record["repaired"] == 1 and plan.record["pairs"] > 0
    json.dumps(plan.record, ensure_ascii=False).encode("utf-8")  # storable
    assert ShardInfo("f", 0, "", 0, 0, 1, "d", "").docs_repaired == 0  # old manifests load


class FakeModel:
    """What plan_document needs of a LoadedModel: rendering and tokenization."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def render_text(self, text: str) -> RenderedText:
        return RenderedText(text, [(0, len(text))], add_special_tokens=True)

    def render_chat(self, messages):
        return render_with_template(self.tokenizer, messages, False, "fake")

    def tokenize(self, rendered: RenderedText):
        return tokenize_rendered(self.tokenizer, rendered)


# -- literal special-token strings ---------------------------------------------------------
@pytest.mark.parametrize("policy", ["cut", "keep"])
def test_literal_special_strings_are_a_visible_choice(policy: str) -> None:
    doc = type(
        "Doc", (), {"doc_id": "d", "text": "one two <|im_start|> three four", "messages": None}
    )
    a, b = FakeModel(kind("bytes")), FakeModel(kind("sentencepiece"))
    plan = plan_document(0, doc, a, b, 64, policy)
    (w,) = plan.windows
    cut_at = doc.text.index("<|im_start|>")
    if policy == "cut":
        assert w.content_end.max() <= cut_at + 1 and "literal" in plan.record["note"]
    else:
        assert w.content_end.max() > cut_at + len("<|im_start|>")


# -- the self-check ------------------------------------------------------------------------
def test_self_check_drops_and_counts_inconsistent_pairs(monkeypatch) -> None:
    import crossdiff.align as align_mod

    # a token read after the pair covers a character before it: the pair is wrong
    offsets = [(0, 1), (2, 3), (1, 2)]
    assert prefix_consistent(
        offsets, align_mod.identity_segments([(0, 3)]), np.array([1]), np.array([3])
    ).tolist() == [False]
    real = align_mod.candidate_ends

    def careless(offsets, special_mask, segments, content_spans=None, text=None):
        ends, n = real(offsets, special_mask, segments, content_spans, text)
        if len(offsets) == 3:
            ends[1] = 3  # claims token 1 is a safe boundary
        return ends, n

    monkeypatch.setattr(align_mod, "candidate_ends", careless)
    al = align(offsets, [False] * 3, [(0, 3)], [(0, 1), (1, 3)], [False] * 2, [(0, 3)])
    assert al.dropped_a == 1 and al.dropped_b == 0
    assert 3 not in al.content_end.tolist()


# -- the property ---------------------------------------------------------------------------
KIND_PAIRS = [
    ("char-nfc", "char"),
    ("bytes-trim", "char"),
    ("bytes", "bytes-trim"),
    ("char-nfc", "bytes"),
    ("sentencepiece", "bytes-trim"),
    ("unigram", "char-nfc"),
    ("sentencepiece", "unigram"),
]


@pytest.mark.parametrize(("name_a", "name_b"), KIND_PAIRS)
def test_every_pair_reads_the_same_characters_on_hostile_text(name_a: str, name_b: str) -> None:
    rng = random.Random(f"{name_a}/{name_b}")
    pairs = 0
    for _ in range(150):
        pieces = [rng.choice(HOSTILE) for _ in range(rng.randint(1, 24))]
        text = "".join(pieces)
        text = (
            unicodedata.normalize(rng.choice(["NFC", "NFD", "NFKC"]), text)
            if rng.random() < 0.3
            else text
        )
        pairs += check_plain(name_a, name_b, text)
    assert pairs > 300  # the check has something to check
