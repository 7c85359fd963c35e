"""How one model's windows become forward passes: padded batches, or packed rows.

A block's windows differ in length (a document's last window, chats of a few dozen tokens).
Run as padded batches (:func:`token_batches`), short windows pay either in padding or in
extra passes, and on a CPU a pass has a fixed cost of ~50 tokens' worth (streaming the
weights; :data:`FORWARD_COST_TOKENS`). *Packing* (:func:`pack_rows`) places several windows
in one row of up to ``row_len`` tokens, each with its own positions counting from 0; the
model then attends only within each window. That is transformers' packed-sequence format:
with no attention mask, ``masking_utils.find_packed_sequence_indices`` reads the sequence
boundaries from ``position_ids`` and the causal mask becomes block-diagonal, for eager, SDPA
and flex attention, sliding windows included. The rows' hidden states equal those of the
windows run alone up to float noise (the same as batching them with padding gives).

An architecture whose attention does not build its mask that way would let a window attend
to the one before it, so :func:`packing_works` checks each model once before the harvest
packs its windows: the second of two packed texts must match that text run alone far more
closely than the two texts run as one sequence match it (:data:`PACK_CHECK_MARGIN`);
otherwise the model gets padded batches. Of the architectures the tests cover, all pack but
GPT-OSS, whose transformers 5.24 model builds its masks without the position ids.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

    from crossdiff.models import LoadedModel

FORWARD_COST_TOKENS = 64
"""What one more forward pass costs, in padded tokens' worth of compute: the fixed part of a
pass (mostly streaming the weights) that a smaller batch does not shrink. Measured on the
built-in pair on 2 CPU cores (bf16, early exit; ``scripts/pass_cost.py``): 22-28 ms for 1-2
rows of 8 tokens, against ~0.5 ms a token in full batches, i.e. ~50 tokens' worth. It only
decides how short rows are grouped; a full-length batch is ``batch_size`` rows whatever it
is."""

PACK_CHECK_MARGIN = 4.0
""":func:`packing_works` accepts a model when running the second text without the packed
boundary changes its hidden states at least this many times more than packing does. Measured
on the built-in pair (bf16, middle layer): packing differs from the text alone by 1.8%
(SmolLM2) and 1.0% (Gemma) relative L2, as much as a padded batch does (1.7%, 1.0%), while
reading the first text too changes them by 99.6% and 12.7%."""

PACK_CHECK_TEXTS = (
    "The river flows north through the old town, past the mill.",
    "Tomorrow we will bake bread and share it with the neighbours.",
)


def _pad_batch(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def token_batches(
    lengths: list[int], budget: int, pass_cost: int = FORWARD_COST_TOKENS
) -> list[list[int]]:
    """Batches of indices into ``lengths``, longest first, each padded to at most ``budget``.

    The items are sorted by length (longest first, ties in order) and cut into consecutive
    batches whose rows x longest row stay within ``budget`` tokens (an item longer than
    ``budget`` gets a batch of its own), choosing the cuts that minimize the padded tokens run
    plus ``pass_cost`` per forward pass (an exact dynamic programme over the sorted list). So a
    batch takes a shorter item, and pads it, only when that saves a pass; with
    ``budget = batch_size x max_seq_len`` full-length items go ``batch_size`` to a pass, while
    short ones share one without much padding.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    sizes = [lengths[i] for i in order]
    n = len(sizes)
    best = [0] * (n + 1)  # best[j]: least cost of the first j items
    cut = [0] * (n + 1)  # cut[j]: where the last batch of the first j items starts
    for j in range(1, n + 1):
        best[j] = best[j - 1] + sizes[j - 1] + pass_cost
        cut[j] = j - 1
        i = j - 2
        while i >= 0 and (j - i) * sizes[i] <= budget:
            cost = best[i] + (j - i) * sizes[i] + pass_cost
            if cost < best[j]:  # ties: the later cut (full batches first)
                best[j], cut[j] = cost, i
            i -= 1
    batches: list[list[int]] = []
    j = n
    while j > 0:
        batches.append(order[cut[j] : j])
        j = cut[j]
    return batches[::-1]


def pack_rows(lengths: list[int], row_len: int) -> list[list[int]]:
    """Indices into ``lengths`` grouped into rows of at most ``row_len`` tokens (first-fit
    decreasing: longest first, each into the first row with room, else a new row), each row's
    windows in the order they were placed. An item longer than ``row_len`` gets its own row."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    room: list[int] = []
    for i in order:
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(row_len - lengths[i])
    return rows


@dataclass
class ForwardBatch:
    """One forward pass of one model, and where each window's rows are in its output."""

    ids: torch.Tensor
    """(R, T) token ids, padding included."""
    attention_mask: torch.Tensor | None
    """(R, T) for a padded batch (one window a row); None when packed."""
    position_ids: torch.Tensor | None
    """(R, T) when packed: each window, and each row's padding, counts from 0."""
    windows: list[int]
    """The windows in this pass, in the order their rows are gathered."""
    at: tuple[torch.Tensor, torch.Tensor]
    """(row, column) of every captured position, window after window."""
    counts: list[int]
    """Captured positions of each window of ``windows``."""
    fill: list[int]
    """Window tokens at the start of each row (the rest of the row is padding)."""

    @property
    def real_tokens(self) -> int:
        """Tokens of the windows (``ids.numel()`` minus the padding)."""
        return sum(self.fill)

    def run(self, lm: LoadedModel, layer: int) -> torch.Tensor:
        """The model's hidden states after ``layer`` for the whole pass, (R, T, d_model)."""
        return lm.capture(self.ids, self.attention_mask, layer, position_ids=self.position_ids)

    def gather(self, hidden: torch.Tensor) -> torch.Tensor:
        """The captured rows from the pass's hidden states, window after window (on the
        hidden states' device; ``.split(self.counts)`` gives each window's)."""
        rows, cols = (t.to(hidden.device) for t in self.at)
        return hidden[rows, cols]


def _gather_index(
    rows_of: list[list[int]], offsets: list[list[int]], positions: list[np.ndarray]
) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    r = [np.full(len(positions[w]), i) for i, row in enumerate(rows_of) for w in row]
    c = [positions[w] + off for row, offs in zip(rows_of, offsets) for w, off in zip(row, offs)]
    if not r:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return (
        torch.from_numpy(np.concatenate(r).astype(np.int64)),
        torch.from_numpy(np.concatenate(c).astype(np.int64)),
    )


def padded_batch(
    seqs: list[list[int]], positions: list[np.ndarray], windows: list[int], pad_id: int
) -> ForwardBatch:
    """One window a row, right-padded, with an attention mask."""
    ids, mask = _pad_batch([seqs[w] for w in windows], pad_id)
    rows_of = [[w] for w in windows]
    return ForwardBatch(
        ids=ids,
        attention_mask=mask,
        position_ids=None,
        windows=list(windows),
        at=_gather_index(rows_of, [[0]] * len(windows), positions),
        counts=[len(positions[w]) for w in windows],
        fill=[len(seqs[w]) for w in windows],
    )


def packed_batch(
    seqs: list[list[int]], positions: list[np.ndarray], rows_of: list[list[int]], pad_id: int
) -> ForwardBatch:
    """Several windows a row, each with positions from 0; a row's padding is a sequence of its
    own at the end (the causal mask keeps it out of the windows before it)."""
    import torch

    fill = [sum(len(seqs[w]) for w in row) for row in rows_of]
    width = max(fill)
    ids = torch.full((len(rows_of), width), pad_id, dtype=torch.long)
    pos = torch.zeros((len(rows_of), width), dtype=torch.long)
    offsets: list[list[int]] = []
    for r, row in enumerate(rows_of):
        off, offs = 0, []
        for w in row:
            n = len(seqs[w])
            ids[r, off : off + n] = torch.tensor(seqs[w], dtype=torch.long)
            pos[r, off : off + n] = torch.arange(n)
            offs.append(off)
            off += n
        pos[r, off:] = torch.arange(width - off)
        offsets.append(offs)
    windows = [w for row in rows_of for w in row]
    return ForwardBatch(
        ids=ids,
        attention_mask=None,
        position_ids=pos,
        windows=windows,
        at=_gather_index(rows_of, offsets, positions),
        counts=[len(positions[w]) for w in windows],
        fill=fill,
    )


def plan_batches(
    seqs: list[list[int]],
    positions: list[np.ndarray],
    *,
    batch_size: int,
    row_len: int,
    pad_id: int,
    pack: bool,
) -> list[ForwardBatch]:
    """One model's forward passes over ``seqs`` (every window in exactly one pass).

    Padded: :func:`token_batches` over the windows under ``batch_size x row_len`` padded
    tokens. Packed: the windows are packed into rows of ``row_len`` (:func:`pack_rows`), then
    the rows are batched the same way, so full rows go ``batch_size`` to a pass and the short
    rows left over share one.
    """
    budget = batch_size * row_len
    if not pack:
        return [
            padded_batch(seqs, positions, idx, pad_id)
            for idx in token_batches([len(s) for s in seqs], budget)
        ]
    rows = pack_rows([len(s) for s in seqs], row_len)
    fill = [sum(len(seqs[w]) for w in row) for row in rows]
    return [
        packed_batch(seqs, positions, [rows[r] for r in idx], pad_id)
        for idx in token_batches(fill, budget)
    ]


_CHECKED: weakref.WeakKeyDictionary[Any, dict[int, bool]] = weakref.WeakKeyDictionary()
"""packing_works' verdicts by model (its transformers module) and layer: a model is checked
once however many harvests it runs (a benchmark runs several)."""


def packing_works(lm: LoadedModel, layer: int) -> bool:
    """Whether ``lm`` runs packed rows as separate sequences (see the module docstring); the
    verdict is kept for the loaded model."""
    verdicts = _CHECKED.setdefault(lm.model, {})
    if layer not in verdicts:
        verdicts[layer] = _check_packing(lm, layer)
    return verdicts[layer]


def _check_packing(lm: LoadedModel, layer: int) -> bool:
    import torch

    first, second = (lm.tokenizer(t)["input_ids"] for t in PACK_CHECK_TEXTS)
    alone = lm.capture(torch.tensor([second]), None, layer)[0].float()
    ids = torch.tensor([first + second])
    pos = torch.tensor([list(range(len(first))) + list(range(len(second)))])
    packed = lm.capture(ids, None, layer, position_ids=pos)[0, len(first) :].float()
    joined = lm.capture(ids, None, layer)[0, len(first) :].float()
    alone = alone.to(packed.device)

    def change(x: torch.Tensor) -> float:
        return float(((x - alone).norm(dim=-1) / alone.norm(dim=-1).clamp_min(1e-12)).max())

    return change(packed) * PACK_CHECK_MARGIN < change(joined)
