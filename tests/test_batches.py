"""How the harvest turns one model's windows into forward passes (``crossdiff.harvest.batches``).

Packed rows must give each window the hidden states it has alone (every tiny architecture the
harvest supports), every window must land in exactly one pass within the token budget, and a
model whose attention ignores the packed boundaries must be caught by the check and harvested
with padded batches instead, rows still exact.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from crossdiff.harvest import batches as batches_module
from crossdiff.harvest import harvest
from crossdiff.harvest.batches import (
    pack_rows,
    packed_batch,
    packing_works,
    padded_batch,
    plan_batches,
)
from test_harvest import check_hidden_states, config, write_corpus

pytestmark = pytest.mark.usefixtures("one_thread_module")

ARCHITECTURES = [
    ("gpt2", "bpe"),
    ("gemma3", "sentencepiece"),
    ("llama", "sentencepiece"),
    ("qwen3", "unigram"),
    ("qwen2", "bpe"),
    ("gpt_oss", "harmony"),
    ("qwen3_moe", "sentencepiece"),
]
NO_PACKING = {"gpt_oss"}
"""transformers 5.24's GPT-OSS builds its masks without the position ids, so it cannot tell
packed sequences apart: the check must catch it (and the harvest pads its batches)."""


def test_pack_rows_first_fit_decreasing() -> None:
    rng = np.random.default_rng(0)
    lengths = [int(n) for n in rng.integers(1, 257, size=300)] + [300]  # one over the row
    rows = pack_rows(lengths, 256)
    flat = [i for r in rows for i in r]
    assert sorted(flat) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in r) <= 256 or len(r) == 1 for r in rows)
    assert sum(lengths) / (256 * len(rows)) > 0.95  # rows nearly full
    assert pack_rows([10, 250, 6, 246], 256) == [[1, 2], [3, 0]]
    assert pack_rows([], 256) == []


def test_plan_batches_cover_each_window_once_within_the_budget() -> None:
    rng = np.random.default_rng(1)
    seqs = [list(range(int(n))) for n in rng.integers(3, 65, size=80)]
    positions = [np.arange(0, len(s), 2) for s in seqs]
    for pack in (False, True):
        batches = plan_batches(seqs, positions, batch_size=4, row_len=64, pad_id=0, pack=pack)
        assert sorted(w for b in batches for w in b.windows) == list(range(len(seqs)))
        assert all(b.ids.numel() <= 4 * 64 for b in batches)
        assert sum(b.real_tokens for b in batches) == sum(map(len, seqs))
        for b in batches:
            rows, cols = b.at
            assert len(rows) == sum(b.counts) == sum(len(positions[w]) for w in b.windows)
            assert (cols < torch.tensor(b.fill)[rows]).all()  # never a padding position
            # the gathered ids are each window's ids at its positions, window after window
            want = np.concatenate([np.asarray(seqs[w])[positions[w]] for w in b.windows])
            assert torch.equal(b.ids[rows, cols], torch.from_numpy(want))
        if pack:
            padded = sum(b.ids.numel() for b in batches) / sum(map(len, seqs)) - 1
            rows = sum(len(b.ids) for b in batches)
            assert padded < 0.05 and len(batches) == -(-rows // 4)  # full batches of 4 rows


@pytest.mark.parametrize("spec", ARCHITECTURES, ids=lambda s: "-".join(s))
def test_packed_rows_equal_each_window_alone(tiny_loaded, spec) -> None:
    """The packed-sequence mask keeps windows apart on every architecture harvested (sliding
    windows and MoE routing included) but GPT-OSS, and the check tells which."""
    lm = tiny_loaded(*spec)
    layer = lm.n_layers - 1
    works = packing_works(lm, layer)
    assert works == (spec[0] not in NO_PACKING)
    gen = torch.Generator().manual_seed(0)
    vocab = min(len(lm.tokenizer), 200)
    seqs = [torch.randint(3, vocab, (n,), generator=gen).tolist() for n in (20, 7, 12, 5, 30)]
    positions = [np.arange(len(s)) for s in seqs]
    batch = packed_batch(seqs, positions, [[0, 1, 3], [4], [2]], lm.pad_id)
    assert batch.position_ids is not None and batch.ids.shape == (3, 32)
    got = batch.gather(batch.run(lm, layer)).split(batch.counts)
    apart = []
    for w, x in zip(batch.windows, got, strict=True):
        alone = lm.capture(torch.tensor([seqs[w]]), None, layer)[0]
        apart.append(torch.allclose(x, alone, rtol=1e-4, atol=1e-5))
    assert apart[0] and apart[3] and apart[4]  # a row's first window sees no other
    assert all(apart) == works
    padded = padded_batch(seqs, positions, [0, 1, 2, 3, 4], lm.pad_id)
    for w, x in zip(padded.windows, padded.gather(padded.run(lm, layer)).split(padded.counts)):
        alone = lm.capture(torch.tensor([seqs[w]]), None, layer)[0]
        torch.testing.assert_close(x, alone, rtol=1e-4, atol=1e-5)


def test_a_model_that_ignores_packing_gets_padded_batches(
    tiny_model, tiny_loaded, tmp_path: Path, monkeypatch
) -> None:
    """If the position ids do not separate the sequences (an attention that builds its own
    mask), the check fails and the harvest pads that model's batches: rows stay exact."""
    from crossdiff.harvest.engine import Harvester

    spec_a, spec_b = ("llama", "bpe"), ("qwen3", "unigram")
    lm_a, lm_b = tiny_loaded(*spec_a), tiny_loaded(*spec_b)
    real = type(lm_a).capture

    def no_packing(ids, mask, layer, position_ids=None):
        return real(lm_a, ids, mask, layer)  # positions dropped: one long sequence per row

    monkeypatch.setattr(lm_a, "capture", no_packing)
    monkeypatch.setattr(batches_module, "_CHECKED", weakref.WeakKeyDictionary())  # verdicts kept
    assert not packing_works(lm_a, 0)
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    sides = {}
    real_packs = Harvester.packs

    def packs(self, side):
        sides[side] = real_packs(self, side)
        return sides[side]

    monkeypatch.setattr(Harvester, "packs", packs)
    cfg = config(tmp_path / "s", corpus, tiny_model(*spec_a), tiny_model(*spec_b), layer_a=0)
    store = harvest(cfg, models=(lm_a, lm_b))
    assert sides == {"a": False, "b": True}
    assert check_hidden_states(store, lm_a, lm_b, max_windows=40) == 40


def test_packed_and_padded_harvests_store_the_same_rows(
    tiny_model, tiny_loaded, tmp_path: Path
) -> None:
    """``pack`` changes how windows share passes, not which rows are stored: same documents,
    positions and order; activations equal within float32 noise."""
    spec_a, spec_b = ("gemma3", "sentencepiece"), ("gpt2", "bpe")
    lm_a, lm_b = tiny_loaded(*spec_a), tiny_loaded(*spec_b)
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    folders = (tiny_model(*spec_a), tiny_model(*spec_b))
    stores = [
        harvest(
            config(tmp_path / f"s{p}", corpus, *folders, layer_a=-1, pack=p), models=(lm_a, lm_b)
        )
        for p in (False, True)
    ]
    assert stores[0].n_rows == stores[1].n_rows > 300
    for (xa0, xb0, m0), (xa1, xb1, m1) in zip(
        stores[0].iter_rows(batch_size=4096), stores[1].iter_rows(batch_size=4096), strict=True
    ):
        for key in ("doc_index", "window", "pos_a", "pos_b"):
            assert np.array_equal(m0[key], m1[key])
        torch.testing.assert_close(xa1, xa0, rtol=2**-7, atol=1e-5)
        torch.testing.assert_close(xb1, xb0, rtol=2**-7, atol=1e-5)
