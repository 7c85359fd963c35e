"""Harvest split over torchrun ranks (gloo, 2 CPU processes), as docs/ARCHITECTURE.md "Scale" asks.

The key property: a 2-rank harvest stores the same rows as one process on the same corpus,
with bit-identical activations (float32 tiny models on CPU, one thread per process), and is
one valid store (one manifest, every document, statistics over all rows). Around it: a rank
SIGKILLed mid-harvest loses nothing that was committed and the job resumes to the same store;
the world size may change between runs (2 -> 1 and 1 -> 2); the --tokens budget stops exactly
where one process stops; rerunning a complete store says so.

Three torchrun launches (each ~10 s, mostly two interpreters importing torch and
transformers on 2 cores): the CLI harvest, a worker running a budget harvest and a harvest
whose rank 1 is killed, and a worker resuming and rerunning stores.
"""

from __future__ import annotations

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

from crossdiff.harvest import REASON_CORPUS, REASON_TOKENS, HarvestConfig, harvest, plan_round
from crossdiff.store import ActivationStore
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
    from crossdiff.crosscoder.distributed import shutdown
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


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One thread, as in the torchrun workers (torchrun sets OMP_NUM_THREADS=1): the same
    kernels on the same batch shapes give the same bits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


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
    assert store.verify().ok
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
    after the first round (torchrun then ends rank 0)."""
    tmp = tmp_path_factory.mktemp("killed")
    a, b = tiny_model(*GPT2), tiny_model(*GEMMA)
    per_block = [s.rows for s in refs["blocks"].manifest.shards]
    # reached by block 2, the first block of round 2 (rank 0): rank 1's block 3 is dropped
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
    assert not (killed["budget"] / "shard-00003.safetensors").exists()  # dropped, unwritten


def test_killed_rank_loses_nothing_and_two_ranks_resume_to_the_same_store(
    killed, cli_store, tiny_model, tiny_loaded, corpus, tmp_path
) -> None:
    partial = ActivationStore.open(killed["partial"])
    assert not partial.is_complete and partial.verify().ok
    assert [(s.doc_start, s.doc_end) for s in partial.manifest.shards] == [(0, 8), (8, 16)]
    assert sorted(p.name for p in killed["partial"].glob("shard-*")) == [
        "shard-00000.safetensors",
        "shard-00001.safetensors",
    ]  # rank 0 cannot write a round's shard before every rank has reported its block

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
    assert resumed.is_complete and resumed.verify().ok
    assert [s.sha256 for s in resumed.manifest.shards] == [s.sha256 for s in full.manifest.shards]
    assert resumed.manifest.norm_stats == full.manifest.norm_stats
    grown = ActivationStore.open(up)
    assert grown.is_complete and grown.verify().ok
    assert_same_rows(grown, full)
    resumed_here = harvest(job(down, corpus, a, b), models=models)
    assert resumed_here.is_complete and resumed_here.verify().ok
    assert_same_rows(resumed_here, full)


def test_plan_round_keeps_what_one_process_keeps() -> None:
    def blocks(*spec: tuple[int, int]) -> list[dict[str, int]]:
        return [{"documents": d, "rows": r} for d, r in spec]

    full = (BLOCK, 10)
    assert plan_round(blocks(full, full), BLOCK, 0, None) == (2, None)
    assert plan_round(blocks(full, (3, 4)), BLOCK, 0, None) == (2, REASON_CORPUS)
    assert plan_round(blocks((0, 0), (0, 0)), BLOCK, 0, None) == (0, REASON_CORPUS)
    assert plan_round(blocks(full, (0, 0)), BLOCK, 0, None) == (1, REASON_CORPUS)
    # the budget: through the first block that reaches it, even if it is the round's first
    assert plan_round(blocks(full, full, full), BLOCK, 5, 15) == (1, REASON_TOKENS)
    assert plan_round(blocks(full, full, full), BLOCK, 5, 16) == (2, REASON_TOKENS)
    assert plan_round(blocks(full, (3, 40)), BLOCK, 0, 20) == (2, REASON_TOKENS)
    assert plan_round(blocks(full, full), BLOCK, 0, 100) == (2, None)
