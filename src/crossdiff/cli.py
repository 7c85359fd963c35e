"""The ``crossdiff`` command line: thin parsing, then one library call per command.

Each command lives in ``crossdiff.commands.<name>`` and exposes ``register(subparsers)``;
the module is imported only when the CLI starts, and heavy libraries only inside the command
function, so ``crossdiff --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from crossdiff import __version__
from crossdiff.errors import CrossdiffError

# Order is the order shown in --help.
COMMAND_MODULES: list[str] = [
    "run",
    "harvest",
    "train",
    "analyze",
    "report",
    "show",
    "steer",
    "store",
    "bench",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crossdiff",
        description="Diff two language models of different architectures with crosscoders.",
    )
    parser.add_argument("--version", action="version", version=f"crossdiff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"crossdiff.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"crossdiff.commands.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except CrossdiffError as exc:
        print(f"crossdiff {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"crossdiff {args.command}: interrupted; rerun the same command to resume",
            file=sys.stderr,
        )
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
