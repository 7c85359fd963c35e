"""``crossdiff bench scale``: our training loop at the published shapes on synthetic data.

Runs the real :func:`train_crosscoder` (BatchTopK, AuxK, threshold, clipping, schedule) on
random activations generated on the device, and reports steady-state samples/s and peak
memory. Its purpose is the GPU check: the published DFC (F=131,072, widths 4096, k=200,
batch 2,048, bf16) trained at about 2,400 samples/s on one H100 (docs/METHOD.md §3).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator

import torch

from crossdiff_bench.machine import describe_machine


class DeviceNoiseSource:
    """Random paired activations made on the device (no host transfer, no disk)."""

    def __init__(self, d_a: int, d_b: int, device: torch.device) -> None:
        self.d_a, self.d_b, self.device = d_a, d_b, device

    def norm_scales(self) -> tuple[float, float] | None:
        return (1.0, 1.0)

    def batches(
        self, batch_size: int, *, seed: int = 0, skip: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator(device=self.device).manual_seed(seed * 1_000_003 + skip)
        while True:
            x_a = torch.randn(batch_size, self.d_a, device=self.device, generator=gen)
            x_b = torch.randn(batch_size, self.d_b, device=self.device, generator=gen)
            yield x_a, x_b


def run_scale(
    *,
    n_features: int,
    d_a: int,
    d_b: int,
    k: int,
    batch_size: int,
    steps: int,
    warmup: int,
    device: str,
    compute_dtype: str,
    exclusive: float,
) -> dict[str, float | str]:
    from crossdiff.crosscoder import CrosscoderConfig, TrainConfig, train_crosscoder
    from crossdiff.runtime.device import resolve_device

    dev = resolve_device(device)
    cfg = CrosscoderConfig.dfc(d_a, d_b, n_features, exclusive=exclusive, k=k)
    times: list[float] = []
    last = [time.perf_counter()]

    def tick(step: int, metrics: dict[str, float]) -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    tc = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        warmup_steps=10,
        k_anneal_from=None,
        log_every=1,
        device=str(dev),
        compute_dtype=compute_dtype,
        normalization="none",
    )
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train_crosscoder(DeviceNoiseSource(d_a, d_b, dev), cfg, tc, progress=False, callback=tick)
    steady = times[warmup:] or times
    per_step = sum(steady) / len(steady)
    out: dict[str, float | str] = {
        "n_features": n_features,
        "d_a": d_a,
        "d_b": d_b,
        "k": k,
        "batch_size": batch_size,
        "steps_timed": len(steady),
        "seconds_per_step": per_step,
        "samples_per_s": batch_size / per_step,
        "device": str(dev),
        "compute_dtype": compute_dtype,
    }
    if dev.type == "cuda":
        out["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "scale",
        help="training throughput of our DFC at given shapes on synthetic data (GPU check)",
    )
    p.add_argument("--n-features", type=int, default=131072)
    p.add_argument("--d-a", type=int, default=4096)
    p.add_argument("--d-b", type=int, default=4096)
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=10, help="untimed first steps")
    p.add_argument("--exclusive", type=float, default=0.05)
    p.add_argument("--device", default="auto")
    p.add_argument("--compute-dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    p.add_argument("--json-out")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    print(f"machine: {describe_machine()}")
    res = run_scale(
        n_features=args.n_features,
        d_a=args.d_a,
        d_b=args.d_b,
        k=args.k,
        batch_size=args.batch_size,
        steps=args.steps,
        warmup=args.warmup,
        device=args.device,
        compute_dtype=args.compute_dtype,
        exclusive=args.exclusive,
    )
    for key, val in res.items():
        print(f"  {key}: {val:.4g}" if isinstance(val, float) else f"  {key}: {val}")
    if args.json_out:
        with open(args.json_out, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0
