"""``crossdiff compare``: which exclusive features of RUN/crosscoder the other crosscoders find
again (rediscovery across seeds and exclusive fractions; crossdiff.recurrence)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from crossdiff.recurrence.config import RULES, MatchConfig

    d = MatchConfig()
    p = sub.add_parser(
        "compare",
        help="match RUN/crosscoder's exclusive features against RUN/crosscoders/* "
        "(rediscovery across runs)",
        description="Match the reference crosscoder's exclusive features one to one against "
        "every crosscoder in RUN/crosscoders/ (made by crossdiff train RUN --seeds N) by "
        "decoder cosine in the feature's own model and activation correlation on held-out "
        "store rows; writes RUN/recurrence/recurrence.parquet and recurrence.json.",
    )
    p.add_argument("run", help="run folder")
    p.add_argument(
        "--members", help="comma-separated folder names in RUN/crosscoders (default: all)"
    )
    p.add_argument(
        "--min-cosine",
        type=float,
        default=d.min_cosine,
        help=f"decoder cosine a match needs (default {d.min_cosine})",
    )
    p.add_argument(
        "--min-correlation",
        type=float,
        default=d.min_correlation,
        help=f"activation correlation a match needs (default {d.min_correlation})",
    )
    p.add_argument(
        "--rule",
        choices=RULES,
        default=d.rule,
        help=f"which thresholds must hold (default {d.rule!r}: cosine and correlation)",
    )
    p.add_argument(
        "--rows",
        type=int,
        default=d.rows,
        help=f"held-out rows to encode (default {d.rows:,}; eval split first)",
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossdiff.recurrence import MatchConfig, compare, recurrence_summary

    config = MatchConfig(
        min_cosine=args.min_cosine,
        min_correlation=args.min_correlation,
        rule=args.rule,
        rows=args.rows,
        batch_size=args.batch_size,
    )
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
