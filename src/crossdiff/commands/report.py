"""``crossdiff report RUN``: the self-contained auditor's page RUN/report/index.html."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write RUN/report/index.html (one offline page) from the analysis",
        description="Write the auditor's report from RUN/analysis (run `crossdiff analyze RUN` "
        "first): summary, plot, ranked exclusive features per model with examples, detail "
        "views, and steering results from RUN/steering/.",
    )
    p.add_argument("run", help="run folder")
    p.add_argument("--out", help="output file (default RUN/report/index.html)")
    p.add_argument(
        "--max-features", type=int, default=300, help="features listed per model (default 300)"
    )
    p.add_argument(
        "--examples",
        type=int,
        default=10,
        help="top examples per feature in its detail view (default 10)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossdiff.report import build_report

    path = build_report(
        args.run, out=args.out, max_features=args.max_features, examples=args.examples
    )
    print(f"report written to {path} ({path.stat().st_size / 2**20:.1f} MiB); open it in a browser")
    return 0
