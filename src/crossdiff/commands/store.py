"""``crossdiff store info|verify PATH``: describe or check an activation store."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("store", help="inspect or verify an activation store")
    store_sub = p.add_subparsers(dest="store_command", metavar="ACTION")
    info = store_sub.add_parser("info", help="models, layers, rows, coverage, norms of a store")
    info.add_argument("path", help="store folder")
    info.add_argument("--json", action="store_true", help="print the manifest as JSON")
    info.set_defaults(func=run_info)
    verify = store_sub.add_parser(
        "verify", help="check every checksum, row count, shape and dtype (exit 1 on a problem)"
    )
    verify.add_argument("path", help="store folder")
    verify.add_argument("--quiet", action="store_true", help="no progress bar")
    verify.set_defaults(func=run_verify)
    p.set_defaults(func=lambda args: p.print_help() or 2)


def run_info(args: argparse.Namespace) -> int:
    from crossdiff.store import ActivationStore

    store = ActivationStore.open(args.path)
    if args.json:
        print(json.dumps(store.manifest.to_dict(), indent=2))
    else:
        print(store.summary())
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from crossdiff.store import ActivationStore, ManifestError, VerifyReport

    try:  # no open-time check: verify reports every problem itself
        store = ActivationStore.open(args.path, check=False)
    except ManifestError as exc:  # a damaged manifest is a finding, not a usage error
        report = VerifyReport(problems=[f"manifest: {exc}"])
        print(report.summary(), file=sys.stderr)
        return 1
    report = store.verify(progress=not args.quiet)
    print(report.summary(), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1
