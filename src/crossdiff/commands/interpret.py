"""``crossdiff interpret RUN``: explain and score the ranked candidates (crossdiff.interpret)."""

from __future__ import annotations

import argparse


def _features(text: str) -> list[int]:
    from crossdiff.errors import CrossdiffError

    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CrossdiffError(
            f"--features {text!r} must be comma-separated feature indices, e.g. 3,17,40"
        ) from None


def register(sub: argparse._SubParsersAction) -> None:
    from crossdiff.interpret.config import NEGATIVES, InterpretConfig

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
    p.add_argument(
        "--explainer",
        default="stats",
        help="stats (offline, default), hf:<model> (e.g. hf:smollm2-135m-instruct) or "
        "openai:<base URL>#<model>; the key is read from $CROSSDIFF_OPENAI_API_KEY "
        "(or $OPENAI_API_KEY)",
    )
    p.add_argument(
        "--judge", default="same", help="backend of the judge (default: the explainer's)"
    )
    p.add_argument(
        "--max-features", type=int, default=50, help="candidates per model, in review order"
    )
    p.add_argument("--shared", type=int, default=10, help="shared features as a control")
    p.add_argument("--features", help="explain exactly these features (comma-separated)")
    p.add_argument("--concurrency", type=int, default=4, help="features in parallel (threads)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per LLM request")
    p.add_argument("--retries", type=int, default=3, help="retries of a failed LLM request")
    p.add_argument(
        "--max-new-tokens", type=int, default=120, help="tokens an LLM may write per explanation"
    )
    p.add_argument("--judge-batch", type=int, default=5, help="examples per judge request")
    p.add_argument(
        "--negatives",
        choices=NEGATIVES,
        default=InterpretConfig.negatives,
        help="non-activating contexts detection is scored against: random ones, hard ones "
        "(the same token where the feature is silent) or mixed (half each; the default)",
    )
    p.add_argument("--device", default="auto", help="device of an hf: model")
    p.add_argument("--price-per-mtok", type=float, default=0.0, help="for the cost estimate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="ignore and do not write the cache")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossdiff.analysis.show import safe_text
    from crossdiff.interpret import InterpretConfig, interpret

    config = InterpretConfig(
        explainer=args.explainer,
        judge=args.judge,
        max_features=args.max_features,
        shared=args.shared,
        features=_features(args.features) if args.features else None,
        concurrency=args.concurrency,
        timeout_s=args.timeout,
        retries=args.retries,
        max_new_tokens=args.max_new_tokens,
        judge_batch=args.judge_batch,
        negatives=args.negatives,
        device=args.device,
        price_per_mtok=args.price_per_mtok,
        seed=args.seed,
        cache=not args.no_cache,
        progress=not args.no_progress,
    )
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
