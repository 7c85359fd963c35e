"""Rediscovery across runs (crossdiff.recurrence): matching finds a permuted copy's every
feature at the right index and nothing in an unrelated crosscoder; ``crossdiff train --seeds``
and ``crossdiff compare`` run on a tiny store, resume, and feed the views."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from crossdiff.cli import main
from crossdiff.crosscoder import Crosscoder, CrosscoderConfig
from crossdiff.errors import CrossdiffError
from crossdiff.paths import RunPaths
from crossdiff.recurrence import (
    MatchConfig,
    compare,
    load_recurrence,
    match_crosscoders,
    plan_members,
    recurrence_column,
    recurrence_html,
    recurrence_lines,
    recurrence_summary,
)
from crossdiff.recurrence.matching import assign_one_to_one
from crossdiff_bench.synthetic import planted_activations, write_synthetic_store

D_A, D_B, F = 64, 48, 128


def relu_crosscoder(seed: int) -> Crosscoder:
    """A random ReLU DFC whose every feature fires on about half the rows (b_enc = 0)."""
    cfg = CrosscoderConfig.dfc(D_A, D_B, F, exclusive=0.125, activation="relu")
    cc = Crosscoder(cfg, seed=seed)
    with torch.no_grad():
        cc.b_enc.zero_()
    return cc.eval()


def permuted_copy(cc: Crosscoder, seed: int) -> tuple[Crosscoder, dict[str, np.ndarray]]:
    """The same crosscoder with its A- and B-exclusive features in another order; returns
    where each reference feature went (global index) per model."""
    p = cc.partition
    rng = np.random.default_rng(seed)
    perm = {"a": rng.permutation(p.n_a), "b": rng.permutation(p.n_b)}
    state = {k: v.clone() for k, v in cc.state_dict().items()}
    new = dict(state)
    # local layouts: W_enc_a (d_a, n_A + n_S) = [A-exclusive | shared]; W_dec_a likewise by rows
    pa_, pb_ = perm["a"], perm["b"]
    new["W_enc_a"][:, : p.n_a] = state["W_enc_a"][:, pa_]
    new["W_dec_a"][: p.n_a] = state["W_dec_a"][pa_]
    new["W_enc_b"][:, : p.n_b] = state["W_enc_b"][:, pb_]
    new["W_dec_b"][: p.n_b] = state["W_dec_b"][pb_]
    b = state["b_enc"].clone()
    b[: p.n_a] = state["b_enc"][pa_]
    b[p.n_a : p.n_a + p.n_b] = state["b_enc"][p.n_a + pb_]
    new["b_enc"] = b
    out = Crosscoder(cc.config, seed=0)
    out.load_state_dict(new)
    # reference feature i (block-local) sits at position inverse[i] in the copy
    where = {
        "a": np.argsort(pa_) + p.a_exclusive.start,
        "b": np.argsort(pb_) + p.b_exclusive.start,
    }
    return out.eval(), where


def rows(n: int = 2048, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, D_A, generator=g), torch.randn(n, D_B, generator=g)


@pytest.mark.parametrize("method", ["auto", "greedy"])
def test_permuted_copies_match_every_feature_at_its_index(method):
    ref = relu_crosscoder(0)
    copies = [permuted_copy(ref, s) for s in (1, 2)]
    x_a, x_b = rows()
    res = match_crosscoders(
        ref, [c for c, _ in copies], x_a, x_b, MatchConfig(one_to_one=method, batch_size=500)
    )
    for (_, where), per in zip(copies, res):
        for m in ("a", "b"):
            mm = per[m]
            assert mm.n_matched == len(mm.ref_features)
            np.testing.assert_array_equal(mm.matched, where[m])
            np.testing.assert_allclose(mm.cosine, 1.0, atol=1e-5)
            np.testing.assert_allclose(mm.correlation, 1.0, atol=1e-5)
            assert (mm.ref_active > 0).all()


def test_an_unrelated_crosscoder_matches_nothing():
    ref, other = relu_crosscoder(0), relu_crosscoder(7)
    x_a, x_b = rows()
    for rule in ("both", "either"):
        per = match_crosscoders(ref, [other], x_a, x_b, MatchConfig(rule=rule))[0]
        assert per["a"].n_matched == 0 and per["b"].n_matched == 0
        assert np.nanmax(per["a"].best_cosine) < 0.7


def test_one_to_one_never_gives_one_feature_twice():
    score = np.array([[0.9, 0.8], [0.95, 0.1], [0.9, 0.9]])
    adm = score >= 0.5
    for method in ("scipy", "greedy"):
        col = assign_one_to_one(score, adm, method)
        hit = col[col >= 0]
        assert len(hit) == len(set(hit.tolist())) == 2
    assert assign_one_to_one(score, np.zeros_like(adm), "greedy").tolist() == [-1, -1, -1]


def test_bad_settings_are_clear_errors(tmp_path):
    with pytest.raises(CrossdiffError, match="rule"):
        MatchConfig(rule="maybe").validate()
    with pytest.raises(CrossdiffError, match="min_cosine"):
        MatchConfig(min_cosine=2.0).validate()
    with pytest.raises(CrossdiffError, match="--seeds"):
        plan_members(tmp_path, seeds=0, base_seed=0, reference_exclusive=0.05)
    with pytest.raises(CrossdiffError, match="exclusive fraction 0"):
        plan_members(tmp_path, seeds=2, base_seed=0, reference_exclusive=0.05, exclusive=[0.0])
    names = [
        m.name
        for m in plan_members(
            tmp_path, seeds=2, base_seed=0, reference_exclusive=0.05, exclusive=[0.01, 0.05]
        )
    ]
    assert names == ["s0-x0.01", "s1-x0.01", "s1-x0.05"]


TRAIN = [
    "--n-features", "32", "--k", "4", "--steps", "12", "--batch-size", "128", "--lr", "3e-3",
    "--warmup-steps", "2", "--k-anneal-from", "0", "--dead-window", "256",
    "--checkpoint-every", "5", "--device", "cpu", "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("rec") / "run"
    root.mkdir()
    write_synthetic_store(
        RunPaths(root).store,
        n_docs=120,
        words_per_doc=30,
        d_a=16,
        d_b=12,
        activations=planted_activations(16, 12),
        shard_rows=600,
    )
    assert main(["train", str(root), "--seeds", "2", "--exclusive", "0.125", *TRAIN]) == 0
    return root


def test_train_seeds_writes_members_and_resumes(run_folder, capsys):
    paths = RunPaths(run_folder)
    member = paths.member("s1-x0.125")
    assert (paths.crosscoder / "model.safetensors").is_file()
    assert (member / "model.safetensors").is_file()
    summary = json.loads((member / "train_summary.json").read_text())
    assert summary["train_config"]["seed"] == 1
    # the same settings again: nothing is retrained; without options the reference's own
    mtime = (member / "model.safetensors").stat().st_mtime_ns
    assert main(["train", str(run_folder), "--seeds", "2", "--no-progress"]) == 0
    assert (member / "model.safetensors").stat().st_mtime_ns == mtime
    assert "s1-x0.125" in capsys.readouterr().out
    with pytest.raises(CrossdiffError, match="other settings"):
        from crossdiff.recurrence import train_members

        train_members(run_folder, seeds=2, train={"steps": 13}, progress=False)


def test_compare_cli_writes_the_table_and_feeds_the_views(run_folder, capsys):
    assert main(["compare", str(run_folder), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "found again" in out
    folder = RunPaths(run_folder).recurrence
    table = pq.read_table(folder / "recurrence.parquet")
    meta = json.loads((folder / "recurrence.json").read_text())
    assert meta["n_others"] == 1 and [m["name"] for m in meta["members"]] == ["s1-x0.125"]
    assert table.num_rows == 8  # 4 A-exclusive + 4 B-exclusive of 32
    assert set(table["recurs"].to_pylist()) <= {0, 1}
    col = recurrence_column(run_folder)
    assert col is not None and col.shape == (32,)
    assert (col[8:] == -1).all() and (col[:8] >= 0).all()
    feat = int(table["feature"][0].as_py())
    lines = recurrence_lines(run_folder, feat)
    assert lines and "of 1 other" in lines[0] and "s1-x0.125" in lines[1]
    assert recurrence_lines(run_folder, 20) == []  # a shared feature
    assert recurrence_summary(run_folder).startswith("rediscovery over 1 other")
    assert '<section id="recurrence">' in recurrence_html(run_folder)
    analysis = RunPaths(run_folder).analysis  # the report and show hold the analysis folder
    analysis.mkdir(exist_ok=True)
    (analysis / "analysis.json").write_text("{}")
    assert recurrence_html(analysis) == recurrence_html(run_folder)
    assert recurrence_lines(analysis, feat) == lines


def test_views_escape_names_and_drop_stale_results(run_folder, tmp_path):
    import shutil

    paths = RunPaths(run_folder)
    hostile = "<img src=x onerror=alert(1)>"
    shutil.copytree(paths.member("s1-x0.125"), paths.crosscoders / hostile)
    try:
        res = compare(run_folder, progress=False)
        assert res.meta["n_others"] == 2
        html = recurrence_html(run_folder)
        assert hostile not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
        # the copy is the same crosscoder as s1: both find exactly the same features
        t = res.table
        matched = np.asarray(t["matched"].to_pylist())
        np.testing.assert_array_equal(matched[:, 0], matched[:, 1])
    finally:
        shutil.rmtree(paths.crosscoders / hostile)
    summary = paths.crosscoder / "train_summary.json"
    text = summary.read_text()
    summary.write_text(text + " ")  # the reference changed: its results no longer apply
    try:
        assert load_recurrence(run_folder) is None
        assert recurrence_column(run_folder) is None and recurrence_html(run_folder) == ""
    finally:
        summary.write_text(text)
    assert load_recurrence(run_folder) is not None


def test_compare_without_members_says_what_to_do(tmp_path):
    with pytest.raises(CrossdiffError, match="train it first"):
        compare(tmp_path, progress=False)


def test_several_fractions_keep_the_reference_and_add_one_member_each(tmp_path, capsys):
    root = tmp_path / "run"
    write_synthetic_store(
        RunPaths(root).store, n_docs=60, words_per_doc=20, d_a=16, d_b=12, shard_rows=600
    )
    args = ["train", str(root), "--seeds", "1", "--exclusive", "0.05,0.125", *TRAIN]
    assert main(args) == 0  # the reference at the default 0.05 is seed 0 at 0.05 itself
    names = sorted(p.name for p in RunPaths(root).crosscoders.iterdir())
    assert names == ["s0-x0.125"]
    ref = json.loads((RunPaths(root).crosscoder / "train_summary.json").read_text())
    assert ref["requested_config"]["frac_exclusive_a"] == 0.05
    assert main(["train", str(root), "--exclusive", "0.05,0.125", *TRAIN]) == 2  # not without
    assert "only with --seeds" in capsys.readouterr().err
    res = compare(root, progress=False)
    assert res.meta["members"][0]["n_a"] == 4 and res.meta["reference"]["n_a"] == 2
