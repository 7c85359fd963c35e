"""Corpora: the texts and chats both models read.

``load_corpus(spec)`` accepts a ``.txt``/``.jsonl``/``.parquet`` file, a folder of them,
``hf:NAME[:CONFIG][:SPLIT]`` (streamed with the optional ``datasets`` package), ``builtin``
(the default: Wikipedia text from gensim's test data and the project's own chats, half and half
by pairs), or a mix of any of these by share of pairs (``SPEC=SHARE,SPEC=SHARE``,
:mod:`crossdiff.corpus.mix`). Order is deterministic, so a run can be resumed by skipping
documents already done.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from crossdiff.corpus.builtin import BUILTIN_MIX, builtin_chats, builtin_texts
from crossdiff.corpus.document import Document
from crossdiff.corpus.files import SUFFIXES, check_file, folder_files, read_file, read_folder
from crossdiff.corpus.hf import open_hf
from crossdiff.corpus.mix import format_mix, is_mix, mix_documents, parse_mix
from crossdiff.errors import CrossdiffError

BUILTIN = "builtin"


def _checked(documents: Iterator[Document], spec: str, limit: int | None) -> Iterator[Document]:
    """Apply ``limit`` and raise at the end if nothing came out."""
    count = 0
    for document in documents:
        if limit is not None and count >= limit:
            return
        count += 1
        yield document
    if count == 0:
        raise CrossdiffError(
            f"corpus '{spec}' has no documents (empty files, or only blank texts); "
            "pass a corpus with at least one non-empty text or chat"
        )


def load_corpus(
    spec: str | Path | Mapping[str, float] = BUILTIN, *, limit: int | None = None
) -> Iterator[Document]:
    """The documents of a corpus, in a deterministic order; at most ``limit`` of them.

    The spec is checked at once (missing path, unknown extension, bad hf: spec, missing
    ``datasets``); documents are then read lazily. An empty corpus raises a CrossdiffError
    when iteration finds nothing.
    """
    if limit is not None and (not isinstance(limit, int) or limit <= 0):
        raise CrossdiffError(f"corpus limit must be a positive number of documents, got {limit!r}")
    if isinstance(spec, Mapping) or is_mix(spec):
        parts = parse_mix(spec)  # type: ignore[arg-type]
        sources = {p.spec: load_corpus(p.spec) for p in parts}  # every spec checked at once
        mixed = mix_documents(parts, sources.__getitem__)
        return _checked(mixed, format_mix(parts), limit)
    text = str(spec).strip()
    if text in (BUILTIN, "builtin:"):
        return load_corpus(BUILTIN_MIX, limit=limit)
    if text == "builtin:wiki":
        return _checked(builtin_texts(), text, limit)
    if text == "builtin:chats":
        return _checked(iter(builtin_chats()), text, limit)
    if text.startswith("hf:"):
        return _checked(open_hf(text), text, limit)
    path = Path(text).expanduser()
    if not text or not path.exists():
        raise CrossdiffError(
            f"corpus '{spec}' does not exist; pass a {'/'.join(SUFFIXES)} file, a folder of "
            "them, hf:NAME[:CONFIG][:SPLIT], or 'builtin'"
        )
    if path.is_dir():
        if not folder_files(path):
            raise CrossdiffError(
                f"corpus folder '{spec}' has no {', '.join(SUFFIXES)} files; add some or pass "
                "a file"
            )
        return _checked(read_folder(path), text, limit)
    check_file(path)
    return _checked(read_file(path, path.name), text, limit)


def builtin_corpus() -> Iterator[Document]:
    """The default corpus: Wikipedia text and the chats, half and half by pairs in every
    prefix; it ends when the chats run out (the mix ``BUILTIN_MIX``, opened like any mix)."""
    return load_corpus(BUILTIN_MIX)


__all__ = [
    "BUILTIN",
    "Document",
    "builtin_chats",
    "builtin_corpus",
    "builtin_texts",
    "load_corpus",
]
