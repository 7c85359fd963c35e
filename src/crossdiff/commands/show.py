"""``crossdiff show RUN FEATURE``: one feature's evidence in the terminal."""

from __future__ import annotations

import argparse
import shutil
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "show",
        help="print one feature's evidence (statistics, check, examples)",
        description="Print a feature's partition, decoder norms, frequency, s_max, exclusivity "
        "check and examples with the activating token marked ([[ ]], or reverse video on a "
        "terminal). Needs `crossdiff analyze RUN` first.",
    )
    p.add_argument("run", help="run folder")
    p.add_argument("feature", help="feature index")
    p.add_argument("--examples", type=int, default=10, help="top examples (default 10)")
    p.add_argument("--color", choices=["auto", "always", "never"], default="auto")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossdiff.errors import CrossdiffError
    from crossdiff.report import show_feature

    try:
        feature = int(args.feature)
    except ValueError:
        raise CrossdiffError(f"feature {args.feature!r} is not an integer index") from None
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    width = shutil.get_terminal_size((100, 24)).columns
    print(show_feature(args.run, feature, examples=args.examples, width=width, color=color))
    return 0
