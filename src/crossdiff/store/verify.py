"""``store.verify()``: check every byte a store's manifest vouches for.

For each shard: the file exists, its SHA-256 and size match the manifest, it parses as
safetensors, every column is present with the right dtype and shape for the manifest's row count
and widths, its rows belong to its documents, and its float columns hold no NaN or inf (a
bit test per value, streamed one shard at a time). For each documents file: checksum, one
JSON record per document, indices in order. Totals must add up. Problems are collected (not
raised) so one run reports all of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from safetensors import safe_open

from crossdiff.store.check import nonfinite_count
from crossdiff.store.fileio import TMP_MARKER, recorded_file_problems
from crossdiff.store.moments import MOMENTS_FILE
from crossdiff.store.shard import COLUMNS, expected_shape

if TYPE_CHECKING:
    from crossdiff.store.store import ActivationStore


@dataclass
class VerifyReport:
    """What :func:`verify_store` found: ``ok`` is True when ``problems`` is empty."""

    shards_checked: int = 0
    rows_checked: int = 0
    bytes_checked: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = (
            f"{'OK' if self.ok else 'FAILED'}: {self.shards_checked} shards, "
            f"{self.rows_checked} rows, {self.bytes_checked / 2**20:.1f} MiB checked"
        )
        lines = [head]
        lines += [f"  problem: {p}" for p in self.problems]
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def verify_store(
    store: ActivationStore, progress: Callable[[int], None] | None = None
) -> VerifyReport:
    """Check every shard and documents file listed in the manifest (see module docstring)."""
    m = store.manifest
    report = VerifyReport()
    listed = set()
    for k, shard in enumerate(m.shards):
        listed |= {shard.file, shard.docs_file}
        _check_shard(store, k, report)
        _check_docs(store, k, report)
        report.shards_checked += 1
        if progress is not None:
            progress(1)
    for k in range(1, len(m.shards)):
        if m.shards[k].doc_start != m.shards[k - 1].doc_end:
            report.problems.append(
                f"shard {k}: documents start at {m.shards[k].doc_start}, but shard {k - 1} "
                f"ended at {m.shards[k - 1].doc_end}"
            )
    for p in sorted(store.path.iterdir()):
        if p.name.startswith(".") and TMP_MARKER in p.name:
            report.warnings.append(f"{p.name}: leftover of an interrupted write (ignored)")
        elif (
            p.suffix in (".safetensors", ".jsonl")
            and p.name not in listed
            and p.name != MOMENTS_FILE
        ):
            report.warnings.append(f"{p.name}: not listed in the manifest (ignored)")
    return report


def _check_shard(store: ActivationStore, k: int, report: VerifyReport) -> None:
    m = store.manifest
    shard = m.shards[k]
    path = store.path / shard.file
    where = f"shard {k} ({shard.file})"
    problems = recorded_file_problems(path, shard.sha256, shard.bytes)
    for problem in problems:
        fix = ": the file is corrupted; harvest it again" if "checksum" in problem else ""
        report.problems.append(f"{where}: {problem}{fix}")
    if not path.is_file():
        return
    report.bytes_checked += path.stat().st_size
    try:
        with safe_open(str(path), framework="pt") as fh:
            keys = set(fh.keys())
            for name, (dtype, _) in COLUMNS.items():
                if name not in keys:
                    report.problems.append(f"{where}: column {name!r} is missing")
                    continue
                t = fh.get_slice(name)
                want_shape = expected_shape(name, shard.rows, m.d_a, m.d_b)
                got_shape = tuple(t.get_shape())
                got_dtype = t.get_dtype()
                want_dtype = {"bfloat16": "BF16", "float32": "F32", "int64": "I64", "int32": "I32"}[
                    str(dtype).removeprefix("torch.")
                ]
                if got_shape != want_shape:
                    report.problems.append(
                        f"{where}: {name} has shape {got_shape}, expected {want_shape}"
                    )
                if got_dtype != want_dtype:
                    report.problems.append(
                        f"{where}: {name} has dtype {got_dtype}, expected {want_dtype}"
                    )
            if "doc_index" in keys and shard.rows:
                doc = fh.get_tensor("doc_index")
                if int(doc.min()) < shard.doc_start or int(doc.max()) >= shard.doc_end:
                    report.problems.append(
                        f"{where}: rows point to documents outside "
                        f"[{shard.doc_start}, {shard.doc_end})"
                    )
            for name in ("x_a", "x_b", "norm_a", "norm_b"):
                if name in keys and shard.rows:
                    bad = nonfinite_count(fh.get_tensor(name))
                    if bad:
                        report.problems.append(
                            f"{where}: {name} holds {bad} non-finite values (NaN or inf): "
                            "its rows are unusable; harvest the store again"
                        )
    except Exception as exc:  # a corrupted header raises safetensors' own errors
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        report.problems.append(f"{where}: cannot be read as safetensors ({reason})")
        return
    report.rows_checked += shard.rows


def _check_docs(store: ActivationStore, k: int, report: VerifyReport) -> None:
    shard = store.manifest.shards[k]
    path = store.path / shard.docs_file
    where = f"documents {k} ({shard.docs_file})"
    problems = recorded_file_problems(path, shard.docs_sha256)
    report.problems += [f"{where}: {p}: the file is corrupted" if "checksum" in p
                        else f"{where}: {p}" for p in problems]  # fmt: skip
    if problems:
        return
    report.bytes_checked += path.stat().st_size
    lines = path.read_bytes().decode("utf-8").splitlines()
    if len(lines) != shard.doc_end - shard.doc_start:
        report.problems.append(
            f"{where}: {len(lines)} records, expected {shard.doc_end - shard.doc_start}"
        )
        return
    for i, line in enumerate(lines):
        try:
            index = json.loads(line)["index"]
        except (json.JSONDecodeError, KeyError, TypeError):
            report.problems.append(f"{where}: record {i} is not a document record")
            return
        if index != shard.doc_start + i:
            report.problems.append(
                f"{where}: record {i} has index {index}, expected {shard.doc_start + i}"
            )
            return
