"""crossdiff bench harvest's limit part: full unpadded rows of the harvest's own tokens."""

from __future__ import annotations

from crossdiff_bench.harvest import full_row_limit


def test_full_row_limit_runs_the_tokens_as_full_rows(tiny_loaded) -> None:
    lm = tiny_loaded("llama", "bpe")
    layer = lm.resolve_layer("middle")
    seqs = [list(range(5, 55)), list(range(7, 37))]  # 80 tokens -> 5 full rows of 16
    seconds, tokens = full_row_limit(lm, layer, seqs, row_len=16, batch_size=2)
    assert tokens == 80 and seconds > 0
    seconds, tokens = full_row_limit(lm, layer, [[5, 6, 7]], row_len=16, batch_size=2)
    assert (seconds, tokens) == (0.0, 0)  # fewer tokens than one row: nothing to run
