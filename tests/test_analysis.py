"""Analysis: streaming statistics and examples against brute force, the exclusivity check on
planted signals, ranking, ``crossdiff show``, bad input, and a harvested tiny-model run.

Stores are written with the real store writer (crossdiff_bench.synthetic) so provenance,
documents and shards are the real format; the planted run has one A-only, one B-only and two
shared-but-labelled-exclusive signals with hand-built crosscoders that read them.
"""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from crossdiff.analysis import AnalysisConfig, analyze, load_analysis
from crossdiff.analysis.ranking import band_order, rank_candidates, verdicts
from crossdiff.analysis.streaming import (
    FeatureStats,
    PerFeatureTopK,
    _fmix32,
    quantile_band_picks,
    sample_keys,
)
from crossdiff.cli import main as cli_main
from crossdiff.crosscoder import Crosscoder, CrosscoderConfig
from crossdiff.errors import CrossdiffError
from crossdiff.paths import RunPaths
from crossdiff.report import show_feature
from crossdiff_bench.synthetic import (
    HOSTILE_TEXT,
    make_planted_run,
    planted_crosscoder,
    write_synthetic_store,
)

D_A, D_B = 16, 12


def quiet(**kw) -> AnalysisConfig:
    base = {"probe_split": "all", "progress": False, "device": "cpu"}
    base.update(kw)
    return AnalysisConfig(**base)


# ---- streaming building blocks --------------------------------------------------------------
def fmix32_reference(x: int) -> int:
    m = 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & m
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & m
    return x ^ (x >> 16)


def test_hash_matches_reference_and_is_a_bijection_per_feature() -> None:
    xs = torch.tensor([0, 1, 2, 12345, 2**31 - 1, 2**32 - 1], dtype=torch.int64)
    assert _fmix32(xs).tolist() == [fmix32_reference(int(x)) for x in xs]
    rows = torch.arange(100_000)
    keys = sample_keys(rows, torch.full_like(rows, 7), seed=3)
    assert keys.unique().numel() == rows.numel()
    assert int(keys.min()) >= 0 and int(keys.max()) < 2**32


def random_entries(n_rows: int, n_feat: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Sparse (rows, feats, vals) sorted by row, with many exact ties (values in steps of 0.5)."""
    gen = torch.Generator().manual_seed(seed)
    dense = (
        (torch.rand(n_rows, n_feat, generator=gen) < 0.3)
        * torch.randint(1, 6, (n_rows, n_feat), generator=gen).float()
        / 2
    )
    rows, feats = torch.nonzero(dense, as_tuple=True)
    return dense, rows, feats, dense[rows, feats]


@pytest.mark.parametrize("batch", [3, 64, 1000])
def test_per_feature_topk_equals_brute_force_with_ties(batch: int) -> None:
    dense, rows, feats, vals = random_entries(500, 9, seed=1)
    top = PerFeatureTopK(9, 5)
    keys = sample_keys(rows, feats, seed=0)
    sample = PerFeatureTopK(9, 6, score_dtype=torch.int64)
    for start in range(0, 500, batch):
        sel = (rows >= start) & (rows < start + batch)
        top.update(feats[sel], vals[sel], rows[sel], vals[sel])
        sample.update(feats[sel], -keys[sel], rows[sel], vals[sel])
    for f in range(9):
        fired = torch.nonzero(dense[:, f], as_tuple=True)[0].tolist()
        by_value = sorted(fired, key=lambda r: (-float(dense[r, f]), r))[:5]
        assert top.row[f].tolist() == by_value
        key_of = sample_keys(torch.arange(500), torch.full((500,), f), seed=0)
        by_key = sorted(fired, key=lambda r: int(key_of[r]))
        assert sample.row[f].tolist() == by_key[:6]
        assert sample.value[f].tolist() == [float(dense[r, f]) for r in by_key[:6]]


def test_feature_stats_equal_direct_computation() -> None:
    dense, rows, feats, vals = random_entries(300, 6, seed=2)
    st = FeatureStats(6)
    for start in range(0, 300, 37):
        sel = (rows >= start) & (rows < start + 37)
        st.update(feats[sel], vals[sel], min(37, 300 - start))
    active = dense > 0
    assert st.rows == 300
    assert st.count.tolist() == active.sum(0).tolist()
    torch.testing.assert_close(st.sum.float(), dense.sum(0))
    torch.testing.assert_close(st.max, dense.max(0).values)
    mins = torch.where(active, dense, torch.inf).min(0).values
    torch.testing.assert_close(st.min_pos, mins)


def test_quantile_bands_split_the_sample_by_value() -> None:
    gen = torch.Generator().manual_seed(0)
    values = torch.rand(3, 40, generator=gen)
    keys = torch.randint(0, 2**32, (3, 40), generator=gen)
    filled = torch.ones(3, 40, dtype=torch.bool)
    filled[1, 10:] = False  # a feature with only 10 sampled activations
    filled[2] = False  # one that never fired
    slots, bands = quantile_band_picks(values, keys, filled, bands=4, per_band=3)
    assert int((slots[0] >= 0).sum()) == 12
    order = values[0].argsort()
    band_of = {int(slot): rank * 4 // 40 for rank, slot in enumerate(order)}
    for s, band in zip(slots[0].tolist(), bands[0].tolist()):
        assert band_of[s] == band
    assert (slots[2] == -1).all()
    assert int((slots[1] >= 0).sum()) == 10  # bands of 2-3 entries, all taken
    assert all(bool(filled[1, s]) for s in slots[1].tolist() if s >= 0)


# ---- the analysis pass against brute force --------------------------------------------------
@pytest.fixture(scope="module")
def gaussian_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Gaussian store and a BatchTopK DFC with a calibrated inference threshold."""
    root = tmp_path_factory.mktemp("gauss")
    write_synthetic_store(
        RunPaths(root).store, n_docs=70, words_per_doc=30, d_a=D_A, d_b=D_B, shard_rows=400
    )
    cc = Crosscoder(CrosscoderConfig.dfc(D_A, D_B, 48, exclusive=0.125, k=4), seed=1).eval()
    cc.threshold[0] = 0.35
    cc.save_pretrained(RunPaths(root).crosscoder)
    return root


def brute_force(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Dense activations of every store row (same batches as the pass) and the row ids."""
    from crossdiff.store import ActivationStore

    store = ActivationStore.open(RunPaths(root).store)
    cc = Crosscoder.from_pretrained(RunPaths(root).crosscoder)
    dense, rows = [], []
    with torch.no_grad():
        for x_a, x_b, meta in store.iter_rows(4096, dtype=torch.bfloat16):
            xa = cc.normalize(x_a.float(), "a")
            xb = cc.normalize(x_b.float(), "b")
            dense.append(cc.encode(xa, xb).numpy())
            rows.append(meta["row"])
    return np.concatenate(dense), np.concatenate(rows)


def test_streaming_top_examples_and_stats_equal_brute_force(gaussian_run: Path) -> None:
    res = analyze(gaussian_run, config=quiet(top_n=6, batch_size=4096))
    dense, rows = brute_force(gaussian_run)
    assert res.meta["rows_analysed"] == len(rows) == res.meta["store"]["rows"]
    ex = res.examples.to_pydict()
    feat = np.array(ex["feature"])
    kind = np.array(ex["kind"])
    f_tab = res.features.to_pydict()
    checked = 0
    for f in range(dense.shape[1]):
        col = dense[:, f]
        fired = np.flatnonzero(col > 0)
        expected = sorted(fired.tolist(), key=lambda i: (-col[i], rows[i]))[:6]
        sel = (feat == f) & (kind == "top")
        got_rows = np.array(ex["row"])[sel][np.argsort(np.array(ex["order"])[sel])]
        assert got_rows.tolist() == rows[expected].tolist(), f"feature {f}"
        np.testing.assert_allclose(np.array(ex["activation"])[sel].max(initial=0), col.max())
        # statistics
        assert f_tab["count"][f] == fired.size
        assert f_tab["frequency"][f] == pytest.approx(fired.size / len(rows))
        assert f_tab["s_max"][f] == pytest.approx(col.max(), rel=1e-6)
        if fired.size:
            assert f_tab["mean_act"][f] == pytest.approx(col[fired].mean(), rel=1e-5)
            assert f_tab["std_act"][f] == pytest.approx(col[fired].std(), rel=1e-3, abs=1e-6)
            checked += 1
        assert f_tab["dead"][f] == (fired.size == 0)
    assert checked > 30
    # band examples are real activations of their feature, ordered by band
    value_at = {int(r): i for i, r in enumerate(rows)}
    for f in range(dense.shape[1]):
        sel = np.flatnonzero((feat == f) & (kind == "band"))
        by_band: dict[int, list[float]] = {}
        for i in sel:
            act = float(dense[value_at[ex["row"][i]], f])
            assert act == pytest.approx(ex["activation"][i], rel=1e-5)
            by_band.setdefault(ex["order"][i], []).append(act)
        bands = sorted(by_band)
        for lo, hi in itertools.pairwise(bands):
            assert max(by_band[lo]) <= min(by_band[hi]) + 1e-6
    # provenance points at the right document, and the token span at the right word
    from crossdiff.store import ActivationStore

    store = ActivationStore.open(RunPaths(gaussian_run).store)
    for i in range(0, len(feat), 97):
        doc = store.document(ex["doc_index"][i])
        text_a = doc["windows"][ex["window"][i]]["a"]["text"]
        tok = text_a[ex["span_a_start"][i] : ex["span_a_end"][i]]
        if ex["tok_a"][i] is not None:
            assert ex["tok_a"][i] == tok
            assert ex["tok_b"][i] == tok  # B renders the same words after a prefix
        assert tok and " " not in tok


def test_examples_do_not_depend_on_batch_size(gaussian_run: Path, tmp_path: Path) -> None:
    a = analyze(gaussian_run, out=tmp_path / "a", config=quiet(batch_size=200))
    b = analyze(gaussian_run, out=tmp_path / "b", config=quiet(batch_size=1000))
    for col in ("feature", "kind", "order", "row"):
        assert a.examples[col].to_pylist() == b.examples[col].to_pylist()
    np.testing.assert_allclose(
        a.examples["activation"].to_numpy(), b.examples["activation"].to_numpy(), rtol=1e-5
    )
    assert a.features["count"].to_pylist() == b.features["count"].to_pylist()


def test_max_rows_contexts_none_and_show_reads_the_store(
    gaussian_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    for part in ("store", "crosscoder"):
        shutil.copytree(gaussian_run / part, run / part)
    res = analyze(run, config=quiet(max_rows=500, contexts_for="none"))
    assert res.meta["rows_analysed"] == 500
    assert max(res.examples["row"].to_pylist()) < 500
    assert set(res.examples["tok_a"].to_pylist()) == {None}
    alive = [f["feature"] for f in res.features.to_pylist() if not f["dead"]]
    text = show_feature(run, alive[0])
    assert "[[" in text and "text not available" not in text  # cut from the store instead
    shutil.rmtree(run / "store")
    assert "text not available" in show_feature(run, alive[0])


# ---- the exclusivity check on planted signals -----------------------------------------------
@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, int]]]:
    out = {}
    for kind in ("dfc", "standard"):
        root = tmp_path_factory.mktemp(f"planted-{kind}")
        roles = make_planted_run(root, kind=kind)
        analyze(root, config=quiet())
        out[kind] = (root, roles)
    return out


@pytest.mark.parametrize("kind", ["dfc", "standard"])
def test_check_confirms_exclusive_and_refutes_shared_signals(planted, kind: str) -> None:
    root, roles = planted[kind]
    res = load_analysis(root)
    for role in ("a_only", "b_only"):
        f = res.feature(roles[role])
        assert f["klass"] == role[0].upper()
        assert f["verdict"] == "confirmed", (role, f)
        assert f["cross_r2"] < 0.2
        assert f["test_active"] >= 10
    f = res.feature(roles["a_shared"])
    assert f["klass"] == "A"
    assert f["verdict"] == "refuted"
    assert f["cross_r2"] > 0.5
    ranks = {role: res.feature(i)["rank"] for role, i in roles.items()}
    assert ranks["a_only"] < ranks["a_shared"]  # confirmed before refuted
    if kind == "standard":
        # latent scaling: the shrunk decoder hides B's copy of the concept; beta sees it
        assert res.feature(roles["a_shared"])["ls_ratio"] > 0.7
        assert abs(res.feature(roles["a_only"])["ls_ratio"]) < 0.2
        assert res.meta["crosscoder"]["kind"] == "standard"
    else:
        assert res.feature(roles["b_shared"])["verdict"] == "refuted"
        assert np.isnan(res.feature(roles["a_only"])["ls_ratio"])
    meta = res.meta
    assert meta["check"]["fit_rows"] > 0 and meta["check"]["test_rows"] > 0
    assert meta["classes"]["A"]["refuted"] >= 1
    assert json.loads((res.folder / "analysis.json").read_text())["format"] == "crossdiff-analysis"


def _triggered_run(root: Path) -> int:
    """A run whose A-only signal (A's dim 0: a behaviour) fires only in 'prompts' documents,
    always together with a trigger both models see (A's dim 3 = B's dim 3); in 'general'
    documents the trigger never appears. Returns the A-exclusive feature that reads dim 0."""

    def make(doc: int, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x_a = rng.normal(0.0, 0.3, size=(n, D_A))
        x_b = rng.normal(0.0, 0.3, size=(n, D_B))
        shared = (rng.random(n) < 0.2) * rng.uniform(1.0, 2.0, size=n)
        x_a[:, 4] += shared  # a concept both models have, everywhere
        x_b[:, 4] += shared
        if doc % 2 == 0:  # a 'prompts' document
            trig = (rng.random(n) < 0.2) * rng.uniform(1.0, 2.0, size=n)
            x_a[:, 3] += trig
            x_b[:, 3] += trig
            x_a[:, 0] += trig  # the behaviour, on the trigger
        return torch.from_numpy(x_a).float(), torch.from_numpy(x_b).float()

    paths = RunPaths(root)
    write_synthetic_store(
        paths.store,
        n_docs=160,
        words_per_doc=30,
        d_a=D_A,
        d_b=D_B,
        activations=make,
        shard_rows=600,
        sources=lambda doc: "prompts" if doc % 2 == 0 else "general",
    )
    cc, roles = planted_crosscoder("dfc", D_A, D_B)
    cc.save_pretrained(paths.crosscoder)
    return roles["a_only"]


def test_map_sources_fit_the_check_on_general_text_only(tmp_path: Path) -> None:
    """A behaviour on a trigger both models see: the map fitted on every document learns the
    trigger -> behaviour link from the prompts and refutes the feature; fitted on the general
    documents only, it cannot, and the feature is confirmed. Every row is still scored."""
    f = _triggered_run(tmp_path)
    everything = analyze(tmp_path, config=quiet(probe_split="crossfit"))
    row = everything.feature(f)
    assert row["verdict"] == "refuted" and row["cross_r2"] > 0.5, row
    general = analyze(
        tmp_path,
        out=tmp_path / "general",
        config=quiet(probe_split="crossfit", map_sources=["general"]),
    )
    row2 = general.feature(f)
    assert row2["verdict"] == "confirmed" and row2["cross_r2"] < 0.2, row2
    assert list(general.meta["config"]["map_sources"]) == ["general"]
    assert general.meta["check"]["fit_rows"] < everything.meta["check"]["fit_rows"]
    assert general.meta["check"]["test_rows"] == everything.meta["check"]["test_rows"]
    # the 'eval'/'all' scheme narrows its fit rows the same way
    one_cut = analyze(
        tmp_path, out=tmp_path / "all", config=quiet(probe_split="all", map_sources=("general",))
    )
    assert one_cut.feature(f)["verdict"] == "confirmed"
    # a source the store does not hold names the ones it does, and writes nothing
    with pytest.raises(CrossdiffError, match=r"wiki: no document .* holds: general, prompts"):
        analyze(tmp_path, out=tmp_path / "typo", config=quiet(map_sources=("wiki",)))
    assert not (tmp_path / "typo").exists()
    with pytest.raises(CrossdiffError, match="map_sources='general' must be a list"):
        AnalysisConfig(map_sources="general")
    # the command line takes them comma-separated
    out = tmp_path / "cli"
    argv = ["analyze", str(tmp_path), "--out", str(out), "--no-progress", "--device", "cpu"]
    assert cli_main([*argv, "--map-sources", "general, prompts"]) == 0
    assert list(load_analysis(out).meta["config"]["map_sources"]) == ["general", "prompts"]


def test_ranking_rules() -> None:
    klass = np.array(["A", "A", "A", "A", "A", "B", "S"])
    verdict = np.array(
        ["refuted", "confirmed", "confirmed", "untested", "confirmed", "confirmed", ""]
    )
    score = np.array([0.1, 0.95, 0.95, np.nan, 0.5, 0.9, np.nan])
    freq = np.array([0.005, 0.2, 0.005, 0.005, 0.005, 0.005, 0.5])
    mean = np.ones(7)
    reviewable = np.array([True, True, True, True, False, True, True])
    rank = rank_candidates(klass, verdict, score, freq, mean, reviewable)
    # confirmed (0.95, 0.1-1% band) < confirmed (0.95, >=10% band) < untested < refuted
    assert rank.tolist() == [4, 2, 1, 3, 0, 1, 0]
    decades = np.array([0.005, 0.05, 0.0005, 0.5, 5e-5, 5e-6, 0.0])
    assert band_order(decades).tolist() == [0, 1, 2, 3, 4, 5, 98]
    cfg = AnalysisConfig()
    v = verdicts(
        np.array([True, True, True, False]),
        np.array([0.9, 0.1, 0.1, 0.9]),
        np.array([50, 50, 3, 50]),
        np.array([np.nan, 0.6, np.nan, np.nan]),
        cfg,
    )
    assert v.tolist() == ["refuted", "refuted", "untested", ""]


# ---- show, CLI and bad input ----------------------------------------------------------------
def test_show_marks_the_token_and_neutralizes_control_characters(planted, capsys) -> None:
    root, roles = planted["dfc"]
    text = show_feature(root, roles["a_only"], examples=3)
    assert "confirmed" in text and "s_max" in text and "[[" in text and "]]" in text
    assert "<script>document.title='pwned'</script>" in text  # shown as text
    assert "\x1b" not in text and "\\x1b" in text
    assert cli_main(["show", str(root), str(roles["a_shared"])]) == 0
    out = capsys.readouterr().out
    assert "refuted" in out and "\x1b[7m" not in out  # not a tty: no colour


def test_bad_input_names_the_fix(planted, tmp_path: Path, capsys) -> None:
    root, _ = planted["dfc"]
    n = load_analysis(root).features.num_rows
    with pytest.raises(CrossdiffError, match=f"feature {n} out of range.*0-{n - 1}"):
        show_feature(root, n)
    assert cli_main(["show", str(root), "-1"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert cli_main(["show", str(root), "abc"]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CrossdiffError, match="crossdiff analyze"):
        show_feature(empty, 0)
    with pytest.raises(CrossdiffError, match="crossdiff harvest"):
        analyze(empty, config=quiet())
    shutil.copytree(RunPaths(root).store, RunPaths(empty).store)
    with pytest.raises(CrossdiffError, match="crossdiff train"):
        analyze(empty, config=quiet())
    assert cli_main(["analyze", str(empty), "--no-progress"]) == 2
    assert "crossdiff train" in capsys.readouterr().err
    with pytest.raises(CrossdiffError, match="does not exist"):
        analyze(tmp_path / "nowhere", config=quiet())
    wrong = Crosscoder(CrosscoderConfig.dfc(D_B, D_A, 16, k=4))
    with pytest.raises(CrossdiffError, match="widths"):
        analyze(store=RunPaths(root).store, crosscoder=wrong, out=tmp_path / "w", config=quiet())
    with pytest.raises(CrossdiffError, match="rel_lo"):
        AnalysisConfig(rel_lo=0.9, rel_hi=0.1)
    (RunPaths(empty).analysis).mkdir()
    (RunPaths(empty).analysis / "analysis.json").write_text("{not json")
    for f in ("features.parquet", "examples.parquet"):
        shutil.copy(RunPaths(root).analysis / f, RunPaths(empty).analysis / f)
    with pytest.raises(CrossdiffError, match="not valid JSON"):
        load_analysis(empty)


def test_cli_analyze_prints_a_summary(planted, tmp_path: Path, capsys) -> None:
    root, _ = planted["standard"]
    out = tmp_path / "cli"
    rc = cli_main(
        [
            "analyze",
            str(root),
            "--out",
            str(out),
            "--no-progress",
            "--probe-split",
            "all",
            "--device",
            "cpu",
            "--top",
            "5",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "A-exclusive candidates" in text and "refuted" in text and "peak memory" in text
    res = load_analysis(out)
    assert res.meta["config"]["top_n"] == 5
    tops = [x for x in res.examples.to_pylist() if x["kind"] == "top"]
    assert max(x["order"] for x in tops) == 4


# ---- a real harvested store from tiny models -------------------------------------------------
@pytest.mark.slow
def test_tiny_models_harvest_train_analyze_show(tiny_model, tmp_path: Path) -> None:
    from crossdiff.crosscoder.fit import crosscoder_config_for_store
    from crossdiff.crosscoder.train import train_crosscoder
    from crossdiff.crosscoder.train_config import TrainConfig
    from crossdiff.harvest import HarvestConfig, harvest
    from crossdiff.store import ActivationStore
    from tiny import TRAINING_TEXT

    lines = [ln for ln in TRAINING_TEXT.splitlines() if ln.strip()]
    corpus = tmp_path / "corpus.jsonl"
    with corpus.open("w", encoding="utf-8") as fh:
        for i in range(40):
            text = " ".join(lines[(i + j) % len(lines)] for j in range(4))
            if i == 5:
                text = HOSTILE_TEXT + " " + text
            fh.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            if i % 3 == 2:  # chats too: the analysis says where each feature fires
                chat = [
                    {"role": "user", "content": lines[i % len(lines)]},
                    {"role": "assistant", "content": lines[(i + 5) % len(lines)]},
                ]
                fh.write(json.dumps({"messages": chat}, ensure_ascii=False) + "\n")
    run = tmp_path / "run"
    harvest(
        HarvestConfig(
            model_a=str(tiny_model("gpt2", "bpe")),
            model_b=str(tiny_model("llama", "sentencepiece")),
            corpus=str(corpus),
            out=str(RunPaths(run).store),
            max_seq_len=64,
            batch_size=4,
            shard_rows=300,
            dtype="float32",
            device="cpu",
            progress=False,
        )
    )
    store = ActivationStore.open(RunPaths(run).store)
    cfg = crosscoder_config_for_store(store, n_features=128, k=8, exclusive=0.1)
    tc = TrainConfig(
        steps=60,
        batch_size=128,
        lr=1e-3,
        warmup_steps=5,
        device="cpu",
        k_anneal_from=None,
        checkpoint_every=1000,
        log_every=20,
    )
    train_crosscoder(store.source("all"), cfg, tc, progress=False).save_pretrained(
        RunPaths(run).crosscoder
    )
    res = analyze(run, config=quiet(top_n=5))
    assert res.meta["models"]["a"]["d_model"] == 64
    assert res.meta["eval"]["fve_a"] == res.meta["eval"]["fve_a"]  # a number
    ex = res.examples.to_pylist()
    with_text = [x for x in ex if x["tok_a"] is not None]
    assert with_text, "exclusive features have example texts"
    for x in with_text[:50]:
        w = store.document(x["doc_index"])["windows"][x["window"]]
        assert w["a"]["text"][x["span_a_start"] : x["span_a_end"]] == x["tok_a"]
        assert w["b"]["text"][x["span_b_start"] : x["span_b_end"]] == x["tok_b"]
        # both models had read the same content up to the paired tokens
        assert x["content_end"] > 0
    where = res.meta["where"]
    assert 0 < where["chat_rows_share"] < 1
    assert where["rows_by_role"]["user"] > 0 and where["rows_by_role"]["assistant"] > 0
    assert where["store"]["chat_pairs"] + where["store"]["text_pairs"] == store.n_rows
    rows = res.features.to_pylist()
    fired = [f for f in rows if not f["dead"]]
    for f in fired:
        assert 0 <= f["chat_share"] <= 1 + 1e-6
        if f["chat_share"] > 0:
            assert f["user_share"] + f["assistant_share"] <= 1 + 1e-6
    # the mass-weighted mean of the features' chat shares is the store's, weighted by activation
    mass = np.array([f["mean_act"] * f["count"] for f in fired])
    share = np.array([f["chat_share"] for f in fired])
    assert 0 < float((mass * share).sum() / mass.sum()) < 1
    alive_a = [f for f in res.features.to_pylist() if f["klass"] == "A" and not f["dead"]]
    feature = alive_a[0]["feature"] if alive_a else 0
    text = show_feature(run, feature)
    assert f"feature {feature}" in text


def test_stitch_maps_and_cross_r2_equal_direct_computation() -> None:
    from crossdiff.analysis.encoding import firing_thresholds
    from crossdiff.analysis.exclusivity import (
        CrossMoments,
        CrossPredictionScorer,
        fit_stitch_maps,
    )

    gen = torch.Generator().manual_seed(0)
    x_b = torch.randn(3000, 6, generator=gen) + 3.0  # a large mean: tests the shifted moments
    x_a = x_b @ torch.randn(6, 5, generator=gen) + 0.3 * torch.randn(3000, 5, generator=gen)
    mom = CrossMoments(5, 6)
    for s in range(0, 3000, 700):
        mom.update(x_a[s : s + 700], x_b[s : s + 700])
    maps = fit_stitch_maps(mom, ridge=0.01)
    xa, xb = x_a.double(), x_b.double()
    cb = xb - xb.mean(0)
    lam = 0.01 * float((cb * cb).sum()) / 6
    t = torch.linalg.solve(
        cb.T @ cb + lam * torch.eye(6, dtype=torch.float64), cb.T @ (xa - xa.mean(0))
    )
    torch.testing.assert_close(maps.t_ba.double(), t, rtol=1e-4, atol=1e-5)
    pred_a = (xb - xb.mean(0)) @ t + xa.mean(0)
    torch.testing.assert_close((x_b @ maps.t_ba + maps.c_ba).double(), pred_a, rtol=1e-4, atol=1e-4)
    fve = 1 - ((xa - pred_a) ** 2).sum() / ((xa - xa.mean(0)) ** 2).sum()
    assert maps.fve_ba == pytest.approx(float(fve), abs=1e-5)

    cc = Crosscoder(CrosscoderConfig.dfc(5, 6, 20, exclusive=0.1, activation="relu"), seed=0)
    with torch.no_grad():  # features that fire on part of the rows
        cc.W_enc_a.copy_(torch.randn(cc.W_enc_a.shape, generator=gen))
        cc.W_enc_b.copy_(torch.randn(cc.W_enc_b.shape, generator=gen))
        cc.b_enc.zero_()
        cc.b_enc.copy_(-cc.preacts(x_a, x_b).median(0).values)
    feats = torch.tensor([0, 1, 2, 3])  # two A-exclusive, two B-exclusive
    thr = firing_thresholds(cc, torch.zeros(20))
    scorer = CrossPredictionScorer(cc, maps, feats, ["a", "a", "b", "b"], thr)
    scorer.update(x_a, x_b)
    with torch.no_grad():
        f = cc.encode(x_a, x_b)[:, :4].double()
        w_a = cc.encoder_weight("a")[:, :4].double()
        w_b = cc.encoder_weight("b")[:, :4].double()
        b = cc.b_enc[:4].double()
        x_a_hat = (x_b @ maps.t_ba + maps.c_ba).double()
        x_b_hat = (x_a @ maps.t_ab + maps.c_ab).double()
        pre = (
            torch.cat(
                [x_a_hat @ w_a[:, :2] + xb @ w_b[:, :2], xa @ w_a[:, 2:] + x_b_hat @ w_b[:, 2:]], 1
            )
            + b
        )
    f_hat = pre.clamp_min(0)
    sst = ((f - f.mean(0)) ** 2).sum(0)
    r2 = 1 - ((f - f_hat) ** 2).sum(0) / sst
    assert bool((sst > 0).all())
    torch.testing.assert_close(scorer.r2(), r2, rtol=1e-3, atol=1e-4)
    assert scorer.active.tolist() == (f > 0).sum(0).tolist()
