"""Harvest on tiny random models of several architectures and tokenizer families.

What is checked, for every stored row: both models had read exactly the same content at the
paired tokens, and the stored activation is the model's own hidden state at that position
(``hidden_states[layer + 1]`` of a plain forward on the window's tokens, within bf16
rounding). Plus: killing a harvest (an exception after a shard, or SIGKILL of a CLI process)
and resuming gives the same store as an uninterrupted run; reruns report completion; the
token budget; bad input errors that leave existing stores untouched.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from crossdiff.align import common_segments
from crossdiff.cli import main as cli_main
from crossdiff.errors import CrossdiffError
from crossdiff.harvest import HarvestConfig, harvest
from crossdiff.store import ActivationStore
from tiny import TRAINING_TEXT

LINES = [ln for ln in TRAINING_TEXT.splitlines() if ln.strip()]


pytestmark = pytest.mark.usefixtures("one_thread_module")


CHATS = [
    [
        {"role": "user", "content": "Who made you? Answer briefly. "},
        {"role": "assistant", "content": " A research lab trained me. 🙂"},
    ],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "def add(a, b):\n    return a + b\n"},
        {"role": "assistant", "content": "你好，世界。 It adds two numbers."},
    ],
]


def write_corpus(path: Path, n_texts: int = 12, long_every: int = 5) -> Path:
    """Texts (some longer than a window), chats, and an empty-ish document, in one jsonl."""
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n_texts):
            if i % long_every == 0:
                text = "\n".join(LINES[j % len(LINES)] for j in range(i, i + 25))  # > 1 window
            else:
                text = " ".join(LINES[(i + j) % len(LINES)] for j in range(3))
            fh.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            if i % 3 == 1:
                fh.write(json.dumps({"messages": CHATS[i % 2]}, ensure_ascii=False) + "\n")
            if i == 4:
                fh.write(json.dumps({"text": "  ."}) + "\n")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.jsonl")


def config(out: Path, corpus: Path, a: Path, b: Path, **kw) -> HarvestConfig:
    base = {
        "max_seq_len": 48,
        "batch_size": 3,
        "block_batches": 1,  # blocks of 3 documents: several commits on a small corpus
        "shard_rows": 150,
        "dtype": "float32",
        "device": "cpu",
        "progress": False,
    }
    base.update(kw)
    return HarvestConfig(model_a=str(a), model_b=str(b), corpus=str(corpus), out=str(out), **base)


def consumed(text: str, segments, stop: int) -> str:
    return "".join(text[g.start : min(g.end, stop)] for g in segments if g.start < stop)


PAIRS = [
    (("gpt2", "bpe"), ("gemma3", "sentencepiece")),
    (("llama", "sentencepiece"), ("qwen3", "unigram")),
    (("qwen2", "bpe"), ("llama", "unigram")),
    (("gpt_oss", "harmony"), ("qwen3_moe", "sentencepiece")),  # the MoE architectures
]


@pytest.mark.parametrize(("spec_a", "spec_b"), PAIRS, ids=lambda s: "-".join(s))
def test_rows_pair_same_text_and_equal_hidden_states(
    tiny_model, tiny_loaded, corpus: Path, tmp_path: Path, spec_a, spec_b
) -> None:
    lm_a, lm_b = tiny_loaded(*spec_a), tiny_loaded(*spec_b)
    cfg = config(
        tmp_path / "store", corpus, tiny_model(*spec_a), tiny_model(*spec_b), layer_a=0, layer_b=-1
    )
    store = harvest(cfg, models=(lm_a, lm_b))
    assert store.is_complete and store.n_rows > 300
    assert store.verify().ok
    m = store.manifest
    assert (m.model_a.layer, m.model_b.layer, m.model_b.layer_spec) == (0, 1, "-1")
    assert m.model_a.d_model == 64
    assert m.model_a.model_id == lm_a.model_id and m.model_b.tokenizer.vocab_size == len(
        lm_b.tokenizer
    )
    cov = m.coverage()
    assert 0.5 < cov["coverage_a"] <= 1 and 0.5 < cov["coverage_b"] <= 1
    docs = list(store.documents())
    n_corpus = sum(1 for _ in corpus.open())
    assert len(docs) == n_corpus
    assert any(len(d["windows"]) > 1 for d in docs)  # long texts were split into windows
    assert any(d["messages"] for d in docs)

    assert check_same_text(store) == store.n_rows
    assert check_hidden_states(store, lm_a, lm_b, max_windows=12) == 12


def check_same_text(store: ActivationStore) -> int:
    """Every row: both models had read exactly the same content at their paired tokens."""
    docs = list(store.documents())
    rows = 0
    for _, _, meta in store.iter_rows(batch_size=4096):
        for r in range(len(meta["row"])):
            doc = docs[meta["doc_index"][r]]
            win = doc["windows"][meta["window"][r]]
            wa, wb = win["a"], win["b"]
            seg_a, seg_b, common, _ = common_segments(
                wa["text"], wa["content_spans"], wb["text"], wb["content_spans"]
            )
            end = int(meta["content_end"][r]) - win["content_start"]
            stop_a, stop_b = int(meta["span_a"][r][1]), int(meta["span_b"][r][1])
            assert consumed(wa["text"], seg_a, stop_a) == common[:end]
            assert consumed(wb["text"], seg_b, stop_b) == common[:end]
            assert 0 <= meta["pos_a"][r] < len(wa["input_ids"])
            assert 0 <= meta["pos_b"][r] < len(wb["input_ids"])
            if doc["text"] is not None:  # content_end counts characters of the document
                assert doc["text"][: int(meta["content_end"][r])].endswith(common[:end])
        rows += len(meta["row"])
    return rows


def check_hidden_states(store, lm_a, lm_b, max_windows: int, exact: bool = True) -> int:
    """Stored rows are each model's own layer output, from one plain forward per window.

    ``exact``: float32 models, equal within bf16 rounding. Otherwise (bf16 models, whose kernels
    differ between a padded batch and a single sequence) every row points the same way.
    """
    docs = list(store.documents())
    m = store.manifest
    checked = 0
    for x_a, x_b, meta in store.iter_rows(batch_size=4096):
        for (d, w), idx in _group_rows(meta).items():
            if checked >= max_windows:
                return checked
            checked += 1
            win = docs[d]["windows"][w]
            for lm, side, x, pos in ((lm_a, "a", x_a, "pos_a"), (lm_b, "b", x_b, "pos_b")):
                layer = getattr(m, f"model_{side}").layer
                ref = layer_output(lm, win[side]["input_ids"], layer)[meta[pos][idx]].float()
                if exact:
                    torch.testing.assert_close(x[idx], ref, rtol=2**-7, atol=1e-5)
                else:
                    cos = torch.nn.functional.cosine_similarity(x[idx], ref, dim=-1)
                    assert cos.min() > 0.99, cos.min()
    return checked


def layer_output(lm, ids: list[int], layer: int) -> torch.Tensor:
    """Output of decoder layer ``layer`` in a plain, complete forward of one sequence.

    Equals ``hidden_states[layer + 1]``, except for the last layer, whose entry transformers
    replaces by the final norm's output; there a hook on the layer gives the raw output.
    """
    got = []
    handle = lm.layers[layer].register_forward_hook(lambda mod, args, out: got.append(out))
    try:
        with torch.no_grad():
            out = lm.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    finally:
        handle.remove()
    raw = got[0][0] if isinstance(got[0], tuple) else got[0]
    if layer < lm.n_layers - 1:
        assert torch.equal(raw, out.hidden_states[layer + 1])
    return raw[0]


def _group_rows(meta) -> dict[tuple[int, int], np.ndarray]:
    keys = meta["doc_index"] * 1000 + meta["window"]
    return {(int(k // 1000), int(k % 1000)): np.flatnonzero(keys == k) for k in np.unique(keys)}


def test_chat_rows_lie_in_message_content_only(tiny_model, tiny_loaded, corpus, tmp_path) -> None:
    a, b = ("llama", "bpe"), ("gemma3", "sentencepiece")  # ChatML vs a trimming Gemma template
    store = harvest(
        config(tmp_path / "s", corpus, tiny_model(*a), tiny_model(*b)),
        models=(tiny_loaded(*a), tiny_loaded(*b)),
    )
    docs = list(store.documents())
    seen_chat = 0
    for _, _, meta in store.iter_rows(10_000):
        for r in range(len(meta["row"])):
            doc = docs[meta["doc_index"][r]]
            if not doc["messages"]:
                continue
            seen_chat += 1
            for side, span in (("a", meta["span_a"][r]), ("b", meta["span_b"][r])):
                spans = doc["windows"][0][side]["content_spans"]
                assert any(s < span[1] <= e for s, e in spans)  # ends inside a message
    assert seen_chat > 20


def test_kill_after_a_shard_then_resume_equals_uninterrupted(
    tiny_model, tiny_loaded, corpus, tmp_path
) -> None:
    a, b = ("gpt2", "bpe"), ("gemma3", "sentencepiece")
    models = (tiny_loaded(*a), tiny_loaded(*b))
    ref = harvest(config(tmp_path / "ref", corpus, tiny_model(*a), tiny_model(*b)), models=models)
    cfg = config(tmp_path / "s", corpus, tiny_model(*a), tiny_model(*b))
    commits = []

    def crash(shard) -> None:
        commits.append(shard)
        if len(commits) == 2:
            raise KeyboardInterrupt  # what Ctrl-C does mid-harvest

    with pytest.raises(KeyboardInterrupt):
        harvest(cfg, on_commit=crash, models=models)
    partial = ActivationStore.open(cfg.out)
    assert len(partial.manifest.shards) == 2 and not partial.is_complete
    assert partial.verify().ok
    resumed = harvest(cfg, models=models)
    assert resumed.is_complete
    assert [s.sha256 for s in resumed.manifest.shards] == [s.sha256 for s in ref.manifest.shards]
    assert [s.docs_sha256 for s in resumed.manifest.shards] == [
        s.docs_sha256 for s in ref.manifest.shards
    ]
    assert resumed.manifest.norm_scales == ref.manifest.norm_scales
    assert resumed.manifest.coverage() == ref.manifest.coverage()


def test_sigkilled_cli_harvest_resumes_to_the_same_store(tiny_model, tiny_loaded, tmp_path) -> None:
    a_dir, b_dir = tiny_model("llama", "bpe"), tiny_model("qwen3", "sentencepiece")
    big = write_corpus(tmp_path / "big.jsonl", n_texts=80, long_every=4)
    out = tmp_path / "killed"
    argv = [
        sys.executable, "-m", "crossdiff.cli", "harvest", "--model-a", str(a_dir),
        "--model-b", str(b_dir), "--corpus", str(big), "--out", str(out), "--dtype", "float32",
        "--device", "cpu", "--max-seq-len", "48", "--batch-size", "3", "--shard-rows", "150",
        "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["OMP_NUM_THREADS"] = "1"  # as the fixture above does in this process
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        manifest = out / "manifest.json"
        if manifest.is_file() and json.loads(manifest.read_text())["shards"]:
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.02)
    proc.wait(timeout=30)
    assert killed, proc.stderr.read().decode()[-2000:]
    partial = ActivationStore.open(out)
    assert not partial.is_complete and partial.verify().ok
    models = (tiny_loaded("llama", "bpe"), tiny_loaded("qwen3", "sentencepiece"))
    kw = {"max_seq_len": 48, "batch_size": 3, "shard_rows": 150}
    resumed = harvest(config(out, big, a_dir, b_dir, **kw), models=models)
    ref = harvest(config(tmp_path / "ref", big, a_dir, b_dir, **kw), models=models)
    assert resumed.n_rows == ref.n_rows and resumed.n_documents == ref.n_documents
    # (the CLI used the default block size, so shards close elsewhere; the rows are the same)
    for (xa, xb, ma), (ya, yb, mb) in zip(resumed.iter_rows(4096), ref.iter_rows(4096)):
        for key in ("doc_index", "window", "content_end", "pos_a", "pos_b", "span_a", "span_b"):
            assert np.array_equal(ma[key], mb[key])
        # another process may pick other kernels: equal up to one bf16 rounding step
        torch.testing.assert_close(xa, ya, rtol=2**-7, atol=1e-5)
        torch.testing.assert_close(xb, yb, rtol=2**-7, atol=1e-5)
    assert resumed.verify().ok


def test_rerun_reports_complete_and_budget_extends(
    tiny_model, tiny_loaded, corpus, tmp_path, capsys
) -> None:
    a, b = ("gpt2", "bpe"), ("qwen3", "unigram")
    models = (tiny_loaded(*a), tiny_loaded(*b))
    cfg = config(tmp_path / "s", corpus, tiny_model(*a), tiny_model(*b), tokens=200, progress=True)
    first = harvest(cfg, models=models)
    assert first.manifest.complete_reason == "token budget reached"
    assert first.n_rows >= 200
    capsys.readouterr()
    again = harvest(cfg, models=models)  # same request: nothing to do
    assert "complete" in capsys.readouterr().err
    assert again.n_rows == first.n_rows
    cfg.tokens = first.n_rows + 1
    cfg.batch_size = 2  # a runtime setting: a store may be resumed with another batch size
    more = harvest(cfg, models=models)
    assert more.n_rows > first.n_rows and more.n_documents > first.n_documents
    cfg.tokens = None
    full = harvest(cfg, models=models)
    assert full.manifest.complete_reason == "corpus exhausted"
    ref = harvest(config(tmp_path / "ref", corpus, tiny_model(*a), tiny_model(*b)), models=models)
    # stopping at budgets and extending never loses or repeats a pair
    assert full.n_rows == ref.n_rows
    rows_full = np.concatenate([m["content_end"] for *_, m in full.iter_rows(10_000)])
    rows_ref = np.concatenate([m["content_end"] for *_, m in ref.iter_rows(10_000)])
    assert np.array_equal(rows_full, rows_ref)


def test_bad_inputs_are_clear_errors_and_keep_existing_stores(
    tiny_model, tiny_loaded, corpus, tmp_path
) -> None:
    a, b = tiny_model("gpt2", "bpe"), tiny_model("gemma3", "sentencepiece")
    models = (tiny_loaded("gpt2", "bpe"), tiny_loaded("gemma3", "sentencepiece"))
    out = tmp_path / "s"
    harvest(config(out, corpus, a, b, tokens=100), models=models)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    with pytest.raises(CrossdiffError, match="out of range"):
        harvest(config(out, corpus, a, b, layer_a=7), models=models)
    with pytest.raises(CrossdiffError, match=r"not a built-in alias|does not exist"):
        harvest(config(out, corpus, tmp_path / "no-such-model", b))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(CrossdiffError, match="no documents"):
        harvest(config(tmp_path / "new", empty, a, b), models=models)
    assert not (tmp_path / "new").exists()
    # other layer / other model than the store holds
    with pytest.raises(CrossdiffError, match="model A layer"):
        harvest(config(out, corpus, a, b, layer_a=0), models=models)
    swapped = (tiny_loaded("gpt2", "bpe"), tiny_loaded("qwen3", "unigram"))
    with pytest.raises(CrossdiffError, match="model B"):
        harvest(config(out, corpus, a, tiny_model("qwen3", "unigram")), models=swapped)
    with pytest.raises(CrossdiffError, match="max_seq_len"):
        harvest(config(out, corpus, a, b, max_seq_len=64), models=models)
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.name != ".lock"}
    before.pop(".lock", None)
    assert before == after
    # the CLI prints the message, no traceback, exit code 2
    assert cli_main(["harvest", "--model-a", str(a), "--model-b", str(b), "--corpus",
                     str(empty), "--out", str(tmp_path / "x"), "--quiet"]) == 2  # fmt: skip


def test_slow_tokenizer_is_refused(tiny_model, corpus, tmp_path) -> None:
    spm = pytest.importorskip("sentencepiece")
    folder = tmp_path / "slow"
    shutil.copytree(tiny_model("llama", "unigram"), folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(LINES), model_prefix=str(folder / "spiece"), vocab_size=120,
        minloglevel=2,
    )  # fmt: skip
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertGenerationTokenizer"})
    )
    with pytest.raises(CrossdiffError, match="not a fast tokenizer"):
        harvest(config(tmp_path / "s", corpus, tiny_model("gpt2", "bpe"), folder))
    assert not (tmp_path / "s").exists()


def test_config_validation() -> None:
    for bad in ({"tokens": 0}, {"max_seq_len": 1}, {"batch_size": 0}, {"shard_rows": 0}):
        cfg = HarvestConfig(model_a="a", model_b="b", corpus="c", out="o", **bad)
        with pytest.raises(CrossdiffError):
            cfg.validate()


@pytest.mark.slow
def test_default_pair_real_models(tmp_path: Path) -> None:
    """The built-in pair on the first documents of the built-in corpus (texts and chats)."""
    from crossdiff.models import load_model

    models = (load_model("smollm2-135m-instruct"), load_model("gemma3-270m"))
    cfg = HarvestConfig(
        model_a="smollm2-135m-instruct",
        model_b="gemma3-270m",
        corpus="builtin",
        out=str(tmp_path / "store"),
        max_documents=16,  # the mix's first documents: text and chats, half and half by pairs
        max_seq_len=128,  # the wiki texts need several windows
        batch_size=2,
        block_batches=1,  # commit every 2 documents: several shards
        shard_rows=256,
        progress=False,
    )
    store = harvest(cfg, models=models)
    m = store.manifest
    assert store.is_complete and store.verify().ok and len(m.shards) > 1
    assert (m.model_a.layer, m.model_a.n_layers, m.model_a.d_model) == (15, 30, 576)
    assert (m.model_b.layer, m.model_b.n_layers, m.model_b.d_model) == (9, 18, 640)
    docs = list(store.documents())
    assert any(d["messages"] for d in docs) and any(len(d["windows"]) > 1 for d in docs)
    cov = m.coverage()
    assert store.n_rows > 400
    comp = store.composition()  # the built-in mix: both kinds from the first documents on
    assert comp["chat_pairs"] > 100 and comp["text_pairs"] > 100, comp
    # the first chats include Chinese, Arabic, Korean: SmolLM2's byte-level BPE pairs less there
    assert cov["coverage_a"] > 0.7 and cov["coverage_b"] > 0.9, cov
    assert check_same_text(store) == store.n_rows
    assert check_hidden_states(store, *models, max_windows=3, exact=False) == 3
    for side in ("a", "b"):
        stats = m.norm_stats[side]
        scale = m.norm_scales[side]
        assert stats["median"] * scale == pytest.approx(((576 + 640) / 2) ** 0.5)
        assert stats["quantiles"]["0.01"] <= stats["median"] <= stats["quantiles"]["0.99"]
    x_a, x_b = next(store.source("all").batches(64))
    assert x_a.shape == (64, 576) and x_b.shape == (64, 640)
    assert torch.isfinite(x_a).all() and torch.isfinite(x_b).all()


def test_token_batches_cover_every_window_once_within_the_budget() -> None:
    from crossdiff.harvest.batches import token_batches

    rng = np.random.default_rng(0)
    lengths = [int(n) for n in rng.integers(1, 257, size=200)] + [300]  # one over the budget
    budget = 8 * 256
    batches = token_batches(lengths, budget)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)  # longest first
    for b in batches:
        longest = max(lengths[i] for i in b)
        assert lengths[b[0]] == longest
        assert len(b) * longest <= budget or len(b) == 1
    # full-length windows fill batch_size rows; short ones share a pass
    assert [len(b) for b in token_batches([256] * 20, budget)] == [8, 8, 4]
    assert [len(b) for b in token_batches([32] * 100, budget)] == [64, 36]
    assert token_batches([], budget) == []


def test_token_batches_pad_little_and_save_passes() -> None:
    """Short windows share passes without padding much: the cuts minimize padded tokens plus a
    fixed cost per pass, so they beat both one pass per length and greedy filling."""
    from crossdiff.harvest.batches import FORWARD_COST_TOKENS, token_batches

    rng = np.random.default_rng(1)
    lengths = [256] * 40 + [int(n) for n in rng.integers(20, 256, size=120)]
    budget = 8 * 256

    def cost(batches: list[list[int]]) -> int:
        padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
        return padded + FORWARD_COST_TOKENS * len(batches)

    ours = token_batches(lengths, budget)
    no_padding = token_batches(lengths, budget, pass_cost=0)
    fewest_passes = token_batches(lengths, budget, pass_cost=10**9)
    assert cost(ours) < cost(no_padding) and cost(ours) < cost(fewest_passes)
    assert sum(len(b) * max(lengths[i] for i in b) for b in ours) < 1.05 * sum(lengths)
    assert len(ours) < 0.5 * len(no_padding)
