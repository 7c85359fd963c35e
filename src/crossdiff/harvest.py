"""Harvest: two models read the same corpus; their aligned activations go into a store.

For every document, in corpus order: each model renders it its own way (plain text, or the
chat through its own chat template), tokenizes it with offsets, and :mod:`crossdiff.align`
pairs the positions where both have read the same content. Both models run up to the chosen
layer only (early exit), on padded batches of windows; the residual stream at the paired
positions is written, in bf16, to an :class:`~crossdiff.store.ActivationStore`.

Long documents: a text longer than ``max_seq_len`` tokens (in either model) is split into
windows at a *paired* position, so both models' windows end after the same content; the next
window starts with that content's remainder as a fresh document (BOS again, no context from the
previous window). Each window's tokens are an exact prefix of what the model would read for the
remainder, because tokenization only looks at text ending well past the window (at least
``WINDOW_MARGIN`` tokens further). Chats are not split: a chat is truncated after
``max_seq_len`` tokens (its record says so).

Determinism and resuming: documents are processed in blocks of ``block_batches x batch_size``
documents; within a block, windows are sorted by length (so a batch holds windows of similar
length and little padding) and batched; shards are committed only at block boundaries. A
restart resumes at the first document not committed, which is a block boundary, so it forms
exactly the batches an uninterrupted run would have formed: same rows, same order, same bits.

Under ``torchrun`` (``WORLD_SIZE > 1``) the ranks stream: counted from the resume point,
block ``j`` belongs to rank ``j % world``, which runs it through both models (the batches a
single process forms) and writes it as shard ``start + j``, the index it will have in the
manifest; each rank reads the corpus stream but skips the other ranks' documents without
rendering or tokenizing them, and publishes every shard it wrote as a small file
(:mod:`crossdiff.store.pending`), with no collective and no waiting. A rank stops before a
block that cannot be needed, as far as the published blocks show: the corpus ended before it,
or the blocks before it already hold ``tokens`` rows (blocks not yet published count as
empty, so the test never stops too early). Rank 0, which holds the store's lock, lists the
contiguous prefix of published blocks in the manifest as it grows (a crash keeps the manifest
a prefix of the corpus), and after every rank has stopped lists the rest, up to the block a
single process would have stopped at, deletes the blocks past it, and marks the store
complete; the other ranks wait for that (polling a file), then all meet at one barrier. So the
store holds the rows of a single process, in the same order, bit for bit on CPU in float32;
only the shard boundaries differ (one shard per block). A resumed run, with any number of
ranks or one process, first lists the shards a killed run wrote and published that continue
the store and are intact (checksums re-read), and removes every other unlisted file.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crossdiff.align import Alignment, align_rendered, content_token_mask
from crossdiff.errors import CrossdiffError
from crossdiff.store import (
    ActivationStore,
    Manifest,
    ModelInfo,
    ShardInfo,
    TokenizerInfo,
    make_rows,
)
from crossdiff.store.manifest import RUNTIME_SETTINGS

if TYPE_CHECKING:
    import torch

    from crossdiff.crosscoder.distributed import DistInfo
    from crossdiff.models import LoadedModel, RenderedText, TokenizedText
    from crossdiff.store import StoreWriter

REASON_CORPUS = "corpus exhausted"
REASON_TOKENS = "token budget reached"
REASON_DOCS = "document limit reached"
WINDOW_MARGIN = 16  # tokens of look-ahead past a window's end, so its tokenization is final
CHARS_PER_TOKEN_GUESS = 6  # first guess of how much text fills a window (doubled if short)
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
    """Corpus spec (a file, a folder, a dataset name or the built-in default; crossdiff.corpus)."""
    out: str
    """Store folder. Rerunning with the same folder resumes (or reports that it is complete)."""
    tokens: int | None = None
    """Stop after this many aligned pairs (rows), at the first block boundary at or past it.
    None: the whole corpus."""
    layer_a: int | str = "middle"
    """Layer of A whose output is stored: index, negative index, or "middle" (n_layers // 2)."""
    layer_b: int | str = "middle"
    max_seq_len: int = 512
    """Tokens per window and model; longer texts are split into windows, chats truncated."""
    batch_size: int = 8
    """Windows per forward pass."""
    block_batches: int = 8
    """Documents per block = block_batches x batch_size; windows are sorted by length within a
    block, and shards close at block boundaries (see the module docstring)."""
    dtype: str = "auto"
    """Dtype the models run in: "auto" (bf16 where fast), "float32", "bfloat16", "float16"."""
    device: str = "auto"
    shard_rows: int = 16384
    """A shard is committed at the first block boundary with at least this many rows. Under
    torchrun with several ranks every block is its own shard (a rank's blocks are not
    consecutive documents, and a shard holds consecutive documents)."""
    max_documents: int | None = None
    """Read at most this many corpus documents."""
    trust_remote_code: bool = False
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


# ---------------------------------------------------------------------------------- windows
@dataclass
class Window:
    """One window of one document: what each model reads, and the pairs in it."""

    doc_index: int
    window: int
    content_start: int  # common-content offset of the window's start within the document
    ids_a: list[int]
    ids_b: list[int]
    pos_a: np.ndarray
    pos_b: np.ndarray
    content_end: np.ndarray  # in document content coordinates
    span_a: np.ndarray  # (n, 2) token spans in the window's rendered text
    span_b: np.ndarray
    record: dict[str, Any]  # the window's entry in the document record


@dataclass
class DocumentPlan:
    """A document's windows and its record for the store's documents file."""

    record: dict[str, Any]
    windows: list[Window] = field(default_factory=list)


def _side_record(
    rendered: RenderedText, tokens: TokenizedText, n_used: int, n_content: int
) -> dict[str, Any]:
    """What one model read in a window: the rendered text up to its last used token."""
    cut = max((e for _, e in tokens.offsets[:n_used]), default=0)
    spans = [[s, min(e, cut)] for s, e in rendered.content_spans if s < cut]
    return {
        "text": rendered.text[:cut],
        "content_spans": spans,
        "input_ids": list(tokens.input_ids[:n_used]),
        "content_tokens": n_content,
    }


def _make_window(
    doc_index: int,
    k: int,
    content_start: int,
    al: Alignment,
    n: int,
    ra: RenderedText,
    ta: TokenizedText,
    rb: RenderedText,
    tb: TokenizedText,
    final: bool,
    pair_positions: str = "all",
) -> Window:
    """Window of the first ``n`` pairs; a final window counts its trailing content tokens too.
    With ``pair_positions="word_end"`` only the pairs at word ends become rows (the window
    still reads, and counts, the tokens up to the n-th pair)."""
    pos_a, pos_b = al.pos_a[:n], al.pos_b[:n]
    used_a, used_b = int(pos_a[-1]) + 1, int(pos_b[-1]) + 1
    mask_a = content_token_mask(ta.offsets, ta.special_mask, ra.content_spans)
    mask_b = content_token_mask(tb.offsets, tb.special_mask, rb.content_spans)
    count_a = int(mask_a.sum() if final else mask_a[:used_a].sum())
    count_b = int(mask_b.sum() if final else mask_b[:used_b].sum())
    last = int(al.content_end[n - 1])  # self-check drops inside the window (all, if final)
    drop_a = int(al.dropped_a if final else np.count_nonzero(al.dropped_end_a <= last))
    drop_b = int(al.dropped_b if final else np.count_nonzero(al.dropped_end_b <= last))
    offs_a = np.asarray(ta.offsets, dtype=np.int32).reshape(-1, 2)
    offs_b = np.asarray(tb.offsets, dtype=np.int32).reshape(-1, 2)
    content_end = al.content_end[:n]
    if pair_positions == "word_end":
        keep = word_end_mask(ra, offs_a[pos_a][:, 1])
        pos_a, pos_b, content_end = pos_a[keep], pos_b[keep], content_end[keep]
    record = {
        "content_start": content_start,
        "pairs": len(pos_a),
        "a": _side_record(ra, ta, used_a, count_a),
        "b": _side_record(rb, tb, used_b, count_b),
    }
    if len(pos_a) < n:
        record["pairs_removed"] = n - len(pos_a)
    if drop_a or drop_b:
        record["pairs_dropped"] = {"a": drop_a, "b": drop_b}
    return Window(
        doc_index=doc_index,
        window=k,
        content_start=content_start,
        ids_a=list(ta.input_ids[:used_a]),
        ids_b=list(tb.input_ids[:used_b]),
        pos_a=pos_a.copy(),
        pos_b=pos_b.copy(),
        content_end=content_end + content_start,
        span_a=offs_a[pos_a],
        span_b=offs_b[pos_b],
        record=record,
    )


def word_end_mask(rendered: RenderedText, ends: np.ndarray) -> np.ndarray:
    """Whether each pair end (a character offset in ``rendered.text``) is a word end: the next
    character is not a letter or digit, or it is not content (the end of a message, of the
    window's text). Stricter than the analysis's ``word_internal`` descriptor, which also
    asks for a letter or digit before the end: a pair ending at ``(`` before ``a`` is not
    word-internal but is not a word end either, so it is dropped here."""
    text = rendered.text
    spans = sorted(rendered.content_spans)
    starts = np.asarray([s for s, _ in spans], dtype=np.int64)
    stops = np.asarray([e for _, e in spans], dtype=np.int64)
    keep = np.ones(len(ends), dtype=bool)
    for i, e in enumerate(np.asarray(ends, dtype=np.int64).tolist()):
        j = int(np.searchsorted(starts, e, side="left")) - 1  # the last span starting before e
        if j >= 0 and e < stops[j] and e < len(text) and text[e].isalnum():
            keep[i] = False
    return keep


def _render(lm: LoadedModel, doc: Any) -> RenderedText:
    if doc.messages is not None:
        return lm.render_chat(doc.messages)
    return lm.render_text(doc.text)


def literal_special(lm: LoadedModel, rendered: RenderedText, tokens: TokenizedText) -> int | None:
    """Index of the first special token read from content, i.e. the literal string of a
    control token written in a message or text (``<|im_start|>``), or None."""
    mask = np.asarray(tokens.special_mask, dtype=bool)
    if not mask.any():
        return None
    inside = content_token_mask(tokens.offsets, [False] * len(tokens), rendered.content_spans)
    for i in np.flatnonzero(mask & inside).tolist():
        s, e = tokens.offsets[i]
        literal = lm.tokenizer.convert_ids_to_tokens(int(tokens.input_ids[i]))
        if isinstance(literal, str) and rendered.text[s:e].strip() == literal.strip():
            return i  # not an unk standing for characters the vocabulary lacks
    return None


def _cut_at_literal_special(al: Alignment, n: int, specials: tuple[int | None, int | None]) -> int:
    """The number of the first ``n`` pairs before either model read a literal special."""
    cut = n
    for pos, first in ((al.pos_a, specials[0]), (al.pos_b, specials[1])):
        if first is not None:
            cut = min(cut, int(np.searchsorted(pos[:n], first, side="left")))
    return cut


def plan_document(
    doc_index: int,
    doc: Any,
    lm_a: LoadedModel,
    lm_b: LoadedModel,
    max_seq_len: int,
    literal_specials: str = "cut",
    pair_positions: str = "all",
) -> DocumentPlan:
    """Render, tokenize, align and window one corpus document (see the module docstring)."""
    record: dict[str, Any] = {
        "index": doc_index,
        "doc_id": str(doc.doc_id),
        "source": getattr(doc, "source", None),
        "text": doc.text if doc.messages is None else None,
        "messages": doc.messages,
        "windows": [],
        "content_tokens_a": 0,
        "content_tokens_b": 0,
        "pairs": 0,
        "truncated": False,
        "skipped": None,
    }
    if getattr(doc, "repaired", 0):
        record["repaired"] = int(doc.repaired)
    plan = DocumentPlan(record)

    def cut(al: Alignment, n: int, ra, ta, rb, tb) -> int:
        """``n`` lowered to the pairs before a literal special (policy "cut")."""
        if literal_specials != "cut":
            return n
        first = (literal_special(lm_a, ra, ta), literal_special(lm_b, rb, tb))
        if first == (None, None):
            return n
        kept = _cut_at_literal_special(al, n, first)
        if kept < n:
            record["note"] = "pairs end at a special token's literal string in the content"
        return kept

    if doc.messages is not None:
        try:
            ra, rb = lm_a.render_chat(doc.messages), lm_b.render_chat(doc.messages)
        except CrossdiffError as exc:
            record["skipped"] = f"cannot render: {exc}"
            return plan
        ta, tb = lm_a.tokenize(ra), lm_b.tokenize(rb)
        al = align_rendered(ra, ta, rb, tb)
        n = al.prefix(max_seq_len, max_seq_len)
        record["truncated"] = n < al.n_pairs
        if not al.content_complete:
            record["note"] = "the templates disagree on message content after some point"
        for side, r in (("A", ra), ("B", rb)):
            if r.dropped:
                record["note"] = (
                    f"model {side}'s chat template drops message(s) {list(r.dropped)}; "
                    "they are not common content"
                )
        n_cut = cut(al, n, ra, ta, rb, tb)
        if n_cut:
            final = n == al.n_pairs or n_cut < n
            plan.windows.append(
                _make_window(doc_index, 0, 0, al, n_cut, ra, ta, rb, tb, final, pair_positions)
            )
    else:
        text = doc.text or ""
        start, k = 0, 0
        while start < len(text):
            chunk = max_seq_len * CHARS_PER_TOKEN_GUESS
            while True:  # grow the piece until both windows are final (or the text ends)
                piece = text[start : start + chunk]
                more = start + chunk < len(text)
                ra, rb = lm_a.render_text(piece), lm_b.render_text(piece)
                ta, tb = lm_a.tokenize(ra), lm_b.tokenize(rb)
                need = max_seq_len + WINDOW_MARGIN
                if not more or (len(ta) >= need and len(tb) >= need):
                    break
                chunk *= 2
            al = align_rendered(ra, ta, rb, tb)
            n = al.prefix(max_seq_len, max_seq_len)
            n_cut = cut(al, n, ra, ta, rb, tb)
            if n_cut == 0:
                break
            final = (not more and n == al.n_pairs) or n_cut < n
            plan.windows.append(
                _make_window(doc_index, k, start, al, n_cut, ra, ta, rb, tb, final, pair_positions)
            )
            if final:
                break
            start += int(al.content_end[n - 1])
            k += 1
    for w in plan.windows:
        record["windows"].append(w.record)
        record["content_tokens_a"] += w.record["a"]["content_tokens"]
        record["content_tokens_b"] += w.record["b"]["content_tokens"]
        record["pairs"] += len(w.pos_a)
        if w.record.get("pairs_removed"):
            record["pairs_removed"] = record.get("pairs_removed", 0) + w.record["pairs_removed"]
        for side in ("a", "b"):
            dropped = w.record.get("pairs_dropped", {}).get(side, 0)
            if dropped:
                record[f"pairs_dropped_{side}"] = record.get(f"pairs_dropped_{side}", 0) + dropped
    return plan


# ------------------------------------------------------------------------------- the engine
@dataclass
class HarvestTimings:
    """Where the time went (seconds) and what was done, for the progress bar and the summary."""

    total: float = 0.0
    model: float = 0.0  # forward passes up to the layer (the bare cost)
    write: float = 0.0  # gathering rows, bf16, shard writes
    tokens_a: int = 0  # tokens fed to A (without padding)
    tokens_b: int = 0
    rows: int = 0
    documents: int = 0
    content_tokens_a: int = 0  # content tokens of the windows processed (coverage denominators)
    content_tokens_b: int = 0
    wait: float = 0.0  # several ranks: rank 0 waiting for the others to stop
    skip: float = 0.0  # several ranks: reading (not rendering) the other ranks' documents
    dropped_blocks: int = 0  # several ranks: blocks computed past the store's end, dropped
    dropped_rows: int = 0

    def add(self, counts: dict[str, int]) -> None:
        """Add a block's counts (:func:`_block_counts`, named like these fields)."""
        for name, value in counts.items():
            setattr(self, name, getattr(self, name) + value)


def _block_counts(plans: list[Any], rows: list[Any]) -> dict[str, int]:
    """What one harvested block adds to the store: documents, rows, content tokens."""
    return {
        "documents": len(plans),
        "rows": sum(r.n for r in rows),
        "content_tokens_a": sum(p.record["content_tokens_a"] for p in plans),
        "content_tokens_b": sum(p.record["content_tokens_b"] for p in plans),
    }


def _pad_batch(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def capture_windows(
    lm: LoadedModel, layer: int, seqs: list[list[int]], positions: list[np.ndarray]
) -> torch.Tensor:
    """Run one padded batch to ``layer`` and gather the rows at ``positions`` (in order)."""
    import torch

    ids, mask = _pad_batch(seqs, lm.pad_id)
    hidden = lm.capture(ids, mask, layer)
    rows_i = torch.cat(
        [torch.full((len(p),), i, dtype=torch.long) for i, p in enumerate(positions)]
    )
    rows_t = torch.from_numpy(np.concatenate(positions).astype(np.int64))
    return hidden[rows_i.to(hidden.device), rows_t.to(hidden.device)]


def model_info(lm: LoadedModel, layer: int, layer_spec: int | str) -> ModelInfo:
    """The manifest entry of one model (tokenizer identified by a hash of its definition)."""
    tok = lm.tokenizer
    digest = hashlib.sha256(tok.backend_tokenizer.to_str().encode("utf-8"))
    digest.update(str(getattr(tok, "chat_template", None) or "").encode("utf-8"))
    return ModelInfo(
        spec=lm.spec,
        model_id=lm.model_id,
        revision=lm.revision,
        layer=layer,
        layer_spec=str(layer_spec),
        n_layers=lm.n_layers,
        d_model=lm.d_model,
        dtype=str(lm.dtype).removeprefix("torch."),
        tokenizer=TokenizerInfo(
            name=str(getattr(tok, "name_or_path", "") or type(tok).__name__),
            vocab_size=len(tok),
            hash=digest.hexdigest(),
        ),
        has_chat_template=lm.has_chat_template,
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
    return settings


def _blocks(docs: Iterable[Any], size: int, first_index: int) -> Iterator[list[tuple[int, Any]]]:
    it = iter(docs)
    index = first_index
    while block := list(itertools.islice(it, size)):
        yield list(enumerate(block, start=index))
        index += len(block)


class Harvester:
    """The harvest loop with its models loaded (reusable by benchmarks and tests)."""

    def __init__(self, config: HarvestConfig, lm_a: LoadedModel, lm_b: LoadedModel) -> None:
        config.validate()
        self.config = config
        self.lm_a, self.lm_b = lm_a, lm_b
        self.layer_a = lm_a.resolve_layer(config.layer_a)
        self.layer_b = lm_b.resolve_layer(config.layer_b)
        self.timings = HarvestTimings()
        self.world_size = 1
        """Ranks the harvest ran on (``timings`` then add up the ranks' work)."""
        self.wall_seconds: float | None = None
        """Wall time of a distributed harvest (``timings.total`` sums the ranks' times)."""
        self._own_blocks: dict[int, dict[str, int]] = {}  # run_rank: block -> its counts

    def manifest(self) -> Manifest:
        c = self.config
        return Manifest(
            model_a=model_info(self.lm_a, self.layer_a, c.layer_a),
            model_b=model_info(self.lm_b, self.layer_b, c.layer_b),
            corpus={"spec": c.corpus},
            harvest=_harvest_settings(c),
        )

    def capture_batch(self, batch: list[Window]) -> tuple[torch.Tensor, torch.Tensor]:
        """Both models' rows for one batch of windows, on the CPU (the model cost)."""
        x_a = capture_windows(
            self.lm_a, self.layer_a, [w.ids_a for w in batch], [w.pos_a for w in batch]
        )
        x_b = capture_windows(
            self.lm_b, self.layer_b, [w.ids_b for w in batch], [w.pos_b for w in batch]
        )
        return x_a.cpu(), x_b.cpu()  # synchronizes, so the model time is real

    def run_block(self, block: list[tuple[int, Any]]) -> tuple[list[DocumentPlan], list[Any]]:
        """Plan and capture one block; returns the plans and the rows of each window in order."""
        from crossdiff.store.shard import Rows

        plans = [
            plan_document(
                i,
                doc,
                self.lm_a,
                self.lm_b,
                self.config.max_seq_len,
                self.config.literal_specials,
                self.config.pair_positions,
            )
            for i, doc in block
        ]
        windows = [w for p in plans for w in p.windows]
        order = sorted(
            range(len(windows)),
            key=lambda i: -max(len(windows[i].ids_a), len(windows[i].ids_b)),
        )
        rows: list[Rows | None] = [None] * len(windows)
        bs = self.config.batch_size
        for start in range(0, len(order), bs):
            idx = order[start : start + bs]
            batch = [windows[i] for i in idx]
            t2 = time.perf_counter()
            x_a, x_b = self.capture_batch(batch)
            t3 = time.perf_counter()
            self.timings.model += t3 - t2
            tm = self.timings
            tm.tokens_a += sum(len(w.ids_a) for w in batch)
            tm.tokens_b += sum(len(w.ids_b) for w in batch)
            off = 0
            for i, w in zip(idx, batch):
                n = len(w.pos_a)
                rows[i] = make_rows(
                    x_a[off : off + n],
                    x_b[off : off + n],
                    doc_index=w.doc_index,
                    window=w.window,
                    content_end=w.content_end,
                    pos_a=w.pos_a,
                    pos_b=w.pos_b,
                    span_a=w.span_a,
                    span_b=w.span_b,
                )
                off += n
            self.timings.write += time.perf_counter() - t3
        return plans, rows

    def run(
        self,
        store: ActivationStore,
        docs: Iterable[Any],
        *,
        on_commit: Callable[[ShardInfo], None] | None = None,
        writer: StoreWriter | None = None,
    ) -> ActivationStore:
        """Harvest ``docs`` (already positioned at the store's next document) into ``store``.

        ``writer``: the store's writer if the caller holds one (left open), else one is made."""
        import contextlib

        c = self.config
        tm = self.timings
        start_time = time.perf_counter()
        bar = _progress(c, store)
        try:
            held = contextlib.nullcontext(writer) if writer is not None else None
            with held or store.writer(shard_rows=c.shard_rows) as writer:
                rows_total = store.n_rows
                reason = REASON_CORPUS
                if c.tokens is not None and rows_total >= c.tokens:
                    reason = REASON_TOKENS
                else:
                    block_docs = c.batch_size * c.block_batches
                    for block in _blocks(docs, block_docs, writer.next_document):
                        plans, rows = self.run_block(block)
                        t0 = time.perf_counter()
                        k = 0
                        for plan in plans:
                            writer.add_document(plan.record)
                            for _ in plan.windows:
                                writer.add_rows(rows[k])
                                rows_total += rows[k].n
                                k += 1
                        counts = _block_counts(plans, rows)
                        tm.add(counts)
                        shard = writer.commit_if_full()
                        tm.write += time.perf_counter() - t0
                        if bar is not None:
                            bar.update(counts["rows"])
                            elapsed = time.perf_counter() - start_time
                            bar.set_postfix_str(_postfix(tm, writer.next_document, elapsed))
                        if shard is not None and on_commit is not None:
                            on_commit(shard)
                        if c.tokens is not None and rows_total >= c.tokens:
                            reason = REASON_TOKENS
                            break
                self._finish(writer, self._end_reason(reason, writer.next_document))
        finally:
            if bar is not None:
                bar.close()
            tm.total += time.perf_counter() - start_time
        return store

    def _end_reason(self, reason: str, next_doc: int) -> str:
        """A corpus that 'ran out' at ``--max-documents`` stopped at the document limit."""
        limit = self.config.max_documents
        if reason == REASON_CORPUS and limit is not None and next_doc >= limit:
            return REASON_DOCS
        return reason

    def _finish(self, writer: StoreWriter, reason: str) -> None:
        """Mark the store complete (the last partial shard is committed) and time it."""
        t0 = time.perf_counter()
        writer.finish(reason, tokens_target=self.config.tokens)
        self.timings.write += time.perf_counter() - t0

    def run_rank(
        self,
        store: ActivationStore,
        docs: Iterable[Any],
        start: StreamStart,
        rank: int,
        world: int,
        writer: StoreWriter | None = None,
        *,
        on_commit: Callable[[ShardInfo], None] | None = None,
    ) -> str | None:
        """One rank's share of a streaming harvest; on rank 0 also the final listing.

        ``docs`` is positioned at document ``start.documents`` (the store's end when the run
        began, after :func:`crossdiff.store.pending.recover`); block ``j`` is the ``j``-th
        block from there and belongs to rank ``j % world``, which writes it as shard
        ``start.shards + j`` and publishes it (``crossdiff.store.pending``); the other ranks'
        documents are read from the stream and skipped, never rendered. A rank stops before a
        block when the blocks published so far show that it cannot be needed (the corpus ends
        before it, or the blocks before it already reach ``tokens``), then records why.
        ``writer`` (rank 0's, holding the store's lock) lists the contiguous prefix of
        published blocks as it grows, then, once every rank has stopped, what the store keeps,
        and marks the store complete; returns why the harvest ended there, and None on the
        other ranks. ``on_commit(shard)`` runs on the rank that wrote the shard, once it is
        published. Uses no collective: tests run the ranks one after the other in one
        process (the last rank first, so rank 0 finds every rank stopped).
        """
        from crossdiff.store import pending
        from crossdiff.store.shard import Rows
        from crossdiff.store.writer import write_shard

        c = self.config
        tm = self.timings
        stream = _Stream(store, start, world, c.batch_size * c.block_batches, c.tokens, tm)
        start_time = time.perf_counter()
        bar = _progress(c, store) if writer is not None else None
        j, reason = rank, None
        try:
            it = iter(docs)
            to_skip = rank * stream.block_docs  # the blocks of the ranks before this one
            while True:
                stream.refresh(writer, bar, start_time)
                reason = stream.not_needed(j)
                if reason is not None:
                    break
                t0 = time.perf_counter()
                skipped = sum(1 for _ in itertools.islice(it, to_skip))
                tm.skip += time.perf_counter() - t0
                block = list(itertools.islice(it, stream.block_docs))
                if skipped < to_skip or not block:
                    reason = REASON_CORPUS  # the corpus ends before this block
                    break
                doc0 = start.documents + j * stream.block_docs
                tokens_before = (tm.tokens_a, tm.tokens_b)
                plans, rows = self.run_block(list(enumerate(block, start=doc0)))
                t0 = time.perf_counter()
                counts = _block_counts(plans, rows)
                rows_all = Rows.concat(rows, self.lm_a.d_model, self.lm_b.d_model)
                info = write_shard(
                    store.path, start.shards + j, rows_all, [p.record for p in plans]
                )
                counts["tokens_a"] = tm.tokens_a - tokens_before[0]
                counts["tokens_b"] = tm.tokens_b - tokens_before[1]
                pending.publish(
                    store.path,
                    start.shards + j,
                    info,
                    {
                        "block": j,
                        "documents": len(block),
                        "settings": _harvest_settings(c),
                        "max_documents": c.max_documents,
                        "counts": counts,
                    },
                )
                tm.write += time.perf_counter() - t0
                tm.add({k: v for k, v in counts.items() if not k.startswith("tokens_")})
                self._own_blocks[j] = counts
                if on_commit is not None:
                    on_commit(info)
                if len(block) < stream.block_docs:
                    reason = REASON_CORPUS  # the corpus ends inside this block
                    j += world
                    break
                to_skip = (world - 1) * stream.block_docs
                j += world
            pending.write_rank_state(
                store.path, rank, {"rank": rank, "world": world, "next_block": j, "reason": reason}
            )
            if writer is None:
                return None
            t0 = time.perf_counter()
            states = pending.wait_for(
                lambda: pending.check_world(pending.read_rank_states(store.path), world),
                tick=lambda: stream.refresh(writer, bar, start_time),
            )
            tm.wait += time.perf_counter() - t0
            return self._list_streamed(store, writer, stream, states, bar, start_time)
        except BaseException as exc:
            pending.write_rank_state(
                store.path,
                rank,
                {"rank": rank, "world": world, "error": f"{type(exc).__name__}: {exc}"},
            )
            raise
        finally:
            if bar is not None:
                bar.close()
            tm.total += time.perf_counter() - start_time

    def _list_streamed(
        self,
        store: ActivationStore,
        writer: StoreWriter,
        stream: _Stream,
        states: dict[int, dict[str, Any]],
        bar: Any,
        start_time: float,
    ) -> str:
        """Rank 0, every rank stopped: list the blocks the store keeps, drop the rest, finish."""
        from crossdiff.store import pending

        c = self.config
        stream.refresh(writer, bar, start_time)
        m = store.manifest
        listed = len(m.shards) - stream.start.shards
        if c.tokens is not None and m.rows >= c.tokens:
            reason = REASON_TOKENS
        else:
            reason = REASON_CORPUS
            last = stream.entries.entries.get(len(m.shards) - 1) if listed else None
            if (last is None or last["documents"] == stream.block_docs) and (
                states[listed % stream.world].get("reason") != REASON_CORPUS
                or states[listed % stream.world].get("next_block") != listed
            ):
                raise CrossdiffError(  # cannot happen: a block is missing from the prefix
                    f"block {listed} of this harvest was neither written nor past the corpus "
                    f"end (rank states {states}); rerun to resume"
                )
        t0 = time.perf_counter()
        pending.remove_unlisted(store.path, m.shards, pending=False)  # blocks past the end
        self.timings.write += time.perf_counter() - t0
        self._finish(writer, self._end_reason(reason, m.documents_consumed))
        if bar is not None:
            bar.n = m.rows
            bar.refresh()
        return self._end_reason(reason, m.documents_consumed)

    def drop_surplus(self, listed_blocks: int) -> None:
        """Take this rank's blocks past the first ``listed_blocks`` (computed, then dropped
        because the store ended before them) out of the counts of stored work."""
        for j, counts in self._own_blocks.items():
            if j >= listed_blocks:
                self.timings.add({k: -v for k, v in counts.items() if not k.startswith("tokens_")})
                self.timings.dropped_blocks += 1
                self.timings.dropped_rows += counts["rows"]
        self._own_blocks = {}


@dataclass(frozen=True)
class StreamStart:
    """Where a streaming harvest starts: the store's shards, documents and rows then."""

    shards: int
    documents: int
    rows: int


class _Stream:
    """What one rank knows of a streaming harvest: the blocks published so far."""

    def __init__(
        self,
        store: ActivationStore,
        start: StreamStart,
        world: int,
        block_docs: int,
        tokens: int | None,
        timings: HarvestTimings,
    ) -> None:
        from crossdiff.store.pending import PendingEntries

        self.store, self.start, self.world, self.timings = store, start, world, timings
        self.block_docs, self.tokens = block_docs, tokens
        self.entries = PendingEntries(store.path)
        self._ahead: list[int] = []  # published blocks not yet counted by not_needed()
        self._rows_before = start.rows  # rows of the counted blocks (all before the asked one)
        self._short = False  # a counted block is short: the corpus ends in it
        self.everyone = HarvestTimings()  # every published block, for the progress bar
        self.closed = tokens is not None and start.rows >= tokens  # nothing more is listed

    def refresh(self, writer: StoreWriter | None, bar: Any, start_time: float) -> None:
        """Read what was published; rank 0 lists the new prefix and updates its bar."""
        new = self.entries.refresh()
        self._ahead.extend(new)
        rows = 0
        for k in new:
            counts = self.entries.entries[k]["counts"]
            self.everyone.add(counts)
            rows += counts["rows"]
        if writer is not None:
            self._list_prefix(writer)
        if bar is not None and new:
            bar.update(rows)
            bar.set_postfix_str(
                _postfix(
                    self.everyone,
                    self.start.documents + self.everyone.documents,
                    time.perf_counter() - start_time,
                )
            )

    def not_needed(self, j: int) -> str | None:
        """Why block ``j`` cannot be needed, from the blocks published (None: it may be)."""
        ahead = []
        for k in self._ahead:
            if k - self.start.shards < j:
                entry = self.entries.entries[k]
                self._rows_before += entry["shard"]["rows"]
                self._short |= entry["documents"] < self.block_docs
            else:
                ahead.append(k)
        self._ahead = ahead
        if self._short:
            return REASON_CORPUS
        if self.tokens is not None and self._rows_before >= self.tokens:
            return REASON_TOKENS
        return None

    def _list_prefix(self, writer: StoreWriter) -> None:
        """List the published blocks that continue the store's prefix, up to where the store
        ends: through the block that reaches ``tokens``, or a short block (the corpus end)."""
        from crossdiff.store.pending import entry_info

        if self.closed:
            return
        m = writer.store.manifest
        rows, k, new = m.rows, len(m.shards), []
        while k in self.entries.entries:
            entry = self.entries.entries[k]
            new.append(entry_info(entry))
            rows += new[-1].rows
            k += 1
            if (self.tokens is not None and rows >= self.tokens) or (
                entry["documents"] < self.block_docs
            ):
                self.closed = True
                break
        if new:
            t0 = time.perf_counter()
            writer.adopt(new)
            self.timings.write += time.perf_counter() - t0


def _progress(config: HarvestConfig, store: ActivationStore):
    if not config.progress:
        return None
    from tqdm import tqdm

    return tqdm(
        total=config.tokens,
        initial=store.n_rows,
        unit="pair",
        unit_scale=True,
        desc="harvest",
        file=sys.stderr,
        dynamic_ncols=True,
    )


def _postfix(tm: HarvestTimings, documents: int, elapsed: float) -> str:
    """tokens/s of both models, the share of content tokens aligned so far, documents done."""
    ca, cb = tm.content_tokens_a, tm.content_tokens_b
    rate = (tm.tokens_a + tm.tokens_b) / elapsed if elapsed > 0 else 0.0
    cov = f"aligned A {tm.rows / ca:.1%} B {tm.rows / cb:.1%}" if ca and cb else "aligned -"
    return f"{rate:,.0f} tok/s, {cov}, docs {documents:,}"


def _same_request(m: Manifest, c: HarvestConfig) -> bool:
    """Cheap check (no model loaded) that a store was made by this very command."""
    return (
        m.model_a.spec == c.model_a
        and m.model_b.spec == c.model_b
        and m.model_a.layer_spec == str(c.layer_a)
        and m.model_b.layer_spec == str(c.layer_b)
        and m.corpus == {"spec": c.corpus}
        and all(
            m.harvest.get(k) == v
            for k, v in _harvest_settings(c).items()
            if k not in RUNTIME_SETTINGS
        )
    )


def _is_done(m: Manifest, c: HarvestConfig) -> bool:
    """Complete for this request: the corpus ran out, or the asked limits are reached."""
    if m.status != "complete":
        return False
    if m.complete_reason == REASON_CORPUS:
        return True
    if c.max_documents is not None and m.documents_consumed >= c.max_documents:
        return True
    return c.tokens is not None and m.rows >= c.tokens


def harvest(
    config: HarvestConfig,
    *,
    on_commit: Callable[[ShardInfo], None] | None = None,
    models: tuple[LoadedModel, LoadedModel] | None = None,
) -> ActivationStore:
    """Harvest aligned activation pairs of two models into ``config.out`` (resuming if there).

    ``on_commit(shard)`` is called after each committed shard (progress hooks; tests raise from
    it to simulate a crash). ``models`` passes already loaded models (A, B) instead of loading
    ``config.model_a`` / ``config.model_b``. Returns the store.

    Under ``torchrun --nproc_per_node N`` (``WORLD_SIZE > 1``) every rank calls this with the
    same config; the corpus is split over the ranks (module docstring) and each returns the
    finished store; ``on_commit`` then runs on the rank that wrote the shard, once it is
    published (rank 0 lists it in the manifest later). The process group is joined here (gloo
    on CPU, NCCL with one GPU per rank) and left joined, as training does; the CLI leaves it at
    exit.
    """
    from crossdiff.crosscoder import distributed
    from crossdiff.models.hardware import resolve_device
    from crossdiff.store.manifest import MANIFEST_NAME

    config.validate()
    device_type = resolve_device(config.device).type if distributed.env_world_size() > 1 else "cpu"
    dist_info = distributed.setup(device_type)
    if dist_info is not None and dist_info.world_size > 1:
        return _harvest_ranks(config, dist_info, on_commit=on_commit, models=models)
    out = Path(config.out)
    if (out / MANIFEST_NAME).is_file():
        existing = ActivationStore.open(out)
        if _same_request(existing.manifest, config) and _is_done(existing.manifest, config):
            _say(config, _complete_message(existing))
            return existing

    docs = _open_corpus(config)
    lm_a, lm_b = models if models is not None else _load_models(config, config.device)
    harvester = Harvester(config, lm_a, lm_b)
    store = ActivationStore.open_or_create(out, harvester.manifest())
    if _is_done(store.manifest, config):
        _say(config, _complete_message(store))
        return store
    with store.writer(shard_rows=config.shard_rows) as writer:
        message = _recover(writer, config)
        if message:
            _say(config, message)
        skip = store.n_documents
        if skip:
            _say(
                config,
                f"resuming {out}: {store.n_rows:,} pairs from {skip:,} documents already stored",
            )
            docs = itertools.islice(docs, skip, None)
        harvester.run(store, docs, on_commit=on_commit, writer=writer)
    _say(config, harvest_summary(store, harvester))
    return store


def _recover(writer: StoreWriter, config: HarvestConfig) -> str | None:
    """Before a harvest writes: list the shards an interrupted streaming harvest wrote and
    published that continue the store as this harvest would (:func:`pending.recover`), and
    remove every other unlisted file. Returns what was done, for the user, or None."""
    from crossdiff.store import pending

    settings = _harvest_settings(config)
    block_docs = config.batch_size * config.block_batches
    state = {"short": False}
    m = writer.store.manifest

    def accept(entry: dict[str, Any]) -> bool:
        shard = entry.get("shard", {})
        documents = entry.get("documents")
        ok = (
            entry.get("settings") == settings  # the blocks and batches this harvest forms
            and isinstance(documents, int)
            and 0 < documents <= block_docs
            and documents == shard.get("doc_end", 0) - shard.get("doc_start", 0)
            and not state["short"]  # nothing continues a block the corpus ended in
            and (config.tokens is None or m.rows < config.tokens)
            and (config.max_documents is None or shard.get("doc_end", 0) <= config.max_documents)
            # a block cut short by another --max-documents would be a full block now
            and (documents == block_docs or entry.get("max_documents") == config.max_documents)
        )
        state["short"] |= ok and documents < block_docs
        return ok

    adopted, removed = pending.recover(writer, accept)
    parts = []
    if adopted:
        parts.append(
            f"listed {len(adopted)} shard(s) ({sum(s.rows for s in adopted):,} pairs, documents "
            f"{adopted[0].doc_start:,}-{adopted[-1].doc_end - 1:,}) that an interrupted run had "
            "written and checked complete"
        )
    files = [name for name in removed if not name.startswith(pending.PENDING_DIR)]
    if files:
        parts.append(f"removed {len(files)} unlisted file(s) of an interrupted run")
    return f"{writer.store.path}: " + "; ".join(parts) if parts else None


def _harvest_ranks(
    config: HarvestConfig,
    dist_info: DistInfo,
    *,
    on_commit: Callable[[ShardInfo], None] | None,
    models: tuple[LoadedModel, LoadedModel] | None,
) -> ActivationStore:
    """:func:`harvest` on one rank of several: rank 0 decides and lists, all ranks compute.

    Whatever reads or creates the store (is it complete? compatible? whose lock? what did an
    interrupted run leave?) is decided by rank 0 alone and broadcast, so ranks cannot disagree
    and an error there ends every rank with the same message instead of leaving them waiting
    at a collective. Then the ranks stream (:meth:`Harvester.run_rank`) with no collective
    until the end: every rank waits (polling small files, so no collective timeout applies)
    for rank 0 to have listed what the store keeps, then one barrier, and the timings are
    gathered.
    """
    import dataclasses

    from crossdiff.crosscoder import distributed
    from crossdiff.models.hardware import resolve_device
    from crossdiff.store import pending
    from crossdiff.store.manifest import MANIFEST_NAME

    out = Path(config.out)
    if not dist_info.is_main:  # one progress bar and one summary, from rank 0
        config = dataclasses.replace(config, progress=False)

    def complete_before_loading() -> bool:  # as a single process: no model loaded for nothing
        if not (out / MANIFEST_NAME).is_file():
            return False
        m = ActivationStore.open(out).manifest
        return _same_request(m, config) and _is_done(m, config)

    if _on_rank0(complete_before_loading):
        store = ActivationStore.open(out)
        _say(config, _complete_message(store))
        return store

    docs = _open_corpus(config)  # every rank reads the corpus; errors are the same on all
    if models is not None:
        lm_a, lm_b = models
    else:
        device = distributed.rank_device(resolve_device(config.device), dist_info)
        lm_a, lm_b = _load_models(config, str(device))
    harvester = Harvester(config, lm_a, lm_b)
    owned: dict[str, Any] = {}

    def open_store() -> dict[str, Any]:
        store = ActivationStore.open_or_create(out, harvester.manifest())
        if _is_done(store.manifest, config):
            return {"done": True}
        # rank 0 takes the lock, clears stale temporary files and lists or removes what an
        # interrupted run left, before any rank writes
        writer = store.writer(shard_rows=config.shard_rows)
        try:
            message = _recover(writer, config)
        except BaseException:
            writer.close()
            raise
        owned["writer"], owned["store"] = writer, store
        m = store.manifest
        start = [len(m.shards), m.documents_consumed, m.rows]
        return {"done": False, "message": message, "start": start}

    opened = _on_rank0(open_store)
    if opened["done"]:
        store = ActivationStore.open(out)
        _say(config, _complete_message(store))
        return store
    writer: StoreWriter | None = owned.get("writer")
    # (not `owned.get("store") or ...`: an empty store is falsy, it has len() 0 rows)
    store = owned["store"] if "store" in owned else ActivationStore.open(out)
    world, rank = dist_info.world_size, dist_info.rank
    start = StreamStart(*opened["start"])
    try:
        if opened["message"]:
            _say(config, opened["message"])
        if start.documents:
            _say(
                config,
                f"resuming {out} on {world} ranks: {start.rows:,} pairs from "
                f"{start.documents:,} documents already stored",
            )
            docs = itertools.islice(docs, start.documents, None)
        try:
            harvester.run_rank(store, docs, start, rank, world, writer, on_commit=on_commit)
        except BaseException as exc:
            if writer is not None:  # the others wait for rank 0's word: tell them
                pending.write_listed(store.path, {"error": f"{type(exc).__name__}: {exc}"})
            raise
        if writer is not None:
            listed = {"blocks": len(store.manifest.shards) - start.shards}
            pending.write_listed(store.path, listed)
        else:
            t0 = time.perf_counter()
            listed = pending.wait_for(lambda: pending.read_listed(store.path))
            harvester.timings.wait += time.perf_counter() - t0
            if "error" in listed:
                raise CrossdiffError(f"rank 0 failed: {listed['error']}")
        harvester.drop_surplus(listed["blocks"])
        distributed.barrier(dist_info)  # every rank has read rank 0's word
        if writer is not None:
            pending.clear(store.path)
    finally:
        if writer is not None:
            writer.close()
    every = [HarvestTimings(**t) for t in distributed.all_gather_json(asdict(harvester.timings))]
    harvester.timings = HarvestTimings(
        **{f.name: sum(getattr(t, f.name) for t in every) for f in fields(HarvestTimings)}
    )
    harvester.wall_seconds = max(t.total for t in every)
    harvester.world_size = world
    store.reload()
    _say(config, harvest_summary(store, harvester))
    return store


def _on_rank0(decide: Callable[[], Any]) -> Any:
    """``decide()`` on rank 0 only; every rank returns its JSON result or raises its error."""
    from crossdiff.crosscoder import distributed

    message = None
    if distributed.rank() == 0:
        try:
            message = {"result": decide()}
        except CrossdiffError as exc:
            message = {"error": str(exc)}
        except BaseException as exc:
            distributed.broadcast_json({"error": f"rank 0 failed: {type(exc).__name__}: {exc}"})
            raise
    message = distributed.broadcast_json(message)
    if "error" in message:
        raise CrossdiffError(message["error"])
    return message["result"]


def _complete_message(store: ActivationStore) -> str:
    return (
        f"store {store.path} is complete ({store.manifest.complete_reason}): "
        f"{store.n_rows:,} pairs from {store.n_documents:,} documents; nothing to do"
    )


def _open_corpus(config: HarvestConfig) -> Iterator[Any]:
    """The corpus documents from the first; an empty corpus is a CrossdiffError."""
    from crossdiff.corpus import load_corpus

    docs = iter(load_corpus(config.corpus, limit=config.max_documents))
    first = next(docs, None)
    if first is None:
        raise CrossdiffError(
            f"corpus {config.corpus!r} has no documents; point --corpus at a file or dataset "
            "with text (see `crossdiff harvest --help`)"
        )
    return itertools.chain([first], docs)


def _load_models(config: HarvestConfig, device: str) -> tuple[LoadedModel, LoadedModel]:
    from crossdiff.models import load_model

    return tuple(  # type: ignore[return-value]
        load_model(
            spec,
            dtype=config.dtype,
            device=device,
            trust_remote_code=config.trust_remote_code,
            cache_dir=config.cache_dir,
        )
        for spec in (config.model_a, config.model_b)
    )


def _say(config: HarvestConfig, text: str) -> None:
    if config.progress:
        print(text, file=sys.stderr)


def harvest_summary(store: ActivationStore, harvester: Harvester) -> str:
    """The one-screen summary printed at the end of a harvest."""
    tm = harvester.timings
    m = store.manifest
    cov = m.coverage()
    lm_a, lm_b = harvester.lm_a, harvester.lm_b
    wall = harvester.wall_seconds if harvester.wall_seconds is not None else tm.total
    rate = (tm.tokens_a + tm.tokens_b) / wall if wall > 0 else 0.0
    overhead = (tm.total - tm.wait - tm.model) / tm.model if tm.model > 0 else math.nan
    lines = [
        f"harvest {m.status} ({m.complete_reason or 'interrupted'}): {m.rows:,} pairs from "
        f"{m.documents_consumed:,} documents in {store.path}",
        f"  A: {lm_a.model_id} layer {harvester.layer_a}/{lm_a.n_layers}, d={lm_a.d_model}, "
        f"{str(lm_a.dtype).removeprefix('torch.')} ({lm_a.dtype_reason}) on {lm_a.device}",
        f"  B: {lm_b.model_id} layer {harvester.layer_b}/{lm_b.n_layers}, d={lm_b.d_model}, "
        f"{str(lm_b.dtype).removeprefix('torch.')} ({lm_b.dtype_reason}) on {lm_b.device}",
        f"  coverage: {cov['coverage_a']:.1%} of A's content tokens paired, "
        f"{cov['coverage_b']:.1%} of B's; {cov['docs_skipped']} documents skipped",
        f"  alignment self-check: {cov['pairs_dropped_a']:,} pairs dropped for A's offsets, "
        f"{cov['pairs_dropped_b']:,} for B's; {cov['docs_repaired']:,} documents with invalid "
        "Unicode repaired (lone surrogates -> U+FFFD)",
        f"  this run{f' ({harvester.world_size} ranks)' if harvester.world_size > 1 else ''}: "
        f"{tm.rows:,} pairs, {tm.documents:,} documents, "
        f"{tm.tokens_a + tm.tokens_b:,} tokens in {wall:.1f}s ({rate:,.0f} tokens/s); "
        f"models {tm.model:.1f}s, everything else {overhead:+.1%} on top",
    ]
    if harvester.world_size > 1:
        lines.append(
            f"  ranks: {tm.wait:.1f}s waiting for the others to stop, {tm.skip:.1f}s reading "
            "the others' documents"
            + (
                f"; {tm.dropped_blocks} block(s) computed past the store's end and dropped "
                f"({tm.dropped_rows:,} pairs)"
                if tm.dropped_blocks
                else ""
            )
        )
    scales = store.norm_scales()
    if scales:
        lines.append(f"  normalization scales: A x{scales[0]:.4g}, B x{scales[1]:.4g}")
    return "\n".join(lines)
