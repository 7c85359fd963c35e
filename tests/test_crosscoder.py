"""Properties of the crosscoder family: exclusivity by construction, sparse = dense maths,
BatchTopK budget, persistence, exact resume, presets, and bad-input errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from crossdiff.crosscoder import (
    ArraySource,
    Crosscoder,
    CrosscoderConfig,
    TrainConfig,
    latest_checkpoint,
    train_crosscoder,
)
from crossdiff.crosscoder.sparse import select_batch_topk, select_topk
from crossdiff.errors import CrossdiffError

D_A, D_B, F = 24, 16, 64


def same(t1: torch.Tensor, t2: torch.Tensor) -> bool:
    """Bit-exact equality that treats NaN == NaN (the uncalibrated threshold is NaN)."""
    return (
        t1.shape == t2.shape
        and t1.dtype == t2.dtype
        and bool(
            torch.equal(t1.isnan(), t2.isnan()) and torch.equal(t1.nan_to_num(0), t2.nan_to_num(0))
        )
    )


def paired_data(n: int = 4096, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse-ish synthetic pairs: shared directions in both models, exclusive ones in one."""
    g = torch.Generator().manual_seed(seed)
    shared_a, shared_b = torch.randn(20, D_A, generator=g), torch.randn(20, D_B, generator=g)
    excl_a, excl_b = torch.randn(6, D_A, generator=g), torch.randn(6, D_B, generator=g)
    c = (torch.rand(n, 20, generator=g) < 0.1) * torch.rand(n, 20, generator=g)
    ea = (torch.rand(n, 6, generator=g) < 0.1) * torch.rand(n, 6, generator=g)
    eb = (torch.rand(n, 6, generator=g) < 0.1) * torch.rand(n, 6, generator=g)
    x_a = c @ shared_a + ea @ excl_a + 0.01 * torch.randn(n, D_A, generator=g)
    x_b = c @ shared_b + eb @ excl_b + 0.01 * torch.randn(n, D_B, generator=g)
    return x_a, x_b


def quick_train(**kw) -> TrainConfig:
    base = dict(
        steps=12,
        batch_size=128,
        lr=3e-3,
        warmup_steps=2,
        k_anneal_from=12,
        k_anneal_steps=5,
        dead_window_tokens=256,
        aux_k=4,
        checkpoint_every=5,
        log_every=3,
        device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def source() -> ArraySource:
    return ArraySource(*paired_data())


@pytest.mark.parametrize("activation", ["batchtopk", "topk", "relu"])
def test_exclusive_features_never_touch_the_other_model(source, activation):
    cfg = CrosscoderConfig.dfc(D_A, D_B, F, exclusive=0.1, k=4, activation=activation)
    cc = train_crosscoder(source, cfg, quick_train(), progress=False)
    p = cc.partition
    a_ex = list(p.a_exclusive)
    b_ex = list(p.b_exclusive)
    # decoders: exactly zero rows into the other model, after optimizer steps
    assert torch.equal(cc.decoder_weight("b")[a_ex], torch.zeros(len(a_ex), D_B))
    assert torch.equal(cc.decoder_weight("a")[b_ex], torch.zeros(len(b_ex), D_A))
    assert cc.decoder_weight("a")[a_ex].abs().sum() > 0
    # encoders: an A-exclusive feature's pre-activation does not depend on x_b at all
    x_a, x_b = paired_data(64, seed=1)
    pre1 = cc.preacts(x_a, x_b)
    pre2 = cc.preacts(x_a, x_b * 3 + 1)
    assert torch.equal(pre1[:, a_ex], pre2[:, a_ex])
    pre3 = cc.preacts(x_a * 2 - 1, x_b)
    assert torch.equal(pre1[:, b_ex], pre3[:, b_ex])
    # decoding only A-exclusive features leaves model B's output at its bias, exactly
    f = torch.zeros(64, F)
    f[:, a_ex] = torch.rand(64, len(a_ex)) * 5
    _, rb = cc.decode(f)
    assert torch.equal(rb, cc.b_dec_b.detach().expand(64, D_B))


@pytest.mark.parametrize("activation", ["batchtopk", "relu"])
def test_model_b_loss_sends_no_gradient_to_a_exclusive_parameters(activation):
    cfg = CrosscoderConfig.dfc(D_A, D_B, F, exclusive=0.1, k=6, activation=activation)
    cc = Crosscoder(cfg, seed=3)
    x_a, x_b = paired_data(256, seed=2)
    out = cc.loss(
        x_a,
        x_b,
        dead_mask=torch.ones(F, dtype=torch.bool),
        aux_k=4,
        aux_alpha=0.5,
        l1_coeff=0.0,
    )
    assert out.recon_b.requires_grad
    cc.zero_grad()
    out.recon_b.backward()
    n_a = cc.partition.n_a
    assert cc.W_enc_a.grad is None or torch.count_nonzero(cc.W_enc_a.grad[:, :n_a]) == 0
    assert cc.W_dec_a.grad is None or torch.count_nonzero(cc.W_dec_a.grad[:n_a]) == 0
    assert torch.count_nonzero(cc.b_enc.grad[:n_a]) == 0
    # ... while the shared features did get gradient from B's loss
    assert torch.count_nonzero(cc.W_dec_b.grad) > 0


def test_sparse_training_loss_matches_dense_reference():
    """The sparse path (gathered pre-activations, embedding_bag decode, sparse encoder
    gradient) computes the same loss and gradients as plain dense autograd."""
    cfg = CrosscoderConfig.dfc(D_A, D_B, F, exclusive=0.1, k=5, selection_norm="none")
    cc = Crosscoder(cfg, seed=1)
    with torch.no_grad():
        cc.b_enc.normal_(0, 0.1)
        cc.b_dec_a.normal_()
    x_a, x_b = paired_data(200, seed=5)
    out = cc.loss(x_a, x_b)
    cc.zero_grad()
    out.total.backward()
    sparse_grads = {n: p.grad.clone() for n, p in cc.named_parameters() if p.grad is not None}

    # dense reference with the same selection
    cc.zero_grad()
    pre = cc.preacts(x_a, x_b)
    rows, feats = select_batch_topk(pre.detach().clamp_min(0), 5 * 200)
    mask = torch.zeros_like(pre, dtype=torch.bool)
    mask[rows, feats] = True
    f = torch.where(mask, pre, torch.zeros_like(pre))
    ra, rb = cc.decode(f)
    ref = (ra - x_a).pow(2).sum(-1).mean() + (rb - x_b).pow(2).sum(-1).mean()
    ref.backward()
    assert torch.allclose(out.total, ref, rtol=1e-5)
    for name, p in cc.named_parameters():
        if p.grad is None:
            assert name not in sparse_grads or torch.count_nonzero(sparse_grads[name]) == 0
            continue
        assert torch.allclose(sparse_grads[name], p.grad, rtol=1e-4, atol=1e-5), name


def test_batch_topk_keeps_exactly_k_times_batch():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(50, 300, generator=g) + 0.01
    rows, feats = select_batch_topk(scores, 7 * 50)
    assert rows.numel() == 7 * 50
    # the same set as a brute-force flat top-k
    flat = torch.topk(scores.flatten(), 7 * 50).indices
    assert set((rows * 300 + feats).tolist()) == set(flat.tolist())
    # a batch where one row owns most of the budget (exercises the exact fallback)
    skew = scores.clone()
    skew[3] += 10
    rows, feats = select_batch_topk(skew, 7 * 50)
    flat = torch.topk(skew.flatten(), 7 * 50).indices
    assert set((rows * 300 + feats).tolist()) == set(flat.tolist())
    assert int((rows == 3).sum()) == 300
    # through the model: the training loss selects exactly k x batch features
    cfg = CrosscoderConfig.dfc(D_A, D_B, F, k=5)
    cc = Crosscoder(cfg)
    x_a, x_b = paired_data(64)
    out = cc.loss(x_a * 10, x_b * 10)
    assert out.l0 == pytest.approx(5.0)


def test_bf16_encoder_matmul_gives_the_float32_loss_closely():
    """compute_dtype='bfloat16' (the default on CUDA) changes only the encoder matmul: at the
    same weights and batch the loss is within 2e-3 of float32's (measured on the CPU: 1e-4 on
    the toy data at d=64, F=1,024, docs/crosscoder.md), and the selections barely move."""
    cfg = CrosscoderConfig.dfc(D_A, D_B, F, exclusive=0.1, k=4)
    cc = Crosscoder(cfg, seed=1)
    x_a, x_b = paired_data(512, seed=6)
    with torch.no_grad():
        l32 = cc.loss(x_a * 3, x_b * 3, compute_dtype=torch.float32)
        l16 = cc.loss(x_a * 3, x_b * 3, compute_dtype=torch.bfloat16)
    assert float(l16.total) == pytest.approx(float(l32.total), rel=2e-3)
    assert float((l16.fired != l32.fired).float().mean()) < 0.1


def test_topk_keeps_k_per_sample():
    scores = torch.rand(10, 40) + 0.1
    rows, _ = select_topk(scores, 3)
    assert torch.equal(torch.bincount(rows, minlength=10), torch.full((10,), 3))


def test_save_load_round_trip_is_bit_exact(tmp_path, source):
    cfg = CrosscoderConfig.dfc(D_A, D_B, F, exclusive=0.1, k=4, model_a="m/a", layer_a=3)
    cc = train_crosscoder(source, cfg, quick_train(steps=6), progress=False)
    cc.save_pretrained(tmp_path / "cc")
    assert sorted(p.name for p in (tmp_path / "cc").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    loaded = Crosscoder.from_pretrained(tmp_path / "cc")
    assert loaded.config == cc.config
    for (n1, t1), (n2, t2) in zip(cc.state_dict().items(), loaded.state_dict().items()):
        assert n1 == n2 and same(t1, t2), n1
    x_a, x_b = paired_data(32, seed=9)
    o1, o2 = cc(x_a, x_b), loaded(x_a, x_b)
    assert torch.equal(o1.features, o2.features)
    assert torch.equal(o1.recon_a, o2.recon_a)


def train_stopped_at_step_9(source, cfg, tc, root: Path):
    """The uninterrupted crosscoder (``root/full``) and, in ``root/cut``, a run stopped by a
    crash at step 9 whose newest checkpoint is step 8 (``checkpoint_every=4``)."""
    full = train_crosscoder(source, cfg, tc, checkpoint_dir=root / "full", progress=False)

    class Stop(Exception):
        pass

    def crash(step, metrics):
        if step >= 9:
            raise Stop

    with pytest.raises(Stop):
        train_crosscoder(
            source, cfg, tc, checkpoint_dir=root / "cut", progress=False, callback=crash
        )
    assert latest_checkpoint(root / "cut").name == "step-00000008"
    return full


@pytest.mark.parametrize(
    "exclusive_init,resample", [("random", None), ("residual", None), ("residual", 3)]
)
def test_resume_equals_uninterrupted(tmp_path, source, exclusive_init, resample):
    cfg = CrosscoderConfig.dfc(D_A, D_B, F, exclusive=0.1, k=4)
    tc = quick_train(
        steps=14,
        checkpoint_every=4,
        exclusive_init=exclusive_init,
        init_samples=512,
        resample_every=resample,
        resample_until=1.0,
        dead_window_tokens=128,
    )
    full = train_stopped_at_step_9(source, cfg, tc, tmp_path)
    resumed = train_crosscoder(source, cfg, tc, checkpoint_dir=tmp_path / "cut", progress=False)
    for (n, t1), (_, t2) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert same(t1, t2), n


def test_standard_equals_zero_exclusive_dfc(source):
    std = CrosscoderConfig.standard(D_A, D_B, F, k=4)
    dfc0 = CrosscoderConfig.dfc(D_A, D_B, F, exclusive=0.0, k=4)
    assert std.to_dict() == dfc0.to_dict()
    m1 = train_crosscoder(source, std, quick_train(steps=5), progress=False)
    m2 = train_crosscoder(source, dfc0, quick_train(steps=5), progress=False)
    for (n, t1), (_, t2) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert same(t1, t2), n


def test_same_initial_decoder_norms_across_family():
    for cfg in (
        CrosscoderConfig.standard(D_A, D_A, F, k=4),
        CrosscoderConfig.dfc(D_A, D_A, F, exclusive=0.1, k=4),
        CrosscoderConfig.dsf(D_A, D_A, F, designated=0.1, k=4),
    ):
        norms = Crosscoder(cfg).decoder_norms()
        writes = norms > 0
        assert torch.allclose(norms[writes], torch.full_like(norms[writes], 0.4), atol=1e-5)


def test_dsf_ties_decoders_and_splits_k(source):
    x_a, _ = paired_data(512)
    src = ArraySource(x_a, x_a.flip(1))
    cfg = CrosscoderConfig.dsf(D_A, D_A, F, designated=0.25, k=8)
    cc = train_crosscoder(src, cfg, quick_train(steps=6), progress=False)
    d = list(cc.partition.designated)
    assert torch.equal(cc.decoder_weight("a")[d], cc.decoder_weight("b")[d])
    groups = cc._groups(8)
    assert [g[1] for g in groups] == [4, 4]  # 2 x its 25% share of k = 4
    out = cc.loss(x_a[:100], x_a[:100].flip(1))
    assert out.l0 == pytest.approx(8.0)


def test_inference_threshold_is_calibrated_and_used(source):
    cfg = CrosscoderConfig.dfc(D_A, D_B, F, k=4)
    cc = train_crosscoder(source, cfg, quick_train(steps=30), progress=False)
    assert not math.isnan(float(cc.threshold[0]))
    x_a, x_b = paired_data(256, seed=4)
    xa, xb = cc.normalize(x_a, "a"), cc.normalize(x_b, "b")
    f_batch = cc.encode(xa, xb)
    f_single = torch.cat([cc.encode(xa[i : i + 1], xb[i : i + 1]) for i in range(4)])
    # eval mode: per-sample decisions, independent of the rest of the batch
    assert torch.equal(f_batch[:4] > 0, f_single > 0)
    assert torch.allclose(f_batch[:4], f_single, atol=1e-5)
    assert 0 < (f_batch > 0).sum(1).float().mean() < 4 * 4


def test_bad_inputs_raise_clear_errors(tmp_path, source):
    with pytest.raises(CrossdiffError, match="partition does not fit"):
        CrosscoderConfig(D_A, D_B, F, frac_exclusive_a=0.6, frac_exclusive_b=0.5)
    with pytest.raises(CrossdiffError, match="equal widths"):
        CrosscoderConfig.dsf(D_A, D_B, F, k=4)
    with pytest.raises(CrossdiffError, match="k=200 exceeds n_features=64"):
        CrosscoderConfig.dfc(D_A, D_B, F)
    with pytest.raises(CrossdiffError, match="width mismatch"):
        train_crosscoder(
            source, CrosscoderConfig.dfc(D_B, D_A, F, k=4), quick_train(), progress=False
        )
    x_a, x_b = paired_data(512)
    x_a[7, 3] = float("nan")
    with pytest.raises(CrossdiffError, match="NaN/inf"):
        train_crosscoder(
            ArraySource(x_a, x_b),
            CrosscoderConfig.dfc(D_A, D_B, F, k=4),
            quick_train(normalization="none"),
            progress=False,
        )
    cc = Crosscoder(CrosscoderConfig.dfc(D_A, D_B, F, k=4))
    with pytest.raises(CrossdiffError, match="d_a=24"):
        cc(torch.zeros(3, D_B), torch.zeros(3, D_B))
    # a checkpoint folder from another config
    train_crosscoder(
        source,
        CrosscoderConfig.dfc(D_A, D_B, F, k=4),
        quick_train(steps=5),
        checkpoint_dir=tmp_path / "ck",
        progress=False,
    )
    with pytest.raises(CrossdiffError, match="different crosscoder config"):
        train_crosscoder(
            source,
            CrosscoderConfig.dfc(D_A, D_B, 2 * F, k=4),
            quick_train(steps=8),
            checkpoint_dir=tmp_path / "ck",
            progress=False,
        )
    with pytest.raises(CrossdiffError, match="no crosscoder"):
        Crosscoder.from_pretrained(tmp_path / "nothing")
    with pytest.raises(CrossdiffError, match="feature 64 out of range"):
        cc.partition.check_index(64)


def test_evaluation_leaves_out_huge_norm_pairs(source):
    """Attention-sink positions (100x the median norm) must not decide FVE at inference."""
    from crossdiff.crosscoder.metrics import evaluate

    cfg = CrosscoderConfig.dfc(D_A, D_B, F, k=4)
    cc = train_crosscoder(source, cfg, quick_train(steps=20), progress=False)
    x_a, x_b = paired_data(1024, seed=8)
    clean = evaluate(cc, ArraySource(x_a, x_b), n_batches=1, batch_size=1024)
    inlier = cc.inlier_mask(cc.normalize(x_a, "a"), cc.normalize(x_b, "b"))
    sinks = torch.nonzero(inlier).flatten()[::40]  # sink-like rows in model A only
    norms = x_a.norm(dim=1, keepdim=True)
    x_a[sinks] = x_a[sinks] / norms[sinks] * 100.0 * norms.median()
    dirty = evaluate(cc, ArraySource(x_a, x_b), n_batches=1, batch_size=1024)
    extra = dirty["outlier_frac"] - clean["outlier_frac"]
    assert extra == pytest.approx(len(sinks) / 1024)
    assert dirty["fve_b"] > clean["fve_b"] - 0.05  # B is not wrecked by A's outliers
    kept = evaluate(cc, ArraySource(x_a, x_b), n_batches=1, batch_size=1024, outlier_factor=None)
    assert kept["fve_b"] < dirty["fve_b"]


@pytest.mark.parametrize("skew_row", [None, 7])
def test_batch_topk_sampled_threshold_path_is_exact(skew_row):
    """Matrices above 4 x SAMPLE_SIZE entries take the sampled-threshold path; it must return
    exactly the brute-force set, also when one row owns most of the budget."""
    from crossdiff.crosscoder.sparse import SAMPLE_SIZE

    g = torch.Generator().manual_seed(1)
    b, f = 512, 1000  # f is not a power of two: the stride must still visit every column
    assert b * f > 4 * SAMPLE_SIZE
    scores = torch.randn(b, f, generator=g).clamp_min(0)
    if skew_row is not None:
        scores[skew_row] += 50
    k_total = 5 * b
    rows, feats = select_batch_topk(scores, k_total)
    flat = torch.topk(scores.flatten(), k_total).indices
    assert set((rows * f + feats).tolist()) == set(flat.tolist())
    key = rows * f + feats
    assert torch.equal(key, torch.sort(key).values)
    # fewer positive entries than the budget: all positives, nothing else
    sparse = torch.where(torch.rand(b, f, generator=g) < 0.002, scores + 1, torch.zeros(()))
    rows, feats = select_batch_topk(sparse, k_total)
    assert rows.numel() == int((sparse > 0).sum())


def test_residual_init_finds_each_models_own_directions():
    """exclusive_directions recovers the directions only one model has (not the other
    model's exclusive ones, not shared ones), and training starts from them."""
    from crossdiff.crosscoder.init import exclusive_directions

    g = torch.Generator().manual_seed(3)
    n, d = 8192, 32
    shared = torch.nn.functional.normalize(torch.randn(40, d, generator=g), dim=1)
    own = torch.nn.functional.normalize(torch.randn(4, d, generator=g), dim=1)
    other = torch.nn.functional.normalize(torch.randn(4, d, generator=g), dim=1)
    mix = torch.linalg.qr(torch.randn(d, d, generator=g))[0]  # B sees everything rotated

    def codes(m: int, p: float) -> torch.Tensor:
        return (torch.rand(n, m, generator=g) < p) * (0.5 + torch.rand(n, m, generator=g))

    c = codes(40, 0.08)
    x_a = c @ shared + codes(4, 0.05) @ own + 0.01 * torch.randn(n, d, generator=g)
    x_b = (c @ shared + codes(4, 0.05) @ other) @ mix + 0.01 * torch.randn(n, d, generator=g)
    dirs = exclusive_directions(x_a, x_b, 4)
    assert dirs.shape == (4, d)
    assert torch.allclose(dirs.norm(dim=1), torch.ones(4), atol=1e-5)
    cos_own = (dirs @ own.T).max(dim=0).values  # best match of each true direction
    assert bool((cos_own > 0.95).all()), cos_own
    assert float((dirs @ other.T).abs().max()) < 0.5
    assert float((dirs @ shared.T).abs().max()) < 0.8
    # through the trainer: exclusive decoders start there (before step 1 moves them)
    cfg = CrosscoderConfig.dfc(d, d, 80, exclusive=0.05, k=4)
    tc = quick_train(steps=1, lr=1e-12, warmup_steps=0, exclusive_init="residual")
    cc = train_crosscoder(ArraySource(x_a, x_b), cfg, tc, progress=False)
    dec = torch.nn.functional.normalize(
        cc.decoder_weight("a")[list(cc.partition.a_exclusive)], dim=1
    )
    assert bool(((dec @ own.T).max(dim=0).values > 0.95).all())
    paper = quick_train(steps=1, exclusive_init="random")
    rand = train_crosscoder(ArraySource(x_a, x_b), cfg, paper, progress=False)
    dec = torch.nn.functional.normalize(
        rand.decoder_weight("a")[list(rand.partition.a_exclusive)], dim=1
    )
    assert not bool(((dec @ own.T).max(dim=0).values > 0.95).all())


def test_bad_exclusive_init_is_a_clear_error(source):
    cfg = CrosscoderConfig.dfc(D_A, D_B, F, k=4)
    with pytest.raises(CrossdiffError, match="exclusive_init='pca'"):
        train_crosscoder(source, cfg, quick_train(exclusive_init="pca"), progress=False)


def test_greedy_seeding_is_chunk_size_independent():
    """The chunked greedy seeding equals the plain one-candidate-at-a-time greedy."""
    from crossdiff.crosscoder.init import DEDUPE_COS, _greedy_seeds

    g = torch.Generator().manual_seed(5)
    base = torch.nn.functional.normalize(torch.randn(12, 8, generator=g), dim=1)
    dirs = base[torch.randint(0, 12, (200,), generator=g)] + 0.3 * torch.randn(200, 8, generator=g)
    dirs = torch.nn.functional.normalize(dirs, dim=1)
    naive: list[torch.Tensor] = []
    for d in dirs:
        if len(naive) == 10:
            break
        if not naive or float((torch.stack(naive) @ d).max()) <= DEDUPE_COS:
            naive.append(d)
    for chunk in (1, 7, 1024):
        assert torch.equal(_greedy_seeds(dirs, 10, chunk=chunk), torch.stack(naive))


# ---- the centred normalization (issue: both models' features come alive) -----------------------
def offset_data(n: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """paired_data with a large constant offset on model B (like Gemma-3's mean vector)."""
    x_a, x_b = paired_data(n)
    g = torch.Generator().manual_seed(5)
    return x_a + 0.1 * torch.randn(D_A, generator=g), x_b + 6.0 * torch.randn(D_B, generator=g)


def test_centred_training_removes_the_mean_and_balances_the_loss():
    x_a, x_b = offset_data()
    src = ArraySource(x_a, x_b)
    cc = train_crosscoder(
        src, CrosscoderConfig.dfc(D_A, D_B, F, k=4), quick_train(), progress=False
    )
    assert cc.config.centered
    mom = src.moments()
    torch.testing.assert_close(cc.mean_b, torch.from_numpy(mom.mean_b).float())
    assert mom.gamma("b") > 3 * mom.gamma("a")  # the offset dominates B
    with torch.no_grad():
        za, zb = cc.normalize(x_a, "a"), cc.normalize(x_b, "b")
        keep = cc.inlier_mask(za, zb)
        var_a = (za[keep] - za[keep].mean(0)).pow(2).sum(1).mean()
        var_b = (zb[keep] - zb[keep].mean(0)).pow(2).sum(1).mean()
    assert float(var_a / (var_a + var_b)) == pytest.approx(0.5, abs=0.05)
    # the paper's median scaling leaves B's variation light in the loss
    med = train_crosscoder(
        src,
        CrosscoderConfig.dfc(D_A, D_B, F, k=4),
        quick_train(normalization="median"),
        progress=False,
    )
    assert not med.config.centered
    with torch.no_grad():
        za, zb = med.normalize(x_a, "a"), med.normalize(x_b, "b")
        share_b = (zb - zb.mean(0)).pow(2).sum(1).mean() / (
            (za - za.mean(0)).pow(2).sum(1).mean() + (zb - zb.mean(0)).pow(2).sum(1).mean()
        )
    assert float(share_b) < 0.25


def test_centred_fve_in_raw_space_equals_the_reported_one():
    from crossdiff.crosscoder.metrics import evaluate

    x_a, x_b = offset_data(2048)
    src = ArraySource(x_a, x_b)
    cc = train_crosscoder(
        src, CrosscoderConfig.dfc(D_A, D_B, F, k=4), quick_train(), progress=False
    )
    reported = evaluate(cc, src, n_batches=1, batch_size=2048, outlier_factor=None)
    with torch.no_grad():
        out = cc(cc.normalize(x_a, "a"), cc.normalize(x_b, "b"))
        raw = {"a": cc.denormalize(out.recon_a, "a"), "b": cc.denormalize(out.recon_b, "b")}
    for m, x in (("a", x_a), ("b", x_b)):
        x = x.double()
        fve = 1 - (x - raw[m].double()).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        # one batch of 2048 = every row once (a permutation): the same rows in both numbers
        assert float(fve) == pytest.approx(reported[f"fve_{m}"], abs=1e-4)


def test_centred_steering_direction_is_the_raw_decoder_row():
    """A feature's unit of activation moves the raw reconstruction by its raw decoder row:
    the mean is an offset, so steering adds the same raw direction, however it was centred."""
    x_a, x_b = offset_data(1024)
    cc = train_crosscoder(
        ArraySource(x_a, x_b), CrosscoderConfig.dfc(D_A, D_B, F, k=4), quick_train(), progress=False
    )
    f = cc.encode(cc.normalize(x_a[:8], "a"), cc.normalize(x_b[:8], "b")).detach()
    feature = cc.partition.shared.start
    g = f.clone()
    g[:, feature] += 2.5
    with torch.no_grad():
        before = [cc.denormalize(r, m) for r, m in zip(cc.decode(f), "ab")]
        after = [cc.denormalize(r, m) for r, m in zip(cc.decode(g), "ab")]
    for m, b, a in zip("ab", before, after):
        want = 2.5 * cc.decoder_weight(m, raw_scale=True)[feature]
        torch.testing.assert_close(a - b, want.expand_as(a), rtol=1e-4, atol=1e-4)
        # the raw direction does not depend on the offset
        torch.testing.assert_close(
            cc.decoder_weight(m, raw_scale=True)[feature],
            cc.decoder_weight(m)[feature] / cc.scale(m),
        )


def test_crosscoders_saved_before_centring_load_and_behave_unchanged(tmp_path, source):
    """An old folder: config.json without 'centered', weights without mean buffers."""
    import json

    cc = train_crosscoder(
        source,
        CrosscoderConfig.dfc(D_A, D_B, F, k=4),
        quick_train(normalization="median"),
        progress=False,
    )
    cc.save_pretrained(tmp_path / "old")
    cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    cfg.pop("centered")
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    from safetensors.torch import load_file

    assert not any(
        k.startswith("mean_") for k in load_file(str(tmp_path / "old/model.safetensors"))
    )
    old = Crosscoder.from_pretrained(tmp_path / "old")
    assert not old.config.centered
    x_a, x_b = paired_data(64, seed=3)
    torch.testing.assert_close(old.normalize(x_a, "a"), x_a * cc.config.scale_a)
    assert same(
        old.encode(old.normalize(x_a, "a"), old.normalize(x_b, "b")),
        cc.encode(cc.normalize(x_a, "a"), cc.normalize(x_b, "b")),
    )
    # and a legacy train config ('normalize': true) reads as the paper's median scaling
    legacy = TrainConfig().to_dict()
    legacy.pop("normalization")
    legacy["normalize"] = True
    assert TrainConfig.from_dict(legacy).normalization == "median"


def test_centred_save_load_keeps_the_means(tmp_path, source):
    x_a, x_b = offset_data(1024)
    cc = train_crosscoder(
        ArraySource(x_a, x_b), CrosscoderConfig.dfc(D_A, D_B, F, k=4), quick_train(), progress=False
    )
    cc.save_pretrained(tmp_path / "cc")
    back = Crosscoder.from_pretrained(tmp_path / "cc")
    assert back.config.centered
    assert same(back.mean_b, cc.mean_b.cpu())
    assert same(back.normalize(x_b, "b"), cc.normalize(x_b, "b"))


def test_resampling_revives_dead_features_and_keeps_exclusivity():
    """Features dead for a window restart at high-error directions of their own model."""
    from crossdiff.crosscoder.resample import resample_dead

    x_a, x_b = offset_data(2048)
    src = ArraySource(x_a, x_b)
    cfg = CrosscoderConfig.dfc(D_A, D_B, F, exclusive=0.25, k=4)
    cc = train_crosscoder(src, cfg, quick_train(), progress=False)
    opt = torch.optim.Adam(cc.parameters())
    p = cc.partition
    dead = torch.zeros(F, dtype=torch.bool)
    victims = [p.a_exclusive.start, p.b_exclusive.start + 1, p.shared.start + 2]
    dead[victims] = True
    before = {n: t.detach().clone() for n, t in cc.state_dict().items()}
    za, zb = cc.normalize(x_a, "a"), cc.normalize(x_b, "b")
    assert resample_dead(cc, opt, dead, za, zb, seed=0, step=5) == 3
    after = cc.state_dict()
    # only the victims' parameters moved
    enc_a_changed = (after["W_enc_a"] != before["W_enc_a"]).any(0)
    dec_b_changed = (after["W_dec_b"] != before["W_dec_b"]).any(1)
    local_a, local_b = p.local_index("a"), p.local_index("b")
    assert set(torch.nonzero(enc_a_changed).flatten().tolist()) == {
        int(local_a[victims[0]]),
        int(local_a[victims[2]]),
    }
    assert set(torch.nonzero(dec_b_changed).flatten().tolist()) == {
        int(local_b[victims[1]]),
        int(local_b[victims[2]]),
    }
    # a resampled feature fires again on the batch
    with torch.no_grad():
        pre = cc.preacts(za, zb)
    for f in victims:
        assert float(pre[:, f].max()) > 0
    # a run with resampling still trains to a working crosscoder
    tc = quick_train(steps=20, resample_every=5, resample_until=1.0, dead_window_tokens=128)
    cc2 = train_crosscoder(src, cfg, tc, progress=False)
    from crossdiff.crosscoder.metrics import evaluate

    assert evaluate(cc2, src, n_batches=1, batch_size=2048)["fve_b"] > 0.2


def test_lopsided_diff_warnings_name_the_cause_and_the_fix():
    from crossdiff.crosscoder.metrics import lopsided_warnings

    w = lopsided_warnings(0.10, 0.0, 0.85, normalization="median")
    assert len(w) == 2
    assert "model B carries only 10%" in w[0] and "'centered'" in w[0]
    assert "85% of model B's exclusive features are dead" in w[1]
    assert lopsided_warnings(0.5, 0.1, 0.2, normalization="centered") == []
    assert "model A carries only 20%" in lopsided_warnings(0.8, None, None)[0]
