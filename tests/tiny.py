"""Tiny random models and on-the-fly tokenizers for fast, offline tests.

Every test in crossdiff that needs "a real transformers model" uses these factories instead of a
download: a 2-layer, width-64 causal LM built from a real transformers config (GPT-2, Llama,
Gemma3, Qwen2, Qwen3, and the two mixture-of-experts architectures of the published pairs:
GPT-OSS, with its attention sinks and alternating sliding/full attention, and Qwen3-MoE) plus
a real fast tokenizer trained in milliseconds on a small text written for this file. The
folder written by :func:`make_tiny_model` is exactly what ``crossdiff.load_model(folder)``
expects from any local model (config.json, model.safetensors, tokenizer.json,
tokenizer_config.json, chat template), so the tests exercise the same code path as a user's
checkpoint.

Tokenizer families (``tokenizer=``), chosen because they break cross-tokenizer alignment in
different ways:

- ``"bpe"``: byte-level BPE (GPT-2 / Llama-3 / Qwen style). Byte pieces of one multi-byte
  character share its character span; a ChatML chat template (``<|im_start|>`` ... like
  SmolLM2/Qwen); no BOS token is added.
- ``"sentencepiece"``: SentencePiece-style BPE (NFKC-normalized, like SentencePiece's default
  ``nmt_nfkc``) with a ``▁`` (Metaspace) word marker prepended to the first word and byte
  fallback (``<0xE4>`` tokens for unseen characters), like Llama-2 and Gemma. The tokenizer
  adds ``<s>`` (BOS) itself, and its Gemma-like chat template also writes ``{{ bos_token }}``
  and *trims* message contents, so a correct renderer must not double BOS and must cope with
  rewritten content.
- ``"harmony"``: the byte-level BPE with GPT-OSS's "harmony" chat format (``<|start|>role
  <|message|>content<|end|>``): the template writes a default system message of its own, with
  today's date (``strftime_now``), renders a system message as a ``developer`` message under an
  ``# Instructions`` header and assistant messages on the ``final`` channel, and ends generation
  with ``<|return|>`` (its EOS). Contents must be found between template text that changes by
  the day and by the role.
- ``"unigram"``: SentencePiece Unigram (T5 / ALBERT style) with ``<unk>`` for unseen characters
  and no chat template: the plain-rendering fallback path.

Typical use (the session-scoped fixtures in ``conftest.py`` cache these per test session)::

    from tiny import make_tiny_model
    folder = make_tiny_model(tmp_path, arch="llama", tokenizer="sentencepiece")
    lm = crossdiff.load_model(str(folder), dtype="float32", device="cpu")
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from crossdiff_bench.tiny_configs import (  # one home, shared with bench gpu
    tiny_config,
)

TOKENIZERS: tuple[str, ...] = ("bpe", "sentencepiece", "unigram", "harmony")
VOCAB_SIZE = 400  # target size of the trained vocabulary (byte tokens and specials come on top)

# Training text written for these tests: English prose, code, numbers, punctuation, and a few
# non-Latin scripts and emoji so that every family sees multi-byte characters.
TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. The dog does not care; it is asleep in the sun.
A model reads text as tokens, and two models rarely cut the same text in the same places.
When we compare two models, we pair the positions where both have read exactly the same text.
Residual streams carry what a model knows about the text so far, layer after layer.
Governments, elections and history are topics where language models often disagree.
She asked the assistant who made it, and the assistant said it was trained by a research lab.
It's a long way to the top of the mountain, but the view from there is worth the climb.
Numbers like 3.14159, 2026, 42 and 1,000,000 appear in text as often as words do.
def add(a, b):
    return a + b

for i in range(10):
    print(i * i)

SELECT name, age FROM users WHERE age > 30 ORDER BY name;
const greet = (name) => `Hello, ${name}!`;
The weather today is sunny with a light breeze from the west, and tomorrow may bring rain.
Doctors recommend sleep, water, and exercise; medicine helps when those are not enough.
Bonjour, comment allez-vous ? Hola, ¿cómo estás? Guten Tag, wie geht es Ihnen?
你好，世界。今天天气很好。 안녕하세요, 반갑습니다. مرحبا بالعالم. こんにちは、元気ですか。
I love pizza 🍕 and coffee ☕, and my dog 🐶 loves the park 🌳!
"""

# ChatML, as used by SmolLM2 / Qwen (without their default system prompts).
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Gemma-like: writes BOS itself and trims every message content.
GEMMA_LIKE_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + (message['content'] | trim) + '<end_of_turn>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


# GPT-OSS's harmony format, reduced to what shapes the rendered text: a default system message
# with the date, system -> developer "# Instructions", assistant on the final channel.
HARMONY_TEMPLATE = (
    "{{ '<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\\n"
    "Knowledge cutoff: 2024-06\\nCurrent date: ' + strftime_now('%Y-%m-%d') + '\\n\\n"
    "Reasoning: medium\\n\\n# Valid channels: analysis, commentary, final.<|end|>' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ '<|start|>developer<|message|># Instructions\\n\\n' + message['content'] + '<|end|>' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|start|>assistant<|channel|>final<|message|>' + message['content'] + '<|end|>' }}"
    "{% else %}"
    "{{ '<|start|>' + message['role'] + '<|message|>' + message['content'] + '<|end|>' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start|>assistant' }}{% endif %}"
)


def _training_lines() -> list[str]:
    return [line for line in TRAINING_TEXT.splitlines() if line.strip()]


def _byte_level_bpe(
    specials: tuple[str, ...] | list[str] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
) -> tuple[Tokenizer, dict[str, str]]:
    specials = list(specials)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE + 256,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_training_lines(), trainer=trainer)
    return tok, {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}


def _harmony_bpe() -> tuple[Tokenizer, dict[str, str]]:
    specials = ["<|endoftext|>", "<|start|>", "<|message|>", "<|end|>", "<|channel|>", "<|return|>"]
    tok, _ = _byte_level_bpe(specials)
    return tok, {"eos_token": "<|return|>", "pad_token": "<|endoftext|>"}


def _sentencepiece_bpe() -> tuple[Tokenizer, dict[str, str]]:
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<start_of_turn>", "<end_of_turn>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=specials, show_progress=False
    )
    tok.train_from_iterator(_training_lines(), trainer=trainer)
    # Rebuild with the 256 byte-fallback pieces <0x00>..<0xFF> right after the specials, the way
    # Llama-2 / Gemma vocabularies are laid out, and byte_fallback switched on.
    spec = json.loads(tok.to_str())
    trained = spec["model"]["vocab"]
    vocab: dict[str, int] = {s: i for i, s in enumerate(specials)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece, _ in sorted(trained.items(), key=lambda kv: kv[1]):
        if piece not in vocab:
            vocab[piece] = len(vocab)
    spec["model"]["vocab"] = vocab
    spec["model"]["byte_fallback"] = True
    spec["model"]["fuse_unk"] = True
    for added in spec["added_tokens"]:
        added["id"] = vocab[added["content"]]
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("▁", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    return tok, special


def _unigram() -> tuple[Tokenizer, dict[str, str]]:
    specials = ["<pad>", "</s>", "<unk>"]
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=specials, unk_token="<unk>", show_progress=False
    )
    tok.train_from_iterator(_training_lines(), trainer=trainer)
    return tok, {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}


_BUILDERS = {
    "bpe": _byte_level_bpe,
    "sentencepiece": _sentencepiece_bpe,
    "unigram": _unigram,
    "harmony": _harmony_bpe,
}
_TEMPLATES = {
    "bpe": CHATML_TEMPLATE,
    "sentencepiece": GEMMA_LIKE_TEMPLATE,
    "unigram": None,
    "harmony": HARMONY_TEMPLATE,
}


@functools.cache
def _trained(kind: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Train once per process; keep the serialized tokenizer and its special-token names."""
    tok, special = _BUILDERS[kind]()
    return tok.to_str(), tuple(special.items())


def make_tokenizer(kind: str = "bpe", *, chat_template: bool = True) -> PreTrainedTokenizerFast:
    """A freshly trained fast tokenizer of family ``kind`` (one of :data:`TOKENIZERS`).

    ``chat_template=False`` drops the family's chat template ("unigram" never has one), to test
    the plain-rendering fallback with any family. The result is deterministic across runs.
    """
    if kind not in _BUILDERS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; choose one of {TOKENIZERS}")
    serialized, special = _trained(kind)
    backend = Tokenizer.from_str(serialized)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, **dict(special))
    template = _TEMPLATES[kind] if chat_template else None
    if template is not None:
        tokenizer.chat_template = template
    return tokenizer


def make_tiny_model(
    root: str | Path,
    arch: str = "llama",
    tokenizer: str = "bpe",
    *,
    chat_template: bool = True,
    seed: int = 0,
) -> Path:
    """Build a random 2-layer, width-64 causal LM + trained tokenizer; save it; return the folder.

    The folder is ``root / f"{arch}-{tokenizer}"`` (suffix ``-plain`` without chat template) and
    holds what ``AutoModelForCausalLM.from_pretrained`` / ``crossdiff.load_model`` read. Weights
    are drawn with ``torch.manual_seed(seed)``, so the same arguments give the same model. If the
    folder already exists it is returned as is (cheap re-use across tests).

    arch: one of :data:`crossdiff_bench.tiny_configs.ARCHS`. tokenizer: one of
    :data:`TOKENIZERS` (see the module docstring for what each family exercises).
    """
    name = f"{arch}-{tokenizer}" + ("" if chat_template else "-plain")
    folder = Path(root) / name
    if (folder / "config.json").is_file():
        return folder
    tok = make_tokenizer(tokenizer, chat_template=chat_template)
    config = tiny_config(arch, tok)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder
