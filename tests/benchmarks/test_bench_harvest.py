"""crossdiff bench harvest's limit part: full unpadded rows of the harvest's own tokens."""

from __future__ import annotations

import numpy as np

from crossdiff_bench.harvest import padded_vs_full


def test_padded_vs_full_runs_the_same_tokens_both_ways(tiny_loaded) -> None:
    from crossdiff.harvest.batches import packed_batch, padded_batch

    lm = tiny_loaded("llama", "bpe")
    layer = lm.resolve_layer("middle")
    seqs = [list(range(5, 55)), list(range(7, 37)), list(range(9, 29))]  # 100 tokens
    pos = [np.arange(len(s)) for s in seqs]
    for batches in (
        [padded_batch(seqs, pos, [0, 1], lm.pad_id), padded_batch(seqs, pos, [2], lm.pad_id)],
        [packed_batch(seqs, pos, [[0], [1, 2]], lm.pad_id)],  # rows of 50 and 30 + 20
    ):
        got = padded_vs_full(lm, layer, batches, row_len=16, batch_size=2)
        assert got["real_tokens"] == 100 and got["full_tokens"] == 96  # 6 full rows of 16
        assert got["padded_s"] > 0 and got["full_s"] > 0
    one = [padded_batch([[5, 6, 7]], [np.arange(3)], [0], lm.pad_id)]
    got = padded_vs_full(lm, layer, one, row_len=16, batch_size=2)
    assert got["full_tokens"] == 0 and got["full_s"] == 0.0  # fewer tokens than one row


def test_throughput_times_each_models_own_batches(tiny_loaded) -> None:
    """Part (b)/(d) on tiny models: each model's batches are logged and run bare beside the
    harvest's forward, padding is counted per model, and the limit runs the same tokens."""
    import argparse

    from crossdiff_bench.harvest import _Doc, early_exit, throughput
    from tiny import TRAINING_TEXT

    lm_a, lm_b = tiny_loaded("llama", "bpe"), tiny_loaded("qwen3", "unigram")
    words = TRAINING_TEXT.split()
    docs = [_Doc(f"d{i}", " ".join(words[i * 7 : i * 7 + 5 + 9 * (i % 5)])) for i in range(24)]
    padding = {}
    for no_pack in (True, False):
        args = argparse.Namespace(
            tokens=10**6, repeats=2, layer_a="middle", layer_b="middle", max_seq_len=32,
            batch_size=4, shard_rows=4096, no_pack=no_pack,
        )  # fmt: skip
        rounds, batches = throughput(lm_a, lm_b, docs, args)
        assert len(rounds) == 2 and len(batches) == 2
        for r in rounds:
            assert r["docs"] == 24 and r["rows"] > 0
            assert r["packed"] == ("" if no_pack else "ab")
            assert r["batches"] == len(batches[0]) + len(batches[1])  # one bare run per forward
            assert r["tokens"] <= r["padded"] <= 1.5 * r["tokens"]
            assert r["limit_tokens"] > 0 and r["limit_s"] > 0 and 0 < r["share"] < 10
        for side in batches:  # every batch within the token budget of batch_size x max_seq_len
            assert all(b.ids.numel() <= 4 * 32 or len(b.ids) == 1 for b in side)
            assert all((b.position_ids is None) == no_pack for b in side)
        padding[no_pack] = rounds[0]["padded"] / rounds[0]["tokens"]
        e = early_exit(lm_a, 0, batches[0][:3])  # (the last layer's entry is the final norm)
        assert e["max_abs_diff"] == 0.0 and e["capture_s"] > 0  # bit-exact, packed or not
    assert padding[False] < padding[True]  # packing pads less
