"""The ``crossdiff`` command line: thin parsing, then one library call per command.

Each command lives in ``crossdiff.commands.<name>`` and exposes ``register(subparsers)``;
the module is imported only when the CLI starts, and heavy libraries only inside the command
function, or when the options it generates from its config dataclass are added (only when
that command is parsed: :mod:`crossdiff.configcli`), so ``crossdiff --help`` stays fast. A
command module that fails to import stops the CLI with its name and the error (it is never
skipped).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from crossdiff import __version__, configcli
from crossdiff.errors import CrossdiffError

# Order is the order shown in --help.
COMMAND_MODULES: list[str] = [
    "run",
    "harvest",
    "train",
    "compare",
    "analyze",
    "report",
    "show",
    "steer",
    "interpret",
    "store",
    "bench",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crossdiff",
        description="Diff two language models of different architectures with crosscoders.",
    )
    parser.add_argument("--version", action="version", version=f"crossdiff {__version__}")
    # a command's options are added when it is parsed (configcli.CommandParser)
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=configcli.CommandParser
    )
    for name in COMMAND_MODULES:
        module_name = f"crossdiff.commands.{name}"
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # a broken command is a bug: say which one, never skip it
            raise ImportError(
                f"crossdiff: command module {module_name} failed to import: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
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
        again = "start it over" if args.command == "analyze" else "resume"  # analyze: no resume
        print(
            f"crossdiff {args.command}: interrupted; rerun the same command to {again}",
            file=sys.stderr,
        )
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
