"""``crossdiff run``: the whole diff, end to end, in one resumable run folder."""

from __future__ import annotations

import argparse
import functools

from crossdiff import configcli
from crossdiff.configcli import ConfigOptions


@functools.cache
def options() -> ConfigOptions:
    """RunConfig's top-level settings on ``crossdiff run`` (given ones only: they go over the
    preset and the --config file)."""
    from crossdiff.run import RunConfig

    section = "a stage's section: the --config file (--tokens, --steps, --device and --seeds set "
    "a few of its keys)"
    sections = ("harvest", "crosscoder", "train", "recurrence", "analysis", "interpret", "steer")
    return ConfigOptions(
        RunConfig,
        given_only=True,
        exclude={
            **{name: section for name in sections},
            "about": "what a config file is for: only in the file",
        },
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="harvest -> train -> analyze -> steer -> report, resumable (the main job)",
        description="Diff two models end to end. With no arguments: the built-in default pair "
        "(SmolLM2-135M-Instruct vs Gemma-3-270M) on the built-in corpus, into runs/default. "
        "Rerunning the same command skips finished stages and resumes an interrupted harvest "
        "or training (an interrupted analysis starts over).",
    )
    configcli.defer(p, _add_options)
    p.set_defaults(func=run)


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML run config, merged over the preset")
    p.add_argument("--out", help="run folder (default runs/default, or runs/quick with --quick)")
    p.add_argument("--quick", action="store_true", help="small preset: finishes in minutes")
    options().add_to(p)
    p.add_argument("--tokens", type=int, help="aligned pairs to harvest")
    p.add_argument("--steps", type=int, help="crosscoder training steps")
    p.add_argument("--device", help="device for every stage (cpu, cuda, ...)")
    p.add_argument(
        "--seeds",
        type=int,
        help="crosscoders to train in all, the run's own included, for rediscovery "
        "(recurrence stage: RUN/crosscoders, RUN/recurrence, the recurs column); default 1: "
        "off. Each further one costs about one train stage",
    )
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from crossdiff.run import load_config, run_pipeline, summarize

    preset = "quick" if args.quick else "default"
    overrides = {
        **options().values(args),
        "harvest.tokens": args.tokens,
        "train.steps": args.steps,
        "recurrence.seeds": args.seeds,
        "harvest.device": args.device,
        "train.device": args.device,
        "analysis.device": args.device,
        "steer.device": args.device,
    }
    cfg = load_config(args.config, preset=preset, overrides=overrides)
    out = args.out or f"runs/{preset}"
    records = run_pipeline(out, cfg, progress=not args.no_progress)
    print()
    print("stages: " + ", ".join(f"{r.name} {r.status} ({r.seconds:.0f} s)" for r in records))
    print(summarize(out))
    return 0
