"""Cheap damage checks: what opening a store and reading a shard check, and what they cost.

``crossdiff store verify`` reads every byte (checksums, non-finite values); that is a full pass
over the store, too slow to run each time a terabyte store is opened. So the readers check less,
at a cost that does not grow with the data:

* **Opening** (``ActivationStore.open``, used by train, analyze, steer, interpret, show, info
  and harvest resume): the manifest's fields are type-checked when it is parsed
  (``Manifest.from_dict``); then every listed shard file must exist with the size the manifest
  records, every documents file must exist, and the first non-empty shard's safetensors header
  must hold ``x_a``/``x_b`` of shape (rows, d_model) for the manifest's widths. Cost: two
  ``stat`` calls per shard and one header read (a few KB), whatever the store's size.
  Truncated, deleted or replaced shards and a wrong ``d_model`` are caught here; flipped bytes
  inside a shard (same size) are not.
* **The training source's first read of each shard** (``StoreSource``, ``verify_reads=True`` by
  default): the shard's SHA-256 against the manifest, and x_a/x_b free of NaN/inf, before its
  rows are used. Cost per shard: one SHA-256 pass (about 1.7 GB/s on one core here, i.e. ~25 ms
  for a 16,384-row shard of widths 576 + 640) and a bit test of the bf16 values (~5 GB/s). A
  damaged shard is therefore found when training first reaches it, not at start.
* **Every read** (training source, ``iter_rows``): the shard must parse and its columns must
  have the manifest's row count and widths (free: the header is read anyway).

Every failure is a :class:`StoreDamagedError` (a ``CrossdiffError``): one line naming the shard
and pointing to ``crossdiff store verify``. Nothing here writes, moves or deletes a file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from crossdiff.errors import CrossdiffError
from crossdiff.store.fileio import safetensors_header, sha256_file

if TYPE_CHECKING:
    from crossdiff.store.store import ActivationStore

_CHUNK = 1 << 22  # elements per step of the non-finite scan (bounds its temporary memory)


class StoreDamagedError(CrossdiffError):
    """A store whose files do not match its manifest (truncated, missing, corrupted)."""


def shard_where(store: ActivationStore, k: int) -> str:
    return f"shard {k} ({store.manifest.shards[k].file})"


def damaged(store: ActivationStore, problem: str, more: int = 0) -> StoreDamagedError:
    """The one-line error for a damaged store: the problem, and what to run."""
    extra = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return StoreDamagedError(
        f"store {store.path} is damaged: {problem}{extra}; run `crossdiff store verify "
        f"{store.path}` for a full check (nothing was changed)"
    )


def open_problems(store: ActivationStore) -> list[str]:
    """The open-time check (module docstring): file presence and sizes, one header."""
    m = store.manifest
    problems: list[str] = []
    first: int | None = None
    for k, shard in enumerate(m.shards):
        where = shard_where(store, k)
        try:
            size = (store.path / shard.file).stat().st_size
        except OSError:
            problems.append(f"{where}: file is missing")
            size = None
        if size is not None and size != shard.bytes:
            state = "truncated" if size < shard.bytes else "larger than written"
            problems.append(
                f"{where}: size {size} bytes, manifest says {shard.bytes} (the file is {state})"
            )
        elif size is not None and first is None and shard.rows:
            first = k
        if not (store.path / shard.docs_file).is_file():
            problems.append(f"documents {k} ({shard.docs_file}): file is missing")
    if first is not None:
        problems.extend(header_problems(store, first))
    return problems


def header_problems(store: ActivationStore, k: int) -> list[str]:
    """Shard ``k``'s safetensors header against the manifest's row count and widths."""
    m = store.manifest
    shard = m.shards[k]
    where = shard_where(store, k)
    try:
        header = safetensors_header(store.path / shard.file)
    except (OSError, ValueError) as exc:
        return [f"{where}: cannot be read as safetensors ({exc})"]
    problems = []
    for name, side, width in (("x_a", "A", m.d_a), ("x_b", "B", m.d_b)):
        info = header.get(name)
        shape = info.get("shape") if isinstance(info, dict) else None
        if shape is None:
            problems.append(f"{where}: column {name!r} is missing")
        elif list(shape) != [shard.rows, width]:
            problems.append(
                f"{where}: {name} has shape {tuple(shape)}, but the manifest says "
                f"{shard.rows} rows of model {side}'s d_model {width}"
            )
    return problems


def check_open(store: ActivationStore) -> None:
    """Raise :class:`StoreDamagedError` if the open-time check finds a problem."""
    problems = open_problems(store)
    if problems:
        raise damaged(store, problems[0], len(problems) - 1)


def verify_checksum(store: ActivationStore, k: int) -> None:
    """Shard ``k``'s size and SHA-256 against the manifest (reads the whole file once)."""
    shard = store.manifest.shards[k]
    path = store.path / shard.file
    where = shard_where(store, k)
    try:
        size = path.stat().st_size
        digest = sha256_file(path) if size == shard.bytes else None
    except OSError as exc:
        raise damaged(store, f"{where}: cannot be read ({exc.strerror or exc})") from None
    if digest is None:
        raise damaged(store, f"{where}: size {size} bytes, manifest says {shard.bytes}")
    if digest != shard.sha256:
        raise damaged(
            store,
            f"{where}: checksum mismatch (sha256 {digest[:16]}..., manifest "
            f"{shard.sha256[:16]}...): the file is corrupted",
        )


def check_columns(
    store: ActivationStore, k: int, cols: dict[str, torch.Tensor], *, finite: bool = False
) -> None:
    """Columns read from shard ``k`` have its row count and the widths (and, with ``finite``,
    no NaN/inf in x_a/x_b)."""
    m = store.manifest
    shard = m.shards[k]
    for name, width in (("x_a", m.d_a), ("x_b", m.d_b)):
        t = cols.get(name)
        if t is None:
            continue
        if tuple(t.shape) != (shard.rows, width):
            raise damaged(
                store,
                f"{shard_where(store, k)}: {name} has shape {tuple(t.shape)}, manifest says "
                f"({shard.rows}, {width})",
            )
        if finite:
            bad = nonfinite_count(t)
            if bad:
                raise damaged(
                    store, f"{shard_where(store, k)}: {name} holds {bad} non-finite values"
                )
    if "doc_index" in cols and shard.rows and tuple(cols["doc_index"].shape) != (shard.rows,):
        raise damaged(
            store,
            f"{shard_where(store, k)}: doc_index has shape {tuple(cols['doc_index'].shape)}, "
            f"manifest says ({shard.rows},)",
        )


def nonfinite_count(t: torch.Tensor) -> int:
    """How many NaN/inf values ``t`` holds: a bit test of the exponent for bf16 and float32
    (all ones = not finite), in chunks; no float conversion, so it is cheap."""
    if t.dtype == torch.bfloat16 or t.dtype == torch.float16:
        bits = t.contiguous().view(torch.int16).numpy().view(np.uint16).reshape(-1)
        mask, limit = np.uint16(0x7FFF), (0x7F80 if t.dtype == torch.bfloat16 else 0x7C00)
    elif t.dtype == torch.float32:
        bits = t.contiguous().view(torch.int32).numpy().view(np.uint32).reshape(-1)
        mask, limit = np.uint32(0x7FFFFFFF), 0x7F800000
    elif t.is_floating_point():
        return int((~torch.isfinite(t)).sum())
    else:
        return 0
    bad = 0
    for i in range(0, bits.size, _CHUNK):
        part = bits[i : i + _CHUNK] & mask
        if int(part.max()) >= limit:  # the fast path: one max per chunk
            bad += int((part >= limit).sum())
    return bad
