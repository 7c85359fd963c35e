"""What each model reads of one document, and which of its positions pair: the windows.

A document is rendered by each model its own way (plain text, or the chat through its own chat
template), tokenized with offsets, and aligned (:mod:`crossdiff.align`); this module turns that
into :class:`Window` objects (token ids, paired positions, spans) and the document's record for
the store's documents file (:class:`DocumentPlan`). It runs no model: the engine
(:mod:`crossdiff.harvest.engine`) batches the windows and captures their rows.

Long documents: a text longer than ``max_seq_len`` tokens (in either model) is split into
windows at a *paired* position, so both models' windows end after the same content; the next
window starts with that content's remainder as a fresh document (BOS again, no context from the
previous window). Each window's tokens are an exact prefix of what the model would read for the
remainder, because tokenization only looks at text ending well past the window (at least
``WINDOW_MARGIN`` tokens further). Chats are not split: a chat is truncated after
``max_seq_len`` tokens (its record says so).

Decision pairs (``decision_pairs=True``): a chat that ends with a user turn is a prompt, and
what a model does with it is decided at the last token of its *generation prompt* (SmolLM2's
``<|im_start|>assistant\n``, Gemma's ``<start_of_turn>model\n``), after all the content. Such a
chat is then rendered with each model's generation prompt, and the last token of each becomes
one extra pair after the content pairs: both models have read the whole prompt and are about to
answer, although they read different template text. Its ``content_end`` is the content's end
(equal to the last content pair's) and the window's record names it (``decision_pair``: the
two positions), so readers can tell it from content pairs. Without a decision pair the last
stored position of a prompt is its last content token, where a model does not yet know the
turn has ended.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from crossdiff.align import Alignment, align_rendered, content_token_mask
from crossdiff.errors import CrossdiffError

if TYPE_CHECKING:
    from crossdiff.models import LoadedModel, RenderedText, TokenizedText

WINDOW_MARGIN = 16  # tokens of look-ahead past a window's end, so its tokenization is final
CHARS_PER_TOKEN_GUESS = 6  # first guess of how much text fills a window (doubled if short)


@dataclass
class Window:
    """One window of one document: what each model reads, and the pairs in it."""

    doc_index: int
    window: int
    content_start: int  # common-content offset of the window's start within the document
    ids_a: list[int]
    ids_b: list[int]
    pos_a: np.ndarray
    pos_b: np.ndarray
    content_end: np.ndarray  # in document content coordinates
    span_a: np.ndarray  # (n, 2) token spans in the window's rendered text
    span_b: np.ndarray
    record: dict[str, Any]  # the window's entry in the document record


@dataclass
class DocumentPlan:
    """A document's windows and its record for the store's documents file."""

    record: dict[str, Any]
    windows: list[Window] = field(default_factory=list)


def _side_record(
    rendered: RenderedText, tokens: TokenizedText, n_used: int, n_content: int
) -> dict[str, Any]:
    """What one model read in a window: the rendered text up to its last used token."""
    cut = max((e for _, e in tokens.offsets[:n_used]), default=0)
    spans = [[s, min(e, cut)] for s, e in rendered.content_spans if s < cut]
    return {
        "text": rendered.text[:cut],
        "content_spans": spans,
        "input_ids": list(tokens.input_ids[:n_used]),
        "content_tokens": n_content,
    }


def _make_window(
    doc_index: int,
    k: int,
    content_start: int,
    al: Alignment,
    n: int,
    ra: RenderedText,
    ta: TokenizedText,
    rb: RenderedText,
    tb: TokenizedText,
    final: bool,
    pair_positions: str = "all",
    decision: tuple[int, int] | None = None,
) -> Window:
    """Window of the first ``n`` pairs; a final window counts its trailing content tokens too.
    With ``pair_positions="word_end"`` only the pairs at word ends become rows (the window
    still reads, and counts, the tokens up to the n-th pair). ``decision``: the positions of a
    decision pair (module docstring), appended after the content pairs."""
    pos_a, pos_b = al.pos_a[:n], al.pos_b[:n]
    used_a, used_b = int(pos_a[-1]) + 1, int(pos_b[-1]) + 1
    if decision is not None:
        used_a, used_b = decision[0] + 1, decision[1] + 1
    mask_a = content_token_mask(ta.offsets, ta.special_mask, ra.content_spans)
    mask_b = content_token_mask(tb.offsets, tb.special_mask, rb.content_spans)
    count_a = int(mask_a.sum() if final else mask_a[:used_a].sum())
    count_b = int(mask_b.sum() if final else mask_b[:used_b].sum())
    last = int(al.content_end[n - 1])  # self-check drops inside the window (all, if final)
    drop_a = int(al.dropped_a if final else np.count_nonzero(al.dropped_end_a <= last))
    drop_b = int(al.dropped_b if final else np.count_nonzero(al.dropped_end_b <= last))
    offs_a = np.asarray(ta.offsets, dtype=np.int32).reshape(-1, 2)
    offs_b = np.asarray(tb.offsets, dtype=np.int32).reshape(-1, 2)
    content_end = al.content_end[:n]
    if pair_positions == "word_end":
        keep = word_end_mask(ra, offs_a[pos_a][:, 1])
        pos_a, pos_b, content_end = pos_a[keep], pos_b[keep], content_end[keep]
    removed = n - len(pos_a)
    if decision is not None:
        pos_a, pos_b = np.append(pos_a, decision[0]), np.append(pos_b, decision[1])
        content_end = np.append(content_end, al.content_end[n - 1])
    record = {
        "content_start": content_start,
        "pairs": len(pos_a),
        "a": _side_record(ra, ta, used_a, count_a),
        "b": _side_record(rb, tb, used_b, count_b),
    }
    if decision is not None:
        record["decision_pair"] = [int(decision[0]), int(decision[1])]
    if removed:
        record["pairs_removed"] = removed
    if drop_a or drop_b:
        record["pairs_dropped"] = {"a": drop_a, "b": drop_b}
    return Window(
        doc_index=doc_index,
        window=k,
        content_start=content_start,
        ids_a=list(ta.input_ids[:used_a]),
        ids_b=list(tb.input_ids[:used_b]),
        pos_a=pos_a.copy(),
        pos_b=pos_b.copy(),
        content_end=content_end + content_start,
        span_a=offs_a[pos_a],
        span_b=offs_b[pos_b],
        record=record,
    )


def word_end_mask(rendered: RenderedText, ends: np.ndarray) -> np.ndarray:
    """Whether each pair end (a character offset in ``rendered.text``) is a word end: the next
    character is not a letter or digit, or it is not content (the end of a message, of the
    window's text). Stricter than the analysis's ``word_internal`` descriptor, which also
    asks for a letter or digit before the end: a pair ending at ``(`` before ``a`` is not
    word-internal but is not a word end either, so it is dropped here."""
    text = rendered.text
    spans = sorted(rendered.content_spans)
    starts = np.asarray([s for s, _ in spans], dtype=np.int64)
    stops = np.asarray([e for _, e in spans], dtype=np.int64)
    keep = np.ones(len(ends), dtype=bool)
    for i, e in enumerate(np.asarray(ends, dtype=np.int64).tolist()):
        j = int(np.searchsorted(starts, e, side="left")) - 1  # the last span starting before e
        if j >= 0 and e < stops[j] and e < len(text) and text[e].isalnum():
            keep[i] = False
    return keep


def decision_positions(
    al: Alignment,
    ta: TokenizedText,
    ra: RenderedText,
    tb: TokenizedText,
    rb: RenderedText,
    max_seq_len: int,
) -> tuple[int, int] | None:
    """The decision pair of a prompt rendered with its generation prompts: each model's last
    token, when it is template text after every content pair and within ``max_seq_len``
    (otherwise None: a template without a generation prompt, or a prompt too long)."""
    if not al.n_pairs or not len(ta) or not len(tb):
        return None
    da, db = len(ta) - 1, len(tb) - 1
    if max(len(ta), len(tb)) > max_seq_len or da <= al.pos_a[-1] or db <= al.pos_b[-1]:
        return None
    if content_token_mask(ta.offsets, ta.special_mask, ra.content_spans)[da]:
        return None
    if content_token_mask(tb.offsets, tb.special_mask, rb.content_spans)[db]:
        return None
    return da, db


def ends_with_user_turn(messages: Any) -> bool:
    """Whether a chat is a prompt: its last message is a user turn (what decision pairs need)."""
    last = messages[-1] if isinstance(messages, list) and messages else None
    return isinstance(last, dict) and last.get("role") == "user"


def literal_special(lm: LoadedModel, rendered: RenderedText, tokens: TokenizedText) -> int | None:
    """Index of the first special token read from content, i.e. the literal string of a
    control token written in a message or text (``<|im_start|>``), or None."""
    mask = np.asarray(tokens.special_mask, dtype=bool)
    if not mask.any():
        return None
    inside = content_token_mask(tokens.offsets, [False] * len(tokens), rendered.content_spans)
    for i in np.flatnonzero(mask & inside).tolist():
        s, e = tokens.offsets[i]
        literal = lm.tokenizer.convert_ids_to_tokens(int(tokens.input_ids[i]))
        if isinstance(literal, str) and rendered.text[s:e].strip() == literal.strip():
            return i  # not an unk standing for characters the vocabulary lacks
    return None


def _cut_at_literal_special(al: Alignment, n: int, specials: tuple[int | None, int | None]) -> int:
    """The number of the first ``n`` pairs before either model read a literal special."""
    cut = n
    for pos, first in ((al.pos_a, specials[0]), (al.pos_b, specials[1])):
        if first is not None:
            cut = min(cut, int(np.searchsorted(pos[:n], first, side="left")))
    return cut


def plan_document(
    doc_index: int,
    doc: Any,
    lm_a: LoadedModel,
    lm_b: LoadedModel,
    max_seq_len: int,
    literal_specials: str = "cut",
    pair_positions: str = "all",
    decision_pairs: bool = False,
) -> DocumentPlan:
    """Render, tokenize, align and window one corpus document (see the module docstring)."""
    plan = DocumentPlan(_new_record(doc_index, doc))
    planner = _Planner(
        lm_a, lm_b, max_seq_len, literal_specials, pair_positions, plan, decision_pairs
    )
    if doc.messages is not None:
        planner.plan_chat(doc_index, doc.messages)
    else:
        planner.plan_text(doc_index, doc.text or "")
    _add_window_totals(plan)
    return plan


def _new_record(doc_index: int, doc: Any) -> dict[str, Any]:
    """A document's record before any window: what it is, with zero counts."""
    record: dict[str, Any] = {
        "index": doc_index,
        "doc_id": str(doc.doc_id),
        "source": getattr(doc, "source", None),
        "text": doc.text if doc.messages is None else None,
        "messages": doc.messages,
        "windows": [],
        "content_tokens_a": 0,
        "content_tokens_b": 0,
        "pairs": 0,
        "truncated": False,
        "skipped": None,
    }
    if getattr(doc, "repaired", 0):
        record["repaired"] = int(doc.repaired)
    return record


@dataclass
class _Planner:
    """The windowing of one document: both models, the policies, and the plan being filled
    (its record takes the notes: truncation, a cut at a literal special, template quirks)."""

    lm_a: LoadedModel
    lm_b: LoadedModel
    max_seq_len: int
    literal_specials: str
    pair_positions: str
    plan: DocumentPlan
    decision_pairs: bool = False

    def cut(
        self,
        al: Alignment,
        n: int,
        ra: RenderedText,
        ta: TokenizedText,
        rb: RenderedText,
        tb: TokenizedText,
    ) -> int:
        """``n`` lowered to the pairs before a literal special (policy "cut")."""
        if self.literal_specials != "cut":
            return n
        first = (literal_special(self.lm_a, ra, ta), literal_special(self.lm_b, rb, tb))
        if first == (None, None):
            return n
        kept = _cut_at_literal_special(al, n, first)
        if kept < n:
            self.plan.record["note"] = (
                "pairs end at a special token's literal string in the content"
            )
        return kept

    def plan_chat(self, doc_index: int, messages: Any) -> None:
        """A chat: one window through each model's chat template, truncated at max_seq_len."""
        record = self.plan.record
        prompt = self.decision_pairs and ends_with_user_turn(messages)
        try:
            ra = self.lm_a.render_chat(messages, add_generation_prompt=prompt)
            rb = self.lm_b.render_chat(messages, add_generation_prompt=prompt)
        except CrossdiffError as exc:
            record["skipped"] = f"cannot render: {exc}"
            return
        ta, tb = self.lm_a.tokenize(ra), self.lm_b.tokenize(rb)
        al = align_rendered(ra, ta, rb, tb)
        n = al.prefix(self.max_seq_len, self.max_seq_len)
        record["truncated"] = n < al.n_pairs
        if not al.content_complete:
            record["note"] = "the templates disagree on message content after some point"
        for side, r in (("A", ra), ("B", rb)):
            if r.dropped:
                record["note"] = (
                    f"model {side}'s chat template drops message(s) {list(r.dropped)}; "
                    "they are not common content"
                )
        n_cut = self.cut(al, n, ra, ta, rb, tb)
        if n_cut:
            final = n == al.n_pairs or n_cut < n
            decision = None
            if prompt and n_cut == al.n_pairs:
                decision = decision_positions(al, ta, ra, tb, rb, self.max_seq_len)
            if prompt and decision is None:
                record["note"] = (
                    "no decision pair: the prompt is cut, or a template has no generation prompt"
                )
            self.plan.windows.append(
                _make_window(
                    doc_index, 0, 0, al, n_cut, ra, ta, rb, tb, final, self.pair_positions, decision
                )
            )

    def plan_text(self, doc_index: int, text: str) -> None:
        """A plain text: windows split at paired positions until the text is read."""
        start, k = 0, 0
        while start < len(text):
            more, ra, ta, rb, tb = self.read_piece(text, start)
            al = align_rendered(ra, ta, rb, tb)
            n = al.prefix(self.max_seq_len, self.max_seq_len)
            n_cut = self.cut(al, n, ra, ta, rb, tb)
            if n_cut == 0:
                break
            final = (not more and n == al.n_pairs) or n_cut < n
            self.plan.windows.append(
                _make_window(
                    doc_index, k, start, al, n_cut, ra, ta, rb, tb, final, self.pair_positions
                )
            )
            if final:
                break
            start += int(al.content_end[n - 1])
            k += 1

    def read_piece(
        self, text: str, start: int
    ) -> tuple[bool, RenderedText, TokenizedText, RenderedText, TokenizedText]:
        """The text from ``start`` rendered and tokenized by both models, the piece grown until
        both windows are final (``WINDOW_MARGIN`` tokens past them) or the text ends; and
        whether text remains past the piece."""
        chunk = self.max_seq_len * CHARS_PER_TOKEN_GUESS
        while True:
            piece = text[start : start + chunk]
            more = start + chunk < len(text)
            ra, rb = self.lm_a.render_text(piece), self.lm_b.render_text(piece)
            ta, tb = self.lm_a.tokenize(ra), self.lm_b.tokenize(rb)
            need = self.max_seq_len + WINDOW_MARGIN
            if not more or (len(ta) >= need and len(tb) >= need):
                return more, ra, ta, rb, tb
            chunk *= 2


def _add_window_totals(plan: DocumentPlan) -> None:
    """Sum the windows' entries into the document record (pairs, content tokens, drops)."""
    record = plan.record
    for w in plan.windows:
        record["windows"].append(w.record)
        record["content_tokens_a"] += w.record["a"]["content_tokens"]
        record["content_tokens_b"] += w.record["b"]["content_tokens"]
        record["pairs"] += len(w.pos_a)
        if w.record.get("pairs_removed"):
            record["pairs_removed"] = record.get("pairs_removed", 0) + w.record["pairs_removed"]
        for side in ("a", "b"):
            dropped = w.record.get("pairs_dropped", {}).get(side, 0)
            if dropped:
                record[f"pairs_dropped_{side}"] = record.get(f"pairs_dropped_{side}", 0) + dropped
