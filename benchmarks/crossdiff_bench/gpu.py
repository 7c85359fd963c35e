"""``crossdiff bench gpu``: what a GPU machine must confirm, in one run of a few minutes.

GPU time is lent in short slots, so everything crossdiff has to learn from one sits in one
prepared script (issue 20), each part a check that passes or fails, and the numbers printed:

- **train**: our training step against the dense reference (``train-speed``'s
  :func:`~crossdiff_bench.train_speed.run_speed`: same initial weights, same batches, both
  timed in alternating rounds) at the published shape (F 131,072, widths 4096/4096, k 200,
  batch 2,048, bf16). Checks: both compute the same loss on the same batch from the same
  weights, and stay close after the same steps. Reported: samples/s of both against the target
  (>= 12,000 and >= the reference), peak GPU memory. Then the host-sync check (issue 20): a
  few steps of the real trainer (``train_crosscoder``: high-norm filter, k annealing, AuxK,
  resampling, threshold EMA) at the same shape under ``hostsync.check_steps``, which turns on
  ``torch.cuda.set_sync_debug_mode`` for every ordinary step and also records the host reads
  of crossdiff's Python code; the check passes when there are none, and every site found is
  listed (one run shows them all). Also: a NaN in a batch a source made on the GPU is caught
  (at the next log step, without a host read in between).
- **harvest**: tiny random models of the published architectures (Llama, Qwen3, GPT-OSS with
  its attention sinks and mixture of experts) on CUDA. Checks: the early-exit capture equals
  the full forward's hidden state bit for bit (float32 and bf16); a harvest on CUDA stores the
  same rows as the same harvest on CPU (same pairs, activations within bf16 rounding).
- **steer**: on the same tiny models on CUDA, steering with alpha = 0 generates exactly the
  tokens of plain greedy generation, batched generation equals one-by-one, and a strong push
  changes the output.
- **nccl**: a one-process NCCL group carries crossdiff's collectives (JSON all-gather and
  broadcast, gradient averaging).

Without CUDA (or with ``--no-cuda``), each part runs what a CPU can (training at a small shape,
with the host-sync check's Python-level part on the static path, harvest and steering on CPU, a
gloo group) and prints ``SKIPPED <part> on CUDA: <why>`` for the rest; the exit status is then
0 when every CPU check passed. With CUDA it is 0 when every check passed (speed targets are
reported, not enforced: they are measurements).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

PARTS = ("harvest", "steer", "train", "nccl")
"""In the order they run: the quick correctness parts first, then the heavy training part, and
NCCL last, so that neither an out-of-memory at the published shape nor a stuck group costs the
other parts' results (a part that raises is recorded as failed and the next one runs)."""
NCCL_TIMEOUT_S = 120
TARGET_SAMPLES_PER_S = 12_000.0
"""Issue 20's target at the published shape: 5x the published run's ~2,400 samples/s."""
LOSS_RTOL = {"float32": 1e-5, "bfloat16": 1e-3}
"""Same weights, same batch: the two losses may differ only by summation order."""
LOSS_AFTER_RTOL = 1e-2
"""After the same steps, selections can drift apart a little (float summation order)."""
TINY_ARCHS = ("llama", "qwen3", "gpt_oss")
"""The architectures of the published pairs (DeepSeek-R1-0528-Qwen3-8B is a Qwen3)."""
HARVEST_PAIR = ("gpt_oss", "qwen3")
"""The tiny pair harvested on both devices: the second published pair's architectures."""
BF16_RTOL = 2.0**-7
"""One bf16 rounding step: stored activations of two devices may differ by this much."""

TEXTS = [
    "The quick brown fox jumps over the lazy dog, and the dog does not mind at all.",
    "A model reads text as tokens; two models rarely cut the same text in the same places.",
    "Residual streams carry what a model knows about the text so far, layer after layer.",
    "def add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(add(i, i))",
    "Numbers like 3.14159, 2026 and 1,000,000 appear in text as often as words do.",
    "Bonjour, comment allez-vous ? Guten Tag! 你好，世界。 I love pizza 🍕 and coffee ☕.",
    "The weather today is sunny with a light breeze, and tomorrow may bring some rain.",
    "She asked the assistant who made it, and it said a research lab had trained it.",
]
CHATS = [
    [
        {"role": "user", "content": "Who made you? Answer briefly."},
        {"role": "assistant", "content": "A research lab trained me."},
    ],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4."},
    ],
]
PROMPTS = ["The quick brown fox", "Who made you?", "def add(a, b):"]


@dataclass
class GpuBenchConfig:
    """What ``crossdiff bench gpu`` runs (the defaults are the published shape)."""

    n_features: int = 131_072
    """Dictionary size of the CUDA training part (the paper's F)."""
    d: int = 4096
    """Width of both models in the CUDA training part."""
    k: int = 200
    batch_size: int = 2048
    dtype: str = "bfloat16"
    """Compute dtype of the CUDA training part."""
    steps: int = 5
    """Timed steps per round and implementation."""
    rounds: int = 2
    warmup: int = 2
    cpu_n_features: int = 1024
    """The training part's shape on CPU, where the published one would take hours."""
    cpu_d: int = 64
    cpu_k: int = 8
    cpu_batch_size: int = 256
    sync_steps: int = 12
    """Trainer steps of the host-sync check (6 of them ordinary: the others log, resample or
    start)."""
    parts: tuple[str, ...] = PARTS
    use_cuda: bool = True
    """False: behave as on a machine without CUDA (what the tests check)."""
    seed: int = 0


@dataclass
class Check:
    """One pass/fail property, with what was measured."""

    name: str
    ok: bool
    detail: str


@dataclass
class PartResult:
    """One part on one device: its checks and numbers, or why it was skipped."""

    part: str
    device: str
    skipped: str | None = None
    checks: list[Check] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.skipped is not None or all(c.ok for c in self.checks)

    def check(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append(Check(name, bool(ok), detail))


def cuda_reason(cfg: GpuBenchConfig) -> str | None:
    """Why the CUDA parts cannot run here, or None when they can."""
    if not cfg.use_cuda:
        return "--no-cuda given"
    if not torch.cuda.is_available():
        return f"no CUDA device (torch {torch.__version__}, torch.cuda.is_available() is False)"
    return None


def _g(x: float | None) -> str:
    return "-" if x is None else f"{x:.6g}"


# ---- train ----------------------------------------------------------------------------------
def part_train(cfg: GpuBenchConfig, device: str, log: Callable[[str], None]) -> PartResult:
    """Ours vs the dense reference, same weights and batches (train_speed.run_speed)."""
    from crossdiff_bench.train_speed import SpeedConfig, run_speed

    cuda = device == "cuda"
    sc = SpeedConfig(
        n_features=cfg.n_features if cuda else cfg.cpu_n_features,
        d_a=cfg.d if cuda else cfg.cpu_d,
        d_b=cfg.d if cuda else cfg.cpu_d,
        batch_size=cfg.batch_size if cuda else cfg.cpu_batch_size,
        k=cfg.k if cuda else cfg.cpu_k,
        steps=cfg.steps,
        rounds=cfg.rounds,
        warmup=cfg.warmup,
        device=device,
        dtype=cfg.dtype if cuda else "float32",
        seed=cfg.seed,
    )
    res = PartResult("train", device)
    log(
        f"train on {device}: F={sc.n_features} d={sc.d_a}/{sc.d_b} k={sc.k} "
        f"batch={sc.batch_size} {sc.dtype}, {sc.rounds} rounds x {sc.steps} steps"
    )
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    speed = run_speed(sc, log=log)
    rtol = LOSS_RTOL[sc.dtype]
    ref0 = speed.loss_init_reference
    res.check(
        "same loss at the same weights",
        ref0 is not None and math.isclose(speed.loss_init_ours, ref0, rel_tol=rtol),
        f"ours {speed.loss_init_ours:.6g} / reference {_g(ref0)} (rtol {rtol:g})",
    )
    ref1 = speed.loss_after_reference
    res.check(
        f"close loss after {speed.steps_trained} identical steps",
        ref1 is not None and math.isclose(speed.loss_after_ours, ref1, rel_tol=LOSS_AFTER_RTOL),
        f"ours {speed.loss_after_ours:.6g} / reference {_g(ref1)} (rtol {LOSS_AFTER_RTOL:g})",
    )
    res.metrics = {
        "shape": dataclasses.asdict(sc),
        "ours_samples_per_s": speed.ours_samples_per_s,
        "reference_samples_per_s": speed.reference_samples_per_s,
        "speedup": speed.speedup,
        "sequential": speed.sequential,
    }
    if cuda:
        res.metrics["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
        res.metrics["target_samples_per_s"] = TARGET_SAMPLES_PER_S
        res.metrics["meets_target"] = speed.ours_samples_per_s >= TARGET_SAMPLES_PER_S
        res.metrics["beats_reference"] = (speed.speedup or 0.0) >= 1.0
        del speed
        torch.cuda.empty_cache()
    try:  # a failure here (e.g. out of memory) must not cost the speed numbers above
        report = host_sync_check(cfg, device, log)
    except Exception as exc:
        res.check("host-sync check runs", False, f"{type(exc).__name__}: {exc}")
        return res
    how = (
        "torch.cuda.set_sync_debug_mode + crossdiff's host reads"
        if cuda
        else "static path on CPU, crossdiff's host reads (set_sync_debug_mode needs CUDA)"
    )
    res.check(
        f"no host sync in {report.steps_checked} ordinary training steps",
        report.steps_checked > 0 and not report.syncs,
        f"{report.summary()} ({how})",
    )
    res.metrics["host_syncs"] = [f"{n} x {site}" for site, n in report.sites()]
    if cuda:
        try:
            caught, detail = device_nan_check(cfg)
        except Exception as exc:
            caught, detail = False, f"{type(exc).__name__}: {exc}"
        res.check("a NaN made on the GPU is caught at the next log step", caught, detail)
    return res


def _sync_check_setup(cfg: GpuBenchConfig, device: str) -> tuple[Any, Any, Any]:
    """Host data (with high-norm rows, so the filter drops some), the crosscoder config and a
    short training schedule in which every per-step mechanism acts."""
    from crossdiff.crosscoder import ArraySource, CrosscoderConfig, TrainConfig

    cuda = device == "cuda"
    f, d, k, b = (
        (cfg.n_features, cfg.d, cfg.k, cfg.batch_size)
        if cuda
        else (cfg.cpu_n_features, cfg.cpu_d, cfg.cpu_k, cfg.cpu_batch_size)
    )
    g = torch.Generator().manual_seed(cfg.seed + 2)
    n = 4 * b
    x_a = torch.randn(n, d, generator=g)
    x_b = 0.5 * x_a + torch.randn(n, d, generator=g)
    x_a[::97] *= 6
    source = ArraySource(x_a, x_b, scales=(1.0, 1.0))
    tc = TrainConfig(
        steps=cfg.sync_steps,
        batch_size=b,
        warmup_steps=2,
        k_anneal_from=2 * k,
        k_anneal_steps=3,
        dead_window_tokens=2 * b,  # features die from the third step: AuxK runs
        resample_every=5,
        resample_until=1.0,
        log_every=4,
        exclusive_init="random",
        normalization="median",
        device=device,
        compute_dtype=cfg.dtype if cuda else "float32",
        seed=cfg.seed,
    )
    return source, CrosscoderConfig.dfc(d, d, f, exclusive=0.05, k=k), tc


def host_sync_check(cfg: GpuBenchConfig, device: str, log: Callable[[str], None]) -> Any:
    """``cfg.sync_steps`` steps of ``train_crosscoder`` under ``hostsync.check_steps``: the
    report of every host read in an ordinary step (none expected)."""
    from crossdiff.crosscoder import hostsync, train_crosscoder

    source, cc_cfg, tc = _sync_check_setup(cfg, device)
    log(
        f"host-sync check on {device}: {tc.steps} trainer steps at F={cc_cfg.n_features} "
        f"d={cc_cfg.d_a} k={cc_cfg.k} batch={tc.batch_size}"
    )
    with hostsync.check_steps() as report:
        train_crosscoder(source, cc_cfg, tc, progress=False)
    return report


class _GpuNoise:
    """Random batches made on the GPU; the one of step ``bad_step`` holds a NaN."""

    def __init__(self, d: int, bad_step: int) -> None:
        self.d_a = self.d_b = d
        self.bad_step = bad_step

    def norm_scales(self) -> tuple[float, float]:
        return (1.0, 1.0)

    def batches(self, batch_size: int, *, seed: int = 0, skip: int = 0) -> Any:
        gen = torch.Generator(device="cuda").manual_seed(seed)
        step = skip
        while True:
            x_a = torch.randn(batch_size, self.d_a, device="cuda", generator=gen)
            x_b = torch.randn(batch_size, self.d_b, device="cuda", generator=gen)
            if step == self.bad_step:
                x_b[1, 2] = float("nan")
            step += 1
            yield x_a, x_b


def device_nan_check(cfg: GpuBenchConfig) -> tuple[bool, str]:
    """A batch with a NaN that a source made on the GPU: the trainer must stop at the next
    log step and name the batch's step and model."""
    from crossdiff.crosscoder import CrosscoderConfig, TrainConfig, train_crosscoder
    from crossdiff.errors import CrossdiffError

    tc = TrainConfig(
        steps=8,
        batch_size=64,
        log_every=4,
        k_anneal_from=None,
        exclusive_init="random",
        normalization="median",
        device="cuda",
        seed=cfg.seed,
    )
    try:
        train_crosscoder(
            _GpuNoise(32, 2), CrosscoderConfig.dfc(32, 32, 256, k=4), tc, progress=False
        )
    except CrossdiffError as exc:
        return "batch at step 2" in str(exc) and "model B" in str(exc), str(exc)
    return False, "trained through a NaN batch without an error"


# ---- tiny models ----------------------------------------------------------------------------
def build_tiny_models(root: Path, seed: int = 0) -> dict[str, Path]:
    """One random tiny model per arch in :data:`TINY_ARCHS`, saved as a local checkpoint."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from crossdiff_bench.planted_lm import train_tokenizer
    from crossdiff_bench.tiny_configs import tiny_config

    lines = [*TEXTS, *(m["content"] for chat in CHATS for m in chat)]
    kinds = {"llama": "metaspace", "qwen3": "metaspace", "gpt_oss": "bpe"}
    hf_logging.disable_progress_bar()  # one bar per save and load would bury the checks
    out = {}
    for arch in TINY_ARCHS:
        folder = root / arch
        tok = train_tokenizer(kinds[arch], lines, 400)
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(tiny_config(arch, tok), dtype=torch.float32)
        tok.save_pretrained(folder)
        model.eval().save_pretrained(folder)
        out[arch] = folder
    return out


def _padded_batch(lm: Any) -> tuple[torch.Tensor, torch.Tensor]:
    seqs = [lm.tokenize(lm.render_text(t)).input_ids for t in TEXTS[:4]]
    width = max(map(len, seqs))
    pad = lm.tokenizer.pad_token_id or 0
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    return ids, mask


# ---- harvest --------------------------------------------------------------------------------
def _write_corpus(path: Path) -> Path:
    with path.open("w", encoding="utf-8") as fh:
        for i, text in enumerate(TEXTS):
            fh.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
            if i % 3 == 0:
                chat = CHATS[(i // 3) % len(CHATS)]
                fh.write(json.dumps({"messages": chat}, ensure_ascii=False) + "\n")
    return path


def _harvest(models: dict[str, Path], corpus: Path, out: Path, device: str) -> Any:
    from crossdiff.harvest import HarvestConfig, harvest

    a, b = HARVEST_PAIR
    return harvest(
        HarvestConfig(
            model_a=str(models[a]),
            model_b=str(models[b]),
            corpus=str(corpus),
            out=str(out),
            layer_a=0,
            layer_b=-1,
            max_seq_len=48,
            batch_size=4,
            dtype="float32",
            device=device,
            progress=False,
        )
    )


def _rows(store: Any) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    parts = list(store.iter_rows(batch_size=1 << 20))
    xa = torch.cat([p[0] for p in parts])
    xb = torch.cat([p[1] for p in parts])
    meta = {k: [v for p in parts for v in p[2][k].tolist()] for k in parts[0][2]}
    return xa, xb, meta


def _within_bf16(x: torch.Tensor, y: torch.Tensor) -> tuple[bool, float]:
    """Within one bf16 rounding step, relative to the element or (near zero, where a relative
    test means nothing) to its row's RMS; returns the worst ratio to that step."""
    big = torch.maximum(x.abs(), y.abs())
    scale = big + big.pow(2).mean(-1, keepdim=True).sqrt()
    worst = float(((x - y).abs() / scale.clamp_min(1e-12)).max()) if x.numel() else 0.0
    return worst <= BF16_RTOL, worst


def part_harvest(
    cfg: GpuBenchConfig,
    device: str,
    models: dict[str, Path],
    work: Path,
    log: Callable,
    *,
    compare_with_cpu: bool | None = None,
) -> PartResult:
    """Early exit bit-exact on ``device``; a harvest there, compared with the CPU's
    (``compare_with_cpu``, default: when ``device`` is not the CPU; the tests force it on CPU
    to exercise the comparison)."""
    from crossdiff.harvest.batches import packing_works
    from crossdiff.models import load_model

    res = PartResult("harvest", device)
    dtypes = ("float32", "bfloat16") if device == "cuda" else ("float32",)
    for arch in TINY_ARCHS:
        for dtype in dtypes:
            lm = load_model(str(models[arch]), dtype=dtype, device=device)
            ids, mask = _padded_batch(lm)
            with torch.no_grad():
                full = lm.model(
                    input_ids=ids.to(lm.device),
                    attention_mask=mask.to(lm.device),
                    output_hidden_states=True,
                )
            got = lm.capture(ids, mask, 0)
            same = torch.equal(got, full.hidden_states[1])
            diff = float((got.float() - full.hidden_states[1].float()).abs().max())
            res.check(
                f"early exit == full forward ({arch}, {dtype})",
                same,
                f"max |diff| {diff:.3g} over {tuple(got.shape)}",
            )
            # packed rows (the harvest's default) on this device: which models keep the
            # windows apart (a model that does not is harvested with padded batches)
            res.metrics[f"packs_{arch}_{dtype}"] = packing_works(lm, 0)
    corpus = _write_corpus(work / "corpus.jsonl")
    t0 = time.perf_counter()
    store = _harvest(models, corpus, work / f"store-{device}", device)
    res.metrics["harvest_seconds"] = time.perf_counter() - t0
    res.metrics["rows"] = store.n_rows
    res.check(
        "harvest completes and verifies",
        store.is_complete and store.verify().ok and store.n_rows > 0,
        f"{store.n_rows} rows",
    )
    if compare_with_cpu if compare_with_cpu is not None else device != "cpu":
        cpu_store = _harvest(models, corpus, work / "store-cpu-reference", "cpu")
        xa, xb, meta = _rows(store)
        ca, cb, cmeta = _rows(cpu_store)
        keys = ("doc_index", "window", "pos_a", "pos_b", "content_end")
        same_rows = store.n_rows == cpu_store.n_rows and all(meta[k] == cmeta[k] for k in keys)
        res.check(
            f"same pairs as on CPU ({'/'.join(keys)})",
            same_rows,
            f"{store.n_rows} rows on {device}, {cpu_store.n_rows} on CPU",
        )
        if same_rows:
            ok_a, worst_a = _within_bf16(xa, ca)
            ok_b, worst_b = _within_bf16(xb, cb)
            res.check(
                "same activations as on CPU (within one bf16 rounding)",
                ok_a and ok_b,
                f"worst difference A {worst_a:.3g}, B {worst_b:.3g} of (|x| + row RMS) "
                f"(limit {BF16_RTOL:.3g})",
            )
    return res


# ---- steer ----------------------------------------------------------------------------------
def part_steer(
    cfg: GpuBenchConfig, device: str, models: dict[str, Path], log: Callable
) -> PartResult:
    """alpha = 0 reproduces plain greedy generation; batched equals one by one; a push acts."""
    from crossdiff.models import load_model
    from crossdiff.steering.generation import GenerationSettings, generate_rows, prompt_ids
    from crossdiff.steering.hooks import add_fn

    res = PartResult("steer", device)
    settings = GenerationSettings(max_new_tokens=8)
    coefs = [0.0, 40.0]
    for arch in TINY_ARCHS:
        lm = load_model(str(models[arch]), dtype="float32", device=device)
        once = [prompt_ids(lm, p, chat=True) for p in PROMPTS]
        rows = [(p, c) for p in range(len(PROMPTS)) for c in range(len(coefs))]
        seqs = [once[p] for p, _ in rows]
        g = torch.Generator().manual_seed(cfg.seed)
        vector = torch.randn(lm.d_model, generator=g)
        vector = (vector / vector.norm()).to(lm.device)

        def make_fn(idx: list[int], vector: torch.Tensor = vector, rows: list = rows) -> Any:
            return add_fn(vector, [coefs[rows[i][1]] for i in idx])

        layer = lm.resolve_layer("middle")
        batched = generate_rows(lm, layer, seqs, make_fn, settings, batch_size=16)
        single = generate_rows(lm, layer, seqs, make_fn, settings, batched=False)
        eos = {lm.tokenizer.eos_token_id}
        zero_ok, changed = True, 0
        for r, (p, c) in enumerate(rows):
            reference = _greedy(lm, once[p], settings.max_new_tokens)
            cut = next((i for i, t in enumerate(reference) if t in eos), len(reference))
            if coefs[c] == 0:
                zero_ok &= single.tokens[r] == reference[:cut]
            else:
                changed += single.tokens[r] != reference[:cut]
        res.check(
            f"alpha 0 == plain generation ({arch})",
            zero_ok,
            f"{len(PROMPTS)} prompts x {settings.max_new_tokens} greedy tokens",
        )
        mismatched = sum(a != b for a, b in zip(batched.tokens, single.tokens))
        res.check(
            f"batched == one by one ({arch})",
            batched.batched and mismatched == 0,
            f"{mismatched} of {len(rows)} rows differ",
        )
        res.check(f"a push of 40 changes the output ({arch})", changed >= 1, f"{changed} rows")
    return res


def _greedy(lm: Any, ids: list[int], n: int) -> list[int]:
    out = lm.model.generate(
        input_ids=torch.tensor([ids], device=lm.device),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=lm.device),
        max_new_tokens=n,
        do_sample=False,
        pad_token_id=lm.tokenizer.pad_token_id,
    )
    return out[0, len(ids) :].tolist()


# ---- nccl -----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def part_nccl(cfg: GpuBenchConfig, device: str, log: Callable) -> PartResult:
    """A one-process group (NCCL on CUDA, gloo on CPU) through crossdiff's collectives."""
    import torch.distributed as dist

    from crossdiff.runtime import distributed as cd

    backend = "nccl" if device == "cuda" else "gloo"
    res = PartResult("nccl", device, metrics={"backend": backend})
    if dist.is_initialized():
        res.skipped = "a process group is already joined in this process"
        return res
    if device == "cuda":
        torch.cuda.set_device(0)
    t0 = time.perf_counter()
    dist.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{_free_port()}",
        rank=0,
        world_size=1,
        timeout=datetime.timedelta(seconds=NCCL_TIMEOUT_S),
    )
    try:
        res.metrics["init_seconds"] = time.perf_counter() - t0
        res.check("group formed", dist.get_world_size() == 1, f"backend {dist.get_backend()}")
        message = {"rank": 0, "shards": [1, 2, 3], "text": "é 🍕"}
        res.check(
            "JSON all-gather and broadcast",
            cd.all_gather_json(message) == [message] and cd.broadcast_json(message) == message,
            "one rank: each returns its own message",
        )
        p = torch.nn.Parameter(torch.zeros(3, device=device))
        p.grad = torch.tensor([1.0, 2.0, 3.0], device=device)
        fired = cd.sum_gradients([p], torch.tensor([4.0, 5.0], device=device))
        res.check(
            "gradient all-reduce",
            p.grad.tolist() == [1.0, 2.0, 3.0] and fired.tolist() == [4.0, 5.0],
            f"sum over 1 rank: {p.grad.tolist()}, extra {fired.tolist()}",
        )
    finally:
        cd.shutdown()
    return res


# ---- driver ---------------------------------------------------------------------------------
def _run_part(
    part: str, cfg: GpuBenchConfig, device: str, models: dict[str, Path], work: Path, log: Callable
) -> PartResult:
    if part == "train":
        return part_train(cfg, device, log)
    if part == "harvest":
        sub = work / f"harvest-{device}"
        sub.mkdir()
        return part_harvest(cfg, device, models, sub, log)
    if part == "steer":
        return part_steer(cfg, device, models, log)
    return part_nccl(cfg, device, log)


def run_gpu_bench(cfg: GpuBenchConfig, *, log: Callable[[str], None] = print) -> list[PartResult]:
    """Every requested part on CPU (at a small shape) and on CUDA, or skipped with the reason."""
    unknown = sorted(set(cfg.parts) - set(PARTS))
    if unknown:
        from crossdiff.errors import CrossdiffError

        raise CrossdiffError(f"unknown part(s) {unknown}; choose from {list(PARTS)}")
    no_cuda = cuda_reason(cfg)
    devices = ["cpu"] if no_cuda else ["cuda"]
    results: list[PartResult] = []
    with tempfile.TemporaryDirectory(prefix="crossdiff-bench-gpu-") as tmp:
        work = Path(tmp)
        models = (
            build_tiny_models(work / "models", cfg.seed)
            if {"harvest", "steer"} & set(cfg.parts)
            else {}
        )
        for part in PARTS:
            if part not in cfg.parts:
                continue
            if no_cuda:
                log(f"SKIPPED {part} on CUDA: {no_cuda}; running the CPU part instead")
            for device in devices:
                t0 = time.perf_counter()
                try:
                    res = _run_part(part, cfg, device, models, work, log)
                except Exception as exc:  # one slot on a lent GPU: record it, run the rest
                    res = PartResult(part, device)
                    res.check("runs", False, f"{type(exc).__name__}: {exc}")
                res.seconds = time.perf_counter() - t0
                for c in res.checks:
                    log(f"  {'ok  ' if c.ok else 'FAIL'} {res.part}/{device}: {c.name}: {c.detail}")
                results.append(res)
            if no_cuda:
                results.append(PartResult(part, "cuda", skipped=no_cuda))
    return results


def format_summary(results: list[PartResult]) -> str:
    """The one-screen summary: one line per part and device, then the speed against target."""
    lines = [f"{'part':<8} {'device':<6} {'status':<8} {'s':>6}  checks", "-" * 60]
    for r in results:
        if r.skipped:
            lines.append(f"{r.part:<8} {r.device:<6} {'SKIPPED':<8} {'-':>6}  {r.skipped}")
            continue
        passed = sum(c.ok for c in r.checks)
        status = "ok" if r.ok else "FAILED"
        lines.append(
            f"{r.part:<8} {r.device:<6} {status:<8} {r.seconds:>6.1f}  {passed}/{len(r.checks)}"
        )
    for r in results:
        if r.part == "train" and not r.skipped:
            m = r.metrics
            ref = m.get("reference_samples_per_s")
            line = (
                f"train/{r.device}: ours {m['ours_samples_per_s']:,.0f} samples/s, reference "
                + (f"{ref:,.0f} ({m['speedup']:.2f}x)" if ref else "-")
            )
            if "peak_gpu_gib" in m:
                line += (
                    f"; peak {m['peak_gpu_gib']:.1f} GiB; target >= {TARGET_SAMPLES_PER_S:,.0f}: "
                    f"{'met' if m['meets_target'] else 'NOT met'}; >= reference: "
                    f"{'met' if m['beats_reference'] else 'NOT met'}"
                )
            lines.append(line)
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gpu",
        help="the GPU checks in one run: training speed at the published shape, harvest, "
        "steering, NCCL (CPU parts only without CUDA)",
        description=__doc__.split("\n\n")[0],
    )
    d = GpuBenchConfig()
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {PARTS}")
    p.add_argument("--n-features", type=int, default=d.n_features, help="CUDA training F")
    p.add_argument("--d", type=int, default=d.d, help="CUDA training width of both models")
    p.add_argument("--k", type=int, default=d.k)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--dtype", choices=sorted(LOSS_RTOL), default=d.dtype)
    p.add_argument("--steps", type=int, default=d.steps, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--cpu-n-features", type=int, default=d.cpu_n_features)
    p.add_argument("--cpu-d", type=int, default=d.cpu_d)
    p.add_argument("--cpu-k", type=int, default=d.cpu_k)
    p.add_argument("--cpu-batch-size", type=int, default=d.cpu_batch_size)
    p.add_argument(
        "--sync-steps", type=int, default=d.sync_steps, help="trainer steps of the host-sync check"
    )
    p.add_argument("--no-cuda", action="store_true", help="run as on a machine without CUDA")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json-out", default=None, help="write every result as JSON here")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    from crossdiff_bench.machine import describe_machine

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = GpuBenchConfig(
        n_features=args.n_features,
        d=args.d,
        k=args.k,
        batch_size=args.batch_size,
        dtype=args.dtype,
        steps=args.steps,
        rounds=args.rounds,
        warmup=args.warmup,
        cpu_n_features=args.cpu_n_features,
        cpu_d=args.cpu_d,
        cpu_k=args.cpu_k,
        cpu_batch_size=args.cpu_batch_size,
        sync_steps=args.sync_steps,
        parts=tuple(p.strip() for p in args.parts.split(",") if p.strip()),
        use_cuda=not args.no_cuda,
    )
    print(f"crossdiff bench gpu on {describe_machine()}")
    print(
        f"parts {','.join(cfg.parts)}; CUDA training shape F={cfg.n_features} d={cfg.d}/{cfg.d} "
        f"k={cfg.k} batch={cfg.batch_size} {cfg.dtype}; CPU shape F={cfg.cpu_n_features} "
        f"d={cfg.cpu_d} k={cfg.cpu_k} batch={cfg.cpu_batch_size}"
    )
    sys.stdout.flush()
    t0 = time.perf_counter()
    results = run_gpu_bench(cfg, log=lambda s: print(s, flush=True))
    print()
    print(format_summary(results))
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json_out:
        payload = {
            "machine": describe_machine(),
            "config": dataclasses.asdict(cfg),
            "results": [dataclasses.asdict(r) for r in results],
        }
        Path(args.json_out).write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 0 if all(r.ok for r in results) else 1
