"""The activation store without models: writer, manifest, verify, readers, resume, errors.

Rows carry their own identity in the activations (row id encoded exactly in bf16), so the
tests can check that every row comes back, in order or shuffled, exactly once per epoch.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from crossdiff.cli import main as cli_main
from crossdiff.errors import CrossdiffError
from crossdiff.store import (
    ActivationStore,
    Manifest,
    ModelInfo,
    TokenizerInfo,
    eval_mask,
    make_rows,
)
from crossdiff.store import reader as reader_mod

D_A, D_B = 8, 12


def doc_rows(i: int, ids: np.ndarray):
    """Synthetic rows of document i whose activations encode their global row ids."""
    n = len(ids)
    spans = np.stack([np.arange(n) * 3, np.arange(n) * 3 + 3], 1)
    return make_rows(
        encode(ids, D_A),
        encode(ids, D_B, scale=2.0),
        doc_index=i,
        window=0,
        content_end=np.arange(1, n + 1) * 3,
        pos_a=np.arange(n),
        pos_b=np.arange(n) + 1,
        span_a=spans,
        span_b=spans,
    )


def manifest(d_a: int = D_A, d_b: int = D_B, layer_a: int = 1, corpus: str = "c.jsonl") -> Manifest:
    def info(name: str, d: int, layer: int) -> ModelInfo:
        return ModelInfo(
            spec=name,
            model_id=f"test/{name}",
            revision=None,
            layer=layer,
            layer_spec=str(layer),
            n_layers=4,
            d_model=d,
            dtype="float32",
            tokenizer=TokenizerInfo(name=name, vocab_size=100, hash=f"hash-{name}"),
        )

    return Manifest(
        model_a=info("a", d_a, layer_a),
        model_b=info("b", d_b, 2),
        corpus={"spec": corpus},
        harvest={"max_seq_len": 64, "batch_size": 2},
    )


def encode(ids: np.ndarray, d: int, scale: float = 1.0) -> torch.Tensor:
    """Rows whose first two columns hold the row id exactly (bf16 represents 0..255 exactly)."""
    x = torch.full((len(ids), d), scale)
    x[:, 0] = torch.from_numpy(ids // 256).float()
    x[:, 1] = torch.from_numpy(ids % 256).float()
    return x


def decode(x: torch.Tensor) -> np.ndarray:
    return (x[:, 0].round().long() * 256 + x[:, 1].round().long()).numpy()


def doc_record(i: int, pairs: int) -> dict:
    return {
        "index": i,
        "doc_id": f"doc{i}",
        "source": "test",
        "text": f"document {i}",
        "messages": None,
        "windows": [],
        "content_tokens_a": pairs + 1,
        "content_tokens_b": pairs + 2,
        "pairs": pairs,
        "skipped": None,
    }


def fill(
    store: ActivationStore,
    n_docs: int,
    *,
    shard_rows: int = 10,
    first_row: int = 0,
    commit_every: int = 1,
    rows_per_doc=lambda i: 1 + (i * 7) % 5,
) -> int:
    """Write documents with 1-5 rows each; returns the next row id."""
    row = first_row
    with store.writer(shard_rows=shard_rows) as w:
        for i in range(w.next_document, w.next_document + n_docs):
            n = rows_per_doc(i)
            ids = np.arange(row, row + n)
            w.add_document(doc_record(i, n))
            if n:
                w.add_rows(doc_rows(i, ids))
            row += n
            if (i + 1) % commit_every == 0:
                w.commit_if_full()
        w.finish("corpus exhausted")
    return row


@pytest.fixture
def store(tmp_path: Path) -> ActivationStore:
    s = ActivationStore.create(tmp_path / "store", manifest())
    fill(s, 40)
    return ActivationStore.open(tmp_path / "store")


def test_roundtrip_rows_documents_and_manifest(store: ActivationStore) -> None:
    m = store.manifest
    assert len(m.shards) > 3
    assert all(s.rows >= 10 for s in m.shards[:-1])  # shards close at a doc boundary past 10
    assert store.n_documents == 40
    expected_rows = sum(1 + (i * 7) % 5 for i in range(40))
    assert store.n_rows == expected_rows == len(store)
    got = []
    for x_a, x_b, meta in store.iter_rows(batch_size=7):
        assert x_a.dtype == torch.float32 and x_a.shape[1] == D_A and x_b.shape[1] == D_B
        ids = decode(x_a)
        assert (decode(x_b) == ids).all()
        assert (meta["row"] == ids).all()
        assert torch.all(x_b[:, 2:] == 2.0)
        got.append(meta["doc_index"])
    doc_index = np.concatenate(got)
    assert len(doc_index) == expected_rows
    assert (np.diff(doc_index) >= 0).all()
    docs = list(store.documents())
    assert [d["index"] for d in docs] == list(range(40))
    assert store.document(17)["doc_id"] == "doc17"
    with pytest.raises(CrossdiffError, match="not in the store"):
        store.document(40)
    saved = json.loads((store.path / "manifest.json").read_text())
    assert saved["rows"] == expected_rows and saved["status"] == "complete"
    assert saved["coverage"]["content_tokens_a"] == expected_rows + 40


def test_rows_at_reads_scattered_rows_in_the_order_asked(store: ActivationStore) -> None:
    n = store.n_rows
    rows = np.array([n - 1, 0, 13, 12, 5, 13, n // 2])  # across shards, unsorted, a repeat
    x_a, x_b = store.rows_at(rows)
    assert x_a.dtype == x_b.dtype == torch.bfloat16
    assert x_a.shape == (len(rows), D_A) and x_b.shape == (len(rows), D_B)
    assert (decode(x_a.float()) == rows).all() and (decode(x_b.float()) == rows).all()
    whole_a = torch.cat([a for a, _, _ in store.iter_rows(1000, dtype=torch.bfloat16)])
    assert torch.equal(x_a, whole_a[torch.from_numpy(rows)])  # the same bits as a full read
    empty_a, empty_b = store.rows_at(np.zeros(0, np.int64))
    assert empty_a.shape == (0, D_A) and empty_b.shape == (0, D_B)
    with pytest.raises(CrossdiffError, match="rows must lie in"):
        store.rows_at(np.array([n]))


def test_norm_statistics_and_scales(store: ActivationStore) -> None:
    norms_a = np.concatenate([meta["norm_a"] for _, _, meta in store.iter_rows(1000)])
    stats = store.manifest.norm_stats["a"]
    assert stats["median"] == pytest.approx(float(np.median(norms_a)), rel=1e-6)
    scale_a, scale_b = store.norm_scales()
    assert scale_a == pytest.approx(math.sqrt((D_A + D_B) / 2) / stats["median"])
    norms_b = np.concatenate([meta["norm_b"] for _, _, meta in store.iter_rows(1000)])
    assert scale_b * np.median(norms_b) == pytest.approx(math.sqrt((D_A + D_B) / 2), rel=1e-5)


def test_verify_ok_then_detects_corruption(store: ActivationStore, capsys) -> None:
    report = store.verify()
    assert report.ok, report.summary()
    assert report.rows_checked == store.n_rows
    assert cli_main(["store", "verify", str(store.path), "--quiet"]) == 0
    assert cli_main(["store", "info", str(store.path)]) == 0
    assert "coverage" in capsys.readouterr().out

    shard = store.path / store.manifest.shards[1].file
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF  # flip bits inside the last tensor
    shard.write_bytes(bytes(data))
    report = store.verify()
    assert not report.ok
    assert any("shard 1" in p and "checksum" in p for p in report.problems)
    assert cli_main(["store", "verify", str(store.path), "--quiet"]) == 1
    assert "checksum mismatch" in capsys.readouterr().err


def test_verify_reports_truncated_missing_and_bad_docs(store: ActivationStore) -> None:
    shards = store.manifest.shards
    p0 = store.path / shards[0].file
    p0.write_bytes(p0.read_bytes()[:100])
    (store.path / shards[2].file).unlink()
    d3 = store.path / shards[3].docs_file
    d3.write_text(d3.read_text() + "{}\n")
    problems = "\n".join(store.verify().problems)
    assert "shard 0" in problems and "size" in problems and "cannot be read" in problems
    assert "shard 2" in problems and "missing" in problems
    assert "documents 3" in problems and "checksum" in problems


def test_verify_checks_shapes_against_manifest(store: ActivationStore) -> None:
    # A manifest that claims other widths (e.g. edited by hand) no longer matches the shards.
    store.manifest.model_a.d_model = D_A + 1
    problems = store.verify().problems
    assert any("x_a has shape" in p for p in problems)


def test_crash_before_commit_loses_only_the_buffer_and_resume_continues(tmp_path: Path) -> None:
    s = ActivationStore.create(tmp_path / "s", manifest())
    # Reference: one uninterrupted writer.
    ref = ActivationStore.create(tmp_path / "ref", manifest())
    fill(ref, 30)
    # Interrupted: a writer that dies with rows buffered (no finish, no commit of the tail).
    with pytest.raises(RuntimeError, match="killed"), s.writer(shard_rows=10) as w:
        row = 0
        for i in range(17):
            n = 1 + (i * 7) % 5
            w.add_document(doc_record(i, n))
            ids = np.arange(row, row + n)
            w.add_rows(doc_rows(i, ids))
            row += n
            w.commit_if_full()
        # a half-written shard of the next commit, as a crash during the write leaves it
        (s.path / ".shard-00009.safetensors.tmp-999").write_bytes(b"partial")
        raise RuntimeError("killed")
    s = ActivationStore.open(s.path)
    committed = s.n_documents
    assert 0 < committed < 17 and s.manifest.status == "in_progress"
    assert s.verify().ok
    assert any("interrupted write" in w for w in s.verify().warnings)
    first_row = s.n_rows
    fill(s, 30 - committed, first_row=first_row)
    s = ActivationStore.open(s.path)
    assert not any(p.name.startswith(".") and "tmp" in p.name for p in s.path.iterdir())
    assert s.n_rows == ref.n_rows and s.n_documents == 30
    rows_s = np.concatenate([decode(x) for x, _, _ in s.iter_rows(64)])
    rows_r = np.concatenate([decode(x) for x, _, _ in ref.iter_rows(64)])
    assert (rows_s == rows_r).all()
    assert (rows_s == np.arange(len(rows_s))).all()  # no row lost, none duplicated
    assert s.verify().ok


def test_shards_written_by_other_processes_are_adopted_in_order(tmp_path: Path) -> None:
    """What a distributed harvest does: ranks write_shard() under their future indices, the
    one writer adopts them; the store equals one whose writer committed the same documents."""

    ref = ActivationStore.create(tmp_path / "ref", manifest())
    fill(ref, 12, shard_rows=1, commit_every=4)  # shards of documents 0-3, 4-7, 8-11
    s = ActivationStore.create(tmp_path / "s", manifest())
    infos = []
    for k in (1, 0, 2):  # written in any order, each by "its rank"
        infos.append((k, _block_shard(s.path, k)))
    infos = [info for _, info in sorted(infos, key=lambda t: t[0])]
    with s.writer() as w:
        with pytest.raises(ValueError, match="cannot be listed as shard 0"):
            w.adopt(infos[1:])  # a hole: shard 1 before shard 0
        w.adopt(infos[:2])
        w.adopt(infos[2:])
        assert w.next_document == 12
        w.finish("corpus exhausted")
    got = ActivationStore.open(s.path).manifest
    want = ActivationStore.open(ref.path).manifest
    assert got.shards == want.shards  # same bytes, checksums and counts
    assert got.norm_stats == want.norm_stats and got.norm_scales == want.norm_scales
    assert ActivationStore.open(s.path).verify().ok


def _block_shard(path: Path, k: int):
    """Write block k (documents 4k..4k+3, 1-5 rows each) as shard k; return its ShardInfo."""
    from crossdiff.store import Rows
    from crossdiff.store.writer import write_shard

    docs, rows = [], []
    row = sum(1 + (i * 7) % 5 for i in range(4 * k))
    for i in range(4 * k, 4 * k + 4):
        n = 1 + (i * 7) % 5
        docs.append(doc_record(i, n))
        rows.append(doc_rows(i, np.arange(row, row + n)))
        row += n
    return write_shard(path, k, Rows.concat(rows, D_A, D_B), docs)


def _published_blocks(path: Path, blocks: list[int]) -> None:
    """Write and publish shards of 4 documents each (block k = documents 4k..4k+3) as ranks of
    a distributed harvest do, under index k."""
    from crossdiff.store.pending import publish

    for k in blocks:
        publish(path, k, _block_shard(path, k), {"documents": 4})


@pytest.mark.parametrize("case", ["intact", "damaged", "refused"])
def test_recover_lists_the_intact_prefix_of_published_shards_and_removes_the_rest(
    tmp_path: Path, case: str
) -> None:
    """What a harvest resumed after a killed distributed one does first: published shards that
    continue the store, intact, and accepted by the harvest are listed; from the first that is
    not, every unlisted file (published or not) is removed."""
    from crossdiff.store.pending import PENDING_DIR, recover

    ref = ActivationStore.create(tmp_path / "ref", manifest())
    fill(ref, 12, shard_rows=1, commit_every=4)  # shards of documents 0-3, 4-7, 8-11
    s = ActivationStore.create(tmp_path / "s", manifest())
    _published_blocks(s.path, [0, 1, 2, 4])  # block 3 missing: 4 does not continue the store
    (s.path / "shard-00009.safetensors").write_bytes(b"a crashed single writer's")
    if case == "damaged":  # same size, one bit: only the checksum shows it
        shard = s.path / "shard-00001.safetensors"
        data = bytearray(shard.read_bytes())
        data[-1] ^= 1
        shard.write_bytes(bytes(data))
    seen = []

    def accept(entry) -> bool:
        seen.append(entry["shard"]["file"])
        return case != "refused"

    with s.writer() as w:
        adopted, removed = recover(w, accept)
        kept = {"intact": 3, "damaged": 1, "refused": 0}[case]
        assert [a.doc_start for a in adopted] == [0, 4, 8][:kept]
        assert w.next_document == 4 * kept
    assert (
        seen
        == ["shard-00000.safetensors", "shard-00001.safetensors", "shard-00002.safetensors"][
            : {"intact": 3, "damaged": 2, "refused": 1}[case]
        ]
    )
    got = ActivationStore.open(s.path)
    assert got.manifest.shards == ref.manifest.shards[:kept]
    assert got.verify().ok and not got.verify().warnings  # nothing unlisted is left
    assert not (s.path / PENDING_DIR).exists()
    assert "shard-00009.safetensors" in removed and "shard-00004.safetensors" in removed
    fill(got, 12 - 4 * kept, shard_rows=1, commit_every=4, first_row=got.n_rows)  # goes on
    got = ActivationStore.open(s.path)
    assert got.manifest.shards == ref.manifest.shards and got.verify().ok


def test_two_writers_are_refused(tmp_path: Path) -> None:
    s = ActivationStore.create(tmp_path / "s", manifest())
    with s.writer(), pytest.raises(CrossdiffError, match="another process"):
        ActivationStore.open(s.path).writer()


def test_shuffled_batches_are_deterministic_and_skip_is_exact(store: ActivationStore) -> None:
    from crossdiff.crosscoder.sources import PairSource

    src = store.source(split="all", shuffle_buffer_rows=25)
    assert isinstance(src, PairSource)
    assert src.d_a == D_A and src.d_b == D_B and src.norm_scales() == store.norm_scales()

    def take(seed: int, skip: int, n: int) -> list[np.ndarray]:
        it = src.batches(16, seed=seed, skip=skip)
        return [decode(next(it)[0]) for _ in range(n)]

    full = take(0, 0, 30)
    assert all(len(b) == 16 for b in full)
    assert all(np.array_equal(a, b) for a, b in zip(full, take(0, 0, 30)))
    for skip in (1, 7, 13, 29):
        assert all(np.array_equal(a, b) for a, b in zip(full[skip:], take(0, skip, 30 - skip)))
    other = take(1, 0, 30)
    assert not all(np.array_equal(a, b) for a, b in zip(full, other))
    x_a, x_b = next(src.batches(16))
    assert x_a.dtype == torch.float32 and x_b.shape == (16, D_B)


def test_each_epoch_visits_every_row_once_in_a_new_order(store: ActivationStore) -> None:
    src = store.source(split="all", shuffle_buffer_rows=25)
    n = len(src)
    it = src.batches(1, seed=3)
    stream = np.array([decode(next(it)[0])[0] for _ in range(3 * n)])
    epochs = stream.reshape(3, n)
    for e in range(3):
        assert sorted(epochs[e].tolist()) == list(range(n))
    assert not np.array_equal(epochs[0], epochs[1])
    # shuffled beyond one shard: the first 25 rows come from more than one document block
    assert not np.array_equal(epochs[0], np.arange(n))


def test_skip_reads_only_the_group_it_lands_in(store: ActivationStore, monkeypatch) -> None:
    src = store.source(split="all", shuffle_buffer_rows=25)
    reads: list[str] = []
    original = reader_mod.read_columns

    def counting(path, names):
        reads.append(Path(path).name)
        return original(path, names)

    monkeypatch.setattr(reader_mod, "read_columns", counting)
    batches_per_epoch = len(src) // 4
    it = src.batches(4, seed=0, skip=5 * batches_per_epoch + 3)
    next(it)
    groups = src.epoch_groups(0, 5)
    assert len(reads) <= max(len(g) for g in groups) * 2  # one group (maybe the next one too)
    assert len(reads) < len(store.manifest.shards)


@pytest.mark.parametrize("split", ["all", "train"])
def test_a_rank_reads_only_its_rows_of_each_batch(tmp_path: Path, split: str, monkeypatch) -> None:
    """``part=(rank, world)`` is rows ``rank::world`` of the same plan's batches (also after
    ``skip`` and across groups and epochs), read through memory maps, never a whole group."""
    s = ActivationStore.create(tmp_path / "s", manifest())
    fill(s, 120, shard_rows=20)
    src = s.source(split, eval_fraction=0.2, shuffle_buffer_rows=45)
    full = src.batches(10, seed=4, skip=3)
    expected = [next(full) for _ in range(2 * len(src) // 10)]  # two epochs
    whole_reads: list[tuple[str, ...]] = []
    original = reader_mod.read_columns

    def counting(path, names):
        whole_reads.append(tuple(names))
        return original(path, names)

    monkeypatch.setattr(reader_mod, "read_columns", counting)
    parts = [src.batches(10, seed=4, skip=3, part=(r, 3)) for r in range(3)]
    for x_a, x_b in expected:
        for r, part in enumerate(parts):
            pa, pb = next(part)
            assert torch.equal(pa, x_a[r::3]) and torch.equal(pb, x_b[r::3])
    assert all(names == ("doc_index",) for names in whole_reads)  # never x_a / x_b whole


def test_train_eval_split_is_by_document(tmp_path: Path) -> None:
    s = ActivationStore.create(tmp_path / "s", manifest())
    fill(s, 200, shard_rows=50)
    train = s.source("train", eval_fraction=0.2)
    ev = s.source("eval", eval_fraction=0.2)
    assert len(train) + len(ev) == s.n_rows
    assert 0.1 < len(ev) / s.n_rows < 0.3
    ids = {}
    for _, _, meta in s.iter_rows(1000):
        for doc, row in zip(meta["doc_index"], meta["row"]):
            ids[int(row)] = int(doc)
    train_docs = {ids[int(r)] for r in decode(next(train.batches(len(train)))[0])}
    eval_docs = {ids[int(r)] for r in decode(next(ev.batches(len(ev)))[0])}
    assert train_docs.isdisjoint(eval_docs)
    assert train_docs | eval_docs == set(range(200))
    assert set(np.flatnonzero(eval_mask(np.arange(200), 0.2)).tolist()) == eval_docs
    streamed = np.concatenate(
        [m["doc_index"] for *_, m in s.iter_rows(7, split="eval", eval_fraction=0.2)]
    )
    assert set(streamed.tolist()) == eval_docs
    with pytest.raises(CrossdiffError, match="no rows"):
        s.source("eval", eval_fraction=0.0)
    with pytest.raises(CrossdiffError, match="split"):
        s.source("validation")


def test_open_with_other_models_or_widths_is_a_clear_error(store: ActivationStore) -> None:
    before = {p.name: p.read_bytes() for p in store.path.iterdir()}
    with pytest.raises(CrossdiffError, match="width is 8, asked 16"):
        ActivationStore.open(store.path, d_a=16)
    with pytest.raises(CrossdiffError, match="model A"):
        ActivationStore.open(store.path, model_a="other/model")
    with pytest.raises(CrossdiffError, match="layer"):
        ActivationStore.open(store.path, layer_b=0)
    ActivationStore.open(store.path, model_a="a", model_b="test/b", d_a=D_A, d_b=D_B)
    with pytest.raises(CrossdiffError, match=r"model A layer.*\n.*d_model"):
        ActivationStore.open_or_create(store.path, manifest(d_a=16, layer_a=3))
    with pytest.raises(CrossdiffError, match="corpus"):
        ActivationStore.open_or_create(store.path, manifest(corpus="other.jsonl"))
    after = {p.name: p.read_bytes() for p in store.path.iterdir()}
    assert before == after  # nothing changed, nothing deleted


def test_not_a_store_and_unsupported_versions(tmp_path: Path) -> None:
    with pytest.raises(CrossdiffError, match="not an activation store"):
        ActivationStore.open(tmp_path)
    s = ActivationStore.create(tmp_path / "s", manifest())
    with pytest.raises(CrossdiffError, match="already holds a store"):
        ActivationStore.create(tmp_path / "s", manifest())
    raw = json.loads((s.path / "manifest.json").read_text())
    raw["format_version"] = 99
    (s.path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(CrossdiffError, match="version 99"):
        ActivationStore.open(s.path)
    assert cli_main(["store", "info", str(tmp_path / "missing")]) == 2


def test_empty_store_has_no_source(tmp_path: Path) -> None:
    s = ActivationStore.create(tmp_path / "s", manifest())
    assert s.n_rows == 0 and s.norm_scales() is None
    with pytest.raises(CrossdiffError, match="no rows"):
        s.source("train")
    assert list(s.iter_rows(4)) == []


def test_documents_without_rows_still_count_and_zero_row_shards_work(tmp_path: Path) -> None:
    s = ActivationStore.create(tmp_path / "s", manifest())
    fill(s, 12, shard_rows=1, rows_per_doc=lambda i: 0 if i % 3 else 2)
    s = ActivationStore.open(s.path)
    assert s.n_documents == 12 and s.n_rows == 8
    assert any(sh.rows == 0 for sh in s.manifest.shards) or len(s.manifest.shards) < 12
    assert s.verify().ok
    assert sorted(decode(next(s.source("all").batches(8))[0]).tolist()) == list(range(8))


def test_create_refuses_a_non_empty_folder(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(CrossdiffError, match="not empty"):
        ActivationStore.create(folder, manifest())
    assert [p.name for p in folder.iterdir()] == ["notes.txt"]


def _numpy_moments(store: ActivationStore):
    xs_a, xs_b, na, nb = [], [], [], []
    for x_a, x_b, meta in store.iter_rows(1000):
        xs_a.append(x_a.double().numpy())
        xs_b.append(x_b.double().numpy())
        na.append(meta["norm_a"])
        nb.append(meta["norm_b"])
    xa, xb = np.concatenate(xs_a), np.concatenate(xs_b)
    na, nb = np.concatenate(na), np.concatenate(nb)
    st = store.manifest.norm_stats
    keep = (na <= 2 * st["a"]["median"]) & (nb <= 2 * st["b"]["median"])
    return xa[keep], xb[keep], keep


def test_moments_are_the_inlier_rows_mean_and_centred_second_moment(tmp_path: Path) -> None:
    from crossdiff.store.moments import MOMENTS_FILE

    store = ActivationStore.create(tmp_path / "store", manifest())
    fill(store, 40)
    fill(store, 2, first_row=60_000)  # two documents of huge-norm rows (> 2x the median)
    store = ActivationStore.open(tmp_path / "store")
    assert (store.path / MOMENTS_FILE).is_file()  # written when the harvest finished
    xa, xb, keep = _numpy_moments(store)
    assert 0 < keep.sum() < keep.size  # the rule leaves some high-norm rows out
    mom = store.moments()
    assert mom.rows == keep.sum()
    np.testing.assert_allclose(mom.mean_a, xa.mean(0), rtol=1e-9)
    np.testing.assert_allclose(mom.mean_b, xb.mean(0), rtol=1e-9)
    want = ((xb - xb.mean(0)) ** 2).sum(1).mean()
    assert mom.msq_centered_b == pytest.approx(want, rel=1e-9)
    sa, sb = mom.centered_scales()
    target = (D_A + D_B) / 2
    assert sa**2 * mom.msq_centered_a == pytest.approx(target)
    assert sb**2 * mom.msq_centered_b == pytest.approx(target)
    assert mom.loss_share(sa, sb) == pytest.approx((0.5, 0.5))
    assert mom.gamma("a") == pytest.approx(
        np.linalg.norm(xa.mean(0)) / math.sqrt(((xa - xa.mean(0)) ** 2).sum(1).mean())
    )
    assert store.verify().ok  # the cache is not reported as a stray file


def test_moments_cache_resumes_and_follows_the_store(store: ActivationStore, monkeypatch) -> None:
    from crossdiff.store import moments as moments_mod

    full = store.moments()
    # an interrupted pass: keep only the first shards' partial sums in the cache
    parts = moments_mod._load_cache(
        store.path / moments_mod.MOMENTS_FILE, moments_mod._limits(store)
    )
    first = [s.sha256 for s in store.manifest.shards[:2]]
    moments_mod._save_cache(
        store.path / moments_mod.MOMENTS_FILE,
        moments_mod._limits(store),
        {k: parts[k] for k in first},
    )
    read = []
    import crossdiff.store.shard as shard_mod

    orig = shard_mod.read_columns

    def counting(path, cols):
        read.append(Path(path).name)
        return orig(path, cols)

    monkeypatch.setattr(shard_mod, "read_columns", counting)
    again = store.moments()
    assert len(read) == len([s for s in store.manifest.shards if s.rows]) - 2
    np.testing.assert_allclose(again.mean_a, full.mean_a, rtol=1e-12)
    read.clear()
    store.moments()  # complete cache: nothing read
    assert read == []
    # a damaged cache is recomputed, never trusted
    (store.path / moments_mod.MOMENTS_FILE).write_bytes(b"garbage")
    np.testing.assert_allclose(store.moments().mean_b, full.mean_b, rtol=1e-12)
