"""What one rank of a streaming harvest knows of the others: the blocks published so far.

Under torchrun the ranks share no collective while they harvest (:mod:`crossdiff.harvest.ranks`):
each publishes the blocks it wrote as small files (:mod:`crossdiff.store.pending`), and
:class:`_Stream` reads them back, to decide that a block cannot be needed (the corpus ended
before it, or the blocks before it already hold ``tokens`` rows) and, on rank 0, to list the
contiguous prefix of published blocks in the manifest as it grows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crossdiff.harvest.config import REASON_CORPUS, REASON_TOKENS
from crossdiff.harvest.report import HarvestTimings, _postfix

if TYPE_CHECKING:
    from crossdiff.store import ActivationStore, StoreWriter


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
