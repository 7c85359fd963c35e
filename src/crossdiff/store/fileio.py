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


def recorded_file_problems(path: Path, sha256: str, size: int | None = None) -> list[str]:
    """What is wrong with a file against the SHA-256 (and size) a manifest recorded: [] if
    nothing. The one check of a shard or documents file against its record, behind both
    ``store verify`` (which reports every problem) and the recovery of an interrupted streaming
    harvest (which lists a leftover shard only when this is empty)."""
    if not path.is_file():
        return ["file is missing"]
    got = path.stat().st_size
    problems = [f"size {got} bytes, manifest says {size}"] if size not in (None, got) else []
    digest = sha256_file(path)
    if digest != sha256:
        problems.append(f"checksum mismatch (sha256 {digest[:16]}..., manifest {sha256[:16]}...)")
    return problems


# bytes per element of the safetensors dtypes crossdiff writes (others are not checked by size)
_DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1}
_MAX_HEADER = 100 * 2**20


def safetensors_header(path: Path) -> dict:
    """The JSON header of a safetensors file, checked against the file's size, without reading
    any tensor data (one ``stat`` and one small read).

    Raises ``ValueError`` with a one-line reason when the file is too short, its header is not
    JSON, a tensor's byte range disagrees with its dtype and shape, or the file is shorter
    (truncated) or longer than the tensors the header lists. ``OSError`` when it cannot be read.
    """
    import json

    size = path.stat().st_size
    if size < 8:
        raise ValueError(f"{size} bytes, too short for a safetensors file (truncated)")
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if n > size - 8 or n > _MAX_HEADER:
            raise ValueError(
                f"{size} bytes, but its header claims {n} bytes: truncated or overwritten"
            )
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("its header is not valid JSON: the file is damaged") from None
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object: the file is damaged")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = (int(v) for v in info["data_offsets"])
            count = 1
            for dim in info["shape"]:
                count *= int(dim)
            dtype = info["dtype"]
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"its header entry for {name!r} is malformed") from None
        width = _DTYPE_BYTES.get(dtype)
        if begin < 0 or stop < begin or (width is not None and stop - begin != count * width):
            raise ValueError(f"its header gives {name!r} an impossible byte range")
        end = max(end, stop)
    need = 8 + n + end
    if size != need:
        state = "truncated" if size < need else "has trailing bytes"
        raise ValueError(f"{size} bytes, but its header needs {need}: the file is {state}")
    return header
