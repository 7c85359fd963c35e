"""The published-style dense reference DFC computes what our crosscoder computes, and
``crossdiff bench train-speed`` runs end to end."""

from __future__ import annotations

import json

import pytest
import torch

from crossdiff.crosscoder import Crosscoder, CrosscoderConfig
from crossdiff.errors import CrossdiffError
from crossdiff_bench.reference_dfc import ReferenceDFC
from crossdiff_bench.train_speed import SpeedConfig, run_speed

pytestmark = pytest.mark.usefixtures("one_thread")


D_A, D_B, F = 24, 16, 96


def make_pair(selection_norm: str, exclusive: float, seed: int = 0):
    cfg = CrosscoderConfig(
        D_A,
        D_B,
        F,
        frac_exclusive_a=exclusive,
        frac_exclusive_b=exclusive,
        k=4,
        selection_norm=selection_norm,
    )
    ours = Crosscoder(cfg, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-trivial biases so every term is exercised
        ours.b_enc.copy_(0.1 * torch.randn(F, generator=g))
        ours.b_dec_a.copy_(torch.randn(D_A, generator=g))
        ours.b_dec_b.copy_(torch.randn(D_B, generator=g))
    return ours, ReferenceDFC.from_crosscoder(ours)


def batch(n: int = 64, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    return 3 * torch.randn(n, D_A, generator=g), 3 * torch.randn(n, D_B, generator=g)


def dead_mask() -> torch.Tensor:
    m = torch.zeros(F, dtype=torch.bool)
    m[::5] = True
    return m


def dense_from_ours(ours: Crosscoder) -> dict[str, torch.Tensor]:
    return {
        "W_enc_a": ours.encoder_weight("a"),
        "W_enc_b": ours.encoder_weight("b"),
        "W_dec_a": ours.decoder_weight("a"),
        "W_dec_b": ours.decoder_weight("b"),
        "b_enc": ours.b_enc,
        "b_dec_a": ours.b_dec_a,
        "b_dec_b": ours.b_dec_b,
    }


@pytest.mark.parametrize("selection_norm", ["l2", "sum", "none"])
@pytest.mark.parametrize("exclusive", [0.0, 0.1])
def test_same_loss_and_gradients(selection_norm: str, exclusive: float) -> None:
    ours, ref = make_pair(selection_norm, exclusive)
    xa, xb = batch()
    kw = dict(k=4, dead_mask=dead_mask(), aux_k=6, aux_alpha=0.03)
    lo, lr = ours.loss(xa, xb, **kw), ref.loss(xa, xb, **kw)
    assert float(lo.aux.detach()) > 0  # AuxK is exercised
    assert torch.allclose(lo.total, lr.total, rtol=1e-5)
    assert torch.allclose(lo.aux, lr.aux, rtol=1e-5)
    assert lo.l0 == lr.l0
    lo.total.backward()
    lr.total.backward()
    ref.mask_gradients()
    # the gradients, laid out densely, agree; forbidden blocks get none
    grads = {
        "W_dec_a": (ours.W_dec_a.grad, ours.local_a, 0),
        "W_dec_b": (ours.W_dec_b.grad, ours.local_b, 0),
        "W_enc_a": (ours.W_enc_a.grad, ours.local_a, 1),
        "W_enc_b": (ours.W_enc_b.grad, ours.local_b, 1),
    }
    for name, (g_ours, local, dim) in grads.items():
        g_ref = getattr(ref, name).grad
        allowed = local >= 0
        mine = g_ours.index_select(dim, local[allowed])
        theirs = g_ref[allowed] if dim == 0 else g_ref[:, allowed]
        assert torch.allclose(mine, theirs, atol=1e-5, rtol=1e-4), name
        forbidden = g_ref[~allowed] if dim == 0 else g_ref[:, ~allowed]
        assert forbidden.abs().sum() == 0, name
    assert torch.allclose(ours.b_enc.grad, ref.b_enc.grad, atol=1e-6)


def test_training_steps_keep_them_together_and_exclusive() -> None:
    ours, ref = make_pair("l2", 0.1)
    opt_o = torch.optim.Adam(ours.parameters(), lr=1e-3)
    opt_r = torch.optim.Adam(ref.parameters(), lr=1e-3)
    for i in range(3):
        xa, xb = batch(seed=10 + i)
        for model, opt in ((ours, opt_o), (ref, opt_r)):
            out = model.loss(xa, xb, k=4)
            opt.zero_grad()
            out.total.backward()
            if model is ref:
                ref.mask_gradients()
            opt.step()
    for name, want in dense_from_ours(ours).items():
        assert torch.allclose(getattr(ref, name), want, atol=1e-5), name
    # forbidden blocks of the reference are still exactly zero
    n_a = ours.partition.n_a
    assert ref.W_dec_b[:n_a].abs().sum() == 0 and ref.W_enc_b[:, :n_a].abs().sum() == 0


def test_reference_rejects_designated_shared() -> None:
    cc = Crosscoder(CrosscoderConfig.dsf(16, 16, 40, designated=0.1, k=2))
    with pytest.raises(CrossdiffError, match="designated"):
        ReferenceDFC.from_crosscoder(cc)


def test_run_speed_tiny() -> None:
    sc = SpeedConfig(
        n_features=64,
        d_a=16,
        d_b=12,
        batch_size=64,
        k=3,
        steps=2,
        rounds=2,
        warmup=1,
        dead_frac=0.2,
    )
    r = run_speed(sc, log=lambda _: None)
    assert r.ours_samples_per_s > 0 and r.reference_samples_per_s > 0
    assert len(r.ours_rounds) == len(r.reference_rounds) == 2
    assert r.loss_init_reference == pytest.approx(r.loss_init_ours, rel=1e-5)
    assert r.loss_after_reference == pytest.approx(r.loss_after_ours, rel=1e-3)
    assert r.loss_after_ours != r.loss_init_ours  # they did train
    seq = run_speed(SpeedConfig(**{**sc.__dict__, "sequential": True}), log=lambda _: None)
    assert seq.sequential and seq.loss_init_reference == pytest.approx(seq.loss_init_ours, rel=1e-5)
    alone = run_speed(SpeedConfig(**{**sc.__dict__, "reference": False}), log=lambda _: None)
    assert alone.reference_samples_per_s is None and alone.speedup is None


def test_train_speed_cli(tmp_path, capsys) -> None:
    from crossdiff.cli import main

    out = tmp_path / "speed.json"
    rc = main(
        [
            "bench",
            "train-speed",
            "--n-features",
            "64",
            "32",
            "--d",
            "16",
            "--batch-size",
            "64",
            "--k",
            "2",
            "--steps",
            "1",
            "--rounds",
            "1",
            "--warmup",
            "0",
            "--json-out",
            str(out),
        ]
    )
    assert rc == 0
    assert "speedup" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert [r["config"]["n_features"] for r in data["results"]] == [64, 32]
    assert (
        main(
            [
                "bench",
                "train-speed",
                "--n-features",
                "64",
                "--d",
                "16",
                "--batch-size",
                "64",
                "--steps",
                "0",
            ]
        )
        == 2
    )
