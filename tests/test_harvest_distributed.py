"""Harvest split over torchrun ranks that stream (gloo, 2 CPU processes), as docs/ARCHITECTURE.md
"Scale" asks.

The key property: a 2-rank harvest stores the same rows as one process on the same corpus,
with bit-identical activations (float32 tiny models on CPU, one thread per process), and is
one valid store (one manifest, every document, statistics over all rows). Around it: a rank
SIGKILLed mid-harvest loses nothing that was committed and the job resumes to the same store;
the world size may change between runs (2 -> 1 and 1 -> 2); the --tokens budget stops exactly
where one process stops; rerunning a complete store says so.

The ranks use no collective between the start and the end (they publish their blocks as small
files), so the streaming itself is also tested in this process, the ranks run one after the
other (the last rank first, so rank 0 finds every rank stopped): the rows of 1, 2 and 3 ranks,
where each rank stops under a budget, and what a resumed harvest does with the shards an
interrupted one wrote but had not listed (complete and in order: listed; damaged, out of order
or made with other settings: removed).

Three torchrun launches (each ~10 s, mostly two interpreters importing torch and
transformers on 2 cores): the CLI harvest, a worker running a budget harvest and a harvest
whose rank 1 is killed, and a worker resuming and rerunning stores.
"""

from __future__ import annotations

import itertools
import json
import shutil
import socket
import subprocess
import sys
import textwrap
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from crossdiff.harvest import (
    REASON_CORPUS,
    REASON_TOKENS,
    HarvestConfig,
    Harvester,
    StreamStart,
    _open_corpus,
    _recover,
    _Stream,
    harvest,
)
from crossdiff.store import ActivationStore
from crossdiff.store.pending import PENDING_DIR, clear
from test_harvest import config, write_corpus

GPT2, GEMMA = ("gpt2", "bpe"), ("gemma3", "sentencepiece")
# blocks of 8 documents (batch 1 x 8 batches, the CLI's default block_batches): the corpus of
# 28 documents is blocks 0-3 (8, 8, 8, 4 documents), two rounds on two ranks
SETTINGS = {"max_seq_len": 48, "batch_size": 1, "block_batches": 8, "dtype": "float32"}
BLOCK = 8

WORKER = textwrap.dedent(
    """
    import json, os, signal, sys
    import torch
    torch.set_num_threads(1)
    from crossdiff.runtime.distributed import shutdown
    from crossdiff.harvest import HarvestConfig, harvest

    from crossdiff.errors import CrossdiffError

    rank = int(os.environ["RANK"])
    for job in json.loads(sys.argv[1]):
        kill_after = job.pop("kill_rank1_after", 0)
        expect_error = job.pop("expect_error", False)
        commits = []
        def on_commit(shard):
            commits.append(shard.file)
            if rank == 1 and kill_after and len(commits) >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)  # a rank dies, with no clean-up at all
        try:
            harvest(HarvestConfig(**job), on_commit=on_commit)
        except CrossdiffError as exc:
            if not expect_error:
                raise
            print(f"rank {rank} refused: {exc}", file=sys.stderr, flush=True)
    shutdown()
    """
)


pytestmark = pytest.mark.usefixtures("one_thread_module")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def run_worker(tmp: Path, jobs: list[HarvestConfig | tuple[HarvestConfig, dict]]):
    """Run ``harvest(job)`` for each job on 2 ranks; extras: ``kill_rank1_after`` (shards),
    ``expect_error`` (print the CrossdiffError and go on)."""
    script = tmp / "harvest_worker.py"
    script.write_text(WORKER)
    payload = [{**asdict(j[0]), **j[1]} if isinstance(j, tuple) else asdict(j) for j in jobs]
    return torchrun(str(script), json.dumps(payload))


def job(out: Path, corpus: Path, a: Path, b: Path, **kw) -> HarvestConfig:
    return config(out, corpus, a, b, **{**SETTINGS, "shard_rows": 1, **kw})


def rows_table(store: ActivationStore) -> dict[str, np.ndarray]:
    """All rows sorted by (document, content_end), which identifies a pair; activations as
    the bit patterns of their float32 values."""
    parts: dict[str, list[np.ndarray]] = {}
    for x_a, x_b, meta in store.iter_rows(100_000):
        parts.setdefault("x_a", []).append(x_a.view(torch.int32).numpy())
        parts.setdefault("x_b", []).append(x_b.view(torch.int32).numpy())
        for key in ("doc_index", "window", "content_end", "pos_a", "pos_b", "span_a", "span_b"):
            parts.setdefault(key, []).append(meta[key])
    table = {k: np.concatenate(v) for k, v in parts.items()}
    order = np.lexsort((table["content_end"], table["doc_index"]))
    table = {k: v[order] for k, v in table.items()}
    keys = np.stack([table["doc_index"], table["content_end"]], 1)
    assert len(np.unique(keys, axis=0)) == len(keys), "a pair is stored twice"
    return table


def assert_same_rows(got: ActivationStore, want: ActivationStore) -> None:
    t_got, t_want = rows_table(got), rows_table(want)
    assert t_got.keys() == t_want.keys()
    for key in t_want:
        assert np.array_equal(t_got[key], t_want[key]), key
    assert list(got.documents()) == list(want.documents())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl", n_texts=20)
    assert sum(1 for _ in path.open()) == 28
    return path


@pytest.fixture(scope="module")
def refs(tiny_model, tiny_loaded, corpus, tmp_path_factory) -> dict[str, ActivationStore]:
    """One-process stores: ``shards`` (150-row shards), ``blocks`` (a shard per block)."""
    tmp = tmp_path_factory.mktemp("refs")
    a, b = tiny_model(*GPT2), tiny_model(*GEMMA)
    models = (tiny_loaded(*GPT2), tiny_loaded(*GEMMA))
    return {
        "shards": harvest(job(tmp / "shards", corpus, a, b, shard_rows=150), models=models),
        "blocks": harvest(job(tmp / "blocks", corpus, a, b), models=models),
    }


@pytest.fixture(scope="module")
def cli_store(tiny_model, corpus, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """`torchrun --nproc_per_node 2 -m crossdiff harvest ...`, as a user runs it."""
    out = tmp_path_factory.mktemp("cli") / "store"
    proc = torchrun(
        "-m", "crossdiff", "harvest", "--model-a", str(tiny_model(*GPT2)),
        "--model-b", str(tiny_model(*GEMMA)), "--corpus", str(corpus), "--out", str(out),
        "--dtype", "float32", "--device", "cpu", "--max-seq-len", "48", "--batch-size", "1",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc


def test_two_ranks_store_the_rows_of_one_process(cli_store, refs) -> None:
    out, proc = cli_store
    store = ActivationStore.open(out)
    m = store.manifest
    assert store.is_complete and m.complete_reason == REASON_CORPUS
    assert store.verify().ok and not store.verify().warnings
    assert not (out / PENDING_DIR).exists()  # the published entries are gone once listed
    assert proc.stderr.count("harvest complete") == 1  # one summary, from rank 0
    assert "(2 ranks)" in proc.stderr
    # the same rows as one process, bit for bit, and every document once
    assert_same_rows(store, refs["shards"])
    assert store.n_documents == 28 and [d["index"] for d in store.documents()] == list(range(28))
    # one shard per block, in corpus order: byte for byte the shards of a one-process harvest
    # that commits every block, so the statistics over all ranks' rows are that process's too
    one = refs["blocks"].manifest
    assert [(s.doc_start, s.doc_end) for s in m.shards] == [(0, 8), (8, 16), (16, 24), (24, 28)]
    assert [s.sha256 for s in m.shards] == [s.sha256 for s in one.shards]
    assert [s.docs_sha256 for s in m.shards] == [s.docs_sha256 for s in one.shards]
    assert m.norm_stats == one.norm_stats and m.norm_scales == one.norm_scales
    assert m.coverage() == one.coverage()
    # rows come out in corpus order, like one process's
    keys = [(int(d), int(c)) for *_, meta in store.iter_rows(10_000)
            for d, c in zip(meta["doc_index"], meta["content_end"])]  # fmt: skip
    assert keys == sorted(keys)
    # training reads it unchanged
    x_a, x_b = next(store.source("train").batches(64, seed=0))
    assert x_a.shape == (64, 64) and x_b.shape == (64, 64) and torch.isfinite(x_a).all()


@pytest.fixture(scope="module")
def killed(tiny_model, tiny_loaded, corpus, refs, tmp_path_factory) -> dict[str, Path]:
    """One launch: a harvest with a --tokens budget, then a harvest whose rank 1 is SIGKILLed
    after its second block (torchrun then ends rank 0)."""
    tmp = tmp_path_factory.mktemp("killed")
    a, b = tiny_model(*GPT2), tiny_model(*GEMMA)
    per_block = [s.rows for s in refs["blocks"].manifest.shards]
    # reached by block 2 (rank 0's second): rank 1's block 3 is not needed (dropped if made)
    tokens = per_block[0] + per_block[1] + 1
    jobs = [
        job(tmp / "budget", corpus, a, b, tokens=tokens),
        (job(tmp / "partial", corpus, a, b), {"kill_rank1_after": 2}),
    ]
    proc = run_worker(tmp, jobs)
    assert proc.returncode != 0, "rank 1 should have been killed"
    return {"budget": tmp / "budget", "partial": tmp / "partial", "tokens": tokens}


def test_token_budget_stops_where_one_process_stops(
    killed, tiny_model, tiny_loaded, corpus, tmp_path
) -> None:
    store = ActivationStore.open(killed["budget"])
    assert store.is_complete and store.manifest.complete_reason == REASON_TOKENS
    assert store.verify().ok
    models = (tiny_loaded(*GPT2), tiny_loaded(*GEMMA))
    a, b = tiny_model(*GPT2), tiny_model(*GEMMA)
    one = harvest(job(tmp_path / "one", corpus, a, b, tokens=killed["tokens"]), models=models)
    assert store.n_documents == one.n_documents == 3 * BLOCK
    assert_same_rows(store, one)
    assert not (killed["budget"] / "shard-00003.safetensors").exists()  # dropped
    assert not (killed["budget"] / PENDING_DIR).exists() and not store.verify().warnings


def test_killed_rank_loses_nothing_and_two_ranks_resume_to_the_same_store(
    killed, refs, cli_store, tiny_model, tiny_loaded, corpus, tmp_path
) -> None:
    partial = ActivationStore.open(killed["partial"])
    assert not partial.is_complete and partial.verify().ok
    listed = [(s.doc_start, s.doc_end) for s in partial.manifest.shards]
    # a prefix of one process's blocks: the corpus's last block (24-28) is short, and rank 0
    # may list it, as rank 1 published it, before torchrun ends rank 0
    blocks = [(s.doc_start, s.doc_end) for s in refs["blocks"].manifest.shards]
    assert blocks[:3] == [(BLOCK * i, BLOCK * (i + 1)) for i in range(3)]
    assert listed and listed == blocks[: len(listed)]
    published = sorted(p.name for p in (killed["partial"] / PENDING_DIR).glob("0*.json"))
    assert {"00001.json", "00003.json"} <= set(published)  # rank 1's blocks, published

    a, b = tiny_model(*GPT2), tiny_model(*GEMMA)
    models = (tiny_loaded(*GPT2), tiny_loaded(*GEMMA))
    # world size 2 -> 2: resumed by the same kind of job
    same = tmp_path / "same"
    shutil.copytree(killed["partial"], same)
    # world size 2 -> 1 (in this process) and 1 -> 2: a store one process left half done
    down = tmp_path / "down"
    shutil.copytree(killed["partial"], down)
    up = tmp_path / "up"

    def crash(shard) -> None:
        raise KeyboardInterrupt  # Ctrl-C after the first shard

    with pytest.raises(KeyboardInterrupt):
        harvest(job(up, corpus, a, b), on_commit=crash, models=models)
    assert ActivationStore.open(up).n_documents == BLOCK
    # the complete CLI store, rerun under torchrun: reports that it is complete
    # and with another --max-seq-len: refused on both ranks (no hang), nothing changed
    complete = tmp_path / "complete"
    shutil.copytree(cli_store[0], complete)
    before = {p.name: p.read_bytes() for p in complete.iterdir()}

    jobs = [
        job(same, corpus, a, b),
        job(up, corpus, a, b),
        job(complete, corpus, a, b, progress=True),
        (job(complete, corpus, a, b, max_seq_len=64), {"expect_error": True}),
    ]
    proc = run_worker(tmp_path, jobs)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stderr.count("is complete (corpus exhausted)") == 1  # rank 0 says it, once
    for rank in (0, 1):
        assert f"rank {rank} refused: the store at {complete} was harvested with other " in (
            proc.stderr
        )
    assert "max_seq_len: store has 48, asked 64" in proc.stderr
    assert {p.name: p.read_bytes() for p in complete.iterdir()} == before

    full = ActivationStore.open(cli_store[0])
    resumed = ActivationStore.open(same)
    assert resumed.is_complete and resumed.verify().ok and not resumed.verify().warnings
    assert [s.sha256 for s in resumed.manifest.shards] == [s.sha256 for s in full.manifest.shards]
    assert resumed.manifest.norm_stats == full.manifest.norm_stats
    grown = ActivationStore.open(up)
    assert grown.is_complete and grown.verify().ok
    assert_same_rows(grown, full)
    resumed_here = harvest(job(down, corpus, a, b), models=models)
    assert resumed_here.is_complete and resumed_here.verify().ok
    assert not resumed_here.verify().warnings and not (down / PENDING_DIR).exists()
    assert_same_rows(resumed_here, full)


# ------------------------------------------------------------ the ranks, one after the other
def simulate_ranks(
    cfg: HarvestConfig, models, world: int, *, crash_rank0_after: int = 0
) -> tuple[ActivationStore, list[Harvester], str | None]:
    """What ``_harvest_ranks`` does on ``world`` ranks, without a process group: rank 0's open
    (lock, recovery, start point), then the ranks one after the other, the last first, so rank
    0 finds every rank stopped and lists; ``crash_rank0_after`` raises KeyboardInterrupt on
    rank 0 after that many of its blocks. Returns the store, each rank's harvester, and what
    the recovery said."""
    harvesters = [Harvester(cfg, *models) for _ in range(world)]
    store = ActivationStore.open_or_create(cfg.out, harvesters[0].manifest())
    writer = store.writer(shard_rows=cfg.shard_rows)
    commits: list[str] = []

    def crash(shard) -> None:
        commits.append(shard.file)
        if len(commits) == crash_rank0_after:
            raise KeyboardInterrupt

    try:
        message = _recover(writer, cfg)
        m = store.manifest
        start = StreamStart(len(m.shards), m.documents_consumed, m.rows)
        for rank in reversed(range(world)):
            docs = itertools.islice(_open_corpus(cfg), start.documents, None)
            harvesters[rank].run_rank(
                store, docs, start, rank, world, writer if rank == 0 else None,
                on_commit=crash if rank == 0 and crash_rank0_after else None,
            )  # fmt: skip
        for h in harvesters:
            h.drop_surplus(len(store.manifest.shards) - start.shards)
        clear(store.path)
    finally:
        writer.close()
    return ActivationStore.open(cfg.out), harvesters, message


@pytest.mark.parametrize("world", [2, 3])
def test_streaming_ranks_store_the_rows_and_shards_of_one_process(
    world, tiny_model, tiny_loaded, corpus, refs, tmp_path
) -> None:
    a, b = tiny_model(*GPT2), tiny_model(*GEMMA)
    models = (tiny_loaded(*GPT2), tiny_loaded(*GEMMA))
    store, harvesters, _ = simulate_ranks(job(tmp_path / "s", corpus, a, b), models, world)
    one = refs["blocks"].manifest
    assert store.is_complete and store.manifest.complete_reason == REASON_CORPUS
    assert [s.sha256 for s in store.manifest.shards] == [s.sha256 for s in one.shards]
    assert [s.docs_sha256 for s in store.manifest.shards] == [s.docs_sha256 for s in one.shards]
    assert store.manifest.norm_stats == one.norm_stats
    assert_same_rows(store, refs["shards"])
    assert not (tmp_path / "s" / PENDING_DIR).exists() and not store.verify().warnings
    # rank r ran the blocks r, r + world, ...: together every document once
    assert sum(h.timings.documents for h in harvesters) == 28
    assert sum(h.timings.rows for h in harvesters) == store.n_rows
    assert [h.timings.documents for h in harvesters][world - 1] > 0


def test_each_rank_stops_when_its_blocks_cannot_be_needed(
    tiny_model, tiny_loaded, corpus, refs, tmp_path
) -> None:
    """Rank 1 runs first and sees nothing of rank 0: it makes block 1 and block 3, which the
    budget (reached in block 2) does not need: dropped. Rank 0 then sees blocks 1 and 3: after
    block 2 the blocks before block 4 reach the budget, so it stops without reading block 4.
    Under a budget that block 1 alone reaches, rank 1 stops after it (block 3 never made)."""
    a, b = tiny_model(*GPT2), tiny_model(*GEMMA)
    models = (tiny_loaded(*GPT2), tiny_loaded(*GEMMA))
    per_block = [s.rows for s in refs["blocks"].manifest.shards]
    tokens = per_block[0] + per_block[1] + 1
    store, (h0, h1), _ = simulate_ranks(job(tmp_path / "s", corpus, a, b, tokens=tokens), models, 2)
    one = harvest(job(tmp_path / "one", corpus, a, b, tokens=tokens), models=models)
    assert store.manifest.complete_reason == REASON_TOKENS and store.n_documents == 3 * BLOCK
    assert_same_rows(store, one)
    assert h1.timings.dropped_blocks == 1 and h1.timings.documents == BLOCK  # block 3 dropped
    assert h0.timings.dropped_blocks == 0 and h0.timings.documents == 2 * BLOCK
    assert not (tmp_path / "s" / "shard-00003.safetensors").exists()

    small = per_block[1] - 1  # block 1 alone reaches it
    if per_block[0] < small:
        store, (h0, h1), _ = simulate_ranks(
            job(tmp_path / "small", corpus, a, b, tokens=small), models, 2
        )
        one = harvest(job(tmp_path / "one-small", corpus, a, b, tokens=small), models=models)
        assert_same_rows(store, one)
        assert h1.timings.documents == BLOCK and h1.timings.dropped_blocks == 0
        assert h0.timings.documents == BLOCK  # rank 0 stopped before block 2


def test_stop_rule_counts_only_blocks_before_and_stops_at_a_short_one(tmp_path) -> None:
    """``_Stream.not_needed(j)``: the rows of the published blocks before j (any rank's; the
    unpublished count as none) against the budget; a short block before j ends the corpus."""

    class Store:
        path = tmp_path

    def publish(stream: _Stream, k: int, rows: int, documents: int = BLOCK) -> None:
        stream.entries.entries[k] = {"shard": {"rows": rows}, "documents": documents}
        stream._ahead.append(k)

    start = StreamStart(shards=5, documents=40, rows=100)
    stream = _Stream(Store(), start, 2, BLOCK, 130, None)
    assert stream.not_needed(0) is None
    publish(stream, 5 + 1, 20)  # block 1
    assert stream.not_needed(1) is None  # block 1 itself does not count for block 1
    assert stream.not_needed(2) is None  # 100 + 20 < 130: block 0 may hold few rows
    publish(stream, 5 + 3, 15)  # block 3: counts for block 4 only
    assert stream.not_needed(3) is None
    assert stream.not_needed(4) == REASON_TOKENS  # 100 + 20 + 15 >= 130 whatever block 0 holds
    stream = _Stream(Store(), start, 2, BLOCK, None, None)
    publish(stream, 5 + 2, 3, documents=BLOCK - 1)  # the corpus ends in block 2
    assert stream.not_needed(2) is None and stream.not_needed(3) == REASON_CORPUS
    assert _Stream(Store(), start, 2, BLOCK, 100, None).not_needed(0) == REASON_TOKENS


@pytest.fixture
def interrupted(tiny_model, tiny_loaded, corpus, tmp_path) -> Path:
    """A 2-rank streaming harvest interrupted with blocks 0, 1 and 3 written and published,
    nothing listed: rank 1 ran blocks 1 and 3, rank 0 died after its block 0."""
    a, b = tiny_model(*GPT2), tiny_model(*GEMMA)
    models = (tiny_loaded(*GPT2), tiny_loaded(*GEMMA))
    out = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        simulate_ranks(job(out, corpus, a, b), models, 2, crash_rank0_after=1)
    store = ActivationStore.open(out)
    assert store.n_documents == 0 and not store.is_complete
    assert sorted(p.name for p in (out / PENDING_DIR).glob("0*.json")) == [
        "00000.json", "00001.json", "00003.json",
    ]  # fmt: skip
    return out


@pytest.mark.parametrize("world", [1, 3])
def test_resume_lists_the_complete_prefix_an_interrupted_run_left_and_removes_the_rest(
    world, interrupted, tiny_model, tiny_loaded, corpus, refs, tmp_path
) -> None:
    a, b = tiny_model(*GPT2), tiny_model(*GEMMA)
    models = (tiny_loaded(*GPT2), tiny_loaded(*GEMMA))
    cfg = job(interrupted, corpus, a, b)
    if world == 1:
        store = harvest(cfg, models=models)
    else:
        store, _, message = simulate_ranks(cfg, models, world)
        assert "listed 2 shard(s)" in message and "documents 0-15" in message
        assert "removed 2 unlisted file(s)" in message  # block 3 (shard and documents)
    # blocks 0 and 1 listed as they were, block 3 (after a hole) removed and made again
    one = refs["blocks"].manifest
    assert [s.sha256 for s in store.manifest.shards] == [s.sha256 for s in one.shards]
    assert store.manifest.norm_stats == one.norm_stats
    assert store.is_complete and store.verify().ok and not store.verify().warnings
    assert not (interrupted / PENDING_DIR).exists()


@pytest.mark.parametrize("damage", ["flipped byte", "truncated docs", "other batch size"])
def test_resume_never_lists_a_damaged_or_foreign_shard(
    damage, interrupted, tiny_model, tiny_loaded, corpus, refs, capsys
) -> None:
    a, b = tiny_model(*GPT2), tiny_model(*GEMMA)
    models = (tiny_loaded(*GPT2), tiny_loaded(*GEMMA))
    cfg = job(interrupted, corpus, a, b, progress=True)
    if damage == "flipped byte":  # same size: only the checksum shows it
        shard = interrupted / "shard-00001.safetensors"
        data = bytearray(shard.read_bytes())
        data[-3] ^= 0x40
        shard.write_bytes(bytes(data))
    elif damage == "truncated docs":
        docs = interrupted / "docs-00000.jsonl"
        docs.write_bytes(docs.read_bytes()[:-10])
    else:  # rows valid for a store, but not the batches this harvest forms
        cfg = job(interrupted, corpus, a, b, progress=True, batch_size=2, block_batches=4)
    store = harvest(cfg, models=models)
    err = capsys.readouterr().err
    kept = {"flipped byte": 1, "truncated docs": 0, "other batch size": 0}[damage]
    if kept:
        assert f"listed {kept} shard(s)" in err
    else:
        assert "an interrupted run had written" not in err  # nothing listed
    assert "unlisted file(s) of an interrupted run" in err
    assert store.is_complete and store.verify().ok and not store.verify().warnings
    assert store.n_documents == 28
    if damage != "other batch size":  # the same blocks and batches: one process's shards
        one = refs["blocks"].manifest
        assert [s.sha256 for s in store.manifest.shards] == [s.sha256 for s in one.shards]
        assert_same_rows(store, refs["shards"])


def test_a_failed_rank_stops_rank_0_with_its_error(tiny_model, tiny_loaded, corpus, tmp_path):
    """A rank that fails records its error before it ends, so rank 0, waiting for every rank
    to stop, ends with that error instead of waiting forever (under torchrun the failed rank
    ends the job anyway; under another launcher this is what stops it)."""
    from crossdiff.errors import CrossdiffError

    a, b = tiny_model(*GPT2), tiny_model(*GEMMA)
    cfg = job(tmp_path / "s", corpus, a, b, max_documents=2 * BLOCK)
    h0, h1 = (Harvester(cfg, tiny_loaded(*GPT2), tiny_loaded(*GEMMA)) for _ in range(2))
    store = ActivationStore.open_or_create(cfg.out, h0.manifest())
    start = StreamStart(0, 0, 0)

    def disk_full(shard) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        h1.run_rank(store, _open_corpus(cfg), start, 1, 2, on_commit=disk_full)
    with store.writer() as writer, pytest.raises(CrossdiffError, match="rank 1 failed: OSError"):
        h0.run_rank(store, _open_corpus(cfg), start, 0, 2, writer)
