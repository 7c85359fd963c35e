"""``crossdiff interpret RUN``: explain and score the ranked candidates (crossdiff.interpret)."""

from __future__ import annotations

import argparse
import functools

from crossdiff import configcli
from crossdiff.configcli import ConfigOptions, Flag


def _features(text: str) -> list[int]:
    from crossdiff.errors import CrossdiffError

    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CrossdiffError(
            f"--features {text!r} must be comma-separated feature indices, e.g. 3,17,40"
        ) from None


@functools.cache
def options() -> ConfigOptions:
    """InterpretConfig on ``crossdiff interpret``."""
    from crossdiff.interpret.config import NEGATIVES, InterpretConfig

    sizes = "not on the command line: a run config's interpret section or the Python API"
    return ConfigOptions(
        InterpretConfig,
        flags={
            "features": Flag(
                type=str,
                convert=_features,
                help="explain exactly these features, comma-separated (e.g. 3,17,40), instead "
                "of --max-features and --shared",
            ),
            "timeout_s": Flag(name="--timeout"),
            "negatives": Flag(choices=NEGATIVES),
        },
        exclude={
            "explain_examples": sizes,
            "score_examples": sizes,
            "pool_rows": sizes,
            "search_rows": sizes,
            "context_chars": sizes,
            "backoff_s": sizes,
            "dtype": sizes,
            "api_key_env": "a secret's name: never given on the command line",
            "extra": "free-form notes: the Python API",
        },
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "interpret",
        help="explain the ranked exclusive candidates and score the explanations",
        description="Write an explanation of each ranked exclusive candidate (and of a few "
        "shared controls) from its top and band examples, score it on held-out examples "
        "(detection, fuzzing: balanced accuracy with a 95%% interval), screen it for harmful "
        "concepts, and write RUN/interpret/{explanations.parquet,interpret.json}. Needs "
        "`crossdiff analyze RUN` first. LLM replies are cached: a rerun makes no request. "
        "See docs/interpret.md.",
    )
    p.add_argument("run", help="run folder")
    configcli.defer(p, lambda parser: options().add_to(parser))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossdiff.interpret import interpret
    from crossdiff.textsafe import safe_text

    config = options().build(args)
    res = interpret(args.run, config)
    c = res.meta["counts"]
    t = res.meta["timing"]["total_s"]
    print(
        f"{c['features']} features explained in {t:.1f} s: {c['interpretable']} interpretable, "
        f"{c['flagged']} flagged by the harm screen -> {res.folder}"
    )
    for name, calls in res.meta.get("calls", {}).items():
        print(
            f"  {name}: {calls['calls']} requests ({calls['cache_hits']} cached, "
            f"{calls['errors']} failed), {calls['tokens_in']:,} tokens in, "
            f"{calls['tokens_out']:,} out"
            + (
                f"; first error: {safe_text(calls['first_error'])}"
                if calls.get("first_error")
                else ""
            )
        )
    for row in res.rows()[:5]:
        print(f"  {row['feature']:>6} {row['klass']}  {safe_text(row['explanation'][:90])}")
    return 0
