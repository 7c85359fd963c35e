"""``crossdiff train``: train a crosscoder on an activation store."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a crosscoder (DFC by default) on an activation store",
        description="Train a crosscoder on a store. With a run folder RUN, reads RUN/store and "
        "writes RUN/crosscoder; --store/--out override either. Rerunning resumes from the last "
        "checkpoint, or does nothing if the output is complete.",
    )
    p.add_argument("run", nargs="?", help="run folder (store in RUN/store, output RUN/crosscoder)")
    p.add_argument("--store", help="activation store folder (default RUN/store)")
    p.add_argument("--out", help="output folder (default RUN/crosscoder)")
    g = p.add_argument_group("crosscoder")
    g.add_argument("--n-features", type=int, help="dictionary size F (default expansion x width)")
    g.add_argument("--expansion", type=int, help="F = expansion x max width (default 32)")
    g.add_argument("--k", type=int, help="active features per sample (default 200)")
    g.add_argument(
        "--exclusive",
        help="fraction of F exclusive to each model (default 0.05; 0 = standard crosscoder); "
        "with --seeds, comma-separated fractions for the further crosscoders (0.01,0.03,0.05)",
    )
    g.add_argument("--designated", type=float, help="fraction of designated shared features (DSF)")
    g.add_argument("--activation", choices=["batchtopk", "topk", "relu"])
    g.add_argument("--selection-norm", choices=["l2", "sum", "none"])
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--warmup-steps", type=int)
    t.add_argument("--k-anneal-from", type=int, help="start k (0 disables annealing)")
    t.add_argument("--k-anneal-steps", type=int)
    t.add_argument("--aux-alpha", type=float)
    t.add_argument("--dead-window", type=int, dest="dead_window_tokens")
    t.add_argument("--l1-coeff", type=float)
    t.add_argument(
        "--exclusive-init",
        choices=["residual", "random"],
        help="start exclusive features at cross-model residual directions (default) or at "
        "random (the paper)",
    )
    t.add_argument(
        "--normalization",
        choices=["centered", "median", "none"],
        help="'centered' (default: remove each model's mean, equal centred variance) or "
        "'median' (the paper: equal median norm, no centring)",
    )
    t.add_argument("--seed", type=int)
    t.add_argument("--device")
    t.add_argument("--compute-dtype", choices=["auto", "float32", "bfloat16"])
    t.add_argument("--checkpoint-every", type=int)
    p.add_argument(
        "--seeds",
        type=int,
        help="also train further crosscoders on the same store for rediscovery (crossdiff "
        "compare): seeds S..S+N-1 (S = --seed, default 0) times the --exclusive fractions, each "
        "in RUN/crosscoders/s<seed>-x<fraction>/; RUN/crosscoder stays the reference (seed S "
        "at the configured fraction). Members copy the reference's settings; one after another "
        "(under torchrun each is trained data-parallel); resumable",
    )
    p.add_argument("--force", action="store_true", help="retrain even if the output is complete")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


TRAIN_FIELDS = (
    "steps",
    "batch_size",
    "lr",
    "warmup_steps",
    "k_anneal_from",
    "k_anneal_steps",
    "aux_alpha",
    "dead_window_tokens",
    "l1_coeff",
    "exclusive_init",
    "normalization",
    "seed",
    "device",
    "compute_dtype",
    "checkpoint_every",
)


def train_fields_from_args(args: argparse.Namespace) -> dict:
    """The TrainConfig fields given on the command line (and only those)."""
    kw = {f: getattr(args, f) for f in TRAIN_FIELDS if getattr(args, f, None) is not None}
    if kw.get("k_anneal_from") == 0:
        kw["k_anneal_from"] = None
    return kw


def train_config_from_args(args: argparse.Namespace):
    from crossdiff.crosscoder.train import TrainConfig

    return TrainConfig(**train_fields_from_args(args))


def _single_fraction(text: str | None) -> float | None:
    from crossdiff.errors import CrossdiffError

    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        raise CrossdiffError(
            f"--exclusive {text!r}: give one fraction (e.g. 0.05); several (0.01,0.03,0.05) "
            f"only with --seeds"
        ) from None


def run_members(args: argparse.Namespace) -> int:
    """``--seeds N``: the reference plus the further crosscoders (crossdiff.recurrence)."""
    from crossdiff.crosscoder import distributed
    from crossdiff.errors import CrossdiffError
    from crossdiff.recurrence.members import train_members

    if not args.run or args.out:
        raise CrossdiffError(
            "--seeds needs a run folder RUN (the reference is RUN/crosscoder, the others go "
            "to RUN/crosscoders/) and no --out"
        )
    done = train_members(
        args.run,
        seeds=args.seeds,
        exclusive=args.exclusive,
        train=train_fields_from_args(args),
        store=args.store,
        progress=not args.no_progress,
        force=args.force,
        n_features=args.n_features,
        expansion=args.expansion,
        k=args.k,
        frac_designated_shared=args.designated,
        activation=args.activation,
        selection_norm=args.selection_norm,
    )
    rank = distributed.rank()
    distributed.shutdown()
    if rank != 0:
        return 0
    print(f"{len(done)} crosscoders on one store (compare them: crossdiff compare {args.run}):")
    for m in done:
        role = "reference" if m.reference else "member"
        print(f"  {m.path}  seed {m.seed}, exclusive {m.exclusive:g} ({role})")
    return 0


def run(args: argparse.Namespace) -> int:
    from crossdiff.crosscoder import distributed
    from crossdiff.crosscoder.fit import SUMMARY_FILE, train_on_store
    from crossdiff.errors import CrossdiffError
    from crossdiff.paths import RunPaths

    if args.seeds is not None:
        return run_members(args)
    if not args.run and not (args.store and args.out):
        raise CrossdiffError("give a run folder, or both --store and --out")
    paths = RunPaths(args.run) if args.run else None
    store = Path(args.store) if args.store else paths.store
    out = Path(args.out) if args.out else paths.crosscoder
    cc = train_on_store(
        store,
        out,
        train=train_config_from_args(args),
        progress=not args.no_progress,
        force=args.force,
        n_features=args.n_features,
        expansion=args.expansion,
        k=args.k,
        exclusive=_single_fraction(args.exclusive),
        frac_designated_shared=args.designated,
        activation=args.activation,
        selection_norm=args.selection_norm,
    )
    rank = distributed.rank()
    distributed.shutdown()  # under torchrun: waits until rank 0 has written the output
    if rank != 0:
        return 0
    summary = json.loads((out / SUMMARY_FILE).read_text())
    m = summary["metrics_eval"]
    p = cc.partition
    print(f"crosscoder: {out}")
    print(
        f"  features {cc.config.n_features}: {p.n_a} A-exclusive, {p.n_b} B-exclusive, "
        f"{p.n_shared} shared ({p.n_designated} designated)"
    )
    print(
        f"  eval FVE  A {m['fve_a']:.3f}  B {m['fve_b']:.3f}   L0 {m['l0']:.1f}   "
        f"dead {m['dead_frac_all']:.1%} (A-excl {m['dead_frac_a']:.1%}, "
        f"B-excl {m['dead_frac_b']:.1%}, shared {m['dead_frac_shared']:.1%})"
    )
    return 0
