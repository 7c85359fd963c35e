"""``crossdiff bench train-speed``: our DFC training step against the published-style one.

Both implementations get the same shapes, the same normalized batches (from the toy
generator), the same initial weights (ours copied into the dense layout) and the same step:
loss, backward, gradient clipping, Adam. The reference additionally zeroes the gradients of
its forbidden blocks, as the published code does. Timings alternate between the two in
rounds (ours, reference, ours, ...) so that a noisy machine slows both alike, and the ratio of
the medians is reported. The loss of both on the same batch from the same weights is printed
before timing (it must agree), and again after both trained the same steps on the same
batches (close, not bit-equal: float summation order differs, so selections can drift).

On a GPU at the paper's size the two do not fit together: ``--sequential`` (automatic when
the estimate exceeds 80% of free GPU memory) times ours first, frees it, then the reference;
``--no-reference`` skips the reference. Our step takes the static path (no host reads,
crosscoder/hostsync.py) on a GPU and the compacting one on the CPU; ``--static-shapes`` times
the static path on the CPU too (to see what it costs there).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from crossdiff.errors import CrossdiffError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class SpeedConfig:
    """One train-speed setting."""

    n_features: int = 4096
    d_a: int = 256
    d_b: int = 256
    batch_size: int = 2048
    k: int = 5
    exclusive: float = 0.05
    """Fraction of F exclusive to each model (0 = standard crosscoder)."""
    selection_norm: str = "l2"
    steps: int = 10
    """Timed steps per round and implementation."""
    rounds: int = 3
    warmup: int = 2
    """Untimed steps per implementation before the first round."""
    dead_frac: float = 0.0
    """Fraction of features marked dead, so AuxK runs (0: no AuxK, like a fresh run)."""
    static_shapes: bool | None = None
    """Our step's path: None = the device's (static on a GPU, compacting on the CPU)."""
    aux_k: int | None = None
    aux_alpha: float = 0.03
    grad_clip: float = 1.0
    lr: float = 1e-4
    device: str = "cpu"
    dtype: str = "float32"
    """Compute dtype of the matmuls (weights and optimizer state stay float32)."""
    reference: bool = True
    sequential: bool | None = None
    """None: automatic (only when both would not fit in GPU memory)."""
    n_batches: int = 4
    seed: int = 0


@dataclass
class SpeedResult:
    config: dict[str, Any]
    ours_samples_per_s: float
    ours_rounds: list[float]
    reference_samples_per_s: float | None = None
    reference_rounds: list[float] = field(default_factory=list)
    ours_cpu_rounds: list[float] = field(default_factory=list)
    """Samples per second of this thread's CPU time (``time.thread_time``), per round: on a
    shared CPU, where wall time measures the scheduler, the number to compare (torch
    single-threaded, e.g. ``--threads 1``; meaningless on a GPU, whose work is not the
    host's)."""
    reference_cpu_rounds: list[float] = field(default_factory=list)
    ours_cpu_samples_per_s: float = math.nan
    """Median of ``ours_cpu_rounds``."""
    speedup: float | None = None
    loss_init_ours: float = math.nan
    loss_init_reference: float | None = None
    loss_after_ours: float = math.nan
    loss_after_reference: float | None = None
    sequential: bool = False
    steps_trained: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _param_bytes(n_params: int) -> int:
    return n_params * 4 * 4  # weights, gradients, two Adam moments (float32)


def _estimate_bytes(sc: SpeedConfig) -> tuple[int, int]:
    """Rough peak memory of ours and of the reference (weights + optimizer + B x F temps)."""
    f = sc.n_features
    n_ex = round(sc.exclusive * f)
    ours_params = 2 * (sc.d_a + sc.d_b) * (f - n_ex) + f
    ref_params = 2 * (sc.d_a + sc.d_b) * f + f
    bf = sc.batch_size * f * 4
    return _param_bytes(ours_params) + 6 * bf, _param_bytes(ref_params) + 10 * bf


def _make_batches(sc: SpeedConfig, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Normalized toy batches of the benchmark's widths (structure like the toy benchmark)."""
    from crossdiff_bench.toy_data import ToyConfig, ToySource

    toy = ToyConfig(
        n_concepts=max(2048, 2 * max(sc.d_a, sc.d_b)),
        d_a=sc.d_a,
        d_b=sc.d_b,
        calibration_samples=max(2048, sc.batch_size),
        seed=sc.seed,
    )
    src = ToySource(toy)
    sa, sb = src.norm_scales()
    out = []
    for i, (xa, xb) in enumerate(src.batches(sc.batch_size, seed=sc.seed)):
        out.append(((xa * sa).to(device), (xb * sb).to(device)))
        if i + 1 == sc.n_batches:
            break
    return out


def _step_fn(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    sc: SpeedConfig,
    dead: torch.Tensor | None,
    aux_k: int,
    cdtype: torch.dtype,
    reference: bool,
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One training step, as the trainer does it (plus gradient masking for the reference)."""
    params = [p for p in model.parameters() if p.requires_grad]

    path = {} if reference or sc.static_shapes is None else {"static": sc.static_shapes}

    def step(xa: torch.Tensor, xb: torch.Tensor) -> None:
        out = model.loss(
            xa,
            xb,
            k=sc.k,
            dead_mask=dead,
            aux_k=aux_k,
            aux_alpha=sc.aux_alpha,
            compute_dtype=cdtype,
            **path,
        )
        opt.zero_grad(set_to_none=True)
        out.total.backward()
        if reference:
            model.mask_gradients()
        if sc.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, sc.grad_clip)
        opt.step()

    return step


@torch.no_grad()
def _loss(
    model: Any, batch: tuple[torch.Tensor, torch.Tensor], sc: SpeedConfig, dead, aux_k, cdtype
) -> float:
    out = model.loss(
        batch[0],
        batch[1],
        k=sc.k,
        dead_mask=dead,
        aux_k=aux_k,
        aux_alpha=sc.aux_alpha,
        compute_dtype=cdtype,
    )
    return float(out.total)


def _timed(step, batches, n: int, start: int, device: torch.device) -> tuple[float, float, int]:
    """Run ``n`` steps: (wall seconds, this thread's CPU seconds, the next batch position)."""
    _sync(device)
    t0, c0 = time.perf_counter(), time.thread_time()
    for i in range(n):
        xa, xb = batches[(start + i) % len(batches)]
        step(xa, xb)
    _sync(device)
    return time.perf_counter() - t0, time.thread_time() - c0, start + n


def run_speed(sc: SpeedConfig, *, log: Callable[[str], None] = print) -> SpeedResult:
    """Time our DFC step against the dense reference; see the module docstring."""
    from crossdiff.crosscoder.config import CrosscoderConfig
    from crossdiff.crosscoder.model import Crosscoder
    from crossdiff.crosscoder.train import geometric_median
    from crossdiff.crosscoder.train_config import default_aux_k
    from crossdiff.runtime.device import resolve_device
    from crossdiff_bench.reference_dfc import ReferenceDFC

    if sc.dtype not in DTYPES:
        raise CrossdiffError(f"--dtype {sc.dtype!r}: use one of {sorted(DTYPES)}")
    if sc.steps <= 0 or sc.rounds <= 0 or sc.warmup < 0:
        raise CrossdiffError("--steps and --rounds must be positive, --warmup >= 0")
    if not 0.0 <= sc.dead_frac < 1.0:
        raise CrossdiffError(f"--dead-frac {sc.dead_frac} must be in [0, 1)")
    device = resolve_device(sc.device)
    cdtype = DTYPES[sc.dtype]
    cfg = CrosscoderConfig(
        sc.d_a,
        sc.d_b,
        sc.n_features,
        frac_exclusive_a=sc.exclusive,
        frac_exclusive_b=sc.exclusive,
        k=sc.k,
        selection_norm=sc.selection_norm,  # type: ignore[arg-type]
    )
    aux_k = sc.aux_k if sc.aux_k is not None else default_aux_k(cfg)
    batches = _make_batches(sc, device)
    gen = torch.Generator().manual_seed(sc.seed + 1)
    dead = None
    if sc.dead_frac > 0:
        dead = (torch.rand(sc.n_features, generator=gen) < sc.dead_frac).to(device)

    sequential = sc.sequential
    if sequential is None:
        sequential = False
        if device.type == "cuda" and sc.reference:
            free, _ = torch.cuda.mem_get_info(device)
            ours_b, ref_b = _estimate_bytes(sc)
            sequential = ours_b + ref_b > 0.8 * free
            log(
                f"memory estimate: ours {ours_b / 2**30:.1f} GiB, reference {ref_b / 2**30:.1f} "
                f"GiB, free {free / 2**30:.1f} GiB -> {'sequential' if sequential else 'together'}"
            )

    ours = Crosscoder(cfg, seed=sc.seed).to(device)
    with torch.no_grad():
        ours.b_dec_a.copy_(geometric_median(batches[0][0]))
        ours.b_dec_b.copy_(geometric_median(batches[0][1]))
    init_state = {k: v.detach().to("cpu", copy=True) for k, v in ours.state_dict().items()}
    result = SpeedResult(config=dataclasses.asdict(sc), ours_samples_per_s=math.nan, ours_rounds=[])
    result.sequential = bool(sequential)
    result.loss_init_ours = _loss(ours, batches[0], sc, dead, aux_k, cdtype)

    def build_reference(src: Crosscoder | None) -> ReferenceDFC:
        """The reference from ours at its initial weights (rebuilt on CPU if ours is gone)."""
        if src is None:
            src = Crosscoder(cfg, seed=sc.seed)
            src.load_state_dict(init_state)
        return ReferenceDFC.from_crosscoder(src).to(device)

    impls: list[tuple[str, torch.nn.Module]] = [("ours", ours)]
    steps: dict[str, Callable] = {}
    positions: dict[str, int] = {}

    def prepare(name: str, model: torch.nn.Module) -> None:
        opt = torch.optim.Adam(model.parameters(), lr=sc.lr)
        steps[name] = _step_fn(model, opt, sc, dead, aux_k, cdtype, reference=name == "reference")
        _, _, positions[name] = _timed(steps[name], batches, sc.warmup, 0, device)

    def time_rounds(names: list[str]) -> None:
        for r in range(sc.rounds):
            for name in names:
                secs, cpu, positions[name] = _timed(
                    steps[name], batches, sc.steps, positions[name], device
                )
                rate = sc.steps * sc.batch_size / secs
                cpu_rate = sc.steps * sc.batch_size / max(cpu, 1e-9)
                getattr(result, f"{name}_rounds").append(rate)
                getattr(result, f"{name}_cpu_rounds").append(cpu_rate)
                log(
                    f"  round {r + 1}/{sc.rounds} {name:>9}: {rate:,.0f} samples/s "
                    f"({cpu_rate:,.0f} per CPU-second)"
                )

    if not sequential and sc.reference:
        ref = build_reference(ours)
        result.loss_init_reference = _loss(ref, batches[0], sc, dead, aux_k, cdtype)
        impls.append(("reference", ref))
        for name, model in impls:
            prepare(name, model)
        time_rounds([name for name, _ in impls])
        result.loss_after_ours = _loss(ours, batches[0], sc, dead, aux_k, cdtype)
        result.loss_after_reference = _loss(ref, batches[0], sc, dead, aux_k, cdtype)
    else:
        prepare("ours", ours)
        time_rounds(["ours"])
        result.loss_after_ours = _loss(ours, batches[0], sc, dead, aux_k, cdtype)
        if sc.reference:
            steps.clear()
            del ours
            impls.clear()
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            ref = build_reference(None)
            result.loss_init_reference = _loss(ref, batches[0], sc, dead, aux_k, cdtype)
            prepare("reference", ref)
            time_rounds(["reference"])
            result.loss_after_reference = _loss(ref, batches[0], sc, dead, aux_k, cdtype)
    result.steps_trained = sc.warmup + sc.rounds * sc.steps
    result.ours_samples_per_s = statistics.median(result.ours_rounds)
    result.ours_cpu_samples_per_s = statistics.median(result.ours_cpu_rounds)
    if result.reference_rounds:
        result.reference_samples_per_s = statistics.median(result.reference_rounds)
        result.speedup = result.ours_samples_per_s / result.reference_samples_per_s
    return result


# ---- CLI ------------------------------------------------------------------------------------
def _fmt(x: float | None, spec: str = ",.0f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def format_table(results: list[SpeedResult]) -> str:
    head = (
        f"{'F':>7} {'d_a':>5} {'d_b':>5} {'batch':>5} {'k':>4} {'excl':>5} {'dtype':>8} "
        f"{'ours/s':>9} {'ref/s':>9} {'speedup':>7}  {'loss@init ours / ref':>25}  "
        f"{'loss after N ours / ref':>25}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        c = r.config
        speed = "-" if r.speedup is None else f"{r.speedup:.2f}x"
        lines.append(
            f"{c['n_features']:>7} {c['d_a']:>5} {c['d_b']:>5} {c['batch_size']:>5} {c['k']:>4} "
            f"{c['exclusive']:>5.2f} {c['dtype']:>8} {_fmt(r.ours_samples_per_s):>9} "
            f"{_fmt(r.reference_samples_per_s):>9} {speed:>7}  "
            f"{_fmt(r.loss_init_ours, '.6g'):>12} / {_fmt(r.loss_init_reference, '.6g'):<10}  "
            f"{_fmt(r.loss_after_ours, '.6g'):>12} / {_fmt(r.loss_after_reference, '.6g'):<10}"
        )
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-speed",
        help="samples/s of our DFC training step vs the published dense way",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument(
        "--n-features",
        type=int,
        nargs="+",
        default=[4096, 1024],
        help="dictionary sizes to time (default: 4096 1024)",
    )
    p.add_argument("--d", type=int, default=256, help="width of both models (default 256)")
    p.add_argument("--d-b", type=int, default=None, help="width of model B if it differs")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--k", type=int, default=5)
    p.add_argument(
        "--exclusive",
        type=float,
        default=0.05,
        help="fraction of F exclusive to each model (default 0.05)",
    )
    p.add_argument("--selection-norm", choices=["l2", "sum", "none"], default="l2")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    p.add_argument(
        "--dead-frac",
        type=float,
        default=0.0,
        help="fraction of features marked dead so AuxK runs (default 0)",
    )
    p.add_argument("--aux-k", type=int, default=None)
    p.add_argument(
        "--static-shapes",
        action="store_true",
        help="time our step on the static path (what a GPU runs) on the CPU too",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, auto (default cpu)")
    p.add_argument(
        "--dtype",
        choices=sorted(DTYPES),
        default="float32",
        help="compute dtype of the matmuls (default float32)",
    )
    p.add_argument("--no-reference", action="store_true", help="time ours only")
    p.add_argument(
        "--sequential",
        action="store_true",
        help="time ours, free it, then the reference (for memory; automatic on GPU)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", default=None, help="write the results as JSON here")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from crossdiff_bench.machine import describe_machine

    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    print(f"crossdiff bench train-speed on {describe_machine()}")
    for f in args.n_features:
        sc = SpeedConfig(
            n_features=f,
            d_a=args.d,
            d_b=args.d_b or args.d,
            batch_size=args.batch_size,
            k=args.k,
            exclusive=args.exclusive,
            selection_norm=args.selection_norm,
            steps=args.steps,
            rounds=args.rounds,
            warmup=args.warmup,
            dead_frac=args.dead_frac,
            aux_k=args.aux_k,
            static_shapes=True if args.static_shapes else None,
            device=args.device,
            dtype=args.dtype,
            reference=not args.no_reference,
            sequential=True if args.sequential else None,
            seed=args.seed,
        )
        print(
            f"F={f} d_a={sc.d_a} d_b={sc.d_b} batch={sc.batch_size} k={sc.k} "
            f"exclusive={sc.exclusive} device={sc.device} dtype={sc.dtype} "
            f"dead_frac={sc.dead_frac} ({sc.rounds} rounds x {sc.steps} steps)"
        )
        sys.stdout.flush()
        results.append(run_speed(sc))
    print()
    print(format_table(results))
    print(
        "ours/s, ref/s: median samples/s over rounds; loss: the training loss of both on the "
        "same batch, at the same initial weights and after the same steps"
    )
    for r in results:  # the rate per CPU-second of this thread: wall time on a shared CPU
        print(  # measures the scheduler (meaningful with torch single-threaded, --threads 1)
            f"F={r.config['n_features']}: ours {r.ours_cpu_samples_per_s:,.0f} samples per "
            f"CPU-second (rounds: {', '.join(f'{x:,.0f}' for x in r.ours_cpu_rounds)})"
        )
    if args.json_out:
        from pathlib import Path

        payload = {"machine": describe_machine(), "results": [r.to_dict() for r in results]}
        Path(args.json_out).write_text(json.dumps(payload, indent=2) + "\n")
    return 0
