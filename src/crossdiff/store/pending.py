"""Shards that are written but not yet listed: what ranks of a streaming harvest publish.

A distributed harvest (``crossdiff.harvest`` under ``torchrun``) has every rank write its own
shards with :func:`~crossdiff.store.writer.write_shard`, under the manifest index each will
get, while only rank 0 (holding the store's :class:`~crossdiff.store.StoreWriter` and its
lock) lists shards in the manifest. Between the two, a rank *publishes* each shard it wrote
as a small JSON entry in the hidden folder ``STORE/.harvest-pending/``:

    .harvest-pending/
      00012.json     shard 12 is written: its ShardInfo, and what the harvest adds (block,
                     documents, settings, counts); written atomically after the shard and its
                     documents file, so an entry always names two complete files
      rank-1.json    rank 1 has stopped: why, at which block, or the error that ended it
      listed.json    rank 0 has listed what the store keeps and marked it complete

The entries are how ranks learn each other's progress without a collective (a rank stops
when the entries it sees show that its next block cannot be needed), how rank 0 lists the
contiguous prefix of the corpus as it grows, and what a resumed harvest finds of a run that
was killed: :func:`recover` lists the entries that provably continue the store (both files
present with the checksums the entry records, the documents starting where the store ends,
the harvest's own test of its settings) and removes every other unlisted file. Readers
never look here: the manifest stays the one commit record, and the store format is
unchanged (a store with a leftover ``.harvest-pending`` is read as if it had none).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossdiff.errors import CrossdiffError
from crossdiff.store.fileio import atomic_write_bytes, recorded_file_problems
from crossdiff.store.manifest import ManifestError, ShardInfo
from crossdiff.store.shard import docs_file_name, shard_file_name

if TYPE_CHECKING:
    from crossdiff.store.writer import StoreWriter

PENDING_DIR = ".harvest-pending"
LISTED_NAME = "listed.json"
_ENTRY = re.compile(r"^(\d{5,})\.json$")
_RANK = re.compile(r"^rank-(\d+)\.json$")
_STORE_FILE = re.compile(r"^(shard-\d{5,}\.safetensors|docs-\d{5,}\.jsonl)$")


def pending_dir(store_path: Path) -> Path:
    return Path(store_path) / PENDING_DIR


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(exist_ok=True)
    atomic_write_bytes(path, json.dumps(obj, separators=(",", ":")).encode("utf-8"))


def _read_json(path: Path) -> Any:
    """The JSON of a file written with :func:`_write_json`, or None if it is not there (or not
    JSON: such a file was not written by a harvest and is never trusted)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def publish(store_path: Path, k: int, info: ShardInfo, extra: dict[str, Any]) -> None:
    """Publish shard ``k`` (already written) with the harvest's ``extra`` facts about it."""
    _write_json(pending_dir(store_path) / f"{k:05d}.json", {"shard": asdict(info), **extra})


def write_rank_state(store_path: Path, rank: int, state: dict[str, Any]) -> None:
    _write_json(pending_dir(store_path) / f"rank-{rank}.json", state)


def write_listed(store_path: Path, state: dict[str, Any]) -> None:
    _write_json(pending_dir(store_path) / LISTED_NAME, state)


def read_listed(store_path: Path) -> dict[str, Any] | None:
    return _read_json(pending_dir(store_path) / LISTED_NAME)


def read_rank_states(store_path: Path) -> dict[int, dict[str, Any]]:
    folder = pending_dir(store_path)
    states: dict[int, dict[str, Any]] = {}
    if folder.is_dir():
        for p in folder.iterdir():
            match = _RANK.match(p.name)
            if match and isinstance(state := _read_json(p), dict):
                states[int(match.group(1))] = state
    return states


class PendingEntries:
    """The published entries of a store, read incrementally (each file is read once)."""

    def __init__(self, store_path: Path) -> None:
        self.folder = pending_dir(store_path)
        self.entries: dict[int, dict[str, Any]] = {}

    def refresh(self) -> list[int]:
        """Read the entries published since the last call; returns their shard indices."""
        try:
            names = [p.name for p in self.folder.iterdir()]
        except FileNotFoundError:
            return []
        new = []
        for name in names:
            match = _ENTRY.match(name)
            if match is None or int(match.group(1)) in self.entries:
                continue
            entry = _read_json(self.folder / name)
            if _entry_info(entry) is not None:
                k = int(match.group(1))
                self.entries[k] = entry
                new.append(k)
        return sorted(new)


def _entry_info(entry: Any) -> ShardInfo | None:
    if not isinstance(entry, dict):
        return None
    try:
        return ShardInfo.from_dict(entry.get("shard"))
    except (ManifestError, TypeError):
        return None


def entry_info(entry: dict[str, Any]) -> ShardInfo:
    """The :class:`ShardInfo` of a published entry (entries are validated when read)."""
    info = _entry_info(entry)
    if info is None:
        raise ValueError("not a valid pending entry")
    return info


def wait_for(
    ready: Callable[[], Any], *, tick: Callable[[], None] | None = None, poll_s: float = 0.02
) -> Any:
    """Call ``ready()`` until it returns something other than None, and return that; between
    calls ``tick()`` (if given) and a sleep that grows to 0.5 s. No timeout: under torchrun a
    rank that dies ends the job, and a slow rank is not a dead one."""
    delay = poll_s
    while (result := ready()) is None:
        if tick is not None:
            tick()
        time.sleep(delay)
        delay = min(0.5, delay * 1.5)
    return result


def _intact(store_path: Path, info: ShardInfo) -> bool:
    """Both files of a published shard are there, with the sizes and checksums recorded."""
    return not recorded_file_problems(
        store_path / info.file, info.sha256, info.bytes
    ) and not recorded_file_problems(store_path / info.docs_file, info.docs_sha256)


def recover(
    writer: StoreWriter, accept: Callable[[dict[str, Any]], bool]
) -> tuple[list[ShardInfo], list[str]]:
    """List the published shards that provably continue the store, remove the other leftovers.

    Run by the store's one writer before anything else is written (a resumed harvest, with
    any number of ranks). From the store's end, entry after entry: shard ``k`` is listed when
    its entry is valid, it is named for index ``k``, its documents start where the store ends,
    both files exist with the recorded sizes and SHA-256 (read in full: a damaged file is
    never listed), and ``accept(entry)`` (the harvest's test: same settings, budget not yet
    reached, ...) agrees; the first entry that fails ends the listing. Then every other file
    of ``.harvest-pending`` and every ``shard-*``/``docs-*`` file the manifest does not list is
    deleted, so nothing a crashed run wrote can be confused with what the next run writes.
    Returns (the shards listed, the names of the files removed).
    """
    store = writer.store
    path = store.path
    folder = pending_dir(path)
    adopted: list[ShardInfo] = []
    if folder.is_dir():
        m = store.manifest
        k = len(m.shards)
        while True:
            entry = _read_json(folder / f"{k:05d}.json")
            info = _entry_info(entry)
            if (
                info is None
                or info.file != shard_file_name(k)
                or info.docs_file != docs_file_name(k)
                or info.doc_start != store.manifest.documents_consumed
                or info.doc_end <= info.doc_start
                or not accept(entry)
                or not _intact(path, info)
            ):
                break
            writer.adopt([info])
            adopted.append(info)
            k += 1
    return adopted, remove_unlisted(path, store.manifest.shards)


def remove_unlisted(
    store_path: Path, listed: list[ShardInfo], *, pending: bool = True
) -> list[str]:
    """Delete every shard or documents file that ``listed`` (the manifest's shards) does not
    name, and with ``pending`` the pending folder; returns the names removed."""
    removed = []
    keep = {s.file for s in listed} | {s.docs_file for s in listed}
    for p in sorted(Path(store_path).iterdir()):
        if _STORE_FILE.match(p.name) and p.name not in keep and p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p.name)
    folder = pending_dir(store_path)
    if pending and folder.is_dir():
        removed.extend(f"{PENDING_DIR}/{p.name}" for p in sorted(folder.iterdir()))
        clear(store_path)
    return removed


def clear(store_path: Path) -> None:
    """Remove the pending folder (after the manifest lists what it kept)."""
    shutil.rmtree(pending_dir(store_path), ignore_errors=True)


def check_world(states: dict[int, dict[str, Any]], world: int) -> dict[int, dict[str, Any]] | None:
    """Every rank's final state once all ``world`` ranks have one, else None; a rank that
    reports an error raises it (a CrossdiffError naming the rank)."""
    for r, state in sorted(states.items()):
        if state.get("error"):
            raise CrossdiffError(f"rank {r} failed: {state['error']}")
    if all(r in states for r in range(world)):
        return states
    return None
