"""The harvest engine: both models, loaded, run on batches of windows and their rows written.

:class:`Harvester` plans a block of documents (:mod:`crossdiff.harvest.windows`), batches its
windows for each model by that model's own lengths (:mod:`crossdiff.harvest.batches`: packed
rows, or padded batches), runs each pass up to the model's layer (early exit) and writes
the rows at the paired positions; :meth:`Harvester.run` is
the single-process loop (shards committed at block boundaries), :meth:`Harvester.run_rank` one
rank's share of a streaming harvest. Benchmarks and tests drive it directly, with models
already loaded; :func:`model_info` is the manifest's record of each model.

Size: one class, the Harvester, whose single-process loop and streaming-rank share use the
same block planning, batching and row writing; splitting them would split its state.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from crossdiff.errors import CrossdiffError
from crossdiff.harvest.batches import (
    ForwardBatch,
    packing_works,
    padded_batch,
    plan_batches,
)
from crossdiff.harvest.config import (
    REASON_CORPUS,
    REASON_DOCS,
    REASON_TOKENS,
    HarvestConfig,
    _harvest_settings,
)
from crossdiff.harvest.report import HarvestTimings, _postfix, _progress
from crossdiff.harvest.stream import StreamStart, _Stream
from crossdiff.harvest.windows import DocumentPlan, Window, plan_document
from crossdiff.store import (
    ActivationStore,
    Manifest,
    ModelInfo,
    ShardInfo,
    TokenizerInfo,
    make_rows,
)

if TYPE_CHECKING:
    import torch

    from crossdiff.models import LoadedModel
    from crossdiff.store import StoreWriter


def _block_counts(plans: list[Any], rows: list[Any]) -> dict[str, int]:
    """What one harvested block adds to the store: documents, rows, content tokens."""
    return {
        "documents": len(plans),
        "rows": sum(r.n for r in rows),
        "content_tokens_a": sum(p.record["content_tokens_a"] for p in plans),
        "content_tokens_b": sum(p.record["content_tokens_b"] for p in plans),
    }


def capture_windows(
    lm: LoadedModel, layer: int, seqs: list[list[int]], positions: list[np.ndarray]
) -> torch.Tensor:
    """Run one padded batch to ``layer`` and gather the rows at ``positions`` (in order)."""

    batch = padded_batch(seqs, positions, list(range(len(seqs))), lm.pad_id)
    return batch.gather(batch.run(lm, layer))


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
        self._packs = {  # side -> its windows are packed
            side: config.pack and packing_works(lm, layer)
            for side, lm, layer in (("a", lm_a, self.layer_a), ("b", lm_b, self.layer_b))
        }

    def manifest(self) -> Manifest:
        c = self.config
        return Manifest(
            model_a=model_info(self.lm_a, self.layer_a, c.layer_a),
            model_b=model_info(self.lm_b, self.layer_b, c.layer_b),
            corpus={"spec": c.corpus},
            harvest=_harvest_settings(c),
        )

    def capture(self, lm: LoadedModel, layer: int, batch: ForwardBatch) -> list[torch.Tensor]:
        """One model's rows of each window of one forward pass, on the CPU (the model cost)."""
        rows = batch.gather(batch.run(lm, layer)).cpu()  # synchronizes: real time
        return list(rows.split(batch.counts))

    def packs(self, side: str) -> bool:
        """Whether this side's windows are packed: ``pack`` asked, and the model passed
        :func:`~crossdiff.harvest.batches.packing_works` (checked when the harvester is
        made, once per loaded model and layer)."""
        return self._packs[side]

    def capture_side(self, windows: list[Window], side: str) -> list[torch.Tensor]:
        """One model's rows of every window (in order), run in that model's own passes.

        Each model batches the windows by its own token counts
        (:func:`~crossdiff.harvest.batches.plan_batches`), so neither pads to the other's
        longer tokenization, and short windows share a row (packed) or a pass (padded)
        instead of each filling a batch slot.
        """
        lm, layer = (self.lm_a, self.layer_a) if side == "a" else (self.lm_b, self.layer_b)
        seqs = [w.ids_a if side == "a" else w.ids_b for w in windows]
        positions = [w.pos_a if side == "a" else w.pos_b for w in windows]
        out: list[torch.Tensor | None] = [None] * len(windows)
        c = self.config
        batches = plan_batches(
            seqs,
            positions,
            batch_size=c.batch_size,
            row_len=c.max_seq_len,
            pad_id=lm.pad_id,
            pack=self.packs(side),
        )
        for batch in batches:
            t0 = time.perf_counter()
            rows = self.capture(lm, layer, batch)
            self.timings.model += time.perf_counter() - t0
            for i, x in zip(batch.windows, rows, strict=True):
                out[i] = x
        return out  # type: ignore[return-value]

    def run_block(self, block: list[tuple[int, Any]]) -> tuple[list[DocumentPlan], list[Any]]:
        """Plan and capture one block; returns the plans and the rows of each window in order."""
        plans = [
            plan_document(
                i,
                doc,
                self.lm_a,
                self.lm_b,
                self.config.max_seq_len,
                self.config.literal_specials,
                self.config.pair_positions,
                self.config.decision_pairs,
            )
            for i, doc in block
        ]
        windows = [w for p in plans for w in p.windows]
        x_a = self.capture_side(windows, "a")
        x_b = self.capture_side(windows, "b")
        t0 = time.perf_counter()
        tm = self.timings
        tm.tokens_a += sum(len(w.ids_a) for w in windows)
        tm.tokens_b += sum(len(w.ids_b) for w in windows)
        rows = [
            make_rows(
                xa,
                xb,
                doc_index=w.doc_index,
                window=w.window,
                content_end=w.content_end,
                pos_a=w.pos_a,
                pos_b=w.pos_b,
                span_a=w.span_a,
                span_b=w.span_b,
            )
            for w, xa, xb in zip(windows, x_a, x_b)
        ]
        tm.write += time.perf_counter() - t0
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

        c = self.config
        tm = self.timings
        stream = _Stream(store, start, world, c.batch_size * c.block_batches, c.tokens, tm)
        start_time = time.perf_counter()
        bar = _progress(c, store) if writer is not None else None
        try:
            j, reason = self._stream_blocks(
                store, docs, stream, rank, writer, bar, start_time, on_commit
            )
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

    def _stream_blocks(
        self,
        store: ActivationStore,
        docs: Iterable[Any],
        stream: _Stream,
        rank: int,
        writer: StoreWriter | None,
        bar: Any,
        start_time: float,
        on_commit: Callable[[ShardInfo], None] | None,
    ) -> tuple[int, str]:
        """This rank's blocks (``rank``, ``rank + world``, ...), each run, written and
        published, until the next cannot be needed or the corpus ends before or inside one.
        Returns the block this rank would run next, and why it stopped."""
        tm = self.timings
        world = stream.world
        j = rank
        it = iter(docs)
        to_skip = rank * stream.block_docs  # the blocks of the ranks before this one
        while True:
            stream.refresh(writer, bar, start_time)
            reason = stream.not_needed(j)
            if reason is not None:
                return j, reason
            t0 = time.perf_counter()
            skipped = sum(1 for _ in itertools.islice(it, to_skip))
            tm.skip += time.perf_counter() - t0
            block = list(itertools.islice(it, stream.block_docs))
            if skipped < to_skip or not block:
                return j, REASON_CORPUS  # the corpus ends before this block
            self._publish_block(store, stream, j, block, on_commit)
            j += world
            if len(block) < stream.block_docs:
                return j, REASON_CORPUS  # the corpus ends inside this block
            to_skip = (world - 1) * stream.block_docs

    def _publish_block(
        self,
        store: ActivationStore,
        stream: _Stream,
        j: int,
        block: list[Any],
        on_commit: Callable[[ShardInfo], None] | None,
    ) -> None:
        """Run block ``j`` of the stream, write it as shard ``start.shards + j`` and publish it
        with its counts (``crossdiff.store.pending``); the counts also go to this rank's
        timings and to its own blocks (:meth:`drop_surplus`)."""
        from crossdiff.store import pending
        from crossdiff.store.shard import Rows
        from crossdiff.store.writer import write_shard

        c = self.config
        tm = self.timings
        start = stream.start
        doc0 = start.documents + j * stream.block_docs
        tokens_before = (tm.tokens_a, tm.tokens_b)
        plans, rows = self.run_block(list(enumerate(block, start=doc0)))
        t0 = time.perf_counter()
        counts = _block_counts(plans, rows)
        rows_all = Rows.concat(rows, self.lm_a.d_model, self.lm_b.d_model)
        info = write_shard(store.path, start.shards + j, rows_all, [p.record for p in plans])
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
