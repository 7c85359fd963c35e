"""``crossdiff bench NAME``: the benchmarks, which live beside the product in ``benchmarks/``.

The ``crossdiff_bench`` package (``pip install -e benchmarks/``; ``scripts/install.sh`` installs
it) registers one subcommand per benchmark. Without it, ``crossdiff bench`` is still listed and
says in one line what to install (exit 2).
"""

from __future__ import annotations

import argparse

from crossdiff.errors import CrossdiffError

BENCH_PACKAGE = "crossdiff_bench"
NOT_INSTALLED = (
    "the benchmarks are not installed: from a crossdiff checkout run "
    "`pip install -e benchmarks/` (scripts/install.sh does it)"
)


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="run a benchmark (toy, train-speed, harvest, ...)")
    try:
        import crossdiff_bench
    except ModuleNotFoundError as exc:
        if exc.name != BENCH_PACKAGE:
            raise
        parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        parser.set_defaults(func=_not_installed)
        return
    crossdiff_bench.register(parser.add_subparsers(dest="bench", metavar="BENCH"))


def _not_installed(args: argparse.Namespace) -> int:
    raise CrossdiffError(NOT_INSTALLED)
