"""Corpus files: ``.txt``, ``.jsonl`` and ``.parquet``, alone or in a folder.

Formats:

- ``.txt``: documents separated by one or more blank lines (lines holding only whitespace).
  Line breaks inside a document are kept; surrounding blank lines are not.
- ``.jsonl``: one JSON object per line with ``"text"`` (a string) or ``"messages"`` (a chat:
  ``[{"role": "user", "content": "..."}, ...]``; ``"conversation"`` is accepted as an alias, as
  in LMSYS-Chat-1M). Blank lines are skipped; a line with neither field is an error naming the
  file and line.
- ``.parquet``: a ``text`` column, or a ``messages``/``conversation`` column of role/content
  structs; read in batches, never whole.

Empty texts are skipped. A folder is read recursively in sorted path order; hidden files and
files of other extensions in it are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from crossdiff.corpus.document import Document, check_messages
from crossdiff.errors import CrossdiffError

SUFFIXES = (".txt", ".jsonl", ".parquet")
_CHAT_FIELDS = ("messages", "conversation")
_PARQUET_BATCH = 256


def _read_txt(path: Path, source: str) -> Iterator[Document]:
    index = 0
    lines: list[str] = []
    with path.open(encoding="utf-8") as handle:
        for line in [*handle, ""]:  # the sentinel flushes the last document
            if line.strip():
                lines.append(line)
                continue
            if lines:
                yield Document(f"{source}:{index}", "".join(lines).strip("\n"), None, source)
                index += 1
                lines = []


def _record_to_document(record: object, where: str, doc_id: str, source: str) -> Document | None:
    if not isinstance(record, dict):
        raise CrossdiffError(f"{where}: expected a JSON object with 'text' or 'messages'")
    text = record.get("text")
    if isinstance(text, str):
        return Document(doc_id, text, None, source) if text.strip() else None
    for field in _CHAT_FIELDS:
        if record.get(field) is not None:
            return Document(doc_id, None, check_messages(record[field], where), source)
    if text is not None:
        raise CrossdiffError(f"{where}: 'text' must be a string, got {type(text).__name__}")
    raise CrossdiffError(
        f"{where}: no 'text' or 'messages' field (found {sorted(record)[:8]}); each line needs "
        'a "text" string or a "messages" list of {"role", "content"} objects'
    )


def _read_jsonl(path: Path, source: str) -> Iterator[Document]:
    index = 0
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path} line {lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise CrossdiffError(f"{where}: not valid JSON ({error.msg})") from None
            document = _record_to_document(record, where, f"{source}:{index}", source)
            if document is not None:
                index += 1
                yield document


def _read_parquet(path: Path, source: str) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises ArrowInvalid and friends
        raise CrossdiffError(f"{path}: not a readable parquet file ({error})") from error
    names = handle.schema_arrow.names
    column = next((c for c in ("text", *_CHAT_FIELDS) if c in names), None)
    if column is None:
        raise CrossdiffError(
            f"{path}: no 'text' or 'messages' column (columns: {names[:10]}); add one of them"
        )
    index = 0
    row = 0
    for batch in handle.iter_batches(batch_size=_PARQUET_BATCH, columns=[column]):
        for value in batch.column(0).to_pylist():
            row += 1
            if value is None:
                continue
            where = f"{path} row {row}"
            document = _record_to_document({column: value}, where, f"{source}:{index}", source)
            if document is not None:
                index += 1
                yield document


_READERS = {".txt": _read_txt, ".jsonl": _read_jsonl, ".parquet": _read_parquet}


def check_file(path: Path) -> None:
    """Raise a CrossdiffError unless ``path`` is a corpus file of a known format."""
    if path.suffix.lower() not in _READERS:
        raise CrossdiffError(
            f"corpus file '{path}' has unknown extension '{path.suffix}'; use one of "
            f"{', '.join(SUFFIXES)} (or a folder of them, hf:NAME, or 'builtin')"
        )


def read_file(path: Path, source: str | None = None) -> Iterator[Document]:
    """Documents of one corpus file, in file order."""
    check_file(path)
    return _READERS[path.suffix.lower()](path, source or str(path))


def folder_files(folder: Path) -> list[Path]:
    """The corpus files under ``folder`` (recursive, sorted, hidden files skipped)."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in _READERS
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def read_folder(folder: Path) -> Iterator[Document]:
    """Documents of every corpus file under ``folder``; sources are paths relative to it."""
    for path in folder_files(folder):
        yield from read_file(path, path.relative_to(folder).as_posix())
