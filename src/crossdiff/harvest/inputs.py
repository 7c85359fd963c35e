"""What a harvest reads: the corpus, opened from its first document, and the two models.

Both the single process (:func:`crossdiff.harvest.harvest`) and every rank of a distributed
harvest (:mod:`crossdiff.harvest.ranks`) open their inputs here, so an empty corpus or a
model that does not load fails the same way everywhere.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from crossdiff.errors import CrossdiffError

if TYPE_CHECKING:
    from crossdiff.harvest.config import HarvestConfig
    from crossdiff.models import LoadedModel


def _open_corpus(config: HarvestConfig) -> Iterator[Any]:
    """The corpus documents from the first; an empty corpus is a CrossdiffError."""
    from crossdiff.corpus import load_corpus

    docs = iter(load_corpus(config.corpus, limit=config.max_documents))
    first = next(docs, None)
    if first is None:
        raise CrossdiffError(
            f"corpus {config.corpus!r} has no documents; point --corpus at a file or dataset "
            "with text (see `crossdiff harvest --help`)"
        )
    return itertools.chain([first], docs)


def _load_models(config: HarvestConfig, device: str) -> tuple[LoadedModel, LoadedModel]:
    from crossdiff.models import load_model

    return tuple(  # type: ignore[return-value]
        load_model(
            spec,
            dtype=config.dtype,
            device=device,
            trust_remote_code=config.trust_remote_code,
            cache_dir=config.cache_dir,
        )
        for spec in (config.model_a, config.model_b)
    )
