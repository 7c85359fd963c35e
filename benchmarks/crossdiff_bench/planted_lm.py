"""Train the planted benchmark's two small causal LMs from scratch, on CPU, and check them.

Model A is GPT-2-style with a byte-level BPE tokenizer; model B is Llama-style (RMSNorm,
rotary positions, gated MLP, grouped-query attention) with a SentencePiece-style BPE tokenizer
(``▁`` word markers, pieces split only at spaces, ``<s>`` added in front). Different
architecture, width and tokenizer family: the situation crossdiff exists for. Each tokenizer
is trained on its own model's corpus.

Both are saved as ordinary Hugging Face folders (config.json + model.safetensors +
tokenizer.json + tokenizer_config.json) that :func:`crossdiff.load_model` loads like any local
checkpoint. A cache key over the data version and every setting lets a rerun skip training.

Training is a plain AdamW loop (no ``Trainer``): sequences of ``seq_len`` tokens cut from the
concatenated token stream, each *starting at a document start* so that position 0 looks as it
does when crossdiff later reads a single document.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossdiff.errors import CrossdiffError
from crossdiff_bench.planted_data import (
    MIX_A,
    MIX_B,
    PlantedDoc,
    PromptSet,
    behaviour_present,
    make_corpus,
)

DATA_VERSION = 6
"""Bump when planted_data's generators change, so cached models are retrained."""
REPORT_FILE = "lm_report.json"
ALPHABET = [*string.printable]


@dataclass
class LMSpec:
    """One model's architecture and training settings."""

    arch: str
    """'gpt2' (with a byte-level BPE tokenizer) or 'llama' (with a SentencePiece-style BPE)."""
    d_model: int
    """Residual width."""
    n_layers: int
    """Decoder layers."""
    n_heads: int
    """Attention heads."""
    vocab_size: int = 2000
    """Target tokenizer vocabulary (specials and, for BPE, the 256 bytes included)."""
    steps: int = 600
    """Optimizer steps."""
    batch_size: int = 16
    """Sequences per step."""
    seq_len: int = 128
    """Tokens per sequence."""
    lr: float = 3e-3
    """Peak AdamW learning rate (cosine decay to 10% after a linear warm-up)."""
    warmup: int = 50
    """Warm-up steps."""
    n_docs: int = 20000
    """Training documents generated for this model."""
    seed: int = 0
    """Seeds the corpus and the weights."""


@dataclass
class PairSpec:
    """Both models of the benchmark."""

    a: LMSpec
    b: LMSpec

    @classmethod
    def default(cls) -> PairSpec:
        return cls(
            a=LMSpec(arch="gpt2", d_model=128, n_layers=4, n_heads=4),
            b=LMSpec(arch="llama", d_model=192, n_layers=4, n_heads=4),
        )

    @classmethod
    def quick(cls) -> PairSpec:
        return cls(
            a=LMSpec(arch="gpt2", d_model=96, n_layers=3, n_heads=4, steps=300, n_docs=10000),
            b=LMSpec(arch="llama", d_model=128, n_layers=3, n_heads=4, steps=300, n_docs=10000),
        )

    @classmethod
    def tiny(cls) -> PairSpec:
        """Seconds to train; for tests (learns little)."""
        kw: dict[str, Any] = {"vocab_size": 600, "steps": 30, "batch_size": 8, "seq_len": 64}
        return cls(
            a=LMSpec(arch="gpt2", d_model=32, n_layers=2, n_heads=2, n_docs=600, **kw),
            b=LMSpec(arch="llama", d_model=48, n_layers=2, n_heads=2, n_docs=600, **kw),
        )

    def key(self) -> str:
        """Cache key: changes whenever the data version or any setting changes."""
        blob = json.dumps(
            {
                "data": DATA_VERSION,
                "a": dataclasses.asdict(self.a),
                "b": dataclasses.asdict(self.b),
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------
# Tokenizers
# ------------------------------------------------------------------------------------------
def train_tokenizer(kind: str, texts: list[str], vocab_size: int):
    """A fast HF tokenizer of family ``kind`` trained on ``texts``.

    'bpe': GPT-2-style byte-level BPE (the regex pre-tokenizer splits words from punctuation,
    no BOS). 'metaspace': SentencePiece-style BPE (Llama-2 / Gemma): spaces become ``▁`` and
    pieces are split only at spaces, so tokens like ``▁volcanoes.\\nA:`` span punctuation and
    line breaks, and ``<s>`` is added in front. (SentencePiece *Unigram* was tried first; on
    this corpus of ~750 word types both the ``tokenizers`` and the ``sentencepiece`` Unigram
    trainers cut frequent words into fragments, e.g. 'about' -> 'a', 'bo', 'ut', so BPE with
    SentencePiece's whitespace convention is used.)
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        special = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
        special["pad_token"] = "<|endoftext|>"
    elif kind == "metaspace":
        specials = ["<unk>", "<s>", "</s>", "<pad>"]
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=specials,
            initial_alphabet=ALPHABET,
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
        )
        special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
        special["pad_token"] = "<pad>"
    else:
        raise CrossdiffError(f"unknown tokenizer kind {kind!r}; use 'bpe' or 'metaspace'")
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


def _config(spec: LMSpec, tokenizer):
    from transformers import GPT2Config, LlamaConfig

    ids = {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if spec.arch == "gpt2":
        return GPT2Config(
            n_embd=spec.d_model,
            n_layer=spec.n_layers,
            n_head=spec.n_heads,
            n_positions=max(256, spec.seq_len),
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **ids,
        )
    if spec.arch == "llama":
        return LlamaConfig(
            hidden_size=spec.d_model,
            intermediate_size=int(spec.d_model * 8 / 3) // 8 * 8,
            num_hidden_layers=spec.n_layers,
            num_attention_heads=spec.n_heads,
            num_key_value_heads=max(1, spec.n_heads // 2),
            max_position_embeddings=max(256, spec.seq_len),
            tie_word_embeddings=True,
            **ids,
        )
    raise CrossdiffError(f"unknown arch {spec.arch!r}; use 'gpt2' or 'llama'")


TOKENIZER_OF = {"gpt2": "bpe", "llama": "metaspace"}


# ------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------
def _token_stream(tokenizer, docs: list[PlantedDoc]) -> tuple[np.ndarray, np.ndarray]:
    """All documents tokenized as crossdiff reads them (special tokens added) + EOS, joined;
    and the start index of every document in the stream."""
    enc = tokenizer([d.text for d in docs], add_special_tokens=True)["input_ids"]
    eos = tokenizer.eos_token_id
    starts = np.zeros(len(enc), dtype=np.int64)
    pieces = []
    pos = 0
    for i, ids in enumerate(enc):
        starts[i] = pos
        pieces.append(np.asarray([*ids, eos], dtype=np.int64))
        pos += len(ids) + 1
    return np.concatenate(pieces), starts


def _lr_at(step: int, spec: LMSpec) -> float:
    if step < spec.warmup:
        return spec.lr * (step + 1) / spec.warmup
    t = (step - spec.warmup) / max(1, spec.steps - spec.warmup)
    return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def train_lm(
    spec: LMSpec, docs: list[PlantedDoc], out: Path, *, progress: bool = True, label: str = ""
) -> dict[str, Any]:
    """Train one model from scratch on ``docs`` and save it (model + tokenizer) to ``out``."""
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    tokenizer = train_tokenizer(TOKENIZER_OF[spec.arch], [d.text for d in docs], spec.vocab_size)
    stream, starts = _token_stream(tokenizer, docs)
    starts = starts[starts + spec.seq_len + 1 <= len(stream)]
    if len(starts) == 0:
        raise CrossdiffError(
            f"corpus of {len(stream)} tokens is shorter than seq_len={spec.seq_len}"
        )
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(_config(spec, tokenizer), dtype=torch.float32)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.lr,
        betas=(0.9, 0.98),
    )
    rng = np.random.default_rng(spec.seed)
    stream_t = torch.from_numpy(stream)
    offsets = torch.arange(spec.seq_len + 1)
    losses: list[float] = []
    bar = tqdm(range(spec.steps), desc=f"train LM {label}".strip(), disable=not progress)
    for step in bar:
        idx = torch.from_numpy(rng.choice(starts, spec.batch_size))
        batch = stream_t[idx[:, None] + offsets]
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, spec)
        inputs = batch[:, :-1]
        logits = model(input_ids=inputs, attention_mask=torch.ones_like(inputs)).logits
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "arch": spec.arch,
        "tokenizer": TOKENIZER_OF[spec.arch],
        "vocab_size": len(tokenizer),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_tokens": spec.steps * spec.batch_size * spec.seq_len,
        "corpus_tokens": len(stream),
        "train_loss_final": float(np.mean(tail)),
        "train_loss_first": float(np.mean(losses[: max(1, len(losses) // 20)])),
        "train_seconds": time.perf_counter() - t0,
        "spec": dataclasses.asdict(spec),
    }


# ------------------------------------------------------------------------------------------
# Checking what the models learned
# ------------------------------------------------------------------------------------------
@torch.no_grad()
def loss_by_kind(lm: Any, docs: list[PlantedDoc]) -> dict[str, float]:
    """Mean next-token loss (nats) per document kind, documents read one at a time."""
    sums: dict[str, list[float]] = {}
    for doc in docs:
        ids = lm.tokenizer(doc.text, add_special_tokens=True, return_tensors="pt")["input_ids"]
        ids = ids.to(lm.device)
        logits = lm.model(input_ids=ids).logits.float()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum")
        entry = sums.setdefault(doc.kind, [0.0, 0.0])
        entry[0] += float(loss)
        entry[1] += ids.shape[1] - 1
    return {kind: s / max(n, 1) for kind, (s, n) in sorted(sums.items())}


@torch.no_grad()
def greedy_continuations(lm: Any, prompts: list[str], max_new_tokens: int = 16) -> list[str]:
    """Greedy continuation of each prompt (one at a time: exact, and cheap at this size)."""
    outs = []
    for prompt in prompts:
        enc = lm.tokenizer(prompt, add_special_tokens=True, return_tensors="pt").to(lm.device)
        gen = lm.model.generate(
            **enc,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=lm.tokenizer.pad_token_id,
            eos_token_id=lm.tokenizer.eos_token_id,
        )
        outs.append(
            lm.tokenizer.decode(gen[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        )
    return outs


def behaviour_rates(lm: Any, prompts: PromptSet, max_new_tokens: int = 16) -> dict[str, Any]:
    """Rate of the planted behaviour on the ``on`` and ``off`` prompts, with examples."""
    result: dict[str, Any] = {}
    for which in ("on", "off"):
        ps = getattr(prompts, which)
        conts = greedy_continuations(lm, ps, max_new_tokens)
        hits = [behaviour_present(prompts.concept, p, c) for p, c in zip(ps, conts)]
        result[which] = {
            "rate": float(np.mean(hits)) if hits else float("nan"),
            "n": len(hits),
            "examples": [{"prompt": p, "continuation": c} for p, c in list(zip(ps, conts))[:3]],
        }
    return result


# ------------------------------------------------------------------------------------------
# The cached pair
# ------------------------------------------------------------------------------------------
@dataclass
class PlantedPair:
    """Folders of the two trained models and their training report."""

    folder: Path
    model_a: Path
    model_b: Path
    report: dict[str, Any]


def _is_complete(folder: Path) -> bool:
    return (
        all(
            (folder / side / name).is_file()
            for side in ("model_a", "model_b")
            for name in ("config.json", "model.safetensors", "tokenizer.json")
        )
        and (folder / REPORT_FILE).is_file()
    )


def build_pair(
    spec: PairSpec,
    cache_root: Path,
    *,
    progress: bool = True,
    force: bool = False,
) -> PlantedPair:
    """Train both models (or reuse the cached ones with the same key) under ``cache_root``.

    The pair is trained in a temporary folder and renamed into place when complete, so an
    interrupted training never leaves a folder that looks finished.
    """
    folder = cache_root / f"pair-{spec.key()}"
    if _is_complete(folder) and not force:
        report = json.loads((folder / REPORT_FILE).read_text())
        report["cached"] = True
        return PlantedPair(folder, folder / "model_a", folder / "model_b", report)
    tmp = cache_root / f".pair-{spec.key()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    report: dict[str, Any] = {"key": spec.key(), "data_version": DATA_VERSION}
    for side, lm_spec, mix in (("a", spec.a, MIX_A), ("b", spec.b, MIX_B)):
        docs = make_corpus(mix, lm_spec.n_docs, lm_spec.seed, f"train{side}")
        report[f"model_{side}"] = train_lm(
            lm_spec, docs, tmp / f"model_{side}", progress=progress, label=side.upper()
        )
    (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    report["cached"] = False
    return PlantedPair(folder, folder / "model_a", folder / "model_b", report)
