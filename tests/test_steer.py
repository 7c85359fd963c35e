"""Steering (issue 5) on tiny random models of several architectures.

Generation-level properties are checked on every tiny architecture with the same hook functions
``crossdiff.steer`` uses; run-level behaviour (s_max, model choice, clamp, the cross-model map,
scoring, JSON, CLI, errors) on one real run folder: a store harvested from two tiny models of
different architectures and tokenizers, and a tiny DFC crosscoder saved into it.
"""

from __future__ import annotations

import http.server
import json
import math
import threading
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from crossdiff.cli import main as cli_main
from crossdiff.crosscoder import Crosscoder, CrosscoderConfig
from crossdiff.errors import CrossdiffError
from crossdiff.harvest import HarvestConfig, harvest
from crossdiff.paths import RunPaths
from crossdiff.steering import (
    FeatureReader,
    KeywordScorer,
    LLMJudge,
    RegexScorer,
    SteerConfig,
    SteeringResult,
    fit_linear_map,
    make_scorer,
    plan_models,
    steer,
)
from crossdiff.steering.api import steering_fn
from crossdiff.steering.context import RunContext, stream_s_max
from crossdiff.steering.generation import GenerationSettings, generate_rows, prompt_ids
from crossdiff.steering.hooks import add_fn, clamp_fn
from crossdiff.steering.prompts import read_prompts
from crossdiff.steering.scoring import parse_verdict
from crossdiff.steering.stitch import LinearMap, fit_store_map, load_or_fit_map
from crossdiff.store import ActivationStore
from tiny import TRAINING_TEXT

ARCHS = [
    ("gpt2", "bpe"),
    ("llama", "sentencepiece"),
    ("gemma3", "sentencepiece"),
    ("qwen3", "unigram"),
    ("qwen2", "bpe"),
    ("gpt_oss", "harmony"),
    ("qwen3_moe", "bpe"),
]
PROMPTS = ["The quick brown fox", "Who made you?", "def add(a, b):"]
SPEC_A = ("llama", "sentencepiece")
SPEC_B = ("qwen2", "bpe")
N_FEATURES = 32  # DFC with exclusive=0.125: A-exclusive 0-3, B-exclusive 4-7, shared 8-31
A_EXCL, B_EXCL, SHARED = 1, 5, 12
FAST = {"dtype": "float32", "device": "cpu", "max_new_tokens": 6}


pytestmark = pytest.mark.usefixtures("one_thread_module")


def hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def greedy(lm, ids: list[int], n: int) -> list[int]:
    """Plain greedy generation without any steering, as the reference."""
    out = lm.model.generate(
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=n,
        do_sample=False,
        pad_token_id=lm.tokenizer.pad_token_id,
    )
    return out[0, len(ids) :].tolist()


def random_direction(d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(d, generator=g)
    return v / v.norm()


# ------------------------------------------------------------------ generation, every arch
@pytest.mark.parametrize(("arch", "tok"), ARCHS)
def test_alpha_zero_is_unsteered_and_batched_equals_one_by_one(tiny_loaded, arch, tok):
    lm = tiny_loaded(arch, tok)
    settings = GenerationSettings(max_new_tokens=8)
    seqs_once = [prompt_ids(lm, p, chat=True) for p in PROMPTS]
    coefs = [0.0, 40.0, -40.0]
    rows = [(p, c) for p in range(len(PROMPTS)) for c in range(len(coefs))]
    seqs = [seqs_once[p] for p, _ in rows]
    vector = random_direction(lm.d_model)

    def make_fn(idx):
        return add_fn(vector, [coefs[rows[i][1]] for i in idx])

    before = hook_count(lm.model)
    batched = generate_rows(lm, 1, seqs, make_fn, settings, batch_size=16)
    single = generate_rows(lm, 1, seqs, make_fn, settings, batched=False)
    assert batched.batched and not single.batched
    assert batched.tokens == single.tokens
    assert hook_count(lm.model) == before
    eos = {lm.tokenizer.eos_token_id}
    changed = 0
    for r, (p, c) in enumerate(rows):
        reference = greedy(lm, seqs_once[p], 8)
        cut = next((i for i, t in enumerate(reference) if t in eos), len(reference))
        if coefs[c] == 0:
            assert batched.tokens[r] == reference[:cut]  # token for token
        else:
            changed += batched.tokens[r] != reference[:cut]
    assert changed >= 1  # a strong push changes what the model says


@pytest.mark.parametrize(("arch", "tok"), ARCHS)
def test_projection_rises_by_alpha_s_max_norm(tiny_loaded, arch, tok):
    lm = tiny_loaded(arch, tok)
    ids = torch.tensor([prompt_ids(lm, PROMPTS[0], chat=True)])
    layer = lm.resolve_layer("middle")
    d = random_direction(lm.d_model, 1) * 3.0  # a decoder row in raw scale
    alpha, s_max = 2.5, 1.7
    plain = lm.capture(ids, None, layer)[0]
    with lm.steering(layer, add_fn(d, [alpha * s_max])):
        steered = lm.capture(ids, None, layer)[0]
    unit = d / d.norm()
    rise = steered @ unit - plain @ unit
    expected = alpha * s_max * float(d.norm())  # alpha x s_max x |d|^2 / |d|
    torch.testing.assert_close(rise, torch.full_like(rise, expected), rtol=1e-4, atol=1e-4)
    ortho = (steered - plain) - torch.outer(rise, unit)
    assert float(ortho.abs().max()) < 1e-4  # nothing else moved at this layer


def test_hook_removed_when_generation_fails(tiny_loaded):
    lm = tiny_loaded("gpt2", "bpe")
    before = hook_count(lm.model)
    ids = torch.tensor([prompt_ids(lm, PROMPTS[0], chat=True)])
    reference = lm.model(input_ids=ids).logits
    calls = {"n": 0}

    def failing(idx):
        inner = add_fn(random_direction(lm.d_model), [5.0] * len(idx))

        def fn(hidden):
            calls["n"] += 1
            if calls["n"] > 2:
                raise RuntimeError("boom in the middle of generation")
            return inner(hidden)

        return fn

    with pytest.raises(RuntimeError, match="boom"):
        generate_rows(lm, 0, [ids[0].tolist()] * 2, failing, GenerationSettings(max_new_tokens=5))
    assert hook_count(lm.model) == before
    assert torch.equal(lm.model(input_ids=ids).logits, reference)


def test_batch_fallback_is_reported(tiny_loaded, monkeypatch):
    lm = tiny_loaded("qwen3", "unigram")
    original = lm.model.generate

    def picky(*args, **kwargs):
        if kwargs["input_ids"].shape[0] > 1:
            raise RuntimeError("this model cannot take padded batches")
        return original(*args, **kwargs)

    monkeypatch.setattr(lm.model, "generate", picky)
    seqs = [prompt_ids(lm, p, chat=True) for p in PROMPTS]
    out = generate_rows(
        lm, 1, seqs, lambda idx: add_fn(torch.zeros(64), [0.0] * len(idx)), GenerationSettings(3)
    )
    assert not out.batched and "one by one" in out.notes[0]
    assert all(len(t) <= 3 for t in out.tokens)


def test_sampling_is_seeded(tiny_loaded):
    lm = tiny_loaded("llama", "sentencepiece")
    seqs = [prompt_ids(lm, PROMPTS[1], chat=True)] * 2
    s = GenerationSettings(max_new_tokens=8, do_sample=True, temperature=1.5, seed=3)

    def make(idx):
        return add_fn(torch.zeros(64), [0.0] * len(idx))

    a = generate_rows(lm, 1, seqs, make, s).tokens
    b = generate_rows(lm, 1, seqs, make, s).tokens
    assert a == b
    with pytest.raises(CrossdiffError, match="temperature"):
        GenerationSettings(do_sample=True, temperature=0).validate()


# ------------------------------------------------------------------ one feature's activation
def _crosscoder(activation: str, calibrated: bool, seed: int = 0) -> Crosscoder:
    cfg = CrosscoderConfig.dfc(64, 48, N_FEATURES, exclusive=0.125, k=4, activation=activation)
    cc = Crosscoder(cfg, seed=seed).eval()
    if calibrated:
        cc.threshold.fill_(0.5)
    return cc


@pytest.mark.parametrize(
    ("activation", "calibrated"),
    [("relu", False), ("batchtopk", True), ("topk", False), ("batchtopk", False)],
)
def test_feature_reader_matches_encode(activation, calibrated):
    cc = _crosscoder(activation, calibrated)
    g = torch.Generator().manual_seed(0)
    x_a, x_b = torch.randn(20, 64, generator=g) * 2, torch.randn(20, 48, generator=g) * 2
    for feature in (A_EXCL, B_EXCL, SHARED, N_FEATURES - 1):
        reader = FeatureReader(cc, feature)
        got = reader(x_a, x_b)
        if activation == "batchtopk" and not calibrated:  # per row: its own top-k
            want = torch.cat([cc.encode(x_a[r : r + 1], x_b[r : r + 1]) for r in range(20)])
        else:
            want = cc.encode(x_a, x_b)
        torch.testing.assert_close(got, want[:, feature])
        one_side = reader(x_a=x_a)  # the other model read as zeros
        torch.testing.assert_close(
            one_side,
            (
                torch.cat([cc.encode(x_a[r : r + 1], torch.zeros(1, 48)) for r in range(20)])
                if activation == "batchtopk" and not calibrated
                else cc.encode(x_a, torch.zeros(20, 48))
            )[:, feature],
        )
    assert any(float(FeatureReader(cc, f)(x_a, x_b).max()) > 0 for f in range(N_FEATURES))


@pytest.mark.parametrize("centered", [False, True])
def test_clamp_replaces_the_feature_and_keeps_the_error(centered):
    cc = _crosscoder("relu", False)
    feature = SHARED
    reader = FeatureReader(cc, feature)
    scale = 0.7
    cc.config.scale_a = scale
    if centered:  # a centred crosscoder reads (raw - mean) x scale
        cc.config.centered = True
        cc.mean_a.copy_(torch.randn(64, generator=torch.Generator().manual_seed(3)) * 2)

    def norm(x):
        return cc.normalize(x, "a")

    d_raw = cc.decoder_weight("a", raw_scale=True)[feature].detach()
    hidden = torch.randn(3, 5, 64) * 4
    targets = [0.0, 2.0, 7.5]
    out = clamp_fn(reader, "a", norm, d_raw, targets)(hidden)
    for r, target in enumerate(targets):
        f = cc.encode(norm(hidden[r]), torch.zeros(5, 48))[:, feature]
        want = hidden[r] + (target - f)[:, None] * d_raw
        torch.testing.assert_close(out[r], want, rtol=1e-5, atol=1e-5)
    # the decoded difference in normalized space is exactly the replaced feature's part
    f_all = cc.encode(norm(hidden[2]), torch.zeros(5, 48))
    f_new = f_all.clone()
    f_new[:, feature] = targets[2]
    recon_old, _ = cc.decode(f_all)
    recon_new, _ = cc.decode(f_new)
    torch.testing.assert_close(
        (out[2] - hidden[2]) * scale, recon_new - recon_old, rtol=1e-4, atol=1e-4
    )


# ------------------------------------------------------------------ the linear map
def test_ridge_map_recovers_a_linear_relation_streaming():
    g = torch.Generator().manual_seed(0)
    w_true = torch.randn(16, 12, generator=g)
    c = torch.randn(12, generator=g)
    x = torch.randn(3000, 16, generator=g) * 2 + 1
    y = x @ w_true + c + 0.01 * torch.randn(3000, 12, generator=g)
    batches = [(x[i : i + 700], y[i : i + 700]) for i in range(0, 3000, 700)]
    fitted = fit_linear_map(batches, ridge=1e-8)
    torch.testing.assert_close(fitted.weight, w_true, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(fitted.apply(x[:5]), y[:5], atol=0.05, rtol=0.01)
    assert fitted.fve_train > 0.9999 and fitted.rows == 3000
    # closed form on the whole array agrees with the streamed fit
    xc, yc = (x - x.mean(0)).double(), (y - y.mean(0)).double()
    direct = torch.linalg.lstsq(xc, yc).solution.float()
    torch.testing.assert_close(fitted.weight, direct, atol=1e-4, rtol=1e-4)
    # push-forward of a direction = its image under the map minus the image of the origin
    v = torch.randn(16, generator=g)
    torch.testing.assert_close(
        fitted.push_forward(v), fitted.apply(v[None])[0] - fitted.apply(torch.zeros(1, 16))[0]
    )
    with pytest.raises(CrossdiffError, match="ridge"):
        fit_linear_map(batches, ridge=-1)


# ------------------------------------------------------------------ a real tiny run folder
def _corpus(path: Path) -> Path:
    lines = [ln for ln in TRAINING_TEXT.splitlines() if ln.strip()]
    with path.open("w", encoding="utf-8") as fh:
        for i in range(24):
            text = " ".join(lines[(i + j) % len(lines)] for j in range(3))
            fh.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_model, tiny_loaded) -> Path:
    root = tmp_path_factory.mktemp("steer")
    run = root / "run"
    paths = RunPaths(run)
    config = HarvestConfig(
        model_a=str(tiny_model(*SPEC_A)),
        model_b=str(tiny_model(*SPEC_B)),
        corpus=str(_corpus(root / "corpus.jsonl")),
        out=str(paths.store),
        max_seq_len=48,
        batch_size=4,
        shard_rows=200,
        dtype="float32",
        device="cpu",
        progress=False,
    )
    store = harvest(config, models=(tiny_loaded(*SPEC_A), tiny_loaded(*SPEC_B)))
    scale_a, scale_b = store.norm_scales()
    cfg = CrosscoderConfig.dfc(
        64,
        64,
        N_FEATURES,
        exclusive=0.125,
        k=4,
        activation="relu",
        scale_a=scale_a,
        scale_b=scale_b,
        layer_a=store.manifest.model_a.layer,
        layer_b=store.manifest.model_b.layer,
    )
    cc = Crosscoder(cfg, seed=0)
    with torch.no_grad():
        cc.b_enc[7] = -1e6  # feature 7 (B-exclusive) never fires: dead
        cc.W_dec_a.mul_(8.0)  # decoder rows large enough to change tiny models' answers
        cc.W_dec_b.mul_(8.0)
    cc.save_pretrained(paths.crosscoder)
    return run


CALL_ARGS = ("prompts", "loaded_models", "save", "progress")  # steer()'s own, not settings


def _steer(run_dir, tiny_loaded, feature, **kw):
    loaded = {"a": tiny_loaded(*SPEC_A), "b": tiny_loaded(*SPEC_B)}
    kw = {"prompts": PROMPTS[:2], "alphas": [-2, 0, 2], "loaded_models": loaded, **FAST, **kw}
    call = {k: kw.pop(k) for k in CALL_ARGS if k in kw}
    return steer(run_dir, feature, SteerConfig(**kw), **call)


def test_streamed_s_max_equals_brute_force_and_is_cached(run_dir):
    ctx = RunContext.open(run_dir)
    cc = ctx.crosscoder
    store = ActivationStore.open(RunPaths(run_dir).store)
    xs_a, xs_b = zip(*[(a, b) for a, b, _ in store.iter_rows(100)])
    x_a, x_b = torch.cat(xs_a) * cc.config.scale_a, torch.cat(xs_b) * cc.config.scale_b
    keep = cc.inlier_mask(x_a, x_b)  # huge-norm pairs are left out, as in training
    with torch.no_grad():
        brute = cc.encode(x_a[keep], x_b[keep])
    for feature in (A_EXCL, SHARED):
        value, source, dead = ctx.s_max(feature)
        assert value == pytest.approx(float(brute[:, feature].max()), rel=1e-5)
        assert "streamed" in source and not dead
        assert value == pytest.approx(stream_s_max(cc, store, feature), rel=1e-6)
    assert "cached" in ctx.s_max(A_EXCL)[1]
    assert ctx.s_max(7)[0] == 0.0


def test_steer_run_add_mode(run_dir, tiny_loaded):
    lm_a = tiny_loaded(*SPEC_A)
    before = hook_count(lm_a.model)
    result = _steer(run_dir, tiny_loaded, A_EXCL)
    assert [m.model for m in result.models] == ["a"]  # auto: the feature's own model
    m = result.model("a")
    assert m.direction == "decoder" and m.batched and m.layer == 1
    cc = RunContext.open(run_dir).crosscoder
    d_raw = cc.decoder_weight("a", raw_scale=True)[A_EXCL].detach()
    assert m.vector_norm == pytest.approx(float(d_raw.norm()), rel=1e-6)
    assert len(m.generations) == 2 and all(len(row) == 3 for row in m.generations)
    assert hook_count(lm_a.model) == before
    # alpha = 0 column equals plain greedy generation
    for p, prompt in enumerate(PROMPTS[:2]):
        ids = prompt_ids(lm_a, prompt, chat=True)
        text = lm_a.tokenizer.decode(greedy(lm_a, ids, 6), skip_special_tokens=True)
        assert m.generations[p][1] == text
    # one by one gives the same table
    single = _steer(run_dir, tiny_loaded, A_EXCL, batched=False, save=False)
    assert single.model("a").generations == m.generations and not single.model("a").batched
    # saved, and loads back
    path = RunPaths(run_dir).steering / f"feature-{A_EXCL}.json"
    assert result.path == path
    loaded = SteeringResult.load(path)
    assert loaded.to_dict() == result.to_dict()
    data = json.loads(path.read_text())
    assert data["feature"] == A_EXCL and data["alphas"] == [-2.0, 0.0, 2.0]
    assert data["models"][0]["generations"] == m.generations
    assert data["s_max"] == pytest.approx(result.s_max) and result.s_max > 0
    table = result.table(width=100)
    assert "alpha -2" in table and "prompt 2/2" in table and "A-exclusive" in table


def test_steering_fn_of_the_run_raises_the_projection(run_dir, tiny_loaded):
    ctx = RunContext.open(run_dir)
    lm = tiny_loaded(*SPEC_A)
    d_raw = ctx.crosscoder.decoder_weight("a", raw_scale=True)[SHARED].detach()
    s_max = ctx.s_max(SHARED)[0]
    ids = torch.tensor([prompt_ids(lm, PROMPTS[0], chat=True)])
    layer = ctx.sides["a"].layer
    plain = lm.capture(ids, None, layer)[0]
    with lm.steering(layer, steering_fn(ctx, "a", d_raw, SHARED, "add", [3.0 * s_max])):
        steered = lm.capture(ids, None, layer)[0]
    unit = d_raw / d_raw.norm()
    rise = steered @ unit - plain @ unit
    expected = 3.0 * s_max * float(d_raw.norm())
    torch.testing.assert_close(rise, torch.full_like(rise, expected), rtol=1e-4, atol=1e-4)


def test_shared_feature_both_models_and_clamp(run_dir, tiny_loaded):
    both = _steer(run_dir, tiny_loaded, SHARED, save=False)
    assert [m.model for m in both.models] == ["a", "b"]
    only_b = _steer(run_dir, tiny_loaded, SHARED, model="b", save=False)
    assert [m.model for m in only_b.models] == ["b"]
    assert only_b.model("b").generations == both.model("b").generations
    clamp = _steer(run_dir, tiny_loaded, SHARED, mode="clamp", model="a", save=False)
    assert clamp.mode == "clamp"
    assert clamp.clamp_values == pytest.approx([a * clamp.s_max for a in (-2, 0, 2)])
    assert any("approximation" in n for n in clamp.model("a").notes)
    single = _steer(
        run_dir, tiny_loaded, SHARED, mode="clamp", model="a", batched=False, save=False
    )
    assert single.model("a").generations == clamp.model("a").generations
    absolute = _steer(run_dir, tiny_loaded, SHARED, model="a", clamp_value=[0.0, 1.5], save=False)
    assert absolute.mode == "clamp" and absolute.clamp_values == [0.0, 1.5]
    assert absolute.alphas == pytest.approx([0.0, 1.5 / absolute.s_max])


def test_cross_model_check(run_dir, tiny_loaded):
    result = _steer(run_dir, tiny_loaded, A_EXCL, cross_model=True, save=False)
    a, b = result.model("a"), result.model("b")
    assert a.direction == "decoder" and b.direction == "mapped from a"
    cm = result.cross_model
    assert cm["source"] == "a" and cm["target"] == "b" and cm["rows"] > 100
    assert 0 < cm["fve_train"] <= 1 and cm["retained"] > 0
    # "relative": B is pushed as hard as A, relative to each model's median activation norm
    assert b.vector_norm / b.median_norm == pytest.approx(a.vector_norm / a.median_norm, rel=1e-5)
    # the direction is the push-forward of A's decoder row through the fitted map
    lmap = LinearMap.load(RunPaths(run_dir).steering / "map-a-to-b.safetensors")
    cc = RunContext.open(run_dir).crosscoder
    pushed = lmap.push_forward(cc.decoder_weight("a", raw_scale=True)[A_EXCL].detach())
    assert cm["pushed_norm"] == pytest.approx(float(pushed.norm()), rel=1e-5)
    again = _steer(run_dir, tiny_loaded, A_EXCL, cross_model=True, cross_norm="map", save=False)
    assert again.cross_model["cached"]  # the fitted map is reused
    assert again.model("b").vector_norm == pytest.approx(float(pushed.norm()), rel=1e-5)
    assert "cross-model map A->B" in result.table(width=120)


def test_store_map_fve_matches_direct_computation(run_dir):
    store = ActivationStore.open(RunPaths(run_dir).store)
    lmap = fit_store_map(store, "b", max_norm_ratio=None, max_rows=None)
    train = [(b, a) for a, b, meta in store.iter_rows(10_000, split="train")]
    x, y = torch.cat([t[0] for t in train]), torch.cat([t[1] for t in train])
    pred = lmap.apply(x)
    fve = 1 - float((pred - y).double().pow(2).sum()) / float((y - y.mean(0)).double().pow(2).sum())
    assert lmap.rows == x.shape[0] and lmap.source == "b"
    assert lmap.fve_train == pytest.approx(fve, abs=1e-4)
    _, was_cached = load_or_fit_map(store, RunPaths(run_dir).steering, "b")
    assert not was_cached
    assert load_or_fit_map(store, RunPaths(run_dir).steering, "b")[1]


def test_s_max_from_the_analysis_table(run_dir, tiny_loaded):
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = RunPaths(run_dir)
    paths.analysis.mkdir(parents=True, exist_ok=True)
    table = paths.analysis / "features.parquet"
    s_max = np.linspace(0.5, 3.0, N_FEATURES)
    s_max[3] = 0.0
    pq.write_table(
        pa.table({"feature": np.arange(N_FEATURES), "s_max": s_max, "dead": s_max == 0}), table
    )
    try:
        result = _steer(run_dir, tiny_loaded, SHARED, model="a", save=False)
        assert result.s_max == pytest.approx(s_max[SHARED])
        assert "analysis table" in result.s_max_source
        with pytest.raises(CrossdiffError, match="feature 3 is dead"):
            _steer(run_dir, tiny_loaded, 3)
    finally:
        table.unlink()


# ------------------------------------------------------------------ bad input
def test_bad_input_errors(run_dir, tiny_loaded):
    with pytest.raises(CrossdiffError, match=r"feature 32 out of range.*\(0-31\)"):
        _steer(run_dir, tiny_loaded, N_FEATURES)
    with pytest.raises(CrossdiffError, match="out of range"):
        _steer(run_dir, tiny_loaded, -1)
    with pytest.raises(CrossdiffError, match=r"feature 7 is dead.*s_max"):
        _steer(run_dir, tiny_loaded, 7)
    for model in ("b", "both"):
        with pytest.raises(CrossdiffError, match=r"A-exclusive.*--cross-model"):
            _steer(run_dir, tiny_loaded, A_EXCL, model=model)
    with pytest.raises(CrossdiffError, match=r"B-exclusive.*model A"):
        _steer(run_dir, tiny_loaded, B_EXCL, model="a")
    with pytest.raises(CrossdiffError, match="mode 'scale'"):
        _steer(run_dir, tiny_loaded, SHARED, mode="scale")
    with pytest.raises(CrossdiffError, match="prompt"):
        _steer(run_dir, tiny_loaded, SHARED, prompts=[])
    with pytest.raises(CrossdiffError, match="finite"):
        _steer(run_dir, tiny_loaded, SHARED, alphas=[1, float("nan")])
    with pytest.raises(CrossdiffError, match="clamp mode"):
        _steer(run_dir, tiny_loaded, A_EXCL, mode="clamp", cross_model=True)
    with pytest.raises(CrossdiffError, match="max_new_tokens"):
        _steer(run_dir, tiny_loaded, SHARED, max_new_tokens=0)
    with pytest.raises(CrossdiffError, match="no trained crosscoder"):
        steer(run_dir.parent, 0, prompts=["x"])


def test_plan_models():
    from crossdiff.crosscoder import FeaturePartition

    p = FeaturePartition(10, 2, 2)
    assert plan_models(p, 0, "auto", False) == [("a", "decoder")]
    assert plan_models(p, 2, "auto", False) == [("b", "decoder")]
    assert plan_models(p, 5, "auto", False) == [("a", "decoder"), ("b", "decoder")]
    assert plan_models(p, 5, "B", False) == [("b", "decoder")]
    assert plan_models(p, 2, "a", True) == [("b", "decoder"), ("a", "mapped from b")]
    assert plan_models(p, 5, "b", True) == [("b", "decoder"), ("a", "mapped from b")]
    with pytest.raises(CrossdiffError, match="one of"):
        plan_models(p, 5, "c", False)


# ------------------------------------------------------------------ scoring
def test_rule_scorers_and_rates(run_dir, tiny_loaded):
    assert isinstance(make_scorer("keywords:fox, dog"), KeywordScorer)
    assert isinstance(make_scorer("regex:^the"), RegexScorer)
    assert make_scorer("fox|cat")("p", "A FOX ran") == 1.0
    kw = make_scorer("keywords:fox,dog")
    assert kw("p", "The Dog sleeps") == 1.0 and kw("p", "dogma") == 0.0
    with pytest.raises(CrossdiffError, match="not a valid regular expression"):
        make_scorer("regex:(")
    with pytest.raises(CrossdiffError, match="--judge-url"):
        make_scorer("judge:mentions foxes")
    result = _steer(run_dir, tiny_loaded, SHARED, model="a", score=lambda prompt, gen: len(gen) > 0)
    m = result.model("a")
    assert m.rates == [
        sum(len(g[a]) > 0 for g in m.generations) / len(m.generations) for a in range(3)
    ]
    assert result.plot_path is not None and result.plot_path.is_file()
    ET.fromstring(result.plot_path.read_text())  # well-formed SVG
    assert "score:" in result.table(width=100)


class _FakeJudge(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[dict]] = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"body": body, "auth": self.headers.get("Authorization")})
        if body.get("model") == "broken":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"server exploded")
            return
        question = body["messages"][-1]["content"]
        response = question.split("The model's response:\n", 1)[1]
        verdict = "YES" if "e" in response.split("\n\nDoes the response")[0] else "NO"
        payload = {"choices": [{"message": {"role": "assistant", "content": verdict}}]}
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _FakeJudge.seen = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_llm_judge_through_a_local_server(run_dir, tiny_loaded, judge_url, monkeypatch):
    monkeypatch.setenv("CROSSDIFF_TEST_KEY", "sekret")
    result = _steer(
        run_dir,
        tiny_loaded,
        SHARED,
        model="a",
        score="judge:contains the letter e",
        judge_url=judge_url,
        judge_model="fake-judge",
        judge_key_env="CROSSDIFF_TEST_KEY",
        save=False,
    )
    m = result.model("a")
    want = [sum("e" in row[a] for row in m.generations) / len(m.generations) for a in range(3)]
    assert m.rates == want
    assert len(_FakeJudge.seen) == 2 * 3
    assert all(s["auth"] == "Bearer sekret" for s in _FakeJudge.seen)
    assert _FakeJudge.seen[0]["body"]["model"] == "fake-judge"
    assert "contains the letter e" in _FakeJudge.seen[0]["body"]["messages"][-1]["content"]
    assert result.scorer.startswith("judge:contains the letter e")
    broken = LLMJudge(judge_url, "broken", "anything")
    with pytest.raises(CrossdiffError, match="HTTP 500"):
        broken("p", "g")
    with pytest.raises(CrossdiffError, match="cannot reach the judge"):
        LLMJudge("http://127.0.0.1:9/v1", "m", "c", timeout=2)("p", "g")
    assert parse_verdict(" Yes.") == 1.0 and parse_verdict("NO") == 0.0
    assert parse_verdict("0.25") == 0.25 and parse_verdict("maybe") is None


# ------------------------------------------------------------------ CLI and prompt files
def test_cli_json_table_and_prompt_files(run_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        json.dumps("Hello there")
        + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "Who made you?"}]})
        + "\n"
    )
    assert read_prompts(prompts)[1] == [{"role": "user", "content": "Who made you?"}]
    txt = tmp_path / "prompts.txt"
    txt.write_text("one\n\n two \n")
    assert read_prompts(txt) == ["one", "two"]
    base = ["steer", str(run_dir), "--feature", str(SHARED), "--max-new-tokens", "4"]
    base += ["--dtype", "float32", "--device", "cpu", "--no-progress", "--model", "a"]
    code = cli_main([*base, "--alphas", "-4,-2,0", "--prompts", str(prompts), "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["alphas"] == [-4.0, -2.0, 0.0] and len(data["prompts"]) == 2
    assert len(data["models"][0]["generations"]) == 2
    assert (RunPaths(run_dir).steering / f"feature-{SHARED}.json").is_file()
    code = cli_main([*base, "--alphas", "-1", "1", "--prompt", "Hi", "--score", "regex:."])
    out = capsys.readouterr().out
    assert code == 0 and "alpha -1" in out and "alpha 1" in out and "score: regex:." in out
    assert (RunPaths(run_dir).steering / f"feature-{SHARED}-score.svg").is_file()
    code = cli_main(
        ["steer", str(run_dir), "--feature", str(A_EXCL), "--model", "b", "--prompt", "x"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "--cross-model" in err
    code = cli_main(["steer", str(run_dir), "--feature", "999", "--prompt", "x"])
    assert code == 2 and "out of range" in capsys.readouterr().err
    assert cli_main(["steer", str(run_dir), "--feature", "1"]) == 2
    assert "at least one prompt" in capsys.readouterr().err


def test_svg_plot_handles_missing_values():
    from crossdiff.steering.svg import rate_plot_svg

    svg = rate_plot_svg([-2, 0, 2], {"A": [0.0, None, 1.0], "B <x>": [0.5, 0.5, 0.5]}, title="t")
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg") and "B &lt;x&gt;" in svg
    assert not math.isnan(float(root.get("width")))
