"""Damaged stores and checkpoints (issue 12, hardening): every damage is refused with one line
that names the shard (or the manifest field) and points to `crossdiff store verify`, `store
verify` reports it as a problem (never a traceback), nothing already written is changed, and a
damaged newest training checkpoint falls back to the previous one, bit-exactly.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save, save_file

from crossdiff.cli import main as cli_main
from crossdiff.crosscoder import CrosscoderConfig, latest_checkpoint, train_crosscoder
from crossdiff.crosscoder.checkpoint import TRAIN_STATE_FILE
from crossdiff.crosscoder.fit import train_on_store
from crossdiff.crosscoder.model import WEIGHTS_FILE
from crossdiff.crosscoder.sources import ArraySource
from crossdiff.errors import CrossdiffError
from crossdiff.store import ActivationStore, ManifestError, StoreDamagedError
from crossdiff.store.check import nonfinite_count
from crossdiff.store.fileio import sha256_file
from test_crosscoder import D_A as CC_D_A
from test_crosscoder import D_B as CC_D_B
from test_crosscoder import F, paired_data, quick_train, same, train_stopped_at_step_9
from test_store import fill, manifest

TRAIN_ARGS = [
    "--n-features",
    "32",
    "--k",
    "4",
    "--steps",
    "3",
    "--batch-size",
    "16",
    "--warmup-steps",
    "1",
    "--k-anneal-from",
    "0",
    "--exclusive-init",
    "random",
    "--checkpoint-every",
    "2",
    "--device",
    "cpu",
    "--no-progress",
]
DERIVED = {"moments.safetensors"}  # the moments cache: readers may add or update it


@pytest.fixture
def store(tmp_path: Path) -> ActivationStore:
    s = ActivationStore.create(tmp_path / "store", manifest())
    fill(s, 40)
    return ActivationStore.open(tmp_path / "store")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def assert_unchanged(before: dict[str, bytes], folder: Path) -> None:
    """Every shard, documents file and the manifest byte for byte as before; only the derived
    moments cache (store/moments.py, keyed by shard checksums) may have been (re)written."""
    now = snapshot(folder)
    assert {k: v for k, v in now.items() if k in before and k not in DERIVED} == {
        k: v for k, v in before.items() if k not in DERIVED
    }
    assert set(now) - set(before) <= DERIVED


def train_lib(store_path: Path, out: Path, **kw):
    from crossdiff.crosscoder.train_config import TrainConfig

    tc = TrainConfig(
        **kw,
        steps=3,
        batch_size=16,
        warmup_steps=1,
        k_anneal_from=None,
        exclusive_init="random",
        checkpoint_every=2,
        device="cpu",
    )
    return train_on_store(store_path, out, train=tc, progress=False, n_features=32, k=4)


def one_error_line(capsys, command: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"crossdiff {command}: error: "), lines[0]
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


def cli_train(store: ActivationStore, out: Path) -> int:
    return cli_main(["train", "--store", str(store.path), "--out", str(out), *TRAIN_ARGS])


def verify_cli(store_path: Path, capsys) -> str:
    assert cli_main(["store", "verify", str(store_path), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and captured.err.startswith("FAILED")
    return captured.err


def shard_path(store: ActivationStore, k: int) -> Path:
    return store.path / store.manifest.shards[k].file


def edit_manifest(store: ActivationStore, edit) -> None:
    path = store.path / "manifest.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data, indent=2))


# ---- the healthy store passes every check, cheaply --------------------------------------------
def test_a_healthy_store_trains_and_verifies(store: ActivationStore, tmp_path: Path, capsys):
    assert store.verify().ok
    src = store.source("train")
    next(src.batches(8))
    assert src._verified  # the first read checked those shards' checksums
    assert cli_train(store, tmp_path / "cc") == 0
    capsys.readouterr()


# ---- flipped bytes (same size): caught at the training source's first read -------------------
def flip_64_bytes(store: ActivationStore, k: int) -> None:
    path = shard_path(store, k)
    data = bytearray(path.read_bytes())
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    begin = 8 + n + header["x_a"]["data_offsets"][0]
    for i in range(begin + 2, begin + 66):
        data[i] ^= 0x3C  # mantissa/low exponent bits: the values stay finite, just wrong
    path.write_bytes(bytes(data))


def test_flipped_bytes_refuse_training(store: ActivationStore, tmp_path: Path, capsys):
    flip_64_bytes(store, 1)
    before = snapshot(store.path)
    ActivationStore.open(store.path)  # same size: the cheap open check cannot see it
    with pytest.raises(StoreDamagedError, match=r"shard 1 .*checksum mismatch.*store verify"):
        train_lib(store.path, tmp_path / "lib")
    assert cli_train(store, tmp_path / "cli") == 2
    line = one_error_line(capsys, "train")
    assert "shard 1 (shard-00001.safetensors)" in line and "crossdiff store verify" in line
    assert "checksum" in verify_cli(store.path, capsys)
    assert_unchanged(before, store.path)


# ---- truncated or deleted shards: refused at open ---------------------------------------------
@pytest.mark.parametrize("damage", ["truncated", "deleted"])
def test_truncated_or_deleted_shard_is_refused_at_open(
    store: ActivationStore, tmp_path: Path, capsys, damage: str
):
    path = shard_path(store, 2)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-100])
    else:
        path.unlink()
    before = snapshot(store.path)
    want = "truncated" if damage == "truncated" else "missing"
    with pytest.raises(StoreDamagedError, match=rf"shard 2 \(shard-00002.safetensors\).*{want}"):
        ActivationStore.open(store.path)
    with pytest.raises(StoreDamagedError, match="store verify"):
        train_lib(store.path, tmp_path / "lib")
    assert cli_train(store, tmp_path / "cli") == 2
    assert "shard 2" in one_error_line(capsys, "train")
    run = tmp_path / "run"
    run.mkdir()
    assert cli_main(["analyze", str(run), "--store", str(store.path), "--no-progress"]) == 2
    assert "shard 2" in one_error_line(capsys, "analyze")
    assert cli_main(["store", "info", str(store.path)]) == 2
    assert "store verify" in one_error_line(capsys, "store")
    report = ActivationStore.open(store.path, check=False).verify()
    assert any("shard 2" in p for p in report.problems) and not report.ok
    assert "shard 2" in verify_cli(store.path, capsys)
    assert_unchanged(before, store.path)
    assert not (tmp_path / "cli").exists() or not any((tmp_path / "cli").rglob("*.safetensors"))


def test_harvest_resume_refuses_a_damaged_store(store: ActivationStore, tiny_model, capsys):
    from crossdiff.harvest import HarvestConfig, harvest

    path = shard_path(store, 0)
    path.write_bytes(path.read_bytes()[:50])
    before = snapshot(store.path)
    with pytest.raises(StoreDamagedError, match="shard 0"):
        ActivationStore.open_or_create(store.path, manifest())
    model = tiny_model("llama", "bpe")
    cfg = HarvestConfig(
        model_a=str(model), model_b=str(model), corpus="c.jsonl", out=str(store.path)
    )
    with pytest.raises(StoreDamagedError, match="shard 0"):
        harvest(cfg)
    args = ["harvest", "--model-a", str(model), "--model-b", str(model), "--corpus", "c.jsonl"]
    assert cli_main([*args, "--out", str(store.path), "--quiet"]) == 2
    assert "shard 0" in one_error_line(capsys, "harvest")
    assert_unchanged(before, store.path)


# ---- a manifest with wrong types or a wrong width ---------------------------------------------
@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["shards"][3].__setitem__("rows", "many"), r"shards\[3\]\.rows is 'many'"),
        (lambda d: d.__setitem__("rows", "many"), r"manifest\.rows is 'many'"),
        (lambda d: d["model_a"].__setitem__("d_model", "8"), r"model_a\.d_model is '8'"),
        (lambda d: d["shards"][0].__setitem__("file", "../x"), r"shards\[0\]\.file is '\.\./x'"),
        (lambda d: d["shards"].__setitem__(1, 7), r"shards\[1\] is 7"),
        (lambda d: d["shards"][2].pop("sha256"), r"shards\[2\] lacks the field\(s\) \['sha256'\]"),
    ],
    ids=["shard-rows", "total-rows", "d_model-type", "path", "entry", "missing"],
)
def test_malformed_manifest_names_the_field(
    store: ActivationStore, tmp_path: Path, capsys, edit, message: str
):
    edit_manifest(store, edit)
    before = snapshot(store.path)
    with pytest.raises(ManifestError, match=message):
        ActivationStore.open(store.path)
    with pytest.raises(ManifestError, match=message):
        train_lib(store.path, tmp_path / "lib")
    assert cli_train(store, tmp_path / "cli") == 2
    line = one_error_line(capsys, "train")
    assert "manifest.json is malformed" in line
    assert "manifest" in verify_cli(store.path, capsys)
    assert_unchanged(before, store.path)


def test_wrong_d_model_is_refused_at_open(store: ActivationStore, tmp_path: Path, capsys):
    edit_manifest(store, lambda d: d["model_b"].__setitem__("d_model", 13))
    before = snapshot(store.path)
    with pytest.raises(StoreDamagedError, match=r"shard 0 .*x_b has shape \(\d+, 12\).*13"):
        ActivationStore.open(store.path)
    with pytest.raises(StoreDamagedError, match="store verify"):
        train_lib(store.path, tmp_path / "lib")
    assert cli_train(store, tmp_path / "cli") == 2
    assert "d_model 13" in one_error_line(capsys, "train")
    assert "x_b has shape" in verify_cli(store.path, capsys)
    assert_unchanged(before, store.path)


# ---- NaN with a matching checksum: verify flags it, training names the shard ------------------
def write_nan(store: ActivationStore, k: int) -> None:
    path = shard_path(store, k)
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    tensors = load_file(str(path))
    tensors["x_a"][1, 3] = float("nan")
    tensors["x_b"][0, 5] = float("inf")
    path.write_bytes(save(tensors, metadata=meta))
    store.manifest.shards[k].sha256 = sha256_file(path)
    store.manifest.shards[k].bytes = path.stat().st_size
    store.manifest.save(store.path)


@pytest.mark.parametrize("normalization", ["centered", "median"])
def test_nan_with_updated_checksum(store: ActivationStore, tmp_path: Path, capsys, normalization):
    write_nan(store, 3)
    before = snapshot(store.path)
    report = ActivationStore.open(store.path).verify()
    assert not report.ok
    assert any("shard 3" in p and "x_a holds 1 non-finite" in p for p in report.problems)
    assert any("shard 3" in p and "x_b holds 1 non-finite" in p for p in report.problems)
    assert "non-finite" in verify_cli(store.path, capsys)
    with pytest.raises(StoreDamagedError, match=r"shard 3 .*non-finite.*store verify"):
        train_lib(store.path, tmp_path / "lib", normalization=normalization)
    out = str(tmp_path / "cli")
    args = ["train", "--store", str(store.path), "--out", out, "--normalization", normalization]
    assert cli_main([*args, *TRAIN_ARGS]) == 2
    line = one_error_line(capsys, "train")
    assert "shard 3" in line and "non-finite" in line and "store verify" in line
    assert_unchanged(before, store.path)


def test_nonfinite_count_is_exact():
    x = torch.randn(1000, 7)
    x[3, 2], x[9, 0], x[500, 6] = float("nan"), float("inf"), -float("inf")
    for dtype in (torch.bfloat16, torch.float16, torch.float32, torch.float64):
        assert nonfinite_count(x.to(dtype)) == 3
    assert nonfinite_count(torch.randn(10, 3).bfloat16()) == 0
    assert nonfinite_count(torch.arange(10)) == 0


# ---- a damaged newest checkpoint: resume falls back, bit-exactly ------------------------------
def cut_run(tmp_path: Path):
    source = ArraySource(*paired_data())
    cfg = CrosscoderConfig.dfc(CC_D_A, CC_D_B, F, exclusive=0.1, k=4)
    tc = quick_train(steps=14, checkpoint_every=4, exclusive_init="residual", init_samples=512)
    full = train_stopped_at_step_9(source, cfg, tc, tmp_path)
    return source, cfg, tc, full


def assert_same_weights(a, b) -> None:
    for (n, t1), (_, t2) in zip(a.state_dict().items(), b.state_dict().items()):
        assert same(t1, t2), n


@pytest.mark.parametrize("name", [WEIGHTS_FILE, TRAIN_STATE_FILE])
def test_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path: Path, name: str):
    source, cfg, tc, full = cut_run(tmp_path)
    newest = tmp_path / "cut" / "step-00000008"
    damaged = (newest / name).read_bytes()[:-64]
    (newest / name).write_bytes(damaged)
    with pytest.warns(UserWarning, match=r"step-00000008 cannot be loaded .*step-00000004"):
        assert latest_checkpoint(tmp_path / "cut").name == "step-00000004"
    with pytest.warns(UserWarning, match="step-00000008"):
        resumed = train_crosscoder(source, cfg, tc, checkpoint_dir=tmp_path / "cut", progress=False)
    assert_same_weights(full, resumed)
    kept = tmp_path / "cut" / "step-00000008.damaged"  # never deleted: set aside when rewritten
    assert (kept / name).read_bytes() == damaged


def test_checkpoint_unreadable_past_the_cheap_check_falls_back(tmp_path: Path):
    source, cfg, tc, full = cut_run(tmp_path)
    state = tmp_path / "cut" / "step-00000008" / TRAIN_STATE_FILE
    tensors = load_file(str(state))
    del tensors["since_fired"]  # a whole, well-formed file that lacks what a resume needs
    save_file(tensors, str(state))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert latest_checkpoint(tmp_path / "cut").name == "step-00000008"
    with pytest.warns(UserWarning, match="step-00000008 cannot be loaded"):
        resumed = train_crosscoder(source, cfg, tc, checkpoint_dir=tmp_path / "cut", progress=False)
    assert_same_weights(full, resumed)


def test_no_loadable_checkpoint_is_an_error_and_deletes_nothing(tmp_path: Path):
    source, cfg, tc, _ = cut_run(tmp_path)
    for ckpt in (tmp_path / "cut").glob("step-*"):
        (ckpt / WEIGHTS_FILE).write_bytes(b"\0" * 4)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "cut").rglob("*"))
    with pytest.raises(CrossdiffError, match=r"no checkpoint in .* can be loaded.*nothing was"):
        train_crosscoder(source, cfg, tc, checkpoint_dir=tmp_path / "cut", progress=False)
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "cut").rglob("*")) == before
