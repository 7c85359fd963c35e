"""Appending rows to a store: buffered, committed a shard at a time, crash-safe.

The writer buffers rows and document records; :meth:`StoreWriter.commit` writes the buffered
rows as one shard and the buffered documents as its documents file (each to a temporary name,
fsynced, renamed), and only then rewrites the manifest, atomically. Callers commit only at
document boundaries, so the manifest's ``documents_consumed`` is always an exact resume point:
a crash loses at most the uncommitted buffer, which the next run recomputes from the same
documents. A lock file keeps two writers from appending to one store at once.

A distributed harvest (``crossdiff.harvest`` under ``torchrun``) splits this in two: every rank
writes its own shards with :func:`write_shard` (the same atomic files, under the manifest index
the shard will get) and publishes them (``store/pending.py``), and rank 0 alone, holding the
one :class:`StoreWriter` and its lock, lists them with :meth:`StoreWriter.adopt`. The manifest
stays the single commit record either way.
"""

from __future__ import annotations

import fcntl
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crossdiff.errors import CrossdiffError
from crossdiff.store.fileio import TMP_MARKER, atomic_write_bytes, sha256_bytes
from crossdiff.store.manifest import ShardInfo
from crossdiff.store.shard import Rows, docs_file_name, read_columns, shard_bytes, shard_file_name
from crossdiff.store.stats import norm_summary, normalization_scales, shard_sample

if TYPE_CHECKING:
    from crossdiff.store.store import ActivationStore

LOCK_NAME = ".lock"


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def write_shard(folder: Path, k: int, rows: Rows, docs: list[dict[str, Any]]) -> ShardInfo:
    """Write ``rows`` as shard ``k`` and ``docs`` as its documents file; return its entry.

    Both files are written atomically (temporary name, fsync, rename), documents first. The
    shard is not part of the store until a manifest lists the returned entry, so a crash before
    that leaves an unlisted file the next run overwrites. ``docs`` are consecutive documents,
    and ``rows`` belong to them.
    """
    if not docs:
        raise ValueError("a shard needs at least one document")
    doc_start = docs[0]["index"]
    doc_end = docs[-1]["index"] + 1
    if [d["index"] for d in docs] != list(range(doc_start, doc_end)):
        raise ValueError("a shard's documents must be consecutive")
    data = shard_bytes(rows, doc_start, doc_end)
    docs_data = "".join(
        json.dumps(d, ensure_ascii=False, separators=(",", ":")) + "\n" for d in docs
    ).encode("utf-8")
    shard_path = folder / shard_file_name(k)
    docs_path = folder / docs_file_name(k)
    atomic_write_bytes(docs_path, docs_data)
    atomic_write_bytes(shard_path, data)
    return ShardInfo(
        file=shard_path.name,
        rows=rows.n,
        sha256=sha256_bytes(data),
        bytes=len(data),
        doc_start=doc_start,
        doc_end=doc_end,
        docs_file=docs_path.name,
        docs_sha256=sha256_bytes(docs_data),
        content_tokens_a=int(sum(d.get("content_tokens_a", 0) for d in docs)),
        content_tokens_b=int(sum(d.get("content_tokens_b", 0) for d in docs)),
        docs_skipped=int(sum(1 for d in docs if d.get("skipped"))),
        pairs_dropped_a=int(sum(d.get("pairs_dropped_a", 0) for d in docs)),
        pairs_dropped_b=int(sum(d.get("pairs_dropped_b", 0) for d in docs)),
        docs_repaired=int(sum(1 for d in docs if d.get("repaired"))),
    )


class StoreWriter:
    """Appends documents and rows to an :class:`ActivationStore` (use as a context manager).

    ``add_document`` must be called once per corpus document, in corpus order, with a record
    whose ``index`` is the next document number; ``add_rows`` for that document's pairs.
    """

    def __init__(self, store: ActivationStore, shard_rows: int = 16384) -> None:
        if shard_rows < 1:
            raise CrossdiffError(f"shard_rows must be >= 1, got {shard_rows}")
        self.store = store
        self.shard_rows = shard_rows
        self._lock_fh = open(store.path / LOCK_NAME, "a+")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lock_fh.close()
            raise CrossdiffError(
                f"another process is writing to the store {store.path}; wait for it to finish "
                "or stop it (a store takes one writer at a time)"
            ) from exc
        self._remove_stale_tmp()
        m = store.manifest
        self._rows: list[Rows] = []
        self._docs: list[dict[str, Any]] = []
        self._pending_rows = 0
        self._next_doc = m.documents_consumed
        self._samples_a: list[np.ndarray] = []
        self._samples_b: list[np.ndarray] = []
        for shard in m.shards:  # resume: the statistics' samples come back from the shards
            self._load_samples(shard)

    # -- context manager ---------------------------------------------------------------
    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the lock. Uncommitted rows are dropped (the next run recomputes them)."""
        if not self._lock_fh.closed:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()

    def _remove_stale_tmp(self) -> None:
        # Half-written files of a crashed writer: never listed in the manifest, safe to drop.
        for p in self.store.path.iterdir():
            if TMP_MARKER in p.name and p.name.startswith("."):
                p.unlink(missing_ok=True)

    # -- appending -----------------------------------------------------------------------
    @property
    def next_document(self) -> int:
        """Index of the next document to add (= documents committed + buffered)."""
        return self._next_doc

    def add_document(self, record: dict[str, Any]) -> None:
        if record.get("index") != self._next_doc:
            raise ValueError(
                f"documents must be added in order: expected index {self._next_doc}, "
                f"got {record.get('index')}"
            )
        self._docs.append(record)
        self._next_doc += 1

    def add_rows(self, rows: Rows) -> None:
        if rows.n == 0:
            return
        m = self.store.manifest
        if rows.x_a.shape[1] != m.d_a or rows.x_b.shape[1] != m.d_b:
            raise ValueError(
                f"rows have widths {rows.x_a.shape[1]}/{rows.x_b.shape[1]}, the store "
                f"{m.d_a}/{m.d_b}"
            )
        doc = rows.meta["doc_index"]
        if doc.min() < self._next_doc - len(self._docs) or doc.max() >= self._next_doc:
            raise ValueError("rows belong to documents that are not buffered in this writer")
        self._rows.append(rows)
        self._pending_rows += rows.n

    def commit_if_full(self) -> ShardInfo | None:
        """Commit when at least ``shard_rows`` rows are buffered (call at document boundaries)."""
        if self._pending_rows >= self.shard_rows:
            return self.commit()
        return None

    def commit(self) -> ShardInfo | None:
        """Write the buffered rows and documents as the next shard; update the manifest."""
        if not self._docs:
            return None
        store, m = self.store, self.store.manifest
        rows = Rows.concat(self._rows, m.d_a, m.d_b)
        info = write_shard(store.path, len(m.shards), rows, self._docs)
        self._samples_a.append(shard_sample(rows.meta["norm_a"]))
        self._samples_b.append(shard_sample(rows.meta["norm_b"]))
        m.shards.append(info)
        self._save_in_progress()
        self._rows, self._docs, self._pending_rows = [], [], 0
        return info

    def adopt(self, shards: list[ShardInfo]) -> None:
        """List shards other processes wrote with :func:`write_shard` (a distributed harvest).

        They must continue the store: shard ``k`` named for its manifest index, documents
        starting where the store's end. Their norm columns are read back from the files for the
        statistics (the same per-shard sample a single writer takes), then the manifest is
        saved once for all of them. Checksums are the writers' (``store verify`` re-hashes).
        """
        if self._docs:
            raise ValueError("commit() the buffered rows before adopting other shards")
        if not shards:
            return
        m = self.store.manifest
        for info in shards:
            k = len(m.shards)
            if info.file != shard_file_name(k) or info.docs_file != docs_file_name(k):
                raise ValueError(f"shard {info.file} cannot be listed as shard {k}")
            if info.doc_start != m.documents_consumed or info.doc_end <= info.doc_start:
                raise ValueError(
                    f"shard {info.file} holds documents [{info.doc_start}, {info.doc_end}), "
                    f"the store ends at document {m.documents_consumed}"
                )
            self._load_samples(info)
            m.shards.append(info)
        self._next_doc = m.documents_consumed
        self._save_in_progress()

    def _load_samples(self, shard: ShardInfo) -> None:
        cols = read_columns(self.store.path / shard.file, ("norm_a", "norm_b"))
        self._samples_a.append(shard_sample(cols["norm_a"].numpy()))
        self._samples_b.append(shard_sample(cols["norm_b"].numpy()))

    def _save_in_progress(self) -> None:
        m = self.store.manifest
        self._update_stats()
        m.status = "in_progress"
        m.complete_reason = None
        m.updated = now_iso()
        m.save(self.store.path)

    def _update_stats(self) -> None:
        m = self.store.manifest
        sample_a = np.concatenate(self._samples_a) if self._samples_a else np.zeros(0)
        sample_b = np.concatenate(self._samples_b) if self._samples_b else np.zeros(0)
        m.norm_stats = {"a": norm_summary(sample_a), "b": norm_summary(sample_b)}
        med_a = m.norm_stats["a"].get("median", 0.0)
        med_b = m.norm_stats["b"].get("median", 0.0)
        m.norm_scales = normalization_scales(float(med_a), float(med_b), m.d_a, m.d_b)

    def finish(self, reason: str, tokens_target: int | None = None) -> None:
        """Commit what is buffered and mark the store complete (``reason`` says why)."""
        self.commit()
        m = self.store.manifest
        m.status = "complete"
        m.complete_reason = reason
        m.tokens_target = tokens_target
        m.updated = now_iso()
        m.save(self.store.path)
        if m.rows:  # the moments the centred normalization needs, computed once and cached
            from crossdiff.store.moments import store_moments

            store_moments(self.store)
