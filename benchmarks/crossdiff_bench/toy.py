"""``crossdiff bench toy``: standard crosscoder, DSF and DFC against the toy ground truth.

All three train on the same generated stream (:mod:`crossdiff_bench.toy_data`: the same
world, the same batches in the same order, the same seed for the weights) and are scored the
same way (:func:`crossdiff_bench.toy_data.score_crosscoder`): exclusive-concept recall per
model, shared-concept recall, the false-positive fraction among alive features labelled
exclusive, FVE per model, dead %, and training samples/s.

The default run is the budget the issue measured the published code at: a dictionary smaller
than the number of concepts (F = 1,024 for 2,048 concepts), k = 5, 2,100 steps of 2,048
(~4.3M samples) per crosscoder. ``--seeds N`` repeats everything with N different worlds and
initialisations and reports mean ± standard deviation; ``--full`` sweeps the dictionary size
from half to twice the number of concepts with 5x the steps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossdiff.errors import CrossdiffError
from crossdiff_bench.toy_data import RECOVERY_COSINE, ToyConfig, ToySource, score_crosscoder

MODEL_KINDS = ("standard", "dsf", "dfc", "dfc-paper")
"""``dfc-paper``: the DFC with the paper's random initialisation of the exclusive features
(``dfc`` starts them at cross-model residual directions, crossdiff's default)."""
DEFAULT_MODELS = ("standard", "dsf", "dfc")

FULL_N_FEATURES = (1024, 2048, 4096)
"""``--full``: dictionaries from half to twice the 2,048 concepts."""
FULL_STEPS = 10_500
"""``--full``: 5x the default budget per crosscoder."""


@dataclass
class ToyBenchConfig:
    """One toy benchmark setting: the world, the crosscoders and how they are trained."""

    toy: ToyConfig = field(default_factory=ToyConfig)
    """The generated world (its seed is replaced by each run's seed)."""
    n_features: int = 1024
    """Dictionary size F (default: half the number of concepts)."""
    k: int = 5
    """BatchTopK k (active features per sample)."""
    steps: int = 2100
    """Optimizer steps per crosscoder."""
    batch_size: int = 2048
    exclusive: float = 0.05
    """DFC: fraction of F exclusive to each model (paper: 5%)."""
    designated: float = 0.05
    """DSF: fraction of F that are designated shared features."""
    selection_norm: str = "l2"
    """How BatchTopK ranks candidates (see CrosscoderConfig.selection_norm)."""
    models: tuple[str, ...] = DEFAULT_MODELS
    lr: float = 1e-3
    """Adam learning rate. 1e-4 (the paper's, for 100k steps) is too slow for 2,100 steps."""
    warmup_steps: int = 100
    k_anneal_from: int | None = None
    """Anneal k from this value (None: no annealing; with k = 5 it only delays learning)."""
    k_anneal_steps: int = 500
    decay_fraction: float = 0.2
    aux_alpha: float = 0.03
    aux_k: int | None = None
    exclusive_init: str = "residual"
    """DFC: 'residual' (crossdiff's default) or 'random' (the paper); see TrainConfig.
    ``dfc-paper`` always uses 'random'."""
    dead_window: int | None = None
    """Samples without firing before a feature counts as dead (None: trainer's default)."""
    eval_batches: int = 16
    """Held-out batches for FVE, dead % and which features are alive."""
    cos_threshold: float = RECOVERY_COSINE
    rel_hi: float = 0.8
    """Standard/DSF: relative norm above this = A-exclusive (paper's toy: 0.8)."""
    rel_lo: float = 0.2
    """Standard/DSF: relative norm below this = B-exclusive (paper's toy: 0.2)."""
    cache_mb: float = 0.0
    """Memory for caching the stream's concept codes, so later crosscoders skip the costly
    part of generation (all see the same batches either way). Default 0: with a cache, CPU
    memory grew ~16 MB per step (allocator fragmentation; stays flat with
    MALLOC_MMAP_THRESHOLD_=1000000), enough to exhaust 24 GiB at the default budget."""
    device: str = "cpu"
    """Where batches are drawn and crosscoders trained ('cpu', 'cuda')."""
    compute_dtype: str = "float32"
    """Encoder matmul dtype (float32 everywhere by default, so devices agree)."""

    def validate(self) -> None:
        unknown = [m for m in self.models if m not in MODEL_KINDS]
        if unknown or not self.models:
            raise CrossdiffError(
                f"--models {','.join(self.models)}: choose from {', '.join(MODEL_KINDS)}"
            )
        for name in ("n_features", "k", "steps", "batch_size", "eval_batches"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise CrossdiffError(f"toy bench {name}={value!r} must be a positive integer")
        if str(self.device).startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise CrossdiffError(f"--device {self.device}: CUDA is not available; use cpu")
        if "dsf" in self.models and self.toy.d_a != self.toy.d_b:
            raise CrossdiffError(
                f"DSF ties decoders and needs d_a == d_b (got {self.toy.d_a} and "
                f"{self.toy.d_b}); drop dsf from --models or use equal widths"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def crosscoder_config(bc: ToyBenchConfig, kind: str) -> Any:
    """The CrosscoderConfig of one of the three compared models."""
    from crossdiff.crosscoder.config import CrosscoderConfig

    common = {"k": bc.k, "selection_norm": bc.selection_norm}
    d_a, d_b, f = bc.toy.d_a, bc.toy.d_b, bc.n_features
    if kind == "standard":
        return CrosscoderConfig.standard(d_a, d_b, f, **common)
    if kind == "dsf":
        return CrosscoderConfig.dsf(d_a, d_b, f, designated=bc.designated, **common)
    if kind in ("dfc", "dfc-paper"):
        return CrosscoderConfig.dfc(d_a, d_b, f, exclusive=bc.exclusive, **common)
    raise CrossdiffError(f"unknown model kind {kind!r}; use one of {MODEL_KINDS}")


def train_config(bc: ToyBenchConfig, seed: int, kind: str = "dfc") -> Any:
    from crossdiff.crosscoder.train_config import TrainConfig

    return TrainConfig(
        steps=bc.steps,
        batch_size=bc.batch_size,
        lr=bc.lr,
        warmup_steps=bc.warmup_steps,
        decay_fraction=bc.decay_fraction,
        k_anneal_from=bc.k_anneal_from,
        k_anneal_steps=bc.k_anneal_steps,
        aux_alpha=bc.aux_alpha,
        aux_k=bc.aux_k,
        exclusive_init="random" if kind == "dfc-paper" else bc.exclusive_init,
        dead_window_tokens=bc.dead_window,
        seed=seed,
        device=bc.device,
        compute_dtype=bc.compute_dtype,
        checkpoint_every=10**9,
        log_every=max(1, min(50, bc.steps)),
    )


def run_one(
    bc: ToyBenchConfig, kind: str, source: ToySource, seed: int, *, progress: bool = True
) -> dict[str, Any]:
    """Train one crosscoder on the toy stream and score it; one result row."""
    from crossdiff.crosscoder.metrics import evaluate
    from crossdiff.crosscoder.train import train_crosscoder

    cfg = crosscoder_config(bc, kind)
    tc = train_config(bc, seed, kind)
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    cc = train_crosscoder(source, cfg, tc, progress=progress)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    eval_seed = 1_000_003 + seed
    metrics = evaluate(
        cc, source, n_batches=bc.eval_batches, batch_size=bc.batch_size, seed=eval_seed
    )
    score = score_crosscoder(
        cc,
        source,
        n_batches=bc.eval_batches,
        batch_size=bc.batch_size,
        eval_seed=eval_seed,
        threshold=bc.cos_threshold,
        rel_hi=bc.rel_hi,
        rel_lo=bc.rel_lo,
    )
    samples = bc.steps * bc.batch_size
    return {
        "model": kind,
        "seed": seed,
        "n_features": bc.n_features,
        "recall_exclusive_a": score.recall_exclusive_a,
        "recall_exclusive_b": score.recall_exclusive_b,
        "recall_exclusive_a_frequent": score.recall_exclusive_a_frequent,
        "recall_exclusive_b_frequent": score.recall_exclusive_b_frequent,
        "recall_shared": score.recall_shared,
        "false_positive_a": score.false_positive_a,
        "false_positive_b": score.false_positive_b,
        "false_positive": score.false_positive,
        "fve_a": metrics["fve_a"],
        "fve_b": metrics["fve_b"],
        "dead_pct": 100.0 * metrics["dead_frac_all"],
        "l0": metrics["l0"],
        "samples_per_s": samples / wall,
        "train_s": wall,
        "cpu_s": cpu,
        "score": score.to_dict(),
    }


def run_toy_bench(
    bc: ToyBenchConfig,
    seeds: list[int],
    *,
    n_features_list: list[int] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Every (seed, F, model) combination; rows as from :func:`run_one`."""
    bc.validate()
    rows = []
    for seed in seeds:
        source = ToySource(
            dataclasses.replace(bc.toy, seed=seed), cache_mb=bc.cache_mb, device=bc.device
        )
        for f in n_features_list or [bc.n_features]:
            run_bc = dataclasses.replace(bc, n_features=f)
            for kind in bc.models:
                log(f"seed {seed}, F={f}: training {kind} ({bc.steps} steps of {bc.batch_size})")
                row = run_one(run_bc, kind, source, seed, progress=progress)
                log(
                    f"  {kind}: recall A {row['recall_exclusive_a']:.2f} B "
                    f"{row['recall_exclusive_b']:.2f} shared {row['recall_shared']:.2f}, false "
                    f"{row['false_positive']:.2f}, FVE {row['fve_a']:.3f}/{row['fve_b']:.3f}, "
                    f"{row['samples_per_s']:,.0f} samples/s"
                )
                rows.append(row)
    return rows


# ---- summary table --------------------------------------------------------------------------
COLUMNS: list[tuple[str, str, str]] = [
    ("recall_exclusive_a", "excl.rec A", ".2f"),
    ("recall_exclusive_b", "excl.rec B", ".2f"),
    ("recall_exclusive_a_frequent", "top-F rec A", ".2f"),
    ("recall_exclusive_b_frequent", "top-F rec B", ".2f"),
    ("recall_shared", "shared rec", ".2f"),
    ("false_positive_a", "false A", ".2f"),
    ("false_positive_b", "false B", ".2f"),
    ("fve_a", "FVE A", ".3f"),
    ("fve_b", "FVE B", ".3f"),
    ("dead_pct", "dead %", ".1f"),
    ("samples_per_s", "samples/s", ",.0f"),
]


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation over seeds per (F, model), in first-seen order."""
    groups: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["n_features"], r["model"]), []).append(r)
    out = []
    for (f, model), rs in groups.items():
        s: dict[str, Any] = {"model": model, "n_features": f, "seeds": [r["seed"] for r in rs]}
        for key, _, _ in COLUMNS:
            vals = [r[key] for r in rs if r[key] is not None and not math.isnan(r[key])]
            s[key] = statistics.fmean(vals) if vals else math.nan
            s[key + "_std"] = statistics.stdev(vals) if len(vals) > 1 else math.nan
        s["labelled_a"] = statistics.fmean(r["score"]["labelled_a"] for r in rs)
        s["labelled_b"] = statistics.fmean(r["score"]["labelled_b"] for r in rs)
        out.append(s)
    return out


def format_table(summary: list[dict[str, Any]]) -> str:
    spread = any(len(s["seeds"]) > 1 for s in summary)
    width = 15 if spread else 10
    head = f"{'model':<9} {'F':>5} " + " ".join(f"{title:>{width}}" for _, title, _ in COLUMNS)
    head += f" {'labelled A/B':>13}"
    lines = [head, "-" * len(head)]
    for s in summary:
        cells = []
        for key, _, spec in COLUMNS:
            v, sd = s[key], s[key + "_std"]
            text = "-" if math.isnan(v) else format(v, spec)
            if spread and not math.isnan(sd):
                text += " ±" + format(sd, spec)
            cells.append(f"{text:>{width}}")
        lab = f"{s['labelled_a']:.0f}/{s['labelled_b']:.0f}"
        lines.append(f"{s['model']:<9} {s['n_features']:>5} " + " ".join(cells) + f" {lab:>13}")
    return "\n".join(lines)


LEGEND = """\
excl.rec A/B: fraction of A-only (B-only) concepts matched (cosine > {tau}) by an alive feature
  labelled A- (B-)exclusive: the DFC's partition; for standard/DSF, relative decoder norm > {hi}
  (< {lo}). top-F rec A/B: the same over the exclusive concepts among the F most frequent
  concepts (those a dictionary of F features has room for; see docs/bench-toy.md).
  shared rec: shared concepts matched in both models by one feature labelled shared.
false A/B: fraction of alive features labelled A- (B-)exclusive that match no A-only (B-only)
  concept. dead %: features that never fired on the held-out batches. samples/s: training
  wall clock (the toy generator included). labelled A/B: alive features labelled exclusive.
{spread}"""


# ---- CLI ------------------------------------------------------------------------------------
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "toy",
        help="standard vs DSF vs DFC crosscoders on the toy model with ground truth",
        description=__doc__.split("\n\n")[0],
    )
    d = ToyBenchConfig()
    t = d.toy
    g = p.add_argument_group("run")
    g.add_argument("--seeds", type=int, default=1, help="number of seeds (default 1)")
    g.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    g.add_argument(
        "--full",
        action="store_true",
        help=f"the paper's scale: F in {FULL_N_FEATURES}, {FULL_STEPS} steps",
    )
    g.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help="comma-separated, from standard,dsf,dfc,dfc-paper (the DFC with the paper's random "
        "init of exclusive features)",
    )
    g.add_argument("--json-out", default=None, help="write every row and the summary here")
    g.add_argument("--device", default=d.device, help="cpu or cuda (default cpu)")
    g.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default=d.compute_dtype,
        help="encoder compute dtype (default float32)",
    )
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("crosscoders")
    g.add_argument(
        "--n-features",
        type=int,
        nargs="+",
        default=None,
        help=f"dictionary size(s) F (default {d.n_features})",
    )
    g.add_argument("--k", type=int, default=d.k)
    g.add_argument("--steps", type=int, default=None, help=f"default {d.steps}")
    g.add_argument("--batch-size", type=int, default=d.batch_size)
    g.add_argument(
        "--exclusive",
        type=float,
        default=d.exclusive,
        help="DFC: fraction of F exclusive to each model",
    )
    g.add_argument(
        "--designated",
        type=float,
        default=d.designated,
        help="DSF: fraction of F designated shared",
    )
    g.add_argument("--selection-norm", choices=["l2", "sum", "none"], default=d.selection_norm)
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    g.add_argument("--decay-fraction", type=float, default=d.decay_fraction)
    g.add_argument("--k-anneal-from", type=int, default=d.k_anneal_from)
    g.add_argument("--k-anneal-steps", type=int, default=d.k_anneal_steps)
    g.add_argument("--aux-alpha", type=float, default=d.aux_alpha)
    g.add_argument("--aux-k", type=int, default=d.aux_k)
    g.add_argument(
        "--exclusive-init",
        choices=["random", "residual"],
        default=d.exclusive_init,
        help="how the DFC's exclusive features start (residual: crossdiff's default; random: "
        "the paper, as in dfc-paper)",
    )
    g.add_argument(
        "--dead-window",
        type=int,
        default=d.dead_window,
        help="samples without firing before a feature is dead (default: trainer's)",
    )
    g = p.add_argument_group("scoring")
    g.add_argument("--eval-batches", type=int, default=d.eval_batches)
    g.add_argument("--cos-threshold", type=float, default=d.cos_threshold)
    g.add_argument(
        "--rel-norm",
        type=float,
        nargs=2,
        default=[d.rel_hi, d.rel_lo],
        metavar=("HI", "LO"),
        help="relative-norm thresholds (default 0.8 0.2)",
    )
    g = p.add_argument_group("toy world")
    g.add_argument("--n-concepts", type=int, default=t.n_concepts)
    g.add_argument("--d", type=int, default=t.d_a, help="width of both models")
    g.add_argument("--d-b", type=int, default=None, help="width of model B if it differs")
    g.add_argument(
        "--concept-exclusive",
        type=float,
        default=t.frac_exclusive_a,
        help="fraction of concepts exclusive to each model (default 0.025)",
    )
    g.add_argument("--mean-active", type=float, default=t.mean_active)
    g.add_argument("--freq-decay", type=float, default=t.freq_decay)
    g.add_argument("--corr-rank", type=int, default=t.corr_rank)
    g.add_argument("--corr-strength", type=float, default=t.corr_strength)
    g.add_argument("--noise", type=float, default=t.noise_std)
    g.add_argument("--map-std", type=float, default=t.map_std)
    g.add_argument("--translation-std", type=float, default=t.translation_std)
    p.set_defaults(func=_main)


def config_from_args(args: argparse.Namespace) -> tuple[ToyBenchConfig, list[int]]:
    toy = ToyConfig(
        n_concepts=args.n_concepts,
        d_a=args.d,
        d_b=args.d_b or args.d,
        frac_exclusive_a=args.concept_exclusive,
        frac_exclusive_b=args.concept_exclusive,
        mean_active=args.mean_active,
        freq_decay=args.freq_decay,
        corr_rank=args.corr_rank,
        corr_strength=args.corr_strength,
        noise_std=args.noise,
        map_std=args.map_std,
        translation_std=args.translation_std,
    )
    steps = args.steps or (FULL_STEPS if args.full else ToyBenchConfig.steps)
    n_features = args.n_features or (list(FULL_N_FEATURES) if args.full else [1024])
    bc = ToyBenchConfig(
        toy=toy,
        n_features=n_features[0],
        k=args.k,
        steps=steps,
        batch_size=args.batch_size,
        exclusive=args.exclusive,
        designated=args.designated,
        selection_norm=args.selection_norm,
        models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        decay_fraction=args.decay_fraction,
        k_anneal_from=args.k_anneal_from,
        k_anneal_steps=args.k_anneal_steps,
        aux_alpha=args.aux_alpha,
        aux_k=args.aux_k,
        exclusive_init=args.exclusive_init,
        dead_window=args.dead_window,
        eval_batches=args.eval_batches,
        cos_threshold=args.cos_threshold,
        rel_hi=args.rel_norm[0],
        rel_lo=args.rel_norm[1],
        device=args.device,
        compute_dtype=args.dtype,
    )
    bc.validate()
    if args.seeds <= 0:
        raise CrossdiffError(f"--seeds {args.seeds} must be positive")
    return bc, n_features


def _main(args: argparse.Namespace) -> int:
    import torch

    from crossdiff_bench.machine import describe_machine

    if args.threads:
        torch.set_num_threads(args.threads)
    bc, n_features = config_from_args(args)
    seeds = list(range(args.seed, args.seed + args.seeds))
    print(f"crossdiff bench toy on {describe_machine()}")
    t = bc.toy
    print(
        f"world: {t.n_concepts} concepts in d_a={t.d_a}/d_b={t.d_b}, "
        f"{t.n_exclusive_a}/{t.n_exclusive_b} exclusive to A/B, {t.mean_active:g} active per "
        f"sample, decay {t.freq_decay:g}, corr rank {t.corr_rank} ({t.corr_strength:g}), "
        f"noise {t.noise_std:g}"
    )
    print(
        f"crosscoders: {', '.join(bc.models)}; F={'/'.join(map(str, n_features))}, k={bc.k}, "
        f"{bc.steps} steps x {bc.batch_size}, lr {bc.lr:g}, DFC exclusive {bc.exclusive:g}, "
        f"DSF designated {bc.designated:g}, selection {bc.selection_norm}, "
        f"exclusive init {bc.exclusive_init}; seeds {seeds}"
    )
    sys.stdout.flush()
    t0 = time.perf_counter()
    rows = run_toy_bench(bc, seeds, n_features_list=n_features, progress=not args.no_progress)
    summary = summarize(rows)
    print()
    print(format_table(summary))
    spread = f"mean ± sample std over seeds {seeds}" if len(seeds) > 1 else ""
    print(LEGEND.format(tau=bc.cos_threshold, hi=bc.rel_hi, lo=bc.rel_lo, spread=spread).rstrip())
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json_out:
        payload = {
            "machine": describe_machine(),
            "config": bc.to_dict(),
            "n_features": n_features,
            "seeds": seeds,
            "rows": rows,
            "summary": summary,
        }
        Path(args.json_out).write_text(json.dumps(payload, indent=2) + "\n")
    return 0
