"""``crossdiff compare``: which exclusive features of RUN/crosscoder the other crosscoders find
again (rediscovery across seeds and exclusive fractions; crossdiff.recurrence)."""

from __future__ import annotations

import argparse
import functools

from crossdiff import configcli
from crossdiff.configcli import ConfigOptions, Flag


@functools.cache
def options() -> ConfigOptions:
    """MatchConfig on ``crossdiff compare``."""
    from crossdiff.recurrence.config import RULES, MatchConfig

    fixed = "not on the command line: a run config's recurrence section or the Python API"
    return ConfigOptions(
        MatchConfig,
        flags={"rule": Flag(choices=RULES)},
        exclude={"min_active": fixed, "one_to_one": fixed},
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="match RUN/crosscoder's exclusive features against RUN/crosscoders/* "
        "(rediscovery across runs)",
        description="Match the reference crosscoder's exclusive features one to one against "
        "every crosscoder in RUN/crosscoders/ (made by crossdiff train RUN --seeds N) by "
        "decoder cosine in the feature's own model and activation correlation on held-out "
        "store rows; writes RUN/recurrence/recurrence.parquet and recurrence.json.",
    )
    configcli.defer(p, _add_options)
    p.set_defaults(func=run)


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="run folder")
    p.add_argument(
        "--members", help="comma-separated folder names in RUN/crosscoders (default: all)"
    )
    options().add_to(p)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from crossdiff.recurrence import compare, recurrence_summary

    config = options().build(args)
    members = [x.strip() for x in args.members.split(",") if x.strip()] if args.members else None
    res = compare(
        args.run, members=members, config=config, device=args.device, progress=not args.no_progress
    )
    print(f"recurrence: {res.folder}")
    line = recurrence_summary(args.run)
    if line:
        print(f"  {line}")
    for klass, hist in res.meta["histogram"].items():
        n = res.meta["n_others"]
        cells = ", ".join(f"{k} of {n}: {hist[str(k)]}" for k in range(n, -1, -1))
        print(f"  {klass}-exclusive features found again in k of {n} others: {cells}")
    return 0
