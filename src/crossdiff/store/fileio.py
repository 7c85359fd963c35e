"""Crash-safe file writes and checksums for the activation store.

A file is written under a temporary name in the same folder, flushed and fsynced, renamed over
its final name (atomic on POSIX), and the folder is fsynced so the rename itself survives a
power cut. A reader therefore sees either the old file or the complete new one, never a torn one.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

TMP_MARKER = ".tmp-"
_CHUNK = 1 << 22


def fsync_dir(path: Path) -> None:
    """Persist a folder's entries (renames, new files); a no-op where folders can't be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def tmp_name(path: Path) -> Path:
    """The temporary name a file is written under before it is renamed to ``path``."""
    return path.with_name(f".{path.name}{TMP_MARKER}{os.getpid()}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (tmp name, fsync, rename, fsync folder)."""
    tmp = tmp_name(path)
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """SHA-256 of a file, read in chunks (shards can be gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
