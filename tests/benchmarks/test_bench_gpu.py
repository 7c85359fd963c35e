"""``crossdiff bench gpu`` on CPU: the CPU parts pass at tiny sizes (the training part's
host-sync check included, on the static path), every CUDA part says why it was skipped, and
the exit status is 0 (the GPU run itself needs a lent machine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from crossdiff.cli import main
from crossdiff.errors import CrossdiffError
from crossdiff_bench.gpu import (
    PARTS,
    GpuBenchConfig,
    build_tiny_models,
    cuda_reason,
    part_harvest,
    run_gpu_bench,
)

TINY = [
    "--cpu-n-features",
    "256",
    "--cpu-d",
    "32",
    "--cpu-k",
    "4",
    "--cpu-batch-size",
    "64",
    "--steps",
    "2",
    "--rounds",
    "1",
    "--warmup",
    "1",
]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_cpu_run_passes_and_names_every_skipped_cuda_part(capsys, tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    assert main(["bench", "gpu", "--no-cuda", *TINY, "--json-out", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("crossdiff bench gpu on ")  # the machine line
    for part in PARTS:
        assert f"SKIPPED {part} on CUDA: --no-cuda given; running the CPU part instead" in text
    assert "FAIL" not in text
    for check in (
        "train/cpu: same loss at the same weights",
        "train/cpu: no host sync in 6 ordinary training steps: no host read in 6 ordinary steps",
        "harvest/cpu: early exit == full forward (gpt_oss, float32)",
        "harvest/cpu: harvest completes and verifies",
        "steer/cpu: alpha 0 == plain generation (gpt_oss)",
        "steer/cpu: batched == one by one (qwen3)",
        "nccl/cpu: group formed: backend gloo",
    ):
        assert f"ok   {check}" in text
    payload = json.loads(out.read_text())
    by_key = {(r["part"], r["device"]): r for r in payload["results"]}
    assert set(by_key) == {(p, d) for p in PARTS for d in ("cpu", "cuda")}
    assert all(by_key[(p, "cuda")]["skipped"] == "--no-cuda given" for p in PARTS)
    assert all(c["ok"] for p in PARTS for c in by_key[(p, "cpu")]["checks"])
    train = by_key[("train", "cpu")]["metrics"]
    assert train["shape"]["n_features"] == 256 and train["ours_samples_per_s"] > 0
    assert train["host_syncs"] == []


def test_without_cuda_the_reason_names_torch(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    reason = cuda_reason(GpuBenchConfig())
    assert reason is not None and "no CUDA device" in reason and torch.__version__ in reason
    assert cuda_reason(GpuBenchConfig(use_cuda=False)) == "--no-cuda given"


def test_one_part_only_and_unknown_parts(capsys) -> None:
    results = run_gpu_bench(GpuBenchConfig(parts=("nccl",), use_cuda=False), log=print)
    assert [(r.part, r.device) for r in results] == [("nccl", "cpu"), ("nccl", "cuda")]
    assert results[0].ok and results[1].skipped == "--no-cuda given"
    assert "SKIPPED train" not in capsys.readouterr().out
    with pytest.raises(CrossdiffError, match=r"unknown part\(s\) \['gpus'\]"):
        run_gpu_bench(GpuBenchConfig(parts=("gpus",)))


def test_published_shape_is_the_default() -> None:
    cfg = GpuBenchConfig()
    assert (cfg.n_features, cfg.d, cfg.k, cfg.batch_size, cfg.dtype) == (
        131_072,
        4096,
        200,
        2048,
        "bfloat16",
    )


def test_harvest_comparison_across_devices_runs_on_cpu(tmp_path: Path) -> None:
    """The CUDA part compares its store with a CPU harvest; here both run on CPU, so the
    comparison code is exercised and must find the same rows and activations."""
    models = build_tiny_models(tmp_path / "models")
    work = tmp_path / "work"
    work.mkdir()
    res = part_harvest(GpuBenchConfig(), "cpu", models, work, print, compare_with_cpu=True)
    names = [c.name for c in res.checks]
    assert any(n.startswith("same pairs as on CPU") for n in names)
    assert "same activations as on CPU (within one bf16 rounding)" in names
    assert res.ok, [c for c in res.checks if not c.ok]
    packs = {k: v for k, v in res.metrics.items() if k.startswith("packs_")}
    assert packs == {"packs_llama_float32": True, "packs_qwen3_float32": True,
                     "packs_gpt_oss_float32": False}  # fmt: skip
