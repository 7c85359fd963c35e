"""The training step without host round trips (crosscoder/hostsync.py): an ordinary step of
the static path reads nothing from the device on the host, the check catches a read that comes
back, and the static path computes what the compacting (CPU) path computes: the same
selections, the same losses and weights up to float noise, and bit-exact resume."""

from __future__ import annotations

import math

import pytest
import torch

from crossdiff.crosscoder import (
    ArraySource,
    Crosscoder,
    CrosscoderConfig,
    TrainConfig,
    hostsync,
    train_crosscoder,
)
from crossdiff.crosscoder import train as train_mod
from crossdiff.crosscoder.sparse import (
    _weight_grad,
    select_batch_topk,
    select_batch_topk_static,
    select_topk,
    select_topk_static,
    sparse_decode,
)
from test_crosscoder import D_A, D_B, F, paired_data, quick_train, same, train_stopped_at_step_9

pytestmark = pytest.mark.usefixtures("one_thread")


def outlier_data(n: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """paired_data with high-norm rows in both models, so the filter drops rows every batch."""
    x_a, x_b = paired_data(n)
    x_a[::50] *= 8
    x_b[7::100] *= 8
    return x_a, x_b


@pytest.fixture(scope="module")
def source() -> ArraySource:
    return ArraySource(*outlier_data())


def busy_train(**kw) -> TrainConfig:
    """Every per-step mechanism at work: k annealing (and its end), the high-norm filter, AuxK
    (features die after 2 steps), resampling, several log and checkpoint steps."""
    base = dict(
        steps=20,
        dead_window_tokens=256,
        init_samples=512,
        resample_every=9,
        resample_until=1.0,
        k_anneal_from=12,
        k_anneal_steps=8,
        log_every=4,
    )
    base.update(kw)
    return quick_train(**base)


CONFIGS = {
    "dfc": lambda: CrosscoderConfig.dfc(D_A, D_B, 4 * F, exclusive=0.1, k=3),
    "topk": lambda: CrosscoderConfig.dfc(D_A, D_B, 2 * F, exclusive=0.1, k=4, activation="topk"),
    "relu": lambda: CrosscoderConfig.dfc(D_A, D_B, F, exclusive=0.1, k=4, activation="relu"),
    "dsf": lambda: CrosscoderConfig.dsf(D_A, D_A, 2 * F, designated=0.25, k=8),
}


def source_for(name: str, source: ArraySource) -> ArraySource:
    if name != "dsf":
        return source
    x_a, _ = outlier_data()
    return ArraySource(x_a, x_a.flip(1) * 0.7 + 0.1)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_ordinary_steps_read_nothing_on_the_host(tmp_path, source, name):
    """Every host read of crossdiff's code inside an ordinary step is recorded: there must be
    none (log, checkpoint, resample and first steps may read; they are not checked)."""
    tc = busy_train(l1_coeff=0.1) if name == "relu" else busy_train()
    with hostsync.check_steps() as report:
        train_crosscoder(
            source_for(name, source),
            CONFIGS[name](),
            tc,
            checkpoint_dir=tmp_path / "ck",
            progress=False,
        )
    # 20 steps minus the first, the log steps 4/8/12/16/20, the checkpoints 5/10/15 and the
    # resampling 9/18 (relu does not resample)
    assert report.steps_checked == (11 if name == "relu" else 9)
    assert report.syncs == [], report.summary()


def test_the_check_catches_a_host_read(monkeypatch, source):
    """A host read put back into the step (BatchTopK's compacting selection, whose boolean
    mask index needs the entry count on the host) is recorded with its place, and raises
    with raise_on_sync."""

    def compacting(self, pre, k, batch, keep):
        rows, feats = select_batch_topk(pre.clamp_min(0), k * pre.shape[0])
        return rows, feats, torch.ones_like(rows, dtype=torch.bool), pre.new_zeros(1)

    monkeypatch.setattr(Crosscoder, "_select_static", compacting)
    cfg = CrosscoderConfig.dfc(D_A, D_B, F, k=4)
    tc = busy_train(steps=8, resample_every=None)
    with hostsync.check_steps() as report:
        train_crosscoder(source, cfg, tc, progress=False)
    assert report.steps_checked == 5  # steps 2, 3, 5, 6, 7 (not 1 nor the log steps 4, 8)
    assert len(report.syncs) == 5, report.summary()
    assert all(
        s.startswith("Tensor.__getitem__ at crossdiff/crosscoder/sparse.py:")
        and s.endswith("(select_batch_topk)")
        for s in report.syncs
    ), report.syncs
    raises = pytest.raises(hostsync.HostSyncError, match="host read inside an ordinary")
    with raises, hostsync.check_steps(raise_on_sync=True):
        train_crosscoder(source, cfg, tc, progress=False)


def test_static_path_trains_what_the_compacting_path_trains(tmp_path, source):
    """The same run on both paths: the same selections, so the weights and the logged losses
    agree up to float summation order (masked sums, CSR instead of COO gradient)."""
    import json

    cfg = CONFIGS["dfc"]()
    compact = train_crosscoder(
        source, cfg, busy_train(log_every=3), checkpoint_dir=tmp_path / "compact", progress=False
    )
    with hostsync.check_steps():
        static = train_crosscoder(
            source, cfg, busy_train(log_every=3), checkpoint_dir=tmp_path / "static", progress=False
        )
    for name, t in compact.state_dict().items():
        got = static.state_dict()[name]
        torch.testing.assert_close(got.nan_to_num(0), t.nan_to_num(0), rtol=1e-4, atol=1e-5)
    logs = [
        [json.loads(line) for line in (tmp_path / d / "train_log.jsonl").read_text().splitlines()]
        for d in ("compact", "static")
    ]
    assert len(logs[0]) == len(logs[1]) == 7  # 3, 6, ..., 18 (with the resamplings), 20
    for r1, r2 in zip(*logs):
        assert r2["resampled"] == r1["resampled"] and r2["k"] == r1["k"]
        for key in ("loss", "fve_a", "fve_b", "l0", "aux", "dead"):
            assert r2[key] == pytest.approx(r1[key], rel=1e-5, abs=1e-6), (key, r1, r2)
    assert sum(r["resampled"] for r in logs[0]) > 0 and any(r["aux"] > 0 for r in logs[0])


@pytest.mark.parametrize("resample", [None, 3])
def test_static_path_resumes_bit_exactly(tmp_path, source, resample):
    cfg = CrosscoderConfig.dfc(D_A, D_B, F, exclusive=0.1, k=4)
    tc = quick_train(
        steps=14,
        checkpoint_every=4,
        init_samples=512,
        resample_every=resample,
        resample_until=1.0,
        dead_window_tokens=128,
    )
    with hostsync.check_steps() as report:
        full = train_stopped_at_step_9(source, cfg, tc, tmp_path)
        resumed = train_crosscoder(source, cfg, tc, checkpoint_dir=tmp_path / "cut", progress=False)
    assert report.syncs == [], report.summary()
    for (n, t1), (_, t2) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert same(t1, t2), n


def test_static_selections_equal_the_compacting_ones():
    g = torch.Generator().manual_seed(0)
    b, f, k = 48, 200, 5
    scores = torch.rand(b, f, generator=g).clamp_min(0.3) - 0.3  # some zeros
    scores[3] += 5 + torch.rand(f, generator=g)  # one row owns much of the budget (no ties)
    keep = torch.rand(b, generator=g) > 0.2
    masked = scores * keep.unsqueeze(1)
    rows, feats, valid = select_batch_topk_static(masked, k, keep.sum())
    assert rows.numel() == k * b  # the shape does not depend on the data
    key = rows * f + feats
    assert torch.equal(key, torch.sort(key).values)
    kept_rows = torch.nonzero(keep).flatten()
    r0, f0 = select_batch_topk(scores[keep], k * int(keep.sum()))
    assert set((key[valid]).tolist()) == set((kept_rows[r0] * f + f0).tolist())
    # fewer positive entries than the budget: all of them, nothing else
    sparse = torch.where(torch.rand(b, f, generator=g) < 0.01, scores + 1, torch.zeros(()))
    rows, feats, valid = select_batch_topk_static(sparse, k)
    assert int(valid.sum()) == int((sparse > 0).sum())
    # top-k per row
    rows, feats, valid = select_topk_static(sparse, 3)
    r1, f1 = select_topk(sparse, 3)
    assert rows.numel() == 3 * b
    assert set((rows[valid] * f + feats[valid]).tolist()) == set((r1 * f + f1).tolist())


def test_static_decode_and_encoder_gradient_equal_the_compacting_ones():
    g = torch.Generator().manual_seed(1)
    b, n_w, d, nnz = 40, 30, 8, 300
    rows = torch.sort(torch.randint(0, b, (nnz,), generator=g)).values
    local = torch.randint(-1, n_w, (nnz,), generator=g)
    vals = torch.rand(nnz, generator=g)
    weight = torch.randn(n_w, d, generator=g)
    torch.testing.assert_close(
        sparse_decode(rows, local, vals, weight, b, static=True),
        sparse_decode(rows, local, vals, weight, b),
    )
    x = torch.randn(b, d, generator=g)
    grad = torch.randn(nnz, generator=g)
    torch.testing.assert_close(
        _weight_grad(x, rows, local, grad, n_w, static=True),
        _weight_grad(x, rows, local, grad, n_w),
    )


@pytest.mark.parametrize("activation", ["batchtopk", "topk", "relu"])
def test_static_loss_with_a_row_mask_equals_the_loss_without_those_rows(activation):
    cfg = CrosscoderConfig.dfc(D_A, D_B, F, exclusive=0.1, k=4, activation=activation)
    cc = Crosscoder(cfg, seed=2)
    x_a, x_b = paired_data(200, seed=3)
    keep = torch.rand(200, generator=torch.Generator().manual_seed(4)) > 0.1
    dead = torch.zeros(F, dtype=torch.bool)
    dead[::3] = True
    kw = dict(k=4, dead_mask=dead, aux_k=4, aux_alpha=0.5, l1_coeff=0.1)
    out_c = cc.loss(x_a[keep], x_b[keep], **kw, static=False)
    cc.zero_grad()
    out_c.total.backward()
    grads_c = {n: p.grad.clone() for n, p in cc.named_parameters() if p.grad is not None}
    out_s = cc.loss(x_a, x_b, **kw, keep=keep, static=True)
    cc.zero_grad()
    out_s.total.backward()
    for name in ("total", "recon_a", "recon_b", "aux", "l1", "var_a", "var_b"):
        torch.testing.assert_close(getattr(out_s, name), getattr(out_c, name), rtol=1e-5, atol=1e-6)
    if activation != "relu":
        assert float(out_c.aux.detach()) > 0  # AuxK ran
        assert torch.equal(out_s.fired, out_c.fired)
        torch.testing.assert_close(out_s.min_score, out_c.min_score)
    assert float(out_s.l0) == pytest.approx(out_c.l0, rel=1e-6)
    for name, g in grads_c.items():
        got = dict(cc.named_parameters())[name].grad
        torch.testing.assert_close(got, g, rtol=1e-4, atol=1e-6, msg=name)


def test_static_auxk_term_is_zero_without_dead_features():
    cfg = CrosscoderConfig.dfc(D_A, D_B, F, k=4)
    cc = Crosscoder(cfg, seed=2)
    x_a, x_b = paired_data(64, seed=3)
    none_dead = torch.zeros(F, dtype=torch.bool)
    out = cc.loss(x_a, x_b, dead_mask=none_dead, aux_k=4, aux_alpha=0.5, static=True)
    assert float(out.aux.detach()) == 0.0
    ref = cc.loss(x_a, x_b, static=True)
    assert torch.equal(out.total, ref.total)


def test_threshold_update_is_the_per_group_loop_bit_for_bit():
    """The device-side EMA reproduces the host loop it replaced, including its float64 beta
    and the float32 roundings of its two terms."""
    g = torch.Generator().manual_seed(0)
    beta_max = 0.999
    for trial in range(500):
        thr = torch.randn(2, generator=g) * 3
        n = torch.randint(0, 3000, (2,), generator=g)
        if trial % 5 == 0:
            n[trial % 2] = 0
        value = torch.rand(2, generator=g) * 5
        if trial % 7 == 0:
            value[1] = float("nan")
        want, want_n = thr.clone(), n.clone()
        for i in range(2):  # the loop of the trainer before issue 20
            v = float(value[i])
            if math.isnan(v):
                continue
            m = int(want_n[i])
            beta = min(beta_max, (1 + m) / (10 + m))
            want[i] = v if m == 0 else beta * want[i] + (1 - beta) * v
            want_n[i] += 1
        cc = Crosscoder(CrosscoderConfig.dfc(D_A, D_B, F, k=4))
        cc.threshold.copy_(thr)
        state = train_mod.TrainState(thr_updates=n.clone())
        train_mod._update_threshold(cc, state, value, 1, TrainConfig(k_anneal_from=None), 4)
        assert torch.equal(cc.threshold, want) and torch.equal(state.thr_updates, want_n)


def test_static_shapes_only_on_accelerators_or_when_checking():
    assert not hostsync.static_shapes("cpu")
    assert hostsync.static_shapes(torch.device("cuda"))
    with hostsync.check_steps():
        assert hostsync.static_shapes("cpu")
        with pytest.raises(RuntimeError, match="already active"), hostsync.check_steps():
            pass
    assert not hostsync.static_shapes(torch.zeros(1))
