"""Mixed corpora: several sources interleaved by share of pairs, in every prefix.

Why: the method's data are half web text and half chat, because the behaviours an auditor is
after show in conversations. A harvest takes documents in order until its token budget is
spent, so a mix must hold in every prefix of the corpus, not only in the whole: a store cut at
any budget (or a harvest resumed at any document) keeps the same shares.

Spec: ``SPEC=SHARE,SPEC=SHARE,...`` (e.g. ``builtin:wiki=0.5,builtin:chats=0.5`` or
``hf:my/chats=0.5,hf:my/web=0.5``); shares are normalized to sum to 1. In a config file the
corpus can also be a mapping ``{SPEC: SHARE}``.

How: the mixer estimates each document's pairs from its content alone (:func:`pair_estimate`:
words, punctuation marks and CJK characters, roughly what a tokenizer makes a token of) and
always takes the next document from the source furthest below its share of the estimate so far
(ties: the source listed first). The order is a pure function of the sources, so a resumed
harvest, which skips the documents already committed, continues the same interleaving. The
mixed corpus ends when any source ends (past that point the mix could not hold); ``store info``
reports the shares the store actually got, by pairs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from crossdiff.corpus.document import Document
from crossdiff.errors import CrossdiffError

_PART = re.compile(r"^(?P<spec>.+)=(?P<share>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)$")
_UNIT = re.compile(
    r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]"  # CJK, kana, hangul
    r"|[^\W\d_]+|\d+|[^\w\s]"
)


@dataclass(frozen=True)
class MixPart:
    """One source of a mix and its target share of pairs (normalized)."""

    spec: str
    share: float


def is_mix(spec: object) -> bool:
    """Whether a corpus spec is a mix (a mapping, or ``SPEC=SHARE,...`` text)."""
    if isinstance(spec, Mapping):
        return True
    parts = str(spec).split(",")
    return all(_PART.match(p.strip()) for p in parts) and bool(str(spec).strip())


def parse_mix(spec: str | Mapping[str, float]) -> list[MixPart]:
    """The parts of a mix spec, shares normalized; a clear error for every bad value."""
    if isinstance(spec, Mapping):
        items = [(str(k).strip(), v) for k, v in spec.items()]
    else:
        items = []
        for part in str(spec).split(","):
            match = _PART.match(part.strip())
            if match is None:
                raise CrossdiffError(
                    f"corpus mix part {part!r} is not SPEC=SHARE; write e.g. "
                    "builtin:wiki=0.5,builtin:chats=0.5"
                )
            items.append((match["spec"].strip(), match["share"]))
    parts: list[tuple[str, float]] = []
    for name, value in items:
        try:
            share = float(value)
        except (TypeError, ValueError):
            share = float("nan")
        if not share > 0 or share == float("inf"):
            raise CrossdiffError(
                f"corpus mix share of {name!r} is {value!r}; give a positive number"
            )
        if is_mix(name):
            raise CrossdiffError(f"corpus mix part {name!r} is itself a mix; list its sources")
        parts.append((name, share))
    if len(parts) < 2:
        raise CrossdiffError(
            f"corpus mix {spec!r} has {len(parts)} source(s); a mix needs at least two "
            "(pass a single corpus without '=SHARE')"
        )
    names = [n for n, _ in parts]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CrossdiffError(f"corpus mix lists {dupes} more than once; list each source once")
    total = sum(s for _, s in parts)
    return [MixPart(n, s / total) for n, s in parts]


def format_mix(parts: list[MixPart]) -> str:
    """The canonical text spec of a mix (what a store's manifest records)."""
    return ",".join(f"{p.spec}={p.share:.6g}" for p in parts)


def pair_estimate(document: Document) -> int:
    """Roughly how many pairs a document will give: its words, numbers, punctuation marks and
    CJK characters (each about one token in both models); at least 1."""
    if document.messages is not None:
        text = " ".join(m["content"] for m in document.messages)
    else:
        text = document.text or ""
    return max(1, len(_UNIT.findall(text)))


def mix_documents(
    parts: list[MixPart],
    open_part: Callable[[str], Iterator[Document]],
    weight: Callable[[Document], int] = pair_estimate,
) -> Iterator[Document]:
    """Interleave the parts' documents so that every prefix keeps their shares of ``weight``.

    ``open_part(spec)`` opens one source. Each step takes the next document of the source with
    the smallest ``taken / share`` (taken: the weight of its documents so far), so a prefix is
    within one document of the target shares. Stops when any source is exhausted.
    """
    sources = [open_part(p.spec) for p in parts]
    taken = [0.0] * len(parts)
    while True:
        i = min(range(len(parts)), key=lambda j: (taken[j] / parts[j].share, j))
        document = next(sources[i], None)
        if document is None:
            return
        taken[i] += weight(document)
        yield document
