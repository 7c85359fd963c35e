"""Descriptors of the tokenization at each stored position, to tell tokenizer artifacts from
concepts.

Why: across tokenizers, a feature can be "exclusive" to model A because A's vocabulary splits a
word where B's does not: an A feature that predicts the continuation of ``Marg|all`` has nothing
to match in B, whose token ends elsewhere. That is a real difference, but of tokenization, not
of behaviour, and an auditor should not read it first. On the default pair 13 of SmolLM2's top
20 exclusive features had 35-85% of their top examples at word-internal positions against a
base rate of a few percent.

Per stored pair (one row of the store), from the provenance columns and the documents alone
(never the activations), in both models' tokenizations:

================  ==========================================================================
``word_internal`` the pair's end falls inside a word: the characters before and after it are
                  both letters or digits (the shared end is not a word boundary)
``len_a/len_b``   the token's length in characters (its span in that model's rendered text)
``same_start``    both models' tokens start at the same character (equal lengths: they end at
                  the same offset), i.e. the other model's previous boundary is at the same
                  place
``gap``           characters since the previous stored pair of the same window: the distance
                  from the last boundary both tokenizers share
``pieces_a/_b``   tokens that model's tokenizer spent since the last stored pair that ended at a
                  word boundary (how many pieces the word has taken so far)
``later_a/_b``    that model's token starts inside a word (a letter or digit on both sides of
                  its start): it is a later piece of a word its tokenizer split (``S|inking``).
                  A store harvested at word ends only (``pair_positions="word_end"``) has no
                  word-internal ends, but its features can still read such pieces
================  ==========================================================================

Where each pair lies (not tokenization, but read from the same provenance, so kept here):
``role`` is 0 for plain text and 1/2/3 for a chat's system/user/assistant message (the message
whose content holds the pair's end, in model A's rendering), 4 for a prompt's decision pair.

``design`` turns them into a small regression design (log-scaled counts, flags), which the
exclusivity check adds to the other model's prediction so that "exclusive" means "exclusive
beyond tokenization" (:mod:`crossdiff.analysis.check`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from crossdiff.store import ActivationStore

DESCRIPTORS = (
    "word_internal",
    "same_start",
    "len_a",
    "len_b",
    "gap",
    "pieces_a",
    "pieces_b",
    "later_a",
    "later_b",
    "role",
)
ROLES = ("text", "system", "user", "assistant", "decision")
"""``role`` codes: plain text, then a chat's message roles, then a prompt's decision pair
(the generation prompt's last token: ``HarvestConfig.decision_pairs``)."""
DESIGN_COLUMNS = (
    "word_internal",
    "same_start",
    "log_len_a",
    "log_len_b",
    "log_gap",
    "log_pieces_a",
    "log_pieces_b",
    "internal_x_pieces",
)
"""The regressors (an intercept is added by the solver)."""
CAP = 64
"""Lengths, gaps and piece counts are capped here (a few very long tokens or gaps would
otherwise dominate the log-scaled regressors)."""


def _inside_word(text: str, offset: int) -> bool:
    """Whether character offset ``offset`` of ``text`` falls inside a word: a letter or digit
    on both sides. A pair ending there is ``word_internal``; a token starting there is a later
    piece of a split word (``later_a``/``later_b``)."""
    return 0 < offset < len(text) and text[offset - 1].isalnum() and text[offset].isalnum()


def window_roles(record: dict, window: dict) -> tuple[np.ndarray, np.ndarray]:
    """(starts, role codes) of the content spans of one window in model A's rendering.

    A template may drop a message (a system prompt it has no place for) and a window may stop
    inside a chat, so spans are matched to messages by content, in order, not by index."""
    side = window.get("a", {})
    spans = side.get("content_spans") or []
    text = side.get("text", "")
    messages = record.get("messages") or []
    codes = []
    p = 0
    for s, e in spans:
        piece = text[s:e].strip()[:32]
        q = p
        while q < len(messages) and piece and not messages[q]["content"].strip().startswith(piece):
            q += 1
        if q < len(messages):
            p = q
        role = messages[p]["role"] if p < len(messages) else "user"
        codes.append(ROLES.index(role) if role in ROLES else 2)
        p += 1
    starts = np.asarray([s for s, _ in spans], dtype=np.int64)
    return starts, np.asarray(codes, dtype=np.int8)


def _gaps_and_pieces(
    doc: np.ndarray,
    win: np.ndarray,
    end: np.ndarray,
    pos: dict[str, np.ndarray],
    internal: np.ndarray,
    decision: np.ndarray,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per row (in store order): ``gap``, the content characters since the previous row of its
    window, and per model the tokens spent since the last row that ended at a word boundary
    (``pieces``). A decision row is one piece, as far from a shared boundary as the content
    row before it."""
    n = doc.shape[0]
    gap = np.full(n, CAP, dtype=np.int64)
    pieces = {m: np.ones(n, dtype=np.int64) for m in "ab"}
    if n < 2:
        return gap, pieces
    same_window = np.zeros(n, dtype=bool)
    same_window[1:] = (doc[1:] == doc[:-1]) & (win[1:] == win[:-1])
    gap[1:] = np.where(same_window[1:], np.clip(end[1:] - end[:-1], 0, CAP), CAP)
    last_boundary = {m: -1 for m in "ab"}  # the last row before i that ended at a word boundary
    for i in range(n):
        if not same_window[i]:
            last_boundary = {m: -1 for m in "ab"}
        for m in "ab":
            j = last_boundary[m]
            pieces[m][i] = pos[m][i] - pos[m][j] if j >= 0 else min(pos[m][i] + 1, CAP)
            if decision[i]:
                pieces[m][i] = 1
        if decision[i]:
            gap[i] = gap[i - 1] if same_window[i] else CAP
        if not internal[i]:
            last_boundary = {m: i for m in "ab"}
    return gap, pieces


def shard_descriptors(store: ActivationStore, k: int) -> dict[str, np.ndarray]:
    """Descriptors of every row of shard ``k`` (see module docstring), in row order."""
    from crossdiff.analysis.examples import iter_documents
    from crossdiff.store.shard import read_columns

    shard = store.manifest.shards[k]
    cols = read_columns(
        store.path / shard.file,
        ("doc_index", "window", "content_end", "pos_a", "pos_b", "span_a", "span_b"),
    )
    doc = cols["doc_index"].numpy()
    win = cols["window"].numpy()
    end = cols["content_end"].numpy()
    pos = {m: cols[f"pos_{m}"].numpy().astype(np.int64) for m in "ab"}
    span = {m: cols[f"span_{m}"].numpy().astype(np.int64) for m in "ab"}
    n = doc.shape[0]
    internal = np.zeros(n, dtype=bool)
    later = {m: np.zeros(n, dtype=bool) for m in "ab"}
    role = np.zeros(n, dtype=np.int8)
    decision = np.zeros(n, dtype=bool)
    if n:
        decision_pos: dict[tuple[int, int], int] = {}
        texts: dict[tuple[int, int], str] = {}
        texts_b: dict[tuple[int, int], str] = {}
        roles: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        for record in iter_documents(store, np.unique(doc)):
            for w, window in enumerate(record.get("windows") or []):
                key = (int(record["index"]), w)
                texts[key] = window.get("a", {}).get("text", "")
                texts_b[key] = window.get("b", {}).get("text", "")
                if window.get("decision_pair"):
                    decision_pos[key] = int(window["decision_pair"][0])
                if record.get("messages") is not None:
                    roles[key] = window_roles(record, window)
        for i in range(n):
            key = (int(doc[i]), int(win[i]))
            text = texts.get(key, "")
            e = int(span["a"][i, 1])
            decision[i] = decision_pos.get(key) == int(pos["a"][i])
            if decision[i]:  # it reads template text: a clean boundary, its own role
                role[i] = ROLES.index("decision")
                continue
            internal[i] = _inside_word(text, e)
            later["a"][i] = _inside_word(text, int(span["a"][i, 0]))
            later["b"][i] = _inside_word(texts_b.get(key, ""), int(span["b"][i, 0]))
            if key in roles:
                starts, codes = roles[key]
                j = int(np.searchsorted(starts, e, side="left")) - 1  # last span before e
                role[i] = codes[max(j, 0)] if codes.size else ROLES.index("user")
    len_a = np.clip(span["a"][:, 1] - span["a"][:, 0], 0, CAP)
    len_b = np.clip(span["b"][:, 1] - span["b"][:, 0], 0, CAP)
    gap, pieces = _gaps_and_pieces(doc, win, end, pos, internal, decision)
    return {
        "word_internal": internal,
        "same_start": len_a == len_b,
        "len_a": len_a,
        "len_b": len_b,
        "gap": gap,
        "pieces_a": np.clip(pieces["a"], 1, CAP),
        "pieces_b": np.clip(pieces["b"], 1, CAP),
        "later_a": later["a"],
        "later_b": later["b"],
        "role": role,
    }


class RowDescriptors:
    """Descriptors of any store rows, computed a shard at a time and kept for the pass (two
    small arrays per descriptor per shard; O(rows) bytes, ~15 bytes per row)."""

    def __init__(self, store: ActivationStore) -> None:
        self.store = store
        shards = store.manifest.shards
        self.ends = np.cumsum([s.rows for s in shards]) if shards else np.zeros(0, np.int64)
        self._cache: dict[int, dict[str, np.ndarray]] = {}

    def _shard(self, k: int) -> dict[str, np.ndarray]:
        if k not in self._cache:
            self._cache[k] = shard_descriptors(self.store, k)
        return self._cache[k]

    def rows(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Descriptors of global store rows ``rows``."""
        rows = np.asarray(rows, dtype=np.int64)
        shard_of = np.searchsorted(self.ends, rows, side="right")
        out: dict[str, np.ndarray] = {}
        for k in np.unique(shard_of):
            sel = np.flatnonzero(shard_of == k)
            start = int(self.ends[k] - self.store.manifest.shards[k].rows)
            d = self._shard(int(k))
            for name in DESCRIPTORS:
                if name not in out:
                    out[name] = np.zeros(rows.size, dtype=d[name].dtype)
                out[name][sel] = d[name][rows[sel] - start]
        return out


def design(desc: dict[str, np.ndarray]) -> torch.Tensor:
    """(n, len(DESIGN_COLUMNS)) float32 regressors from descriptors (no intercept)."""
    wi = desc["word_internal"].astype(np.float32)
    log = {k: np.log1p(desc[k].astype(np.float32)) for k in ("len_a", "len_b", "gap")}
    pa_, pb = (np.log1p(desc[f"pieces_{m}"].astype(np.float32) - 1) for m in "ab")
    cols = [
        wi,
        desc["same_start"].astype(np.float32),
        log["len_a"],
        log["len_b"],
        log["gap"],
        pa_,
        pb,
        wi * np.maximum(pa_, pb),
    ]
    return torch.from_numpy(np.stack(cols, axis=1))
