"""``crossdiff steer``: amplify or suppress one feature while a model generates."""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crossdiff.steering.config import SteerConfig

# argparse takes "-4,-2,0" for an option unless it looks like a negative number; widen that test
# so the documented `--alphas -4,-2,0,2,4` parses (Python >= 3.13 already accepts it).
_NEGATIVE_LIST = re.compile(r"^-\.?\d[\d.,eE+\-]*$")


def _floats(text: str) -> list[float]:
    from crossdiff.errors import CrossdiffError

    values = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            values.append(float(part))
        except ValueError:
            raise CrossdiffError(f"{part!r} in {text!r} is not a number") from None
    return values


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "steer",
        help="steer a feature: add alpha x s_max x its direction while the model generates",
        description="Generate answers to prompts while adding alpha x s_max x the feature's "
        "decoder direction to the residual stream at the crosscoder's layer (or clamping the "
        "feature's activation), for several alphas side by side. Saves RUN/steering/"
        "feature-I.json.",
    )
    p._negative_number_matcher = _NEGATIVE_LIST  # see _NEGATIVE_LIST
    p.add_argument("run", help="run folder (crosscoder in RUN/crosscoder, store in RUN/store)")
    p.add_argument("--feature", type=int, required=True, help="feature index")
    p.add_argument(
        "--alphas",
        nargs="+",
        default=["-4,-2,0,2,4"],
        help="multiples of s_max, comma- or space-separated (default -4,-2,0,2,4)",
    )
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument(
        "--prompts",
        help="file of prompts (.txt one per line, or .jsonl), or a built-in suite: "
        "builtin:political, builtin:national, builtin:copyright, builtin:sycophancy "
        "(its default scorer applies unless --score is given)",
    )
    p.add_argument(
        "--model",
        default="auto",
        choices=["auto", "a", "b", "both"],
        help="model to steer (auto: the feature's own; both for a shared feature)",
    )
    p.add_argument("--mode", default="add", choices=["add", "clamp"])
    p.add_argument(
        "--clamp",
        metavar="VALUE",
        help="clamp mode with absolute activation value(s), e.g. 0 or 5,10 (replaces --alphas)",
    )
    _add_cross_model(p)
    _add_generation(p)
    _add_scoring(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-save", action="store_true", help="do not write RUN/steering/")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _add_cross_model(parser: argparse.ArgumentParser) -> None:
    """The cross-model check's flags (SteerConfig.cross_model, cross_norm, map_*)."""
    g = parser.add_argument_group("cross-model check")
    g.add_argument(
        "--cross-model",
        action="store_true",
        help="also steer the other model along the direction mapped by a linear map fitted on "
        "the store (the exclusivity test)",
    )
    g.add_argument("--cross-norm", default="relative", choices=["relative", "map"])
    g.add_argument("--map-rows", type=int, help="store rows to fit the map on (default 1M)")
    g.add_argument("--map-ridge", type=float, help="relative ridge strength (default 1e-3)")
    g.add_argument("--refit-map", action="store_true", help="refit even if a map is cached")


def _add_generation(parser: argparse.ArgumentParser) -> None:
    """Decoding, batching, s_max and model loading flags."""
    d = parser.add_argument_group("generation")
    d.add_argument("--max-new-tokens", type=int, default=40)
    d.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    d.add_argument("--temperature", type=float, default=1.0)
    d.add_argument("--top-p", type=float, default=1.0)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--no-chat", action="store_true", help="feed prompts as plain text")
    d.add_argument("--batch-size", type=int, default=32, help="rows per generate call")
    d.add_argument("--no-batch", action="store_true", help="generate one row at a time")
    d.add_argument("--s-max", type=float, help="override the feature's s_max")
    d.add_argument("--model-a", help="load model A from here instead of the run's record")
    d.add_argument("--model-b", help="load model B from here instead of the run's record")
    d.add_argument("--dtype", default="auto")
    d.add_argument("--device", default="auto")


def _add_scoring(parser: argparse.ArgumentParser) -> None:
    """Scorer, null features and judge flags."""
    s = parser.add_argument_group("scoring")
    s.add_argument(
        "--score",
        metavar="RULE",
        help="regex:PATTERN, keywords:a,b,c, builtin:SUITE (a suite's default scorer), or "
        "judge:CRITERION (LLM judge)",
    )
    s.add_argument(
        "--no-explanation-score",
        action="store_true",
        help="without --score, do not score with the feature's explanation's top terms",
    )
    s.add_argument(
        "--nulls",
        type=int,
        default=0,
        metavar="N",
        help="also sweep N random alive features of the same class, pushed as hard, as a null "
        "for the verdict (default 0; crossdiff run uses 2)",
    )
    s.add_argument("--null-seed", type=int, default=0, help="seed of the null features' draw")
    s.add_argument("--judge-url", help="OpenAI-compatible API base, e.g. http://localhost:8000/v1")
    s.add_argument("--judge-model", help="model name the judge endpoint serves")
    s.add_argument(
        "--judge-key-env",
        default="OPENAI_API_KEY",
        help="environment variable holding the judge's API key (default OPENAI_API_KEY)",
    )


def steer_config(args: argparse.Namespace, score: str | None) -> SteerConfig:
    """The :class:`SteerConfig` the parsed flags ask for (``score``: ``--score`` or the prompt
    suite's default rule); flags left unset keep the config's defaults."""
    from crossdiff.errors import CrossdiffError
    from crossdiff.steering import SteerConfig

    alphas = [a for text in args.alphas for a in _floats(text)]
    clamp = _floats(args.clamp) if args.clamp is not None else None
    if clamp is not None and not clamp:
        raise CrossdiffError("--clamp needs a value, e.g. --clamp 0 or --clamp 5,10")
    maps = {"map_rows": args.map_rows, "map_ridge": args.map_ridge}
    return SteerConfig(
        alphas=alphas,
        model=args.model,
        mode=args.mode,
        clamp_value=clamp,
        cross_model=args.cross_model,
        cross_norm=args.cross_norm,
        refit_map=args.refit_map,
        max_new_tokens=args.max_new_tokens,
        do_sample=args.sample,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        chat=not args.no_chat,
        batch_size=args.batch_size,
        batched=not args.no_batch,
        s_max=args.s_max,
        score=score,
        explanation_score=not args.no_explanation_score,
        nulls=args.nulls,
        null_seed=args.null_seed,
        judge_url=args.judge_url,
        judge_model=args.judge_model,
        judge_key_env=args.judge_key_env,
        model_specs={k: v for k, v in (("a", args.model_a), ("b", args.model_b)) if v},
        dtype=args.dtype,
        device=args.device,
        **{k: v for k, v in maps.items() if v is not None},
    )


def run(args: argparse.Namespace) -> int:
    from crossdiff.errors import CrossdiffError
    from crossdiff.steering import steer
    from crossdiff.steering.suites import prompts_and_scorer

    prompts = list(args.prompt)
    score = args.score
    if args.prompts:
        more, default_score = prompts_and_scorer(args.prompts)
        prompts.extend(more)
        score = score if score is not None else default_score
    if not prompts:
        raise CrossdiffError("give at least one prompt: --prompt TEXT or --prompts FILE")
    config = steer_config(args, score)
    result = steer(
        args.run,
        args.feature,
        config,
        prompts=prompts,
        save=not args.no_save,
        progress=not args.no_progress,
    )
    if args.json:
        json.dump(result.to_dict(), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(result.table())
        if result.path is not None:
            print(f"saved: {result.path}")
    return 0
