"""Reading a store: shuffled training batches (a ``PairSource``), ordered streaming, and rows by
index (:func:`rows_at`).

Shuffling never loads the store: each epoch permutes the *shard order* (seeded by the epoch),
cuts the permuted shards into groups of about ``shuffle_buffer_rows`` rows, and permutes the
rows within each group (seeded by epoch and group). The whole plan is a function of the
manifest's row counts and the seed, so ``skip=n`` jumps straight to batch n: it reads only the
group that batch starts in, never the data before it.

Train and eval are split by document (a hash of the document index against ``eval_fraction``),
so no eval document leaks into training through a neighbouring window, and the split of the
existing documents does not change when a store grows.

Data-parallel training reads *parts* of batches: ``batches(..., part=(rank, world))`` yields
rows ``rank::world`` of every batch of the same plan, and reads only those rows, from
memory-mapped shards (:func:`read_rows`), rather than loading each shuffle group whole. The
checksum check on first read is shared out: rank r checks shards ``r, r + world, ...``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from crossdiff.errors import CrossdiffError
from crossdiff.store import check
from crossdiff.store.shard import META_COLUMNS, read_columns

if TYPE_CHECKING:
    from crossdiff.store.store import ActivationStore

SPLIT_SALT = 0x9E3779B97F4A7C15
DEFAULT_EVAL_FRACTION = 0.01
DEFAULT_BUFFER_BYTES = 512 * 2**20


def doc_hash_unit(doc_index: np.ndarray, salt: int = SPLIT_SALT) -> np.ndarray:
    """A uniform number in [0, 1) per document: splitmix64 of the index plus ``salt``. The one
    hash behind every document split (train/eval here; the exclusivity check's folds)."""
    with np.errstate(over="ignore"):
        z = np.asarray(doc_index).astype(np.uint64) + np.uint64(salt)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / 2.0**53


def eval_mask(doc_index: np.ndarray, eval_fraction: float) -> np.ndarray:
    """True for rows of documents that belong to the eval split (deterministic per document)."""
    if eval_fraction <= 0:
        return np.zeros(np.shape(doc_index), dtype=bool)
    return doc_hash_unit(doc_index) < eval_fraction


def read_shard(
    store: ActivationStore, k: int, names: list[str] | tuple[str, ...], *, verify: bool = False
) -> dict[str, torch.Tensor]:
    """Columns of shard ``k``, checked against the manifest (``store/check.py``): shapes always;
    with ``verify`` also the file's checksum first and x_a/x_b free of NaN/inf. A damaged shard
    raises :class:`~crossdiff.store.check.StoreDamagedError` naming it."""
    if verify:
        check.verify_checksum(store, k)
    path = store.path / store.manifest.shards[k].file
    try:
        cols = read_columns(path, names)
    except Exception as exc:  # SafetensorError, OSError: a damaged or vanished file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise check.damaged(
            store, f"{check.shard_where(store, k)}: cannot be read as safetensors ({reason})"
        ) from None
    check.check_columns(store, k, cols, finite=verify)
    return cols


_NUMPY_DTYPE = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32}
"""How a safetensors dtype is memory-mapped (bf16 as its raw 16 bits, viewed by torch)."""


def map_tensor(path: Path, name: str) -> tuple[np.memmap | np.ndarray, str]:
    """Tensor ``name`` of a safetensors file as a read-only memory map, and its dtype name:
    indexing rows of it reads only the pages that hold them (a rank reads its share of a
    batch, not the whole shuffle group the batch is drawn from)."""
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        info = json.loads(fh.read(n))[name]
    shape = tuple(int(v) for v in info["shape"])
    dtype = _NUMPY_DTYPE[info["dtype"]]
    if 0 in shape:  # numpy cannot map zero bytes
        return np.zeros(shape, dtype=dtype), info["dtype"]
    offset = 8 + n + int(info["data_offsets"][0])
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape), info["dtype"]


def read_rows(mapped: tuple[np.ndarray, str], rows: np.ndarray) -> torch.Tensor:
    """Rows ``rows`` (any order) of a tensor from :func:`map_tensor`, as a torch tensor."""
    arr, dtype = mapped
    t = torch.from_numpy(np.ascontiguousarray(arr[rows]))
    return t.view(torch.bfloat16) if dtype == "BF16" else t


def rows_at(store: ActivationStore, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """x_a, x_b (as stored, bf16) of store rows ``rows`` (indices into the whole store, any
    order; returned in that order). Each shard holding some of them is memory-mapped
    (:func:`map_tensor`), so only the pages of those rows are read: a pool of scattered rows
    costs its own bytes, not its shards'."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.size and (int(rows.min()) < 0 or int(rows.max()) >= store.n_rows):
        raise CrossdiffError(
            f"rows must lie in [0, {store.n_rows}) of store {store.path}, got "
            f"{int(rows.min())}..{int(rows.max())}"
        )
    if rows.size == 0:
        return (
            torch.zeros(0, store.d_a, dtype=torch.bfloat16),
            torch.zeros(0, store.d_b, dtype=torch.bfloat16),
        )
    shards = store.manifest.shards
    ends = np.cumsum([s.rows for s in shards])
    shard_of = np.searchsorted(ends, rows, side="right")
    order = np.argsort(shard_of, kind="stable")
    pieces_a, pieces_b = [], []
    for k in np.unique(shard_of):
        local = rows[shard_of == k] - int(ends[k] - shards[k].rows)
        path = store.path / shards[k].file
        pieces_a.append(read_rows(map_tensor(path, "x_a"), local))
        pieces_b.append(read_rows(map_tensor(path, "x_b"), local))
    back = torch.from_numpy(np.argsort(order, kind="stable"))
    return torch.cat(pieces_a)[back], torch.cat(pieces_b)[back]


def _check_split(split: str | None, eval_fraction: float) -> None:
    if split not in (None, "train", "eval", "all"):
        raise CrossdiffError(f"split must be 'train', 'eval' or 'all', got {split!r}")
    if not 0.0 <= eval_fraction < 1.0:
        raise CrossdiffError(f"eval_fraction must be in [0, 1), got {eval_fraction}")


def split_mask(doc_index: np.ndarray, split: str | None, eval_fraction: float) -> np.ndarray:
    """Which rows of a shard belong to ``split`` (None / "all": every row)."""
    if split in (None, "all"):
        return np.ones(np.shape(doc_index), dtype=bool)
    ev = eval_mask(doc_index, eval_fraction)
    return ev if split == "eval" else ~ev


class StoreSource:
    """A :class:`~crossdiff.crosscoder.sources.PairSource` over one split of a store.

    ``batches(batch_size, seed=s)`` is an infinite stream: epoch e visits every row of the
    split exactly once, in an order drawn from (s, e); batches run on across epoch boundaries,
    so no row is dropped or repeated within an epoch.
    """

    reads_parts = True
    """``batches(..., part=(rank, world))`` reads only that rank's rows (data parallel)."""

    def __init__(
        self,
        store: ActivationStore,
        split: str = "train",
        eval_fraction: float = DEFAULT_EVAL_FRACTION,
        shuffle_buffer_rows: int | None = None,
        *,
        verify_reads: bool = True,
    ) -> None:
        _check_split(split, eval_fraction)
        self.store = store
        self.verify_reads = verify_reads
        self._verified: set[int] = set()  # shards whose checksum this source has checked
        self._mapped_group: tuple[list[int], list] = ([], [])  # part reads: the current group
        self.split = split
        self.eval_fraction = eval_fraction
        m = store.manifest
        self.d_a, self.d_b = m.d_a, m.d_b
        if shuffle_buffer_rows is None:
            shuffle_buffer_rows = max(1, DEFAULT_BUFFER_BYTES // (2 * (self.d_a + self.d_b)))
        if shuffle_buffer_rows < 1:
            raise CrossdiffError(f"shuffle_buffer_rows must be >= 1, got {shuffle_buffer_rows}")
        self.shuffle_buffer_rows = shuffle_buffer_rows
        self._paths = [store.path / s.file for s in m.shards]
        if split in (None, "all") or (eval_fraction == 0 and split == "train"):
            counts = [s.rows for s in m.shards]
        else:  # only the doc_index column is read, 8 bytes per row
            counts = [
                int(
                    split_mask(
                        read_shard(store, k, ["doc_index"])["doc_index"].numpy(),
                        split,
                        eval_fraction,
                    ).sum()
                )
                if s.rows
                else 0
                for k, s in enumerate(m.shards)
            ]
        self._counts = np.asarray(counts, dtype=np.int64)
        self.n_rows = int(self._counts.sum())
        if self.n_rows == 0:
            hint = (
                "raise eval_fraction or harvest more documents"
                if split == "eval"
                else "harvest into it first (crossdiff harvest)"
            )
            raise CrossdiffError(
                f"the {split!r} split of store {store.path} has no rows "
                f"({m.rows} rows, {m.documents_consumed} documents, eval_fraction "
                f"{eval_fraction}); {hint}"
            )

    def __len__(self) -> int:
        return self.n_rows

    def norm_scales(self) -> tuple[float, float] | None:
        return self.store.norm_scales()

    def moments(self):
        """The whole store's activation moments (``ActivationStore.moments``)."""
        return self.store.moments()

    # -- the shuffle plan ------------------------------------------------------------------
    def epoch_groups(self, seed: int, epoch: int) -> list[list[int]]:
        """Shard indices of each shuffle group of one epoch, in visiting order."""
        nonempty = np.flatnonzero(self._counts > 0)
        order = nonempty[np.random.default_rng([seed, epoch]).permutation(len(nonempty))]
        groups: list[list[int]] = [[]]
        rows = 0
        for k in order.tolist():
            if rows >= self.shuffle_buffer_rows:
                groups.append([])
                rows = 0
            groups[-1].append(k)
            rows += int(self._counts[k])
        return groups

    def _load_group(self, shards: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        parts_a, parts_b = [], []
        for k in shards:
            names = ["x_a", "x_b"] if self.split in (None, "all") else ["x_a", "x_b", "doc_index"]
            first = self.verify_reads and k not in self._verified
            cols = read_shard(self.store, k, names, verify=first)
            self._verified.add(k)
            if "doc_index" in cols:
                keep = torch.from_numpy(
                    split_mask(cols["doc_index"].numpy(), self.split, self.eval_fraction)
                )
                cols["x_a"], cols["x_b"] = cols["x_a"][keep], cols["x_b"][keep]
            parts_a.append(cols["x_a"])
            parts_b.append(cols["x_b"])
        return torch.cat(parts_a), torch.cat(parts_b)

    def _plan(self, seed: int, start_row: int) -> Iterator[tuple[list[int], np.ndarray]]:
        """(shards, row order) per group from ``start_row`` of the infinite stream on; the
        plan alone, nothing read (it depends only on the manifest, the split and the seed)."""
        epoch, offset = divmod(start_row, self.n_rows)
        while True:
            for g, shards in enumerate(self.epoch_groups(seed, epoch)):
                rows = int(self._counts[shards].sum())
                if offset >= rows:
                    offset -= rows
                    continue
                perm = np.random.default_rng([seed, epoch, g + 1]).permutation(rows)
                yield shards, perm[offset:]
                offset = 0
            epoch += 1

    def _row_pieces(
        self, seed: int, start_row: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(x_a, x_b, row order) per group from ``start_row`` of the infinite stream on."""
        for shards, order in self._plan(seed, start_row):
            x_a, x_b = self._load_group(shards)
            yield x_a, x_b, torch.from_numpy(order)

    def batches(
        self, batch_size: int, *, seed: int = 0, skip: int = 0, part: tuple[int, int] = (0, 1)
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Infinite (x_a, x_b) float32 raw batches; ``skip=n`` drops the first n batches;
        ``part=(rank, world)``: rows ``rank::world`` of each, reading only those."""
        if batch_size < 1 or skip < 0:
            raise CrossdiffError(f"batch_size must be >= 1 and skip >= 0; got {batch_size}, {skip}")
        if part[1] > 1:
            return self._part_batches(batch_size, seed, skip, part)
        return self._whole_batches(batch_size, seed, skip)

    def _part_batches(
        self, batch_size: int, seed: int, skip: int, part: tuple[int, int]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's rows of each batch, read from the shards row by row (memory-mapped)."""
        rank, world = part
        mine = np.arange(rank, batch_size, world)
        plan = self._plan(seed, skip * batch_size)
        shards, order = next(plan)
        pos = 0
        while True:
            segments, start = [], 0
            while start < batch_size:
                if pos >= len(order):
                    shards, order = next(plan)
                    pos = 0
                take = order[pos : pos + batch_size - start]
                sel = mine[(mine >= start) & (mine < start + len(take))] - start
                segments.append(self._read_group_rows(shards, take[sel], part))
                pos += len(take)
                start += len(take)
            yield (
                torch.cat([a for a, _ in segments]).float(),
                torch.cat([b for _, b in segments]).float(),
            )

    def _read_group_rows(
        self, shards: list[int], rows: np.ndarray, part: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows (indices into the group's concatenated split rows) of x_a and x_b, in order."""
        counts = self._counts[shards]
        starts = np.concatenate([[0], np.cumsum(counts)])
        which = np.searchsorted(starts, rows, side="right") - 1
        out_a = torch.empty(len(rows), self.d_a, dtype=torch.bfloat16)
        out_b = torch.empty(len(rows), self.d_b, dtype=torch.bfloat16)
        if self._mapped_group[0] != shards:  # a new group: map its shards once
            self._mapped_group = (list(shards), [self._map_shard(k, part) for k in shards])
        for i, (file_rows, map_a, map_b) in enumerate(self._mapped_group[1]):
            hit = np.flatnonzero(which == i)
            if len(hit) == 0:
                continue
            at = file_rows[rows[hit] - starts[i]]
            idx = torch.from_numpy(hit)
            out_a[idx] = read_rows(map_a, at).to(torch.bfloat16)
            out_b[idx] = read_rows(map_b, at).to(torch.bfloat16)
        return out_a, out_b

    def _map_shard(self, k: int, part: tuple[int, int]) -> tuple[np.ndarray, tuple, tuple]:
        """Shard ``k``'s file rows in this split (its 8-byte doc_index column is read) and its
        x_a / x_b memory maps, their shapes checked against the manifest; on first touch this
        rank checks the checksum of its share of the shards (``k % world == rank``)."""
        rank, world = part
        if self.verify_reads and k not in self._verified and k % world == rank:
            check.verify_checksum(self.store, k)
        self._verified.add(k)
        path = self.store.path / self.store.manifest.shards[k].file
        try:
            map_a, map_b = map_tensor(path, "x_a"), map_tensor(path, "x_b")
        except Exception as exc:  # OSError, JSON, KeyError: a damaged or vanished file
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise check.damaged(
                self.store, f"{check.shard_where(self.store, k)}: cannot be mapped ({reason})"
            ) from None
        check.check_columns(
            self.store, k, {"x_a": torch.empty(map_a[0].shape), "x_b": torch.empty(map_b[0].shape)}
        )
        n = self.store.manifest.shards[k].rows
        if self.split in (None, "all"):
            return np.arange(n), map_a, map_b
        doc = read_shard(self.store, k, ["doc_index"])["doc_index"].numpy()
        return np.flatnonzero(split_mask(doc, self.split, self.eval_fraction)), map_a, map_b

    def _whole_batches(
        self, batch_size: int, seed: int, skip: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The stream of whole batches, from whole shuffle groups in memory."""
        pieces = self._row_pieces(seed, skip * batch_size)
        x_a, x_b, order = next(pieces)
        pos = 0
        while True:
            out_a, out_b, need = [], [], batch_size
            while need:
                if pos >= len(order):
                    x_a, x_b, order = next(pieces)
                    pos = 0
                take = order[pos : pos + need]
                out_a.append(x_a[take])
                out_b.append(x_b[take])
                pos += len(take)
                need -= len(take)
            yield torch.cat(out_a).float(), torch.cat(out_b).float()


def iter_rows(
    store: ActivationStore,
    batch_size: int = 4096,
    *,
    split: str | None = None,
    eval_fraction: float = DEFAULT_EVAL_FRACTION,
    dtype: torch.dtype = torch.float32,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict[str, np.ndarray]]]:
    """Rows in store order, ``batch_size`` at a time, with their provenance.

    ``meta`` holds numpy arrays: ``row`` (index in the whole store), ``doc_index``, ``window``,
    ``content_end``, ``pos_a``, ``pos_b``, ``span_a``, ``span_b``, ``norm_a``, ``norm_b``.
    The last batch may be shorter. One shard is in memory at a time.
    """
    _check_split(split, eval_fraction)
    if batch_size < 1:
        raise CrossdiffError(f"batch_size must be >= 1, got {batch_size}")
    carry: list[tuple[torch.Tensor, torch.Tensor, dict[str, np.ndarray]]] = []
    carried = 0
    first_row = 0
    for k, shard in enumerate(store.manifest.shards):
        if shard.rows == 0:
            continue
        cols = read_shard(store, k, ["x_a", "x_b", *META_COLUMNS])
        meta = {k: cols[k].numpy() for k in META_COLUMNS}
        meta["row"] = np.arange(first_row, first_row + shard.rows, dtype=np.int64)
        first_row += shard.rows
        keep = split_mask(meta["doc_index"], split, eval_fraction)
        x_a, x_b = cols["x_a"], cols["x_b"]
        if not keep.all():
            t = torch.from_numpy(keep)
            x_a, x_b = x_a[t], x_b[t]
            meta = {k: v[keep] for k, v in meta.items()}
        carry.append((x_a, x_b, meta))
        carried += int(x_a.shape[0])
        while carried >= batch_size:
            batch, carry, carried = _take(carry, batch_size)
            yield batch[0].to(dtype), batch[1].to(dtype), batch[2]
    if carried:
        batch, _, _ = _take(carry, carried)
        yield batch[0].to(dtype), batch[1].to(dtype), batch[2]


def _take(
    carry: list[tuple[torch.Tensor, torch.Tensor, dict[str, np.ndarray]]], n: int
) -> tuple[
    tuple[torch.Tensor, torch.Tensor, dict[str, np.ndarray]],
    list[tuple[torch.Tensor, torch.Tensor, dict[str, np.ndarray]]],
    int,
]:
    """Split the first n rows off a list of row blocks."""
    out, rest, need = [], [], n
    for x_a, x_b, meta in carry:
        rows = int(x_a.shape[0])
        if need >= rows:
            out.append((x_a, x_b, meta))
            need -= rows
        elif need > 0:
            out.append((x_a[:need], x_b[:need], {k: v[:need] for k, v in meta.items()}))
            rest.append((x_a[need:], x_b[need:], {k: v[need:] for k, v in meta.items()}))
            need = 0
        else:
            rest.append((x_a, x_b, meta))
    x_a = torch.cat([o[0] for o in out])
    x_b = torch.cat([o[1] for o in out])
    meta = {k: np.concatenate([o[2][k] for o in out]) for k in out[0][2]}
    return (x_a, x_b, meta), rest, sum(int(r[0].shape[0]) for r in rest)
