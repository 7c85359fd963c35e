"""Generating many (prompt, setting) rows at once, each with its own steering.

Every row is one prompt under one steering setting. Rows are left-padded into batches (pad
positions masked out of attention, position ids counted from each row's first real token by
``generate``), so one ``generate`` call serves many prompts and alphas; the steering function
receives each row's coefficient (see :mod:`crossdiff.steering.hooks`). Where a batched call
fails (a model whose code cannot take a padded batch), the rows are generated one by one and
the result says so. Greedy batched and one-by-one generations agree token for token (tested);
sampled ones draw different random numbers and do not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from crossdiff.errors import CrossdiffError
from crossdiff.steering.hooks import HiddenFn

if TYPE_CHECKING:
    from crossdiff.models import LoadedModel

Prompt = str | list[dict[str, str]]


@dataclass
class GenerationSettings:
    """How to decode. Greedy unless ``do_sample``."""

    max_new_tokens: int = 40
    """Tokens generated per row (fewer if the model ends its answer)."""
    do_sample: bool = False
    """Sample instead of greedy decoding."""
    temperature: float = 1.0
    """Sampling temperature (sampling only)."""
    top_p: float = 1.0
    """Nucleus sampling mass (sampling only)."""
    seed: int = 0
    """Seed of the random generator for sampling (set before every generate call)."""
    chat: bool = True
    """Render each prompt as a user turn through the model's chat template (its plain
    rendering when it has none); False feeds the prompt as a plain document."""

    def validate(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise CrossdiffError(
                f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}"
            )
        if self.do_sample:
            if not self.temperature > 0:
                raise CrossdiffError(f"temperature must be > 0, got {self.temperature}")
            if not 0 < self.top_p <= 1:
                raise CrossdiffError(f"top_p must be in (0, 1], got {self.top_p}")

    def generate_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        if self.do_sample:
            kw.update(temperature=self.temperature, top_p=self.top_p)
        return kw


@dataclass
class GenerationOutput:
    """New tokens and their text per row, and how they were produced."""

    tokens: list[list[int]]
    texts: list[str]
    batched: bool
    notes: list[str] = field(default_factory=list)


def prompt_ids(lm: LoadedModel, prompt: Prompt, chat: bool) -> list[int]:
    """Token ids of one prompt as this model reads it (chat template or plain document)."""
    if isinstance(prompt, str):
        rendered = (
            lm.render_chat([{"role": "user", "content": prompt}], add_generation_prompt=True)
            if chat
            else lm.render_text(prompt)
        )
    else:
        if not chat:
            raise CrossdiffError("a prompt given as a list of chat messages needs chat=True")
        rendered = lm.render_chat(list(prompt), add_generation_prompt=True)
    ids = lm.tokenize(rendered).input_ids
    if not ids:
        raise CrossdiffError(f"prompt {prompt!r:.60} tokenizes to nothing; give some text")
    return ids


def _eos_ids(lm: LoadedModel) -> set[int]:
    ids: set[int] = set()
    for value in (lm.model.generation_config.eos_token_id, lm.tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def _cut_at_eos(tokens: list[int], eos: set[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[:i]
    return tokens


def _generate_batch(
    lm: LoadedModel,
    layer: int,
    seqs: list[list[int]],
    fn: HiddenFn,
    settings: GenerationSettings,
) -> list[list[int]]:
    pad = lm.pad_id
    width = max(map(len, seqs))
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=lm.device)
    mask = torch.tensor(
        [[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=lm.device, dtype=torch.long
    )
    devices = [lm.device.index or 0] if lm.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad(), lm.steering(layer, fn):
        torch.manual_seed(settings.seed)
        out = lm.model.generate(
            input_ids=ids, attention_mask=mask, pad_token_id=pad, **settings.generate_kwargs()
        )
    return [row[width:].tolist() for row in out]


def generate_rows(
    lm: LoadedModel,
    layer: int,
    seqs: Sequence[list[int]],
    make_fn: Callable[[list[int]], HiddenFn],
    settings: GenerationSettings,
    *,
    batch_size: int = 32,
    batched: bool = True,
    progress: bool = False,
    desc: str = "steer",
) -> GenerationOutput:
    """Generate every row of ``seqs`` (prompt token ids) with steering ``make_fn(row_indices)``.

    ``make_fn`` builds the hook function for the given rows (in that order). Rows are
    generated ``batch_size`` at a time (left-padded), or one at a time with ``batched=False``
    or after a batched call fails. Returns the new tokens per row, cut at the first
    end-of-sequence token, and their decoded text.
    """
    if batch_size < 1:
        raise CrossdiffError(f"batch_size must be at least 1, got {batch_size}")
    settings.validate()
    n = len(seqs)
    notes: list[str] = []
    size = batch_size if batched else 1
    chunks = [list(range(i, min(n, i + size))) for i in range(0, n, size)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc=desc, unit="row")
    results: list[list[int] | None] = [None] * n
    one_by_one = not batched
    try:
        for chunk in chunks:
            chunk_seqs = [list(seqs[i]) for i in chunk]
            outs = None
            if not one_by_one and len(chunk) > 1:
                try:
                    outs = _generate_batch(lm, layer, chunk_seqs, make_fn(chunk), settings)
                except CrossdiffError:
                    raise
                except (RuntimeError, ValueError, TypeError, IndexError) as error:
                    notes.append(
                        f"batched generation failed for model '{lm.model_id}' "
                        f"({type(error).__name__}: {str(error)[:200]}); rows were generated "
                        "one by one"
                    )
                    one_by_one = True
            if outs is None:
                outs = [
                    _generate_batch(lm, layer, [s], make_fn([i]), settings)[0]
                    for i, s in zip(chunk, chunk_seqs)
                ]
            for i, out in zip(chunk, outs):
                results[i] = out
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    eos = _eos_ids(lm)
    tokens = [_cut_at_eos(r or [], eos) for r in results]
    texts = [lm.tokenizer.decode(t, skip_special_tokens=True) for t in tokens]
    return GenerationOutput(tokens, texts, not one_by_one and size > 1 and n > 1, notes)
