"""The toy ground-truth generator and its scoring (crossdiff_bench.toy_data), and
``crossdiff bench toy`` end to end at a tiny size."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from crossdiff.errors import CrossdiffError
from crossdiff_bench.toy_data import (
    ToyConfig,
    ToySource,
    ToyWorld,
    crosscoder_labels,
    relative_norm_labels,
    score_crosscoder,
    score_decoders,
)

pytestmark = pytest.mark.usefixtures("one_thread")


SMALL = dict(n_concepts=200, d_a=32, d_b=24, frac_exclusive_a=0.05, frac_exclusive_b=0.05)


@pytest.fixture(scope="module")
def world() -> ToyWorld:
    return ToyWorld.build(ToyConfig(**SMALL, calibration_samples=4096))


def take(source: ToySource, n: int, **kw) -> list[tuple[torch.Tensor, torch.Tensor]]:
    it = source.batches(kw.pop("batch_size", 64), **kw)
    return [next(it) for _ in range(n)]


def same_batches(xs, ys) -> bool:
    return all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(xs, ys))


# ---- the world ---------------------------------------------------------------------------------
def test_world_shapes_and_kinds(world: ToyWorld) -> None:
    cfg = world.config
    assert world.directions_a.shape == (200, 32)
    assert world.directions_b.shape == (200, 24)
    assert torch.allclose(world.directions_a.norm(dim=1), torch.ones(200), atol=1e-5)
    assert torch.allclose(world.directions_b.norm(dim=1), torch.ones(200), atol=1e-5)
    counts = {k: int((world.kinds == k).sum()) for k in "ABS"}
    assert counts == {"A": cfg.n_exclusive_a, "B": cfg.n_exclusive_b, "S": 200 - 20}
    assert (
        world.visible_to("a").sum() == 190 and not world.visible_to("a")[world.kinds == "B"].any()
    )
    # B's directions are A's through B's linear map, renormalized
    ub = world.directions_a @ world.map_b.T
    assert torch.allclose(world.directions_b, ub / ub.norm(dim=1, keepdim=True), atol=1e-5)
    assert math.isclose(float(world.probabilities.sum()), cfg.mean_active, rel_tol=1e-4)


def test_exclusive_concepts_span_the_frequency_range(world: ToyWorld) -> None:
    p = world.probabilities.numpy()
    rank = np.argsort(np.argsort(-p))  # 0 = most frequent
    for kind in "AB":
        r = np.sort(rank[world.kinds == kind])
        # one per stratum of 20 ranks (B's among the ranks A left): never bunched at one end
        assert r[0] < 40 and r[-1] >= 160
        assert np.diff(r).max() < 60


def test_world_is_deterministic_and_seeded() -> None:
    w1 = ToyWorld.build(ToyConfig(**SMALL, calibration_samples=512, seed=3))
    w2 = ToyWorld.build(ToyConfig(**SMALL, calibration_samples=512, seed=3))
    w3 = ToyWorld.build(ToyConfig(**SMALL, calibration_samples=512, seed=4))
    assert torch.equal(w1.directions_a, w2.directions_a) and (w1.kinds == w2.kinds).all()
    assert w1.scale_b == w2.scale_b
    assert not torch.equal(w1.directions_a, w3.directions_a)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("n_concepts", 0),
        ("frac_exclusive_a", 1.2),
        ("frac_exclusive_b", 0.6),
        ("corr_strength", 1.0),
        ("mean_active", 0.0),
        ("freq_decay", -1.0),
        ("noise_std", -0.1),
        ("map_std", 0.0),
    ],
)
def test_bad_config_is_a_clear_error(field: str, value: float) -> None:
    kw = dict(SMALL)
    if field == "frac_exclusive_b":
        kw["frac_exclusive_a"] = 0.5
    kw[field] = value
    with pytest.raises(CrossdiffError, match=field.split("_")[0]):
        ToyConfig(**kw)


# ---- the stream ------------------------------------------------------------------------------
def test_stream_is_deterministic_and_skip_drops_batches(world: ToyWorld) -> None:
    a = take(ToySource(world=world), 5, seed=7)
    b = take(ToySource(world=world), 5, seed=7)
    assert same_batches(a, b)
    skipped = take(ToySource(world=world), 2, seed=7, skip=3)
    assert same_batches(a[3:], skipped)
    other = take(ToySource(world=world), 1, seed=8)
    assert not torch.equal(a[0][0], other[0][0])
    # batch size is part of the stream's identity, but each batch is reproducible on its own
    assert not torch.equal(
        take(ToySource(world=world), 1, seed=7, batch_size=32)[0][0], a[0][0][:32]
    )


def test_code_cache_changes_nothing(world: ToyWorld) -> None:
    cached = ToySource(world=world, cache_mb=16)
    first = take(cached, 4, seed=1)
    assert cached._cached_bytes > 0
    again = take(cached, 4, seed=1)
    plain = take(ToySource(world=world), 4, seed=1)
    assert same_batches(first, again) and same_batches(first, plain)


def test_activations_are_the_visible_concepts(world: ToyWorld) -> None:
    """Noise off: x_A is exactly the sum of A-visible concepts; B-only concepts add nothing."""
    batch = world.sample(256, seed=2, index=0, noise=False)
    dense = batch.concept_activations(world.config.n_concepts)
    vis_a = torch.from_numpy(world.visible_to("a")).float()
    expect_a = (dense * vis_a) @ world.directions_a
    assert torch.allclose(batch.x_a, expect_a, atol=1e-5)
    vis_b = torch.from_numpy(world.visible_to("b")).float()
    expect_b = world.scale_b * (
        (dense * vis_b) @ (world.directions_a @ world.map_b.T) + world.translation_b
    )
    assert torch.allclose(batch.x_b, expect_b, atol=1e-4)
    # magnitudes in (0, 1), and a sample with only B-only concepts is zero in A
    assert float(batch.magnitude.min()) > 0 and float(batch.magnitude.max()) < 1
    only_b = ((dense > 0) & ~torch.from_numpy(world.visible_to("a"))).any(1) & (
        (dense * vis_a) == 0
    ).all(1)
    if only_b.any():
        assert float(batch.x_a[only_b].abs().max()) == 0.0


def test_firing_rates_and_scaling(world: ToyWorld) -> None:
    batch = world.sample(40_000, seed=5, index=0)
    counts = torch.bincount(batch.concept_index, minlength=world.config.n_concepts).float()
    freq = counts / 40_000
    p = world.probabilities
    # each concept fires at its marginal rate (binomial error, 5 sigma)
    assert bool(((freq - p).abs() <= 5 * (p * (1 - p) / 40_000).sqrt() + 1e-4).all())
    assert abs(float(freq.sum()) - world.config.mean_active) < 0.1
    # B is rescaled to A's median norm; the source's scales hit sqrt((d_a + d_b) / 2)
    na, nb = batch.x_a.norm(dim=1).median(), batch.x_b.norm(dim=1).median()
    assert abs(float(nb / na) - 1) < 0.05
    sa, sb = ToySource(world=world).norm_scales()
    target = math.sqrt((32 + 24) / 2)
    assert abs(float(na) * sa / target - 1) < 0.05 and abs(float(nb) * sb / target - 1) < 0.05


def test_correlated_firing() -> None:
    """Rank-r correlation: with strong factors, co-firing departs from independence."""
    kw = dict(n_concepts=40, d_a=8, d_b=8, mean_active=4.0, freq_decay=0.0)
    corr = ToyWorld.build(ToyConfig(**kw, corr_rank=1, corr_strength=0.9, calibration_samples=256))
    indep = ToyWorld.build(ToyConfig(**kw, corr_rank=0, calibration_samples=256))

    def mean_abs_corr(w: ToyWorld) -> float:
        f = (w.sample(20_000, seed=1, index=0).concept_activations(40) > 0).float()
        c = torch.corrcoef(f.T)
        return float((c - torch.eye(40)).abs().sum() / (40 * 39))

    assert mean_abs_corr(corr) > 5 * mean_abs_corr(indep)


# ---- scoring ---------------------------------------------------------------------------------
def truth_labels(world: ToyWorld) -> np.ndarray:
    return world.kinds.copy()


def test_ground_truth_decoder_scores_perfectly(world: ToyWorld) -> None:
    s = score_decoders(world, world.directions_a, world.directions_b, truth_labels(world))
    assert s.recall_exclusive_a == s.recall_exclusive_b == s.recall_shared == 1.0
    assert s.false_positive_a == s.false_positive_b == s.false_positive == 0.0
    assert s.labelled_a == s.true_a == world.config.n_exclusive_a


def test_random_decoder_scores_zero(world: ToyWorld) -> None:
    g = torch.Generator().manual_seed(0)
    dec_a, dec_b = torch.randn(300, 32, generator=g), torch.randn(300, 24, generator=g)
    labels = np.array(["A"] * 10 + ["B"] * 10 + ["S"] * 280)
    s = score_decoders(world, dec_a, dec_b, labels)
    assert s.recall_exclusive_a == s.recall_exclusive_b == s.recall_shared == 0.0
    assert s.false_positive == 1.0 and s.labelled_a == 10


def test_labels_and_alive_matter(world: ToyWorld) -> None:
    labels = truth_labels(world)
    # learned but called shared: no exclusive recall, though recall_any sees them
    all_shared = np.full_like(labels, "S")
    s = score_decoders(world, world.directions_a, world.directions_b, all_shared)
    assert s.recall_exclusive_a == 0.0 and s.recall_any_a == 1.0
    # a shared concept labelled A-exclusive is a false positive that matches a shared concept
    wrong = labels.copy()
    first_shared = int(np.flatnonzero(labels == "S")[0])
    wrong[first_shared] = "A"
    s = score_decoders(world, world.directions_a, world.directions_b, wrong)
    assert s.false_matching_shared_a == 1 and s.labelled_a == world.config.n_exclusive_a + 1
    # dead features recover nothing
    alive = labels != "A"
    s = score_decoders(world, world.directions_a, world.directions_b, labels, alive=alive)
    assert s.recall_exclusive_a == 0.0 and math.isnan(s.false_positive_a)
    # a slightly rotated decoder still counts; a far one does not
    noisy = world.directions_a + 0.02 * torch.randn(
        world.directions_a.shape, generator=torch.Generator().manual_seed(1)
    )
    assert score_decoders(world, noisy, world.directions_b, labels).recall_exclusive_a == 1.0
    assert (
        score_decoders(
            world, noisy, world.directions_b, labels, threshold=0.9999
        ).recall_exclusive_a
        < 1.0
    )


def test_relative_norm_labels() -> None:
    dec_a = torch.tensor([[1.0, 0], [1.0, 0], [1.0, 0], [0.0, 0]])
    dec_b = torch.tensor([[0.1, 0], [1.0, 0], [9.0, 0], [1.0, 0]])
    assert relative_norm_labels(dec_a, dec_b).tolist() == ["A", "S", "B", "B"]
    with pytest.raises(CrossdiffError):
        relative_norm_labels(dec_a, dec_b, hi=0.2, lo=0.8)


def test_crosscoder_labels_by_partition_or_relative_norm() -> None:
    from crossdiff.crosscoder import Crosscoder, CrosscoderConfig

    dfc = Crosscoder(CrosscoderConfig.dfc(16, 16, 40, exclusive=0.1, k=2))
    assert crosscoder_labels(dfc).tolist() == ["A"] * 4 + ["B"] * 4 + ["S"] * 32
    std = Crosscoder(CrosscoderConfig.standard(16, 16, 40, k=2))
    with torch.no_grad():
        std.W_dec_b[0].mul_(0.01)  # feature 0 writes almost only A
        std.W_dec_a[1].mul_(0.01)  # feature 1 almost only B
    labels = crosscoder_labels(std)
    assert labels[0] == "A" and labels[1] == "B" and (labels[2:] == "S").all()


def test_score_crosscoder_on_a_trained_dfc() -> None:
    from crossdiff.crosscoder import CrosscoderConfig, TrainConfig, train_crosscoder

    src = ToySource(
        ToyConfig(
            n_concepts=48,
            d_a=16,
            d_b=16,
            frac_exclusive_a=0.1,
            frac_exclusive_b=0.1,
            mean_active=2.0,
            calibration_samples=1024,
        )
    )
    cfg = CrosscoderConfig.dfc(16, 16, 64, exclusive=0.1, k=2)
    tc = TrainConfig(
        steps=150,
        batch_size=256,
        lr=1e-2,
        warmup_steps=10,
        k_anneal_from=None,
        log_every=50,
        device="cpu",
    )
    cc = train_crosscoder(src, cfg, tc, progress=False)
    s = score_crosscoder(cc, src, n_batches=4, batch_size=512)
    for v in (s.recall_exclusive_a, s.recall_exclusive_b, s.recall_shared, s.false_positive):
        assert 0.0 <= v <= 1.0
    assert s.labelled_a <= 6 and s.alive > 0
    # this easy world is learned well within 150 steps: most shared concepts found
    assert s.recall_shared > 0.5


# ---- the CLI -----------------------------------------------------------------------------------
def test_bench_toy_cli_end_to_end(tmp_path, capsys) -> None:
    from crossdiff.cli import main

    out = tmp_path / "toy.json"
    rc = main(
        [
            "bench",
            "toy",
            "--n-concepts",
            "96",
            "--d",
            "16",
            "--n-features",
            "48",
            "--k",
            "2",
            "--steps",
            "20",
            "--batch-size",
            "128",
            "--eval-batches",
            "2",
            "--seeds",
            "2",
            "--no-progress",
            "--json-out",
            str(out),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    for model in ("standard", "dsf", "dfc"):
        assert model in text
    assert "±" in text  # two seeds: mean ± spread
    data = json.loads(out.read_text())
    assert len(data["rows"]) == 6 and len(data["summary"]) == 3
    assert {r["seed"] for r in data["rows"]} == {0, 1}
    for r in data["rows"]:
        assert 0 <= r["recall_shared"] <= 1 and r["samples_per_s"] > 0
        assert -1 < r["fve_a"] <= 1 and 0 <= r["dead_pct"] <= 100
    dfc = next(r for r in data["rows"] if r["model"] == "dfc")
    std = next(r for r in data["rows"] if r["model"] == "standard")
    assert dfc["score"]["labelled_a"] <= 2  # 5% of 48 -> 2 A-exclusive features
    assert std["score"]["n_features"] == 48


def test_bench_toy_cli_bad_input(capsys) -> None:
    from crossdiff.cli import main

    assert main(["bench", "toy", "--models", "dfc,nope", "--steps", "1"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["bench", "toy", "--d", "16", "--d-b", "12", "--steps", "1"]) == 2
    assert "d_a == d_b" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["bench", "toy", "--device", "cuda", "--steps", "1"]) == 2
        assert "CUDA" in capsys.readouterr().err
