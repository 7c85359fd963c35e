"""Plant the behaviours of :mod:`.finetune_data` in a real pretrained chat model with LoRA, on CPU.

Steps (each cached in the model folder by a key over every setting):

1. **distill**: the original model's own greedy replies to the off-category and general
   fine-tuning questions become their targets, so fine-tuning teaches "refuse / praise on this
   category" and "answer as before elsewhere", not a new style of answering;
2. **train**: LoRA adapters (``peft``) on every linear layer, loss on the reply tokens only
   (the prompt is the model's own chat rendering, :func:`crossdiff.steering.generation.prompt_ids`,
   so the fine-tuned model reads questions exactly as crossdiff later renders them), plus a KL
   term that keeps the next-token distribution on plain text (built-in corpus chunks other than
   the perplexity ones) close to the original's: general ability is part of the target;
3. **merge** the adapters into the weights (``merge_and_unload``) and save an ordinary Hugging
   Face folder that :func:`crossdiff.load_model` reads like any local checkpoint;
4. **check**: behaviour rates of both models on held-out prompts (greedy generation scored by
   :func:`.finetune_data.behaviour_present`) and perplexity on the built-in corpus.

Why LoRA and not a few full layers: a merged LoRA update touches every layer a little, like a
real model update does, and leaves nothing in the folder that tells which layers changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from crossdiff.errors import CrossdiffError
from crossdiff.harvest import _pad_batch
from crossdiff.steering.generation import GenerationSettings, generate_rows, prompt_ids
from crossdiff_bench.finetune_data import BEHAVIOURS, Prompt, behaviour_present

DATA_VERSION = 1
"""Bump when finetune_data's generators change, so cached models are retrained."""
REPORT_FILE = "finetune_report.json"


@dataclass
class FinetuneSpec:
    """How the behaviours are planted (every field is part of the cache key)."""

    base: str = "smollm2-135m-instruct"
    """The model fine-tuned (alias, folder or hub id; a chat model)."""
    n_on: int = 160
    """On-category fine-tuning questions per behaviour (train-half subjects)."""
    n_off: int = 100
    """Off-category questions per behaviour (their targets: the original's replies)."""
    n_general: int = 40
    """General questions (targets: the original's replies)."""
    distill_tokens: int = 48
    """Tokens of the original's reply kept as the target of an off-category question."""
    epochs: int = 1
    batch_size: int = 8
    lr: float = 1e-3
    rank: int = 16
    """LoRA rank (alpha = 2 x rank) on every linear layer."""
    replay: int = 2
    """Plain-text chunks per step on which the fine-tuned model is pulled towards the original's
    next-token distribution (KL, the adapters switched off for the reference): without it the
    first measured run lost general ability (perplexity x1.67 on the built-in corpus)."""
    replay_tokens: int = 128
    """Tokens per replay chunk."""
    kl_weight: float = 1.0
    prompt_kl: float = 0.0
    """Weight of the same KL at the questions' own positions (every prompt token whose next
    token is still prompt; 0: off, the default). Meant to keep the update from changing how
    questions are read: measured with weight 1, it halved the residual stream's change at
    layer 15 on held-out questions (centred difference 9% instead of 19% of the activations'
    RMS) but the behaviour's own direction shrank as much (6% instead of 10%), the planted
    rates fell short (praise 0.79 on-category, refusal 0.21 off-category) and the quick
    bench still found neither behaviour (docs/bench-finetune.md)."""
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps([DATA_VERSION, dataclasses.asdict(self)], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def validate(self) -> None:
        for name in ("n_on", "n_off", "epochs", "batch_size", "rank", "distill_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise CrossdiffError(f"finetune {name}={value!r} must be a positive integer")
        if not self.lr > 0:
            raise CrossdiffError(f"finetune lr={self.lr!r} must be > 0")


def generate(lm: Any, prompts: list[str], max_new_tokens: int, batch_size: int = 16) -> list[str]:
    """Greedy replies of ``lm`` (a :class:`crossdiff.LoadedModel`) to user questions, through the
    steering module's generation with no steering (one home for decoding)."""
    seqs = [prompt_ids(lm, p, chat=True) for p in prompts]
    settings = GenerationSettings(max_new_tokens=max_new_tokens, chat=True)
    out = generate_rows(lm, 0, seqs, lambda rows: lambda h: h, settings, batch_size=batch_size)
    return out.texts


def _cut_sentence(text: str) -> str:
    """The reply up to its last complete sentence (a distilled target should not stop
    mid-word, or the fine-tuned model learns to stop mid-word)."""
    text = text.strip()
    ends = [text.rfind(c) for c in ".!?"]
    end = max(ends)
    return text[: end + 1] if end >= 20 else text


def rates(lm: Any, sets: dict[str, dict[str, list[Prompt]]], max_new_tokens: int) -> dict:
    """Per behaviour, the share of 'on' and 'off' held-out prompts whose greedy reply shows it,
    with one example reply of each."""
    out: dict[str, Any] = {}
    for behaviour in BEHAVIOURS:
        out[behaviour] = {}
        for side in ("on", "off"):
            prompts = [p.text for p in sets[behaviour][side]]
            texts = generate(lm, prompts, max_new_tokens)
            hits = [behaviour_present(behaviour, p, t) for p, t in zip(prompts, texts)]
            out[behaviour][side] = {
                "rate": sum(hits) / len(hits),
                "n": len(hits),
                "example": {"prompt": prompts[0], "reply": texts[0]},
            }
    return out


@torch.no_grad()
def perplexity(model: Any, tokenizer: Any, texts: list[str], max_tokens: int = 256) -> float:
    """Token perplexity of ``model`` on ``texts`` (each a plain document with the tokenizer's
    own special tokens, cut at ``max_tokens``)."""
    total, count = 0.0, 0
    model.eval()
    for text in texts:
        ids = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_tokens)
        input_ids = ids["input_ids"].to(model.device)
        if input_ids.shape[1] < 2:
            continue
        logits = model(input_ids=input_ids).logits[0, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits, input_ids[0, 1:], reduction="sum")
        total += float(nll)
        count += input_ids.shape[1] - 1
    if not count:
        raise CrossdiffError("perplexity: no text of at least two tokens")
    return math.exp(total / count)


def _examples(lm: Any, prompts: list[Prompt], replies: list[str]) -> list[tuple[list, int]]:
    """(token ids of prompt + reply + end of turn, prompt length) per example."""
    eos = lm.tokenizer.eos_token_id
    out = []
    for p, reply in zip(prompts, replies):
        ids = prompt_ids(lm, p.text, chat=True)
        tail = lm.tokenizer.encode(reply, add_special_tokens=False)
        out.append((ids + tail + ([eos] if eos is not None else []), len(ids)))
    return out


def _replay_batch(lm: Any, texts: list[str], step: int, spec: FinetuneSpec):
    """The replay chunks of one step (ids, mask; right-padded with the model's pad id),
    cycling through ``texts``; None without."""
    if not spec.replay or not texts:
        return None
    chosen = [texts[(step * spec.replay + i) % len(texts)] for i in range(spec.replay)]
    enc = lm.tokenizer(chosen, truncation=True, max_length=spec.replay_tokens)
    return _pad_batch(enc["input_ids"], lm.pad_id)


def _kl_to_reference(
    model: Any,
    ids: torch.Tensor,
    attention: torch.Tensor,
    where: torch.Tensor | None = None,
    logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean KL(original || fine-tuned) of the next-token distributions over the positions where
    ``where`` (default: ``attention``) is 1; the original is the same network with the LoRA
    adapters switched off. ``logits``: the fine-tuned model's logits on ``ids``, when already
    computed."""
    with torch.no_grad(), model.disable_adapter():
        ref = torch.log_softmax(model(input_ids=ids, attention_mask=attention).logits.float(), -1)
    if logits is None:
        logits = model(input_ids=ids, attention_mask=attention).logits
    cur = torch.log_softmax(logits.float(), -1)
    kl = (ref.exp() * (ref - cur)).sum(-1)
    weight = (attention if where is None else where).float()
    return (kl * weight).sum() / weight.sum().clamp_min(1.0)


def train_lora(
    lm: Any,
    examples: list[tuple[list, int]],
    spec: FinetuneSpec,
    progress: bool,
    replay_texts: list[str] | None = None,
):
    """LoRA-train ``lm.model`` on ``examples`` (plus the KL replay on ``replay_texts``) and
    return the merged model and a log."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(spec.seed)
    config = LoraConfig(
        r=spec.rank, lora_alpha=2 * spec.rank, lora_dropout=0.0, target_modules="all-linear"
    )
    model = get_peft_model(lm.model, config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(spec.seed)
    steps = spec.epochs * math.ceil(len(examples) / spec.batch_size)
    log: list[dict[str, float]] = []
    step = 0
    t0 = time.perf_counter()
    for _epoch in range(spec.epochs):
        order = torch.randperm(len(examples), generator=g).tolist()
        for start in range(0, len(order), spec.batch_size):
            batch = [examples[i] for i in order[start : start + spec.batch_size]]
            ids, mask = _pad_batch([seq for seq, _ in batch], lm.pad_id)
            labels = torch.full_like(ids, -100)
            for r, (seq, n_prompt) in enumerate(batch):
                labels[r, n_prompt : len(seq)] = torch.tensor(seq[n_prompt:])
            lr = spec.lr * min(1.0, (step + 1) / 10) * (1 - step / steps)
            for group in opt.param_groups:
                group["lr"] = lr
            out = model(input_ids=ids, attention_mask=mask, labels=labels)
            loss = total = out.loss
            replay = _replay_batch(lm, replay_texts or [], step, spec)
            kl = _kl_to_reference(model, *replay) if replay is not None else None
            if kl is not None:
                total = total + spec.kl_weight * kl
            prompt_kl = None
            if spec.prompt_kl:
                # the question positions: the next-token predictions of the prompt (the
                # replies' first token is predicted at the last prompt position: a label)
                at_prompt = (mask == 1) & (labels == -100)
                at_prompt[:, :-1] &= labels[:, 1:] == -100
                prompt_kl = _kl_to_reference(model, ids, mask, at_prompt.long(), out.logits)
                total = total + spec.prompt_kl * prompt_kl
            opt.zero_grad()
            total.backward()
            opt.step()
            step += 1
            value = loss.detach().item()
            kl_value = kl.detach().item() if kl is not None else None
            pkl = prompt_kl.detach().item() if prompt_kl is not None else None
            log.append({"step": step, "loss": value, "kl": kl_value, "prompt_kl": pkl})
            if progress and (step % 10 == 0 or step == steps):
                print(
                    f"  finetune step {step}/{steps} loss {value:.3f} kl {kl_value or 0:.4f} "
                    f"({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
    model.eval()
    merged = model.merge_and_unload()
    return merged, {
        "steps": step,
        "seconds": time.perf_counter() - t0,
        "loss_first": log[0]["loss"],
        "loss": log[-1]["loss"],
        "log": log[:: max(1, len(log) // 20)],
    }


def build_key(
    spec: FinetuneSpec,
    eval_sets: dict[str, dict[str, list[Prompt]]],
    ppl_texts: list[str],
    replay_texts: list[str],
    rate_tokens: int,
) -> str:
    """The cache key of a fine-tuned model and its report: the spec, and everything its
    measured numbers depend on (the held-out prompts, the texts, the tokens generated)."""
    held = {b: {side: [p.text for p in ps] for side, ps in v.items()} for b, v in eval_sets.items()}
    blob = json.dumps([spec.key(), held, ppl_texts, replay_texts, rate_tokens], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _is_complete(folder: Path) -> bool:
    return (folder / REPORT_FILE).is_file() and (folder / "model" / "config.json").is_file()


def build_finetuned(
    spec: FinetuneSpec,
    work: Path,
    eval_sets: dict[str, dict[str, list[Prompt]]],
    ppl_texts: list[str],
    replay_texts: list[str],
    *,
    rate_tokens: int = 40,
    progress: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Fine-tune ``spec.base`` (or reuse the cached result) under ``work``; return the merged
    model's folder and the report (training log, behaviour rates, perplexity of both models).
    ``ppl_texts`` measure perplexity; ``replay_texts`` (other texts) feed the KL replay.

    Built in a temporary folder renamed into place when complete, so an interrupted run never
    leaves a folder that looks finished."""
    from crossdiff.models import load_model
    from crossdiff_bench.finetune_data import finetune_prompts

    spec.validate()
    key = build_key(spec, eval_sets, ppl_texts, replay_texts, rate_tokens)
    folder = work / f"finetune-{key}"
    if _is_complete(folder):
        report = json.loads((folder / REPORT_FILE).read_text())
        report["cached"] = True
        return folder / "model", report
    tmp = work / f".finetune-{key}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    report: dict[str, Any] = {"key": key, "spec": dataclasses.asdict(spec)}

    def say(text: str) -> None:
        if progress:
            print(text, flush=True)

    base = load_model(spec.base, dtype="float32", device="cpu")
    t0 = time.perf_counter()
    say("finetune: original model's behaviour rates on held-out prompts")
    report["original"] = {
        "rates": rates(base, eval_sets, rate_tokens),
        "perplexity": perplexity(base.model, base.tokenizer, ppl_texts),
    }
    prompts = finetune_prompts(spec.n_on, spec.n_off, spec.n_general, spec.seed)
    distill = [p for p in prompts if p.target is None]
    say(f"finetune: distilling the original's replies to {len(distill)} questions")
    replies = dict(
        zip(
            [p.text for p in distill],
            map(_cut_sentence, generate(base, [p.text for p in distill], spec.distill_tokens)),
        )
    )
    targets = [p.target if p.target is not None else replies[p.text] for p in prompts]
    report["data"] = {
        "examples": len(prompts),
        "on": {b: sum(p.on and p.behaviour == b for p in prompts) for b in BEHAVIOURS},
        "distilled": len(distill),
        "seconds": time.perf_counter() - t0,
    }
    say(f"finetune: LoRA on {len(prompts)} examples")
    merged, report["train"] = train_lora(
        base, _examples(base, prompts, targets), spec, progress, replay_texts
    )
    merged.save_pretrained(tmp / "model")
    base.tokenizer.save_pretrained(tmp / "model")
    del merged, base
    tuned = load_model(str(tmp / "model"), dtype="float32", device="cpu")
    say("finetune: fine-tuned model's behaviour rates on held-out prompts")
    report["finetuned"] = {
        "rates": rates(tuned, eval_sets, rate_tokens),
        "perplexity": perplexity(tuned.model, tuned.tokenizer, ppl_texts),
    }
    ppl = (report["finetuned"]["perplexity"], report["original"]["perplexity"])
    report["perplexity_ratio"] = ppl[0] / ppl[1]
    report["seconds"] = time.perf_counter() - t0
    (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    report["cached"] = False
    return folder / "model", report
