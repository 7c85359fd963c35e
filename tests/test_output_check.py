"""The DFC output check on a pair that shares one residual basis (a model and its fine-tune).

A planted store in one basis for both models (same width, same tokens): a signal only A has
(confirmed), a signal both carry along the same direction (refuted), and a *conditional*
one: a trigger both models carry (dim 3) and, only in A, an output along dim 4 whenever the
trigger fires. B predicts when A's dim-4 feature fires (from the trigger) but does not carry
dim 4 itself: the verdict must be 'conditional', ranked after the confirmed feature and
before the refuted one. On a pair of different widths nothing changes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from crossdiff.analysis import AnalysisConfig, analyze
from crossdiff.analysis.exclusivity import same_residual_basis, same_tokenization
from crossdiff.analysis.ranking import verdict_reason, verdicts
from crossdiff.paths import RunPaths
from crossdiff.store import ActivationStore
from crossdiff_bench.synthetic import write_synthetic_store

D = 12


def _activations(doc: int, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x_a = rng.normal(0.0, 0.3, size=(n, D))
    x_b = x_a.copy()  # one basis: B is A without what only A has
    sig = (rng.random((n, 3)) < 0.15) * rng.uniform(1.0, 2.0, size=(n, 3))
    x_a[:, 0] += sig[:, 0]  # only A
    x_a[:, 1] += sig[:, 1]  # both, same direction
    x_b[:, 1] += sig[:, 1]
    x_a[:, 3] += sig[:, 2]  # the trigger: both
    x_b[:, 3] += sig[:, 2]
    x_a[:, 4] += sig[:, 2]  # A's output on the trigger
    x_b[:, 0] = rng.normal(0.0, 0.3, size=n)  # B's own noise where A has more
    x_b[:, 4] = rng.normal(0.0, 0.3, size=n)
    return torch.from_numpy(x_a).float(), torch.from_numpy(x_b).float()


def _crosscoder(d_b: int):
    from crossdiff.crosscoder import Crosscoder, CrosscoderConfig

    cfg = CrosscoderConfig.dfc(D, d_b, 32, exclusive=0.125, activation="relu")
    cc = Crosscoder(cfg, seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for w in (cc.W_enc_a, cc.W_enc_b, cc.W_dec_a, cc.W_dec_b):
            w.copy_(torch.randn(w.shape, generator=gen) * 0.15)
        cc.b_enc.fill_(-0.6)
        eye = torch.eye(D)
        for local, dim in ((0, 0), (1, 1), (2, 4)):  # A-exclusive: only A, shared, conditional
            cc.W_enc_a[:, local] = eye[dim]
            cc.W_dec_a[local] = eye[dim]
            cc.b_enc[local] = -0.5
    return cc, {"a_only": 0, "a_shared": 1, "conditional": 2}


@pytest.fixture(scope="module")
def one_basis(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("one-basis")
    paths = RunPaths(root)
    write_synthetic_store(
        paths.store, n_docs=120, words_per_doc=30, d_a=D, d_b=D,
        activations=_activations, shard_rows=600, seed=0, one_vocabulary=True,
    )  # fmt: skip
    cc, roles = _crosscoder(D)
    cc.save_pretrained(paths.crosscoder)
    return root, roles


def _quiet() -> AnalysisConfig:
    return AnalysisConfig(probe_split="all", progress=False, device="cpu")


def test_same_basis_is_read_from_the_manifest(one_basis) -> None:
    root, _ = one_basis
    m = ActivationStore.open(RunPaths(root).store).manifest
    assert m.model_a.tokenizer.hash != m.model_b.tokenizer.hash  # recorded differently ...
    assert same_tokenization(m) and same_residual_basis(m)  # ... but the tokens agree
    m.shards[0].content_tokens_b += 1
    assert not same_tokenization(m)
    m.shards[0].content_tokens_b -= 1
    m.model_b.tokenizer.vocab_size += 1
    assert not same_tokenization(m)


def test_a_behaviour_on_a_shared_trigger_is_conditional(one_basis) -> None:
    root, roles = one_basis
    res = analyze(root, config=_quiet())
    f = {role: res.feature(i) for role, i in roles.items()}
    assert f["a_only"]["verdict"] == "confirmed"
    assert f["a_shared"]["verdict"] == "refuted" and f["a_shared"]["ls_ratio"] > 0.7
    c = f["conditional"]
    assert c["cross_r2"] > 0.5  # B sees when it fires ...
    assert abs(c["ls_ratio"]) < 0.2  # ... but does not carry what it writes
    assert c["verdict"] == "conditional"
    assert f["a_only"]["rank"] < c["rank"] < f["a_shared"]["rank"]
    assert "does not carry what it writes" in verdict_reason(c)
    assert res.meta["classes"]["A"]["conditional"] >= 1


def test_without_the_output_check_nothing_is_conditional() -> None:
    cfg = AnalysisConfig()
    exclusive = np.ones(3, dtype=bool)
    cross_r2 = np.array([0.9, 0.9, 0.1])
    active = np.full(3, 50)
    ls = np.array([0.05, 0.9, 0.05])
    assert verdicts(exclusive, cross_r2, active, ls, cfg, output_check=True).tolist() == [
        "conditional", "refuted", "confirmed",
    ]  # fmt: skip
    assert verdicts(exclusive, cross_r2, active, ls, cfg).tolist() == [
        "refuted", "refuted", "confirmed",
    ]  # fmt: skip


# ---- across architectures: the output check through the cross-model map -------------------
D_B = 14
GENERAL_DOCS = 80
"""Documents 0-79 are general text (source 'general'), the rest the audit's prompts: only
there does A write its output (dim 4) whenever the trigger (dim 3) fires."""


def _embedding() -> np.ndarray:
    """B's basis: A's content (dims 0-3) through a fixed random map into D_B dims."""
    return np.random.default_rng(7).normal(0.0, 1.0, size=(4, D_B)) / 2.0


def _two_bases(doc: int, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    x_a = rng.normal(0.0, 0.3, size=(n, D))
    sig = (rng.random((n, 3)) < 0.15) * rng.uniform(1.0, 2.0, size=(n, 3))
    x_a[:, 0] += sig[:, 0]  # only A
    x_a[:, 1] += sig[:, 1]  # both
    x_a[:, 3] += sig[:, 2]  # the trigger: both
    if doc >= GENERAL_DOCS:
        x_a[:, 4] += sig[:, 2]  # A's output on the trigger, in the prompts only
    shared = np.stack([np.zeros(n), sig[:, 1], np.zeros(n), sig[:, 2]], axis=1)
    x_b = shared @ _embedding() + rng.normal(0.0, 0.3, size=(n, D_B))
    return torch.from_numpy(x_a).float(), torch.from_numpy(x_b).float()


@pytest.fixture(scope="module")
def two_bases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("two-bases")
    paths = RunPaths(root)
    write_synthetic_store(
        paths.store, n_docs=160, words_per_doc=30, d_a=D, d_b=D_B,
        activations=_two_bases, shard_rows=600, seed=0,
        sources=lambda i: "general" if i < GENERAL_DOCS else "prompts",
    )  # fmt: skip
    cc, roles = _crosscoder(D_B)
    with torch.no_grad():  # the conditional feature reads the trigger, writes the output
        cc.W_enc_a[:, roles["conditional"]] = torch.eye(D)[3]
    cc.save_pretrained(paths.crosscoder)
    return root, roles


def test_across_architectures_the_output_is_read_through_the_map(two_bases) -> None:
    root, roles = two_bases
    cfg = AnalysisConfig(probe_split="all", progress=False, device="cpu", map_sources=("general",))
    before = analyze(root, config=cfg, out=root / "plain")
    assert not same_residual_basis(ActivationStore.open(RunPaths(root).store).manifest)
    c0 = before.feature(roles["conditional"])
    assert c0["cross_r2"] > 0.5 and c0["verdict"] == "refuted"  # B sees when it fires
    assert not np.isfinite(c0["ls_ratio"])  # no output check without a shared basis
    cfg.mapped_output = True
    res = analyze(root, config=cfg, out=root / "mapped")
    f = {role: res.feature(i) for role, i in roles.items()}
    assert f["a_only"]["verdict"] == "confirmed"
    assert f["a_shared"]["verdict"] == "refuted" and f["a_shared"]["ls_ratio"] > 0.7
    c = f["conditional"]
    assert c["cross_r2"] == pytest.approx(c0["cross_r2"])  # the same prediction ...
    assert abs(c["ls_ratio"]) < 0.3  # ... but B, mapped, lacks what it writes
    assert c["verdict"] == "conditional"
    assert f["a_only"]["rank"] < c["rank"] < f["a_shared"]["rank"]
