"""Whether a store already answers a harvest, and what an interrupted one left.

A harvest rerun on its store resumes at the first document not committed (a block boundary,
so the batches are those an uninterrupted run forms). Before anything is loaded,
:func:`_same_request` and :func:`_is_done` tell whether the store is this request's and
complete (nothing to do); before anything is written, :func:`_recover` lists the shards a
killed streaming harvest published that continue the store, and removes every other unlisted
file. Both the single process and the ranks (:mod:`crossdiff.harvest.ranks`) use these.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from crossdiff.harvest.config import REASON_CORPUS, HarvestConfig, _harvest_settings
from crossdiff.store.manifest import harvest_differences

if TYPE_CHECKING:
    from crossdiff.store import Manifest, StoreWriter


def _same_request(m: Manifest, c: HarvestConfig) -> bool:
    """Cheap check (no model loaded) that a store was made by this very command."""
    return (
        m.model_a.spec == c.model_a
        and m.model_b.spec == c.model_b
        and m.model_a.layer_spec == str(c.layer_a)
        and m.model_b.layer_spec == str(c.layer_b)
        and m.corpus == {"spec": c.corpus}
        and not harvest_differences(m.harvest, _harvest_settings(c))
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
