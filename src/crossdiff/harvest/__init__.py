"""Harvest: two models read the same corpus; their aligned activations go into a store.

For every document, in corpus order: each model renders it its own way (plain text, or the
chat through its own chat template), tokenizes it with offsets, and :mod:`crossdiff.align`
pairs the positions where both have read the same content. Both models run up to the chosen
layer only (early exit), on batches of windows (short ones packed several to a row,
:mod:`crossdiff.harvest.batches`); the residual stream at the paired
positions is written, in bf16, to an :class:`~crossdiff.store.ActivationStore`. Long
documents are split into windows at a paired position (:mod:`crossdiff.harvest.windows`).

Determinism and resuming: documents are processed in blocks of ``block_batches x batch_size``
documents; within a block, windows are sorted by length (so a batch holds windows of similar
length and little padding) and batched; shards are committed only at block boundaries. A
restart resumes at the first document not committed, which is a block boundary, so it forms
exactly the batches an uninterrupted run would have formed: same rows, same order, same bits.
Under ``torchrun`` (``WORLD_SIZE > 1``) the ranks stream the blocks and rank 0 lists them, so
the store holds the rows of a single process (:mod:`crossdiff.harvest.ranks`).

One module per concern: ``config`` (:class:`HarvestConfig`, its validation, the settings that
shape rows), ``windows`` (a document's windows and record), ``engine`` (:class:`Harvester`: the
models run on batches, rows written), ``stream`` (what a rank knows of the published blocks),
``ranks`` (:func:`harvest` on one rank of several), ``resume`` (is the store complete? what did
an interrupted run leave?), ``inputs`` (corpus and models opened), ``report`` (timings,
progress bar, messages, summary); here, the entry point :func:`harvest`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from crossdiff.harvest.batches import _pad_batch as _pad_batch  # re-exported for the benchmarks
from crossdiff.harvest.config import (
    LITERAL_SPECIALS,
    PAIR_POSITIONS,
    REASON_CORPUS,
    REASON_DOCS,
    REASON_TOKENS,
    HarvestConfig,
)
from crossdiff.harvest.engine import Harvester, capture_windows, model_info
from crossdiff.harvest.inputs import _load_models, _open_corpus
from crossdiff.harvest.ranks import _harvest_ranks
from crossdiff.harvest.report import HarvestTimings, _complete_message, _say, harvest_summary
from crossdiff.harvest.resume import _is_done, _recover, _same_request
from crossdiff.harvest.stream import StreamStart
from crossdiff.harvest.stream import _Stream as _Stream  # re-exported for the tests
from crossdiff.harvest.windows import (
    CHARS_PER_TOKEN_GUESS,
    WINDOW_MARGIN,
    DocumentPlan,
    Window,
    literal_special,
    plan_document,
    word_end_mask,
)
from crossdiff.store import ActivationStore, ShardInfo

if TYPE_CHECKING:
    from crossdiff.models import LoadedModel

__all__ = [
    "CHARS_PER_TOKEN_GUESS",
    "LITERAL_SPECIALS",
    "PAIR_POSITIONS",
    "REASON_CORPUS",
    "REASON_DOCS",
    "REASON_TOKENS",
    "WINDOW_MARGIN",
    "DocumentPlan",
    "HarvestConfig",
    "HarvestTimings",
    "Harvester",
    "StreamStart",
    "Window",
    "capture_windows",
    "harvest",
    "harvest_summary",
    "literal_special",
    "model_info",
    "plan_document",
    "word_end_mask",
]


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
    same config; the corpus is split over the ranks (:mod:`crossdiff.harvest.ranks`) and each
    returns the finished store; ``on_commit`` then runs on the rank that wrote the shard, once
    it is published (rank 0 lists it in the manifest later). The process group is joined here
    (gloo on CPU, NCCL with one GPU per rank) and left joined, as training does; the CLI leaves
    it at exit.
    """
    from crossdiff.runtime import distributed
    from crossdiff.runtime.device import resolve_device
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
