"""crossdiff.models on tiny random models of several architectures and tokenizer families."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import time

import pytest
import torch

from crossdiff.errors import CrossdiffError
from crossdiff.models import (
    BUILTIN_MODELS,
    RenderedText,
    default_cache_dir,
    find_decoder_layers,
    load_model,
    resolve_dtype,
    resolve_layer,
)
from crossdiff.runtime.device import cpu_has_fast_bf16
from tiny import make_tokenizer

# (arch, tokenizer family) combinations: every arch and every family appears at least once.
COMBOS = [
    ("gpt2", "bpe"),
    ("llama", "sentencepiece"),
    ("gemma3", "sentencepiece"),
    ("qwen3", "unigram"),
    ("qwen2", "bpe"),
    # the mixture-of-experts architectures of the published pairs (GPT-OSS: attention sinks,
    # alternating sliding/full attention, harmony chat format)
    ("gpt_oss", "harmony"),
    ("qwen3_moe", "bpe"),
]
CHAT = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "  Who made you? 你好 🍕 "},
    {"role": "assistant", "content": "user"},  # also a template word: must not match the header
    {"role": "user", "content": "def f(x):\n    return x * 2"},
]


def _batch(lm, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded batch of several lengths, with its attention mask."""
    seqs = [lm.tokenize(lm.render_text(t)).input_ids for t in texts]
    width = max(map(len, seqs))
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    return ids, mask


TEXTS = ["The quick brown fox jumps over the lazy dog.", "Hello, world! 你好", "x = 42"]


# ------------------------------------------------------------------ loading and layers
@pytest.mark.parametrize(("arch", "tok"), COMBOS)
def test_load_folder_and_find_layers(tiny_loaded, tiny_model, arch, tok):
    lm = tiny_loaded(arch, tok)
    folder = tiny_model(arch, tok)
    assert lm.model_id == str(folder.resolve())
    assert lm.revision is None
    assert lm.n_layers == 2 and lm.d_model == 64
    assert lm.dtype == torch.float32 and lm.device == torch.device("cpu")
    assert not lm.model.training
    assert not any(p.requires_grad for p in lm.model.parameters())
    assert lm.tokenizer.is_fast
    layers = find_decoder_layers(lm.model)
    expected = lm.model.transformer.h if arch == "gpt2" else lm.model.model.layers
    assert layers is expected


def test_find_decoder_layers_unsupported_model():
    class Config:
        num_hidden_layers = 3

        def get_text_config(self):
            return self

    class Odd(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = Config()
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(2)])

    with pytest.raises(CrossdiffError, match="num_hidden_layers=3"):
        find_decoder_layers(Odd())


def test_resolve_layer():
    assert resolve_layer(0, 30) == 0
    assert resolve_layer(29, 30) == 29
    assert resolve_layer(-1, 30) == 29
    assert resolve_layer(-30, 30) == 0
    assert resolve_layer("middle", 30) == 15
    assert resolve_layer("middle", 18) == 9
    assert resolve_layer(" 12 ", 30) == 12
    assert resolve_layer("-2", 30) == 28
    assert resolve_layer("75%", 30) == 22  # one relative depth for two depths
    assert resolve_layer(" 75% ", 18) == 13
    assert resolve_layer("50%", 30) == resolve_layer("middle", 30)
    assert resolve_layer("0%", 30) == 0
    assert resolve_layer("100%", 30) == 29  # capped at the last layer
    assert resolve_layer("75%", 2) == 1
    for bad in ("120%", "-5%", "x%", "%"):
        with pytest.raises(CrossdiffError, match="not a relative depth"):
            resolve_layer(bad, 30, "X")
    with pytest.raises(
        CrossdiffError, match=r"layer 40 out of range: model 'X' has 30 layers \(0-29"
    ):
        resolve_layer(40, 30, "X")
    with pytest.raises(CrossdiffError, match="layer -31 out of range"):
        resolve_layer(-31, 30, "X")
    for bad in ("top", 1.5, True, None):
        with pytest.raises(CrossdiffError, match="not a layer index"):
            resolve_layer(bad, 30, "X")


def test_loaded_resolve_layer_names_model(tiny_loaded):
    lm = tiny_loaded("llama", "sentencepiece")
    assert lm.resolve_layer("middle") == 1
    with pytest.raises(CrossdiffError, match=r"has 2 layers \(0-1") as info:
        lm.resolve_layer(2)
    assert lm.model_id in str(info.value)


# ------------------------------------------------------------------------ capture
@pytest.mark.parametrize(("arch", "tok"), COMBOS)
def test_capture_equals_hidden_states(tiny_loaded, arch, tok):
    lm = tiny_loaded(arch, tok)
    ids, mask = _batch(lm, TEXTS)
    with torch.no_grad():
        full = lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    for layer in range(lm.n_layers - 1):
        got = lm.capture(ids, mask, layer)
        assert got.shape == (len(TEXTS), ids.shape[1], lm.d_model)
        assert torch.equal(got, full.hidden_states[layer + 1])
    # The last layer: transformers reports the final-norm output there; capture returns the
    # layer's own (pre-norm) output, the residual stream.
    seen = []
    handle = lm.layers[-1].register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        with torch.no_grad():
            lm.model(input_ids=ids, attention_mask=mask)
    finally:
        handle.remove()
    last = seen[0][0] if isinstance(seen[0], tuple) else seen[0]
    assert torch.equal(lm.capture(ids, mask, -1), last)


@pytest.mark.parametrize(("arch", "tok"), COMBOS)
def test_capture_exits_early_and_removes_hook(tiny_loaded, arch, tok):
    lm = tiny_loaded(arch, tok)
    ids, mask = _batch(lm, TEXTS)
    calls: list[str] = []
    later = [lm.layers[1], lm.model.get_output_embeddings()]
    handles = [
        module.register_forward_pre_hook(lambda m, a, name=name: calls.append(name))
        for name, module in zip(["layer1", "lm_head"], later, strict=True)
    ]
    hooks_before = [len(layer._forward_hooks) for layer in lm.layers]
    try:
        lm.capture(ids, mask, 0)
        assert calls == []  # neither the next layer nor the LM head ran
        with torch.no_grad():
            lm.model(input_ids=ids, attention_mask=mask)
        assert calls == ["layer1", "lm_head"]  # the hooks do work
    finally:
        for h in handles:
            h.remove()
    assert [len(layer._forward_hooks) for layer in lm.layers] == hooks_before


def test_capture_removes_hook_when_forward_fails(tiny_loaded):
    lm = tiny_loaded("llama", "sentencepiece")
    before = len(lm.layers[1]._forward_hooks)
    bad = torch.tensor([[len(lm.tokenizer) + 10_000]])  # id outside the embedding table
    with pytest.raises(IndexError):
        lm.capture(bad, None, 1)
    assert len(lm.layers[1]._forward_hooks) == before


def test_capture_bf16(tiny_model):
    lm = load_model(str(tiny_model("llama", "bpe")), dtype="bfloat16", device="cpu")
    assert next(lm.model.parameters()).dtype == torch.bfloat16
    ids, mask = _batch(lm, TEXTS)
    got = lm.capture(ids, mask, 0)
    assert got.dtype == torch.bfloat16
    with torch.no_grad():
        full = lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert torch.equal(got, full.hidden_states[1])


# ----------------------------------------------------------------------- steering
@pytest.mark.parametrize(("arch", "tok"), COMBOS)
def test_steering_adds_vector(tiny_loaded, arch, tok):
    lm = tiny_loaded(arch, tok)
    ids, mask = _batch(lm, TEXTS)
    vector = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        base = lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        with lm.steering(0, vector):
            steered = lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            captured = lm.capture(ids, mask, 0)
    assert torch.equal(steered.hidden_states[0], base.hidden_states[0])
    assert torch.equal(steered.hidden_states[1], base.hidden_states[1] + vector)
    assert torch.equal(captured, base.hidden_states[1] + vector)
    assert not torch.allclose(steered.hidden_states[2], base.hidden_states[2])
    with torch.no_grad():
        after = lm.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert torch.equal(after.logits, base.logits)  # nothing left behind


def test_steering_callable_and_generation(tiny_loaded):
    lm = tiny_loaded("gemma3", "sentencepiece")
    prompt = lm.tokenize(lm.render_chat([{"role": "user", "content": "Hello there"}], True))
    ids = torch.tensor([prompt.input_ids])
    seen_lengths: list[int] = []

    def clamp(hidden: torch.Tensor) -> torch.Tensor:
        seen_lengths.append(hidden.shape[1])
        return hidden.clamp(-0.01, 0.01)

    with lm.steering("middle", clamp):
        captured = lm.capture(ids, None, "middle")
        seen_lengths.clear()
        lm.model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert captured.abs().max() <= 0.01
    # the prompt once, then every generated token (KV cache: one position per step)
    assert seen_lengths == [ids.shape[1], 1, 1, 1]


def test_steering_removes_hook_on_error_and_checks_shape(tiny_loaded):
    lm = tiny_loaded("qwen3", "unigram")
    before = [len(layer._forward_hooks) for layer in lm.layers]
    with pytest.raises(RuntimeError, match="boom"), lm.steering(1, torch.ones(lm.d_model)):
        assert len(lm.layers[1]._forward_hooks) == before[1] + 1
        raise RuntimeError("boom")
    assert [len(layer._forward_hooks) for layer in lm.layers] == before
    bad = torch.tensor([[len(lm.tokenizer) + 5]])
    with pytest.raises(IndexError), lm.steering(0, torch.ones(lm.d_model)):
        lm.model(bad)
    assert [len(layer._forward_hooks) for layer in lm.layers] == before
    with pytest.raises(CrossdiffError, match=r"shape \(64,\)"), lm.steering(0, torch.ones(3)):
        pass
    with pytest.raises(CrossdiffError, match="out of range"), lm.steering(5, torch.ones(64)):
        pass


# ---------------------------------------------------------------------- rendering
def _check_offsets(rendered: RenderedText, tokenized, unk_id: int | None = None) -> None:
    n = len(rendered.text)
    assert len(tokenized.input_ids) == len(tokenized.offsets) == len(tokenized.special_mask)
    starts = []
    for (a, b), special in zip(tokenized.offsets, tokenized.special_mask, strict=True):
        assert 0 <= a <= b <= n
        if not special:
            assert b > a
            starts.append(a)
    assert starts == sorted(starts)
    # every content character is inside some token's span (an unknown character is inside
    # the unk token's, which counts as special: the model has not read what it stands for)
    covered = set()
    for (a, b), special, t in zip(
        tokenized.offsets, tokenized.special_mask, tokenized.input_ids, strict=True
    ):
        if not special or t == unk_id:
            covered.update(range(a, b))
    for a, b in rendered.content_spans:
        assert set(range(a, b)) <= covered


@pytest.mark.parametrize("tok", ["bpe", "sentencepiece", "unigram", "harmony"])
def test_render_chat_spans_recover_contents(tiny_loaded, tok):
    lm = tiny_loaded("llama", tok)
    for generation in (False, True):
        rendered = lm.render_chat(CHAT, add_generation_prompt=generation)
        got = rendered.contents()
        if tok == "sentencepiece":  # the Gemma-like template trims contents
            assert got == [m["content"].strip() for m in CHAT]
        else:
            assert got == [m["content"] for m in CHAT]
        spans = rendered.content_spans
        assert all(b0 <= a1 for (_, b0), (a1, _) in itertools.pairwise(spans))
        # "user" as content is located after its own header, not inside an earlier header
        assert spans[2][0] > spans[1][1]
        _check_offsets(rendered, lm.tokenize(rendered), lm.tokenizer.unk_token_id)


def test_render_chat_plain_fallback(tiny_loaded):
    lm = tiny_loaded("gpt2", "bpe", chat_template=False)
    assert not lm.has_chat_template
    rendered = lm.render_chat(CHAT[1:3], add_generation_prompt=True)
    assert rendered.text == ("User:   Who made you? 你好 🍕 \n\nAssistant: user\n\nAssistant:")
    assert rendered.contents() == [m["content"] for m in CHAT[1:3]]
    assert rendered.add_special_tokens


def test_bos_never_doubled(tiny_loaded):
    lm = tiny_loaded("gemma3", "sentencepiece")
    bos = lm.tokenizer.bos_token_id
    chat = lm.render_chat(CHAT)
    assert chat.text.startswith("<s>") and not chat.add_special_tokens
    ids = lm.tokenize(chat).input_ids
    assert ids[0] == bos and ids.count(bos) == 1
    doc = lm.tokenize(lm.render_text("A plain document."))
    assert doc.input_ids[0] == bos and doc.input_ids.count(bos) == 1
    assert doc.offsets[0] == (0, 0) and doc.special_mask[0]
    assert not any(doc.special_mask[1:])
    # byte-level BPE tokenizer without BOS: nothing is added
    bpe = tiny_loaded("qwen2", "bpe")
    doc = bpe.tokenize(bpe.render_text("A plain document."))
    assert not any(doc.special_mask)


def test_special_mask_marks_template_tokens(tiny_loaded):
    lm = tiny_loaded("llama", "bpe")
    rendered = lm.render_chat(CHAT[:2])
    tokenized = lm.tokenize(rendered)
    pieces = lm.tokenizer.convert_ids_to_tokens(tokenized.input_ids)
    for piece, special in zip(pieces, tokenized.special_mask, strict=True):
        assert special == (piece in ("<|im_start|>", "<|im_end|>"))
    assert len(lm.tokenize(rendered, max_tokens=5).input_ids) == 5
    with pytest.raises(CrossdiffError, match="max_tokens"):
        lm.tokenize(rendered, max_tokens=0)


def test_tokenizer_families_behave_as_documented(tiny_loaded):
    """The tiny families exercise what alignment must handle (see tests/tiny.py)."""
    sp = tiny_loaded("llama", "sentencepiece")
    text = "Zebra ξ"  # ξ is not in the vocabulary: two byte-fallback pieces
    tokenized = sp.tokenize(sp.render_text(text))
    pieces = sp.tokenizer.convert_ids_to_tokens(tokenized.input_ids)
    assert pieces[-2:] == ["<0xCE>", "<0xBE>"]
    assert tokenized.offsets[-2:] == [(6, 7), (6, 7)]  # both cover the one character
    bpe = tiny_loaded("gpt2", "bpe")
    tokenized = bpe.tokenize(bpe.render_text("a🍕"))
    assert len(tokenized.input_ids) > 2  # the emoji is split into byte-level pieces
    assert all(b == 2 for _, b in tokenized.offsets[1:])  # ... that all end where it ends


def test_unknown_token_is_content(tiny_loaded):
    lm = tiny_loaded("qwen3", "unigram")
    text = "Zebra ξ"  # characters the tiny unigram vocabulary never saw
    tokenized = lm.tokenize(lm.render_text(text))
    unk = lm.tokenizer.unk_token_id
    assert unk in tokenized.input_ids
    assert not any(tokenized.special_mask)
    assert all(b > a for a, b in tokenized.offsets)


def _with_template(lm, template: str):
    tokenizer = make_tokenizer("bpe")
    tokenizer.chat_template = template
    return dataclasses.replace(lm, tokenizer=tokenizer)


def test_default_system_prompt_is_not_content(tiny_loaded):
    lm = _with_template(
        tiny_loaded("llama", "bpe"),
        "{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
        "<|im_start|>system\nYou are a helpful user assistant.<|im_end|>\n{% endif %}"
        "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}",
    )
    rendered = lm.render_chat([{"role": "user", "content": "assistant"}])
    assert "You are a helpful user assistant." in rendered.text
    ((a, b),) = rendered.content_spans
    assert rendered.text[a:b] == "assistant"
    assert a > rendered.text.index("<|im_start|>user")


def test_content_dependent_template_falls_back_to_search(tiny_loaded):
    lm = _with_template(
        tiny_loaded("llama", "bpe"),
        "{% for m in messages %}{% if 'secret' in m['content'] %}[flagged]{% endif %}"
        "<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}",
    )
    chat = [{"role": "user", "content": "a secret"}, {"role": "assistant", "content": "ok"}]
    rendered = lm.render_chat(chat)
    assert rendered.text.startswith("[flagged]")
    assert rendered.contents() == ["a secret", "ok"]


def test_template_rewriting_content_is_an_error(tiny_loaded):
    lm = _with_template(
        tiny_loaded("llama", "bpe"),
        "{% for m in messages %}{{ m['content'] | upper }}{% endfor %}",
    )
    with pytest.raises(CrossdiffError, match=r"rewrites message 0|writes none of the chat"):
        lm.render_chat([{"role": "user", "content": "hello"}])


def test_bad_chats_are_errors(tiny_loaded):
    lm = tiny_loaded("llama", "bpe")
    for bad in ([], "hello", [{"role": "user"}], [{"role": "user", "content": 3}]):
        with pytest.raises(CrossdiffError):
            lm.render_chat(bad)


# ------------------------------------------------------------------ load errors
def test_load_errors(tmp_path):
    for spec in ("./no/such/folder", "/no/such/model.gguf", "~/nothing-here-crossdiff"):
        with pytest.raises(CrossdiffError, match="does not exist") as info:
            load_model(spec)
        assert "smollm2-135m-instruct" in str(info.value)
    with pytest.raises(CrossdiffError, match="unknown built-in model 'builtin:nope'"):
        load_model("builtin:nope")
    with pytest.raises(CrossdiffError, match=r"no config\.json"):
        load_model(str(tmp_path))
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hi")
    with pytest.raises(CrossdiffError, match="is not a model"):
        load_model(str(text_file))
    with pytest.raises(CrossdiffError, match="empty"):
        load_model("  ")


def test_broken_gguf_file(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(CrossdiffError, match=r"cannot read GGUF file .*broken\.gguf"):
        load_model(str(path), cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache" / "models").glob("gguf-*"))  # no half folder left


def test_hub_offline_error():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(
        CrossdiffError, match="not found locally and the hub is unreachable/offline"
    ):
        load_model("crossdiff-test/definitely-not-a-model")
    with pytest.raises(CrossdiffError, match="built-in aliases that work offline: smollm2"):
        load_model("smollm3-135m")  # a typo of an alias is tried as a hub id


def test_dtype_device_options(tiny_model):
    folder = str(tiny_model("gpt2", "bpe"))
    with pytest.raises(CrossdiffError, match="dtype 'int8'"):
        load_model(folder, dtype="int8")
    if not torch.cuda.is_available():
        with pytest.raises(CrossdiffError, match="CUDA is not available"):
            load_model(folder, device="cuda")
    dtype, reason = resolve_dtype("auto", torch.device("cpu"))
    assert dtype == (torch.bfloat16 if cpu_has_fast_bf16() else torch.float32)
    assert reason.startswith("auto")
    assert resolve_dtype("float16", torch.device("cpu"))[0] == torch.float16
    lm = load_model(folder, device="cpu")
    assert lm.dtype == dtype and next(lm.model.parameters()).dtype == dtype


def test_slow_tokenizer_is_rejected(tiny_model, tmp_path):
    spm = pytest.importorskip("sentencepiece")
    from tiny import TRAINING_TEXT

    folder = tmp_path / "slow"
    shutil.copytree(tiny_model("llama", "unigram"), folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TRAINING_TEXT.splitlines()),
        model_prefix=str(folder / "spiece"),
        vocab_size=120,
        minloglevel=2,
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertGenerationTokenizer"})
    )
    with pytest.raises(CrossdiffError, match="not a fast tokenizer"):
        load_model(str(folder), dtype="float32", device="cpu")


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("CROSSDIFF_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("CROSSDIFF_CACHE")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_dir().parts[-2:] == (".cache", "crossdiff")


# ------------------------------------------------------------- the real models
@pytest.mark.slow
def test_builtin_models_load_and_run():
    """Both built-in aliases convert (once, into the default cache) and behave as real LMs."""
    expected = {"smollm2-135m-instruct": (30, 576), "gemma3-270m": (18, 640)}
    sentence = "The capital of France is Paris. It is known for the Eiffel Tower and its museums."
    for alias, (n_layers, d_model) in expected.items():
        assert alias in BUILTIN_MODELS
        started = time.perf_counter()
        lm = load_model(alias, dtype="float32", device="cpu")
        print(f"{alias}: load {time.perf_counter() - started:.1f}s")
        assert lm.model_id == f"builtin:{alias}" and lm.revision
        assert (lm.n_layers, lm.d_model) == (n_layers, d_model)
        rendered = lm.render_text(sentence)
        ids = torch.tensor([lm.tokenize(rendered).input_ids])
        with torch.no_grad():
            out = lm.model(ids, labels=ids, output_hidden_states=True)
        # a working LM predicts plain English far better than chance (ln(vocab) is 10.8-12.5)
        assert out.loss.item() < 4.0, out.loss.item()
        middle = lm.resolve_layer("middle")
        assert torch.equal(lm.capture(ids, None, "middle"), out.hidden_states[middle + 1])
        chat = [{"role": "user", "content": "Who made you?"}]
        rendered_chat = lm.render_chat(chat, add_generation_prompt=True)
        assert rendered_chat.contents() == ["Who made you?"]
        if alias == "smollm2-135m-instruct":
            assert lm.has_chat_template
            # the template's default system prompt is template text, not content
            assert rendered_chat.text.startswith("<|im_start|>system\n")
            assert rendered_chat.content_spans[0][0] > rendered_chat.text.index("<|im_end|>")
            assert not rendered_chat.add_special_tokens  # BOS <|im_start|> is in the text
        else:
            assert not lm.has_chat_template  # Gemma-3-270M base: plain rendering
            assert rendered_chat.text == "User: Who made you?\n\nAssistant:"
            first = lm.tokenize(rendered).input_ids[0]
            assert first == lm.tokenizer.bos_token_id  # the tokenizer adds <bos>
        assert (default_cache_dir() / "models" / alias / "crossdiff_source.json").is_file()
