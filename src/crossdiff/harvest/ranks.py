"""The harvest on one rank of several (``torchrun``, ``WORLD_SIZE > 1``): rank 0 decides and
lists, every rank computes.

Under ``torchrun`` the ranks stream: counted from the resume point, block ``j`` belongs to rank
``j % world``, which runs it through both models (the batches a single process forms) and
writes it as shard ``start + j``, the index it will have in the manifest; each rank reads the
corpus stream but skips the other ranks' documents without rendering or tokenizing them, and
publishes every shard it wrote as a small file (:mod:`crossdiff.store.pending`), with no
collective and no waiting. A rank stops before a block that cannot be needed, as far as the
published blocks show (:mod:`crossdiff.harvest.stream`): the corpus ended before it, or the
blocks before it already hold ``tokens`` rows (blocks not yet published count as empty, so the
test never stops too early). Rank 0, which holds the store's lock, lists the contiguous prefix
of published blocks in the manifest as it grows (a crash keeps the manifest a prefix of the
corpus), and after every rank has stopped lists the rest, up to the block a single process
would have stopped at, deletes the blocks past it, and marks the store complete; the other
ranks wait for that (polling a file), then all meet at one barrier. So the store holds the rows
of a single process, in the same order, bit for bit on CPU in float32; only the shard
boundaries differ (one shard per block). A resumed run, with any number of ranks or one
process, first lists the shards a killed run wrote and published that continue the store and
are intact (checksums re-read, :func:`crossdiff.harvest.resume._recover`), and removes every
other unlisted file.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossdiff.errors import CrossdiffError
from crossdiff.harvest.config import HarvestConfig
from crossdiff.harvest.engine import Harvester
from crossdiff.harvest.inputs import _load_models, _open_corpus
from crossdiff.harvest.report import HarvestTimings, _complete_message, _say, harvest_summary
from crossdiff.harvest.resume import _is_done, _recover, _same_request
from crossdiff.harvest.stream import StreamStart
from crossdiff.store import ActivationStore, ShardInfo

if TYPE_CHECKING:
    from crossdiff.models import LoadedModel
    from crossdiff.runtime.distributed import DistInfo
    from crossdiff.store import StoreWriter


def _harvest_ranks(
    config: HarvestConfig,
    dist_info: DistInfo,
    *,
    on_commit: Callable[[ShardInfo], None] | None,
    models: tuple[LoadedModel, LoadedModel] | None,
) -> ActivationStore:
    """:func:`~crossdiff.harvest.harvest` on one rank of several: rank 0 decides and lists, all
    ranks compute.

    Whatever reads or creates the store (is it complete? compatible? whose lock? what did an
    interrupted run leave?) is decided by rank 0 alone and broadcast, so ranks cannot disagree
    and an error there ends every rank with the same message instead of leaving them waiting
    at a collective. Then the ranks stream (:meth:`Harvester.run_rank`) with no collective
    until the end: every rank waits (polling small files, so no collective timeout applies)
    for rank 0 to have listed what the store keeps, then one barrier, and the timings are
    gathered.
    """
    out = Path(config.out)
    if not dist_info.is_main:  # one progress bar and one summary, from rank 0
        config = dataclasses.replace(config, progress=False)

    if _on_rank0(lambda: _complete_before_loading(out, config)):
        store = ActivationStore.open(out)
        _say(config, _complete_message(store))
        return store

    docs = _open_corpus(config)  # every rank reads the corpus; errors are the same on all
    harvester = Harvester(config, *_rank_models(config, dist_info, models))
    owned: dict[str, Any] = {}
    opened = _on_rank0(lambda: _open_for_ranks(out, config, harvester, owned))
    if opened["done"]:
        store = ActivationStore.open(out)
        _say(config, _complete_message(store))
        return store
    writer: StoreWriter | None = owned.get("writer")
    # (not `owned.get("store") or ...`: an empty store is falsy, it has len() 0 rows)
    store = owned["store"] if "store" in owned else ActivationStore.open(out)
    start = StreamStart(*opened["start"])
    try:
        _stream_and_list(
            out, config, harvester, store, writer, docs, start, opened["message"], dist_info,
            on_commit,
        )  # fmt: skip
    finally:
        if writer is not None:
            writer.close()
    _gather_timings(harvester, dist_info)
    store.reload()
    _say(config, harvest_summary(store, harvester))
    return store


def _complete_before_loading(out: Path, config: HarvestConfig) -> bool:
    """Rank 0, as a single process does: is the store this request's and complete, so no
    model is loaded for nothing?"""
    from crossdiff.store.manifest import MANIFEST_NAME

    if not (out / MANIFEST_NAME).is_file():
        return False
    m = ActivationStore.open(out).manifest
    return _same_request(m, config) and _is_done(m, config)


def _rank_models(
    config: HarvestConfig,
    dist_info: DistInfo,
    models: tuple[LoadedModel, LoadedModel] | None,
) -> tuple[LoadedModel, LoadedModel]:
    """The models passed in, or both loaded on this rank's device (one GPU per rank)."""
    from crossdiff.runtime import distributed
    from crossdiff.runtime.device import resolve_device

    if models is not None:
        return models
    device = distributed.rank_device(resolve_device(config.device), dist_info)
    return _load_models(config, str(device))


def _open_for_ranks(
    out: Path, config: HarvestConfig, harvester: Harvester, owned: dict[str, Any]
) -> dict[str, Any]:
    """Rank 0: open or create the store; unless it is complete, take the lock, clear stale
    temporary files and list or remove what an interrupted run left, before any rank writes.
    The writer and store go into ``owned``; returns what every rank needs (JSON): whether
    the store is done, the recovery's message and the start point."""
    store = ActivationStore.open_or_create(out, harvester.manifest())
    if _is_done(store.manifest, config):
        return {"done": True}
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


def _stream_and_list(
    out: Path,
    config: HarvestConfig,
    harvester: Harvester,
    store: ActivationStore,
    writer: StoreWriter | None,
    docs: Iterator[Any],
    start: StreamStart,
    message: str | None,
    dist_info: DistInfo,
    on_commit: Callable[[ShardInfo], None] | None,
) -> None:
    """Every rank: stream its blocks (:meth:`Harvester.run_rank`); then rank 0 (``writer``)
    writes what the store keeps for the others, who wait for it (or for its error), drop
    their blocks past the store's end, and all meet at one barrier."""
    from crossdiff.runtime import distributed
    from crossdiff.store import pending

    world, rank = dist_info.world_size, dist_info.rank
    if message:
        _say(config, message)
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


def _gather_timings(harvester: Harvester, dist_info: DistInfo) -> None:
    """Every rank: the harvester's timings become the sum of all ranks' (the wall time the
    longest rank's), for the summary."""
    from crossdiff.runtime import distributed

    every = [HarvestTimings(**t) for t in distributed.all_gather_json(asdict(harvester.timings))]
    harvester.timings = HarvestTimings(
        **{f.name: sum(getattr(t, f.name) for t in every) for f in fields(HarvestTimings)}
    )
    harvester.wall_seconds = max(t.total for t in every)
    harvester.world_size = dist_info.world_size


def _on_rank0(decide: Callable[[], Any]) -> Any:
    """``decide()`` on rank 0 only; every rank returns its JSON result or raises its error."""
    from crossdiff.runtime import distributed

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
