"""What a harvest is asked to do: :class:`HarvestConfig`, its validation, and the settings
that shape its rows.

The config is what the CLI, ``crossdiff run`` and the Python API build; it is serialized into
the store's manifest, and :func:`_harvest_settings` is the part of it a store must match to be
extended (a resumed or grown harvest forms the same windows, blocks and batches). The reasons
a harvest ends (``REASON_*``) are recorded in the manifest as ``complete_reason``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crossdiff.errors import CrossdiffError
from crossdiff.harvest.windows import WINDOW_MARGIN

REASON_CORPUS = "corpus exhausted"
REASON_TOKENS = "token budget reached"
REASON_DOCS = "document limit reached"
LITERAL_SPECIALS = ("cut", "keep")
PAIR_POSITIONS = ("all", "word_end")


@dataclass
class HarvestConfig:
    """Everything that decides what a harvest writes (serialized into the store's manifest)."""

    model_a: str
    """Model A: built-in alias, local folder, GGUF file or hub id."""
    model_b: str
    """Model B, likewise."""
    corpus: str
    """Corpus spec (crossdiff.corpus): a .txt/.jsonl/.parquet file, a folder of them,
    ``hf:NAME``, ``builtin`` (web text and chats, half and half), or a mix by share of pairs,
    ``SPEC=SHARE,SPEC=SHARE`` (e.g. ``hf:my/chats=0.5,hf:my/web=0.5``; a config file may give
    it as a mapping {spec: share})."""
    out: str
    """Store folder. Rerunning with the same folder resumes (or reports that it is complete)."""
    tokens: int | None = None
    """Stop after this many aligned pairs (rows), at the first block boundary at or past it.
    None: the whole corpus."""
    layer_a: int | str = "middle"
    """Layer of A whose output is stored: index, negative index, relative depth ("75%") or
    "middle" (n_layers // 2)."""
    layer_b: int | str = "middle"
    """Layer of B, likewise."""
    max_seq_len: int = 512
    """Tokens per window and model; longer texts are split into windows, chats truncated."""
    batch_size: int = 8
    """Full-length windows per forward pass: each model's batches hold at most batch_size x
    max_seq_len padded tokens, so shorter windows share a pass (harvest.batches)."""
    pack: bool = True
    """Pack short windows several to a row, each attending only to itself
    (harvest.batches.packing_works checks each model first; a model that fails gets padded
    batches). Saves the padding and passes that short windows cost; changes rows only at
    float level, so a store may be resumed with either."""
    block_batches: int = 8
    """Documents per block = block_batches x batch_size; windows are batched within a
    block, and shards close at block boundaries (see :mod:`crossdiff.harvest`)."""
    dtype: str = "auto"
    """Dtype the models run in: "auto" (bf16 where fast), "float32", "bfloat16", "float16"."""
    device: str = "auto"
    """Device both models run on: "auto" (cuda if available), "cpu", "cuda", "cuda:1", ..."""
    shard_rows: int = 16384
    """A shard is committed at the first block boundary with at least this many rows. Under
    torchrun with several ranks every block is its own shard (a rank's blocks are not
    consecutive documents, and a shard holds consecutive documents)."""
    max_documents: int | None = None
    """Read at most this many corpus documents."""
    trust_remote_code: bool = False
    """Allow a hub model's own Python code to run (transformers' ``trust_remote_code``)."""
    cache_dir: str | None = None
    """Where built-in and GGUF models are converted (default: crossdiff's cache)."""
    progress: bool = True
    """Show a progress bar and print a summary (to stderr)."""
    literal_specials: str = "cut"
    """Content holding the literal string of a special token (``<|im_start|>``, ``<bos>``) is a
    control token for one model and text for the other. "cut": a document's pairs end before
    the first such token of either model (its record says so); "keep": only that token never
    pairs, the pairs after it are kept although one model read a control token there."""
    pair_positions: str = "all"
    """Which aligned positions become rows. "all": every pair. "word_end": only pairs whose
    shared end is a word end (the next content character is not a letter or digit, or the
    content ends there), which removes at the source the word-piece positions where a
    cross-tokenizer crosscoder learns tokenization artifacts (each document's record counts
    the pairs removed; ``store info`` sums them)."""
    decision_pairs: bool = False
    """Chats that end with a user turn (prompts) are read with each model's generation prompt,
    and its last token, where the model decides how to answer, becomes one more pair
    (harvest.windows). Use it for a corpus of prompts; chats with replies are unchanged."""

    def __post_init__(self) -> None:
        from collections.abc import Mapping

        if isinstance(self.corpus, Mapping):  # a mix given as {spec: share} (a config file)
            from crossdiff.corpus.mix import format_mix, parse_mix

            self.corpus = format_mix(parse_mix(self.corpus))

    def validate(self) -> None:
        if self.tokens is not None and self.tokens < 1:
            raise CrossdiffError(f"tokens must be a positive number of pairs, got {self.tokens}")
        if self.max_seq_len < 2:
            raise CrossdiffError(f"max_seq_len must be at least 2 tokens, got {self.max_seq_len}")
        if self.batch_size < 1:
            raise CrossdiffError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.block_batches < 1:
            raise CrossdiffError(f"block_batches must be at least 1, got {self.block_batches}")
        if self.shard_rows < 1:
            raise CrossdiffError(f"shard_rows must be at least 1, got {self.shard_rows}")
        if self.max_documents is not None and self.max_documents < 1:
            raise CrossdiffError(f"max_documents must be at least 1, got {self.max_documents}")
        if self.literal_specials not in LITERAL_SPECIALS:
            raise CrossdiffError(
                f"literal_specials must be one of {', '.join(LITERAL_SPECIALS)}, "
                f"got {self.literal_specials!r}"
            )
        if self.pair_positions not in PAIR_POSITIONS:
            raise CrossdiffError(
                f"pair_positions must be one of {', '.join(PAIR_POSITIONS)}, "
                f"got {self.pair_positions!r}"
            )


def _harvest_settings(config: HarvestConfig) -> dict[str, Any]:
    """The settings that shape rows: they must match for a store to be extended."""
    settings: dict[str, Any] = {
        "max_seq_len": config.max_seq_len,
        "batch_size": config.batch_size,
        "block_documents": config.batch_size * config.block_batches,
        "window_margin": WINDOW_MARGIN,
        "literal_specials": config.literal_specials,
    }
    if config.pair_positions != "all":  # absent = "all": stores made before the option match
        settings["pair_positions"] = config.pair_positions
    if config.decision_pairs:  # absent = off: stores made before the option match
        settings["decision_pairs"] = True
    return settings
