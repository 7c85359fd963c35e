"""Hugging Face datasets as a corpus: ``hf:NAME[:CONFIG][:SPLIT]``, streamed.

Uses the optional ``datasets`` package in streaming mode, so nothing is downloaded whole. Rows
need a ``text`` string or a ``messages``/``conversation`` chat, like the jsonl format. The split
defaults to ``train``.
"""

from __future__ import annotations

from collections.abc import Iterator

from crossdiff.corpus.document import Document
from crossdiff.corpus.files import _record_to_document
from crossdiff.errors import CrossdiffError


def parse_hf_spec(spec: str) -> tuple[str, str | None, str]:
    """``hf:NAME[:CONFIG][:SPLIT]`` -> (name, config or None, split)."""
    parts = spec.removeprefix("hf:").split(":")
    if not parts[0] or len(parts) > 3:
        raise CrossdiffError(
            f"corpus '{spec}' is not of the form hf:NAME[:CONFIG][:SPLIT], e.g. "
            "hf:HuggingFaceFW/fineweb:sample-10BT:train"
        )
    name = parts[0]
    config = parts[1] if len(parts) > 1 and parts[1] else None
    split = parts[2] if len(parts) > 2 and parts[2] else "train"
    return name, config, split


def _offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return False


def open_hf(spec: str) -> Iterator[Document]:
    """Open the streamed dataset now (so errors surface at once) and iterate its rows lazily."""
    name, config, split = parse_hf_spec(spec)
    try:
        import datasets
    except ImportError:
        raise CrossdiffError(
            f"corpus '{spec}' needs the 'datasets' package, which is not installed; install it "
            "with: pip install datasets (or download the data and pass a .jsonl/.parquet file)"
        ) from None
    if _offline():
        raise CrossdiffError(
            f"corpus '{spec}': the Hugging Face hub is offline (HF_HUB_OFFLINE is set); unset it "
            "or pass a local .jsonl/.parquet file"
        )
    try:
        stream = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as error:  # datasets raises many types (connection, missing config, ...)
        raise CrossdiffError(
            f"corpus '{spec}' could not be opened (hub unreachable, or no such dataset, config "
            f"or split): {error}"
        ) from error
    source = f"hf:{name}" + (f":{config}" if config else "") + f":{split}"
    return _rows(stream, source)


def _rows(stream, source: str) -> Iterator[Document]:
    index = 0
    for row_number, row in enumerate(stream):
        record = {k: row[k] for k in ("text", "messages", "conversation") if k in row}
        where = f"{source} row {row_number}"
        document = _record_to_document(record or row, where, f"{source}:{index}", source)
        if document is not None:
            index += 1
            yield document
