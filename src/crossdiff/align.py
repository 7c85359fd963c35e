"""Pair the token positions of two tokenizers that have read exactly the same content.

Two models read the same document through different tokenizers (and different chat templates),
so their token positions do not correspond one to one. A position of model A and a position of
model B can be compared only when both models have consumed the same content text at that
point. This module finds those positions (docs/METHOD.md §2) by character offsets, in O(n):

1. Each model renders the document its own way (its own BOS, chat template, ...). Only the
   *content* (the characters inside the rendered text's content spans, e.g. the message texts)
   is common ground. The *common content* is the concatenation of the content spans; where a
   chat template rewrites a message by trimming its surrounding whitespace (Gemma's does), only
   the trimmed core of that message is common. Content coordinates count characters of the
   common content.
2. A token is a *candidate* when it is not special, consumed at least one character, its end
   lies inside a common segment (or at its end), and it is a *safe boundary*: no later token
   starts before its end. Byte-fallback and byte-level pieces of one multi-byte character all
   carry that character's span, so only the last piece of the character passes; a piece that
   ends one character and starts the next is not safe either.
3. Candidates of A and B whose ends map to the same content offset are paired. The prefix of
   common content each has consumed is then identical: ``content[:content_end]``.

Characters that no token covers (a normalizer dropped them, or composed them into the previous
character: NFKC turns ``e`` + U+0301 into one ``é`` whose offsets cover only the ``e``) have been
read by the time the next token starts. A token's end is therefore extended over the uncovered
non-whitespace characters that follow it; uncovered whitespace is left alone, because tokenizers
that trim offsets (``▁word`` reported without its space) consume it with the *next* token.

Normalizers that put combining marks in canonical order (NFC/NFKC/NFD reorder
``q`` + U+0308 + U+0323 into ``q`` + U+0323 + U+0308) report offsets by position, so a token's
offsets name a mark it has not read; an end strictly inside a combining sequence that canonical
ordering would change is therefore never a candidate (:func:`unstable_ends`).

Before a pair is kept, a self-check (:func:`prefix_consistent`) verifies on each side that the
tokens up to the paired one cover content characters before its end only, and the later tokens
characters at or after it only; a pair that fails is dropped and counted
(``Alignment.dropped_a`` / ``dropped_b``), so an unknown offset quirk lowers coverage instead of
producing a wrong pair.

SentencePiece leading-space markers need no special case: whether a tokenizer's offsets for
``▁word`` include the space or not, the token's *end* is the same, and the previous token's
safe-boundary check (``next start >= end``) holds both ways.

Pure functions on plain sequences (offsets, masks, spans): no torch, no tokenizer objects, so
they can be tested against a brute-force reference and reused anywhere.

Example::

    >>> # "Hi there" as ["Hi", " there"] (A) and ["H", "i", " the", "re"] (B)
    >>> al = align([(0, 2), (2, 8)], [False, False], [(0, 8)],
    ...            [(0, 1), (1, 2), (2, 6), (6, 8)], [False] * 4, [(0, 8)])
    >>> al.pos_a.tolist(), al.pos_b.tolist(), al.content_end.tolist()
    ([0, 1], [1, 3], [2, 8])

Size: one algorithm (offset intersection, content masks, special-token literals) with its
doctests; the pieces are pure functions property-tested together against brute force.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from crossdiff.errors import CrossdiffError

Span = tuple[int, int]

__all__ = [
    "Alignment",
    "Segment",
    "align",
    "align_rendered",
    "align_segments",
    "candidate_ends",
    "common_segments",
    "content_of",
    "content_token_mask",
    "identity_segments",
    "prefix_consistent",
    "unstable_ends",
]


@dataclass(frozen=True)
class Segment:
    """Rendered text ``[start, end)`` of one model holds common content ``[common_start, ...)``."""

    start: int
    end: int
    common_start: int


@dataclass(frozen=True)
class Alignment:
    """Aligned positions of one document in two tokenizations.

    ``pos_a[i]`` and ``pos_b[i]`` are token indices (into each model's token sequence) whose
    tokens both end at common-content character ``content_end[i]``; all three arrays are
    strictly increasing. ``content_tokens_a`` counts model A's non-special tokens that consumed
    at least one content character (the denominator of coverage); likewise for B.
    ``content_complete`` is False when the renderings stopped agreeing on the content partway
    (then only the agreeing prefix, ``content_length`` characters, can pair).
    ``dropped_end_a`` / ``dropped_end_b`` are the content ends of the pairs the self-check
    removed because that model's offsets did not cover exactly the content before the pair
    (:func:`prefix_consistent`); ``dropped_a`` / ``dropped_b`` count them.
    """

    pos_a: np.ndarray
    pos_b: np.ndarray
    content_end: np.ndarray
    content_tokens_a: int
    content_tokens_b: int
    content_length: int
    content_complete: bool = True
    dropped_end_a: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    dropped_end_b: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def dropped_a(self) -> int:
        """Pairs the self-check removed because model A's offsets failed it."""
        return int(self.dropped_end_a.shape[0])

    @property
    def dropped_b(self) -> int:
        return int(self.dropped_end_b.shape[0])

    @property
    def n_pairs(self) -> int:
        return int(self.pos_a.shape[0])

    @property
    def coverage_a(self) -> float:
        """Share of model A's content tokens that are paired (1.0 when it has none)."""
        return self.n_pairs / self.content_tokens_a if self.content_tokens_a else 1.0

    @property
    def coverage_b(self) -> float:
        return self.n_pairs / self.content_tokens_b if self.content_tokens_b else 1.0

    def prefix(self, max_pos_a: int, max_pos_b: int) -> int:
        """Number of leading pairs with ``pos_a < max_pos_a`` and ``pos_b < max_pos_b``.

        Positions are increasing in both models, so the pairs that fit a window of the first
        ``max_pos_a`` / ``max_pos_b`` tokens are a prefix of the pair list.
        """
        na = int(np.searchsorted(self.pos_a, max_pos_a, side="left"))
        nb = int(np.searchsorted(self.pos_b, max_pos_b, side="left"))
        return min(na, nb)


def content_of(text: str, spans: Sequence[Span]) -> str:
    """The concatenation of ``text[start:end]`` over the spans."""
    return "".join(text[s:e] for s, e in spans)


def _check_spans(spans: Sequence[Span], text_len: int | None, what: str) -> None:
    prev = 0
    for s, e in spans:
        if s < prev or e < s or (text_len is not None and e > text_len):
            raise CrossdiffError(
                f"{what}: spans must be sorted, non-overlapping and inside the text "
                f"(length {text_len}); got {list(spans)}"
            )
        prev = e


def identity_segments(spans: Sequence[Span]) -> list[Segment]:
    """Segments for renderings whose content spans hold the common content verbatim."""
    out: list[Segment] = []
    pos = 0
    for s, e in spans:
        if e > s:
            out.append(Segment(s, e, pos))
            pos += e - s
    return out


def common_segments(
    text_a: str,
    spans_a: Sequence[Span],
    text_b: str,
    spans_b: Sequence[Span],
    dropped_a: Sequence[int] = (),
    dropped_b: Sequence[int] = (),
) -> tuple[list[Segment], list[Segment], str, bool]:
    """Match the content spans of two renderings, message by message.

    Spans are matched in order. Equal texts are common verbatim; texts equal up to surrounding
    whitespace (a template that trims) share their stripped core; at the first span that
    differs otherwise (or where one rendering has more spans), matching stops. Messages a
    template dropped (``dropped_a`` / ``dropped_b``: message indices) are not common content:
    they are skipped, and matching goes on with the next message.

    Returns ``(segments_a, segments_b, common_content, complete)``.
    """
    _check_spans(spans_a, len(text_a), "model A content spans")
    _check_spans(spans_b, len(text_b), "model B content spans")
    seg_a: list[Segment] = []
    seg_b: list[Segment] = []
    parts: list[str] = []
    pos = 0
    complete = len(spans_a) == len(spans_b)
    skip = set(dropped_a) | set(dropped_b)
    for i, ((sa, ea), (sb, eb)) in enumerate(zip(spans_a, spans_b)):
        if i in skip:
            continue
        ta, tb = text_a[sa:ea], text_b[sb:eb]
        if ta == tb:
            core, la, lb = ta, 0, 0
        elif ta.strip() == tb.strip():
            core = ta.strip()
            la = len(ta) - len(ta.lstrip())
            lb = len(tb) - len(tb.lstrip())
        else:
            complete = False
            break
        if core:
            seg_a.append(Segment(sa + la, sa + la + len(core), pos))
            seg_b.append(Segment(sb + lb, sb + lb + len(core), pos))
            parts.append(core)
            pos += len(core)
    return seg_a, seg_b, "".join(parts), complete


def _extended_stops(text: str, starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Each stop moved past the uncovered non-whitespace characters right after it."""
    n_chars = len(text)
    covered = np.zeros(n_chars + 1, dtype=np.int64)  # difference array of token coverage
    valid = (stops > starts) & (starts >= 0) & (stops <= n_chars)
    np.add.at(covered, starts[valid], 1)
    np.add.at(covered, stops[valid], -1)
    is_covered = np.cumsum(covered[:-1]) > 0
    blocks = is_covered | np.fromiter((c.isspace() for c in text), dtype=bool, count=n_chars)
    idx = np.arange(n_chars + 1, dtype=np.int64)
    nxt = np.where(np.append(blocks, True), idx, n_chars)
    nxt = np.minimum.accumulate(nxt[::-1])[::-1]  # first blocking char at or after each index
    return np.where((stops >= 0) & (stops <= n_chars), nxt[np.clip(stops, 0, n_chars)], stops)


_COMPOSED = {"NFD": "NFC", "NFKD": "NFKC"}


def _unsafe_splits(seq: str) -> list[int]:
    """Split points ``k`` (1..len-1) of a combining sequence where a normalizer moves a mark
    across ``k``: canonical ordering (``norm(seq[:k]) + norm(seq[k:]) != norm(seq)`` in NFD or
    NFKD), or, anywhere in the sequence, a composition with a mark that is not the next one
    (NFC turns ``a`` + U+0327 + U+0323 into ``ạ`` + U+0327). A composition with the very next
    mark (``e`` + U+0301) moves nothing: the end is extended over the mark no token covers;
    unless the left part changed length (NFKC's ``ﬁ`` + U+0323 is ``f`` + ``ị``, reported at the
    mark's place)."""

    def split_changes(form: str, k: int, whole: str) -> tuple[bool, bool]:
        left = unicodedata.normalize(form, seq[:k])
        return left + unicodedata.normalize(form, seq[k:]) != whole, len(left) != k

    out: set[int] = set()
    for form, composed in _COMPOSED.items():
        whole = unicodedata.normalize(form, seq)
        whole_c = unicodedata.normalize(composed, seq)
        if "".join(unicodedata.normalize(form, c) for c in whole_c) != whole:
            return list(range(1, len(seq)))
        for k in range(1, len(seq)):
            if split_changes(form, k, whole)[0] or all(split_changes(composed, k, whole_c)):
                out.add(k)
    return sorted(out)


def unstable_ends(text: str) -> np.ndarray:
    """True at each position ``e`` (0..len) inside a combining sequence (a character and the
    marks after it) where a normalizer moves a mark across ``e`` (canonical reordering, or a
    composition that skips a mark): a normalizing tokenizer's offsets there name the wrong
    characters."""
    n = len(text)
    out = np.zeros(n + 1, dtype=bool)
    if text.isascii():
        return out
    i = 0
    while i < n:
        if not unicodedata.combining(text[i]):
            i += 1
            continue
        j = i  # a run of marks text[i:j]; its starter (if any) is text[i - 1]
        while j < n and unicodedata.combining(text[j]):
            j += 1
        start = i - 1 if i > 0 else i
        for k in _unsafe_splits(text[start:j]):
            out[start + k] = True
        i = j
    return out


def candidate_ends(
    offsets: Sequence[Span],
    special_mask: Sequence[bool],
    segments: Sequence[Segment],
    content_spans: Sequence[Span] | None = None,
    text: str | None = None,
) -> tuple[np.ndarray, int]:
    """Common-content end offset of each token that may pair, -1 for the others.

    Returns ``(ends, n_content_tokens)``: ``ends[i]`` is the content coordinate at which token
    ``i`` ends if it is a candidate (see the module docstring), else -1; ``n_content_tokens``
    counts non-special tokens whose characters overlap ``content_spans`` (default: the
    segments), i.e. every token a perfect alignment would pair. With ``text`` (the rendered
    text the offsets point into), ends are extended over uncovered non-whitespace characters.
    """
    n = len(offsets)
    if len(special_mask) != n:
        raise CrossdiffError(
            f"special_mask has {len(special_mask)} entries for {n} tokens; they must match"
        )
    ends = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return ends, 0
    offs = np.asarray(offsets, dtype=np.int64).reshape(n, 2)
    starts, stops = offs[:, 0], offs[:, 1]
    special = np.asarray(special_mask, dtype=bool)
    nonempty = stops > starts
    # Safe boundary: every later token that consumed text starts at or after this end.
    big = np.iinfo(np.int64).max
    later_start = np.where(nonempty, starts, big)
    suffix_min = np.minimum.accumulate(later_start[::-1])[::-1]
    next_min = np.append(suffix_min[1:], big)
    safe = next_min >= stops
    eligible = safe & nonempty & ~special
    if text is not None:
        stops = _extended_stops(text, starts, stops)
        unstable = unstable_ends(text)
        in_text = (stops >= 0) & (stops <= len(text))
        eligible &= ~(in_text & unstable[np.clip(stops, 0, len(text))])

    segs = [g for g in segments if g.end > g.start]
    if segs:
        seg_start = np.array([g.start for g in segs], dtype=np.int64)
        seg_end = np.array([g.end for g in segs], dtype=np.int64)
        seg_common = np.array([g.common_start for g in segs], dtype=np.int64)
        # The segment whose (start, end] holds the token end: the last one with start < end.
        j = np.searchsorted(seg_start, stops, side="left") - 1
        jc = np.clip(j, 0, None)
        inside = (j >= 0) & (stops <= seg_end[jc]) & (stops > seg_start[jc])
        candidate = inside & eligible
        ends[candidate] = seg_common[jc[candidate]] + stops[candidate] - seg_start[jc[candidate]]

    spans = [(g.start, g.end) for g in segs] if content_spans is None else content_spans
    return ends, int(np.count_nonzero(content_token_mask(offsets, special_mask, spans)))


def content_token_mask(
    offsets: Sequence[Span], special_mask: Sequence[bool], content_spans: Sequence[Span]
) -> np.ndarray:
    """True for the non-special tokens that consumed at least one content character."""
    n = len(offsets)
    spans = [(s, e) for s, e in content_spans if e > s]
    if n == 0 or not spans:
        return np.zeros(n, dtype=bool)
    offs = np.asarray(offsets, dtype=np.int64).reshape(n, 2)
    starts, stops = offs[:, 0], offs[:, 1]
    sp = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    # A token overlaps a span when the first span ending after its start begins before its end.
    k = np.searchsorted(sp[:, 1], starts, side="right")
    kc = np.clip(k, 0, len(sp) - 1)
    overlaps = (k < len(sp)) & (sp[kc, 0] < stops) & (sp[kc, 1] > starts)
    return overlaps & (stops > starts) & ~np.asarray(special_mask, dtype=bool)


def _to_content(positions: np.ndarray, segments: Sequence[Segment], up: bool) -> np.ndarray:
    """Rendered positions as content coordinates: of the first content character at or after
    the position (``up``), or just past the last content character before it."""
    segs = [g for g in segments if g.end > g.start]
    if not segs:
        return np.zeros_like(positions)
    st = np.array([g.start for g in segs], dtype=np.int64)
    en = np.array([g.end for g in segs], dtype=np.int64)
    cs = np.array([g.common_start for g in segs], dtype=np.int64)
    if up:  # first segment ending after the position
        k = np.searchsorted(en, positions, side="right")
        kc = np.clip(k, 0, len(segs) - 1)
        total = cs[-1] + en[-1] - st[-1]
        return np.where(k < len(segs), cs[kc] + np.clip(positions - st[kc], 0, None), total)
    k = np.searchsorted(st, positions, side="left") - 1  # last segment starting before it
    kc = np.clip(k, 0, None)
    return np.where(k >= 0, cs[kc] + np.minimum(positions, en[kc]) - st[kc], 0)


def prefix_consistent(
    offsets: Sequence[Span],
    segments: Sequence[Segment],
    positions: np.ndarray,
    content_ends: np.ndarray,
) -> np.ndarray:
    """The self-check: True where token ``positions[i]`` and the tokens before it cover content
    characters before ``content_ends[i]`` only, and every later token covers characters at or
    after it only. Content no token covers (dropped or composed by a normalizer) is free. O(n).
    """
    n = len(offsets)
    positions = np.asarray(positions, dtype=np.int64)
    ends = np.asarray(content_ends, dtype=np.int64)
    if n == 0 or positions.size == 0:
        return np.ones(positions.shape, dtype=bool)
    offs = np.asarray(offsets, dtype=np.int64).reshape(n, 2)
    lo = _to_content(offs[:, 0], segments, up=True)
    hi = _to_content(offs[:, 1], segments, up=False)
    covers = (offs[:, 1] > offs[:, 0]) & (hi > lo)
    big = np.iinfo(np.int64).max
    read_to = np.maximum.accumulate(np.where(covers, hi, -1))  # furthest char read so far
    later = np.minimum.accumulate(np.where(covers, lo, big)[::-1])[::-1]
    later_from = np.append(later[1:], big)  # first char any later token reads
    return (read_to[positions] <= ends) & (later_from[positions] >= ends)


def align_segments(
    offsets_a: Sequence[Span],
    special_a: Sequence[bool],
    segments_a: Sequence[Segment],
    offsets_b: Sequence[Span],
    special_b: Sequence[bool],
    segments_b: Sequence[Segment],
    *,
    content_spans_a: Sequence[Span] | None = None,
    content_spans_b: Sequence[Span] | None = None,
    content_complete: bool = True,
    text_a: str | None = None,
    text_b: str | None = None,
) -> Alignment:
    """Pair tokens of A and B whose ends map to the same common-content offset."""
    ends_a, n_a = candidate_ends(offsets_a, special_a, segments_a, content_spans_a, text_a)
    ends_b, n_b = candidate_ends(offsets_b, special_b, segments_b, content_spans_b, text_b)
    idx_a = np.flatnonzero(ends_a >= 0)
    idx_b = np.flatnonzero(ends_b >= 0)
    # Candidate ends are strictly increasing within a model (a safe token's end is <= every
    # later start, hence < every later non-empty end), so the intersection keeps the order.
    common, ia, ib = np.intersect1d(ends_a[idx_a], ends_b[idx_b], return_indices=True)
    pos_a, pos_b = idx_a[ia], idx_b[ib]
    ok_a = prefix_consistent(offsets_a, segments_a, pos_a, common)
    ok_b = prefix_consistent(offsets_b, segments_b, pos_b, common)
    keep = ok_a & ok_b
    length = sum(g.end - g.start for g in segments_a)
    return Alignment(
        pos_a=pos_a[keep].astype(np.int32),
        pos_b=pos_b[keep].astype(np.int32),
        content_end=common[keep].astype(np.int64),
        content_tokens_a=n_a,
        content_tokens_b=n_b,
        content_length=int(length),
        content_complete=content_complete,
        dropped_end_a=common[~ok_a].astype(np.int64),
        dropped_end_b=common[~ok_b].astype(np.int64),
    )


def align(
    offsets_a: Sequence[Span],
    special_a: Sequence[bool],
    spans_a: Sequence[Span],
    offsets_b: Sequence[Span],
    special_b: Sequence[bool],
    spans_b: Sequence[Span],
    *,
    text_a: str | None = None,
    text_b: str | None = None,
) -> Alignment:
    """Pair tokens of A and B that end at the same content offset.

    For renderings whose content spans select the very same content text (checked by
    :func:`align_rendered`, which also handles templates that trim messages). Pass the rendered
    texts to extend ends over characters no token covers (see the module docstring).
    """
    _check_spans(spans_a, None, "model A content spans")
    _check_spans(spans_b, None, "model B content spans")
    return align_segments(
        offsets_a,
        special_a,
        identity_segments(spans_a),
        offsets_b,
        special_b,
        identity_segments(spans_b),
        content_spans_a=spans_a,
        content_spans_b=spans_b,
        text_a=text_a,
        text_b=text_b,
    )


class _Rendered(Protocol):
    text: str
    content_spans: list[Span]
    # optional: ``dropped`` (indices of messages the template did not write)


class _Tokenized(Protocol):
    offsets: list[Span]
    special_mask: list[bool]


def align_rendered(
    rendered_a: _Rendered,
    tokens_a: _Tokenized,
    rendered_b: _Rendered,
    tokens_b: _Tokenized,
) -> Alignment:
    """Align two renderings of one document (``RenderedText`` / ``TokenizedText`` objects).

    Messages are matched span by span (:func:`common_segments`); coverage counts every token
    that overlaps a content span, so text one template dropped shows up as lower coverage.
    """
    seg_a, seg_b, _, complete = common_segments(
        rendered_a.text,
        rendered_a.content_spans,
        rendered_b.text,
        rendered_b.content_spans,
        getattr(rendered_a, "dropped", ()),
        getattr(rendered_b, "dropped", ()),
    )
    return align_segments(
        tokens_a.offsets,
        tokens_a.special_mask,
        seg_a,
        tokens_b.offsets,
        tokens_b.special_mask,
        seg_b,
        content_spans_a=rendered_a.content_spans,
        content_spans_b=rendered_b.content_spans,
        content_complete=complete,
        text_a=rendered_a.text,
        text_b=rendered_b.text,
    )
