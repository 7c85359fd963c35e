"""``crossdiff train``: train a crosscoder on an activation store."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from crossdiff import configcli
from crossdiff.configcli import ConfigOptions, Flag


@functools.cache
def crosscoder_options() -> ConfigOptions:
    """The crosscoder's shape and sparsity on ``crossdiff train`` (given ones only: the rest
    comes from the store, the defaults, or with ``--seeds`` the reference's settings)."""
    from crossdiff.crosscoder.config import CrosscoderConfig

    from_store = "set from the store's manifest"
    expert = "not on the command line: a run config's crosscoder section or the Python API"
    return ConfigOptions(
        CrosscoderConfig,
        given_only=True,
        flags={
            "n_features": Flag(help="dictionary size F (default: --expansion x the larger width)"),
            "frac_designated_shared": Flag(name="--designated"),
        },
        exclude={
            "d_a": from_store,
            "d_b": from_store,
            "frac_exclusive_a": "--exclusive sets both models' fractions",
            "frac_exclusive_b": "--exclusive sets both models' fractions",
            "dsf_k_factor": expert,
            "threshold_beta": expert,
            "init_decoder_norm": expert,
            "scale_a": "set by training from the normalization (--normalization)",
            "scale_b": "set by training from the normalization (--normalization)",
            "centered": "set by training from the normalization (--normalization)",
            "model_a": from_store,
            "model_b": from_store,
            "layer_a": from_store,
            "layer_b": from_store,
            "extra": "provenance (the store's path), set by training",
        },
    )


@functools.cache
def training_options() -> ConfigOptions:
    """TrainConfig on ``crossdiff train`` (given ones only, so that ``--seeds`` members keep
    the reference's other settings)."""
    from crossdiff.crosscoder.train_config import NORMALIZATIONS, TrainConfig

    expert = "not on the command line: a run config's train section or the Python API"
    return ConfigOptions(
        TrainConfig,
        given_only=True,
        flags={
            "k_anneal_from": Flag(
                help="start k here, lowered linearly to the crosscoder's k (0: no annealing)",
                convert=lambda k: None if k == 0 else k,
            ),
            "dead_window_tokens": Flag(name="--dead-window"),
            "normalization": Flag(choices=NORMALIZATIONS),
            "exclusive_init": Flag(choices=("residual", "random")),
            "compute_dtype": Flag(choices=("auto", "float32", "bfloat16")),
        },
        exclude={
            name: expert
            for name in (
                "decay_fraction",
                "adam_betas",
                "aux_k",
                "resample_every",
                "resample_until",
                "grad_clip",
                "high_norm_factor",
                "scale_estimate_batches",
                "init_samples",
                "keep_checkpoints",
                "log_every",
            )
        },
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a crosscoder (DFC by default) on an activation store",
        description="Train a crosscoder on a store. With a run folder RUN, reads RUN/store and "
        "writes RUN/crosscoder; --store/--out override either. Rerunning resumes from the last "
        "checkpoint, or does nothing if the output is complete.",
    )
    configcli.defer(p, _add_options)
    p.set_defaults(func=run)


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", nargs="?", help="run folder (store in RUN/store, output RUN/crosscoder)")
    p.add_argument("--store", help="activation store folder (default RUN/store)")
    p.add_argument("--out", help="output folder (default RUN/crosscoder)")
    g = p.add_argument_group("crosscoder")
    crosscoder_options().add_to(g)
    g.add_argument("--expansion", type=int, help="F = expansion x max width (default 32)")
    g.add_argument(
        "--exclusive",
        help="fraction of F exclusive to each model (default 0.05; 0 = standard crosscoder); "
        "with --seeds, comma-separated fractions for the further crosscoders (0.01,0.03,0.05)",
    )
    training_options().add_to(p.add_argument_group("training"))
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
    from crossdiff.errors import CrossdiffError
    from crossdiff.recurrence.members import train_members
    from crossdiff.runtime import distributed

    if not args.run or args.out:
        raise CrossdiffError(
            "--seeds needs a run folder RUN (the reference is RUN/crosscoder, the others go "
            "to RUN/crosscoders/) and no --out"
        )
    done = train_members(
        args.run,
        seeds=args.seeds,
        train=training_options().values(args),
        store=args.store,
        progress=not args.no_progress,
        force=args.force,
        exclusive=args.exclusive,
        expansion=args.expansion,
        **crosscoder_options().values(args),
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
    from crossdiff.crosscoder.fit import load_summary, train_on_store
    from crossdiff.errors import CrossdiffError
    from crossdiff.paths import RunPaths
    from crossdiff.runtime import distributed

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
        train=training_options().build(args),
        progress=not args.no_progress,
        force=args.force,
        exclusive=_single_fraction(args.exclusive),
        expansion=args.expansion,
        **crosscoder_options().values(args),
    )
    rank = distributed.rank()
    distributed.shutdown()  # under torchrun: waits until rank 0 has written the output
    if rank != 0:
        return 0
    summary = load_summary(out).data
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
