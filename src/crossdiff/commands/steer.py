"""``crossdiff steer``: amplify or suppress one feature while a model generates."""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from crossdiff import configcli
from crossdiff.configcli import ConfigOptions, Flag

if TYPE_CHECKING:
    from crossdiff.steering.config import SteerConfig

# argparse takes "-4,-2,0" for an option unless it looks like a negative number; widen that test
# so the documented `--alphas -4,-2,0,2,4` parses (Python >= 3.13 already accepts it).
_NEGATIVE_LIST = re.compile(r"^-\.?\d[\d.,eE+\-]*$")

# SteerConfig's options, by argument group, in the order the help lists them (the fields not
# named here are options of the command itself: alphas, model, mode, clamp_value)
_CROSS_MODEL = ("cross_model", "cross_norm", "map_rows", "map_ridge", "refit_map")
_DECODING = (
    "max_new_tokens",
    "do_sample",
    "temperature",
    "top_p",
    "seed",
    "chat",
    "batch_size",
    "batched",
    "s_max",
)
_LOADING = ("dtype", "device")
_SCORING = (
    "score",
    "explanation_score",
    "nulls",
    "null_seed",
    "cross_nulls",
    "judge_url",
    "judge_model",
    "judge_key_env",
)


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


def _alphas(values: Sequence[str | float]) -> tuple[float, ...]:
    """``--alphas`` texts (each comma-separated), or the config's default numbers, as the
    config's default is written: a tuple of floats."""
    return tuple(a for v in values for a in (_floats(v) if isinstance(v, str) else [float(v)]))


def _clamp(text: str) -> list[float]:
    from crossdiff.errors import CrossdiffError

    values = _floats(text)
    if not values:
        raise CrossdiffError("--clamp needs a value, e.g. --clamp 0 or --clamp 5,10")
    return values


@functools.cache
def options() -> ConfigOptions:
    """SteerConfig on ``crossdiff steer``."""
    from crossdiff.steering.config import CROSS_NORMS, MODEL_CHOICES, MODES, SteerConfig

    return ConfigOptions(
        SteerConfig,
        flags={
            "alphas": Flag(
                type=str,
                nargs="+",
                convert=_alphas,
                help="steering strengths, multiples of the feature's s_max (its largest "
                "activation on the store), comma- or space-separated; 0 is the unsteered model",
            ),
            "model": Flag(choices=MODEL_CHOICES),
            "mode": Flag(choices=MODES),
            "clamp_value": Flag(
                name="--clamp",
                type=str,
                metavar="VALUE",
                convert=_clamp,
                help="clamp mode with absolute activation value(s), e.g. 0 or 5,10 (replaces "
                "--alphas)",
            ),
            "cross_norm": Flag(choices=CROSS_NORMS),
            "map_rows": Flag(help="store rows the map is fitted on"),  # None (all): the API only
            "do_sample": Flag(name="--sample"),
            "chat": Flag(help="feed prompts as plain text, not through the chat template"),
            "batched": Flag(name="--no-batch", help="generate one row at a time"),
            "score": Flag(
                type=str,
                metavar="RULE",
                help="regex:PATTERN, keywords:a,b,c, builtin:SUITE (a suite's default scorer), "
                "or judge:CRITERION (LLM judge)",
            ),
            "nulls": Flag(metavar="N"),
            "cross_nulls": Flag(
                help="sweep the null features in the steered model only, not "
                "through the map in the other one"
            ),
        },
        exclude={
            "model_specs": "given by --model-a / --model-b",
            "map_max_norm_ratio": "not on the command line: a run config's steer section or "
            "the Python API",
        },
    )


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
    configcli.defer(p, _add_options)
    p.set_defaults(func=run)


def _add_options(p: argparse.ArgumentParser) -> None:
    opts = options()
    p.add_argument("run", help="run folder (crosscoder in RUN/crosscoder, store in RUN/store)")
    p.add_argument("--feature", type=int, required=True, help="feature index")
    opts.add_to(p, ["alphas"])
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument(
        "--prompts",
        help="file of prompts (.txt one per line, or .jsonl), or a built-in suite: "
        "builtin:political, builtin:national, builtin:copyright, builtin:sycophancy "
        "(its default scorer applies unless --score is given)",
    )
    grouped = {*_CROSS_MODEL, *_DECODING, *_LOADING, *_SCORING}
    opts.add_to(p, [f.name for f in opts.fields() if f.name not in grouped | {"alphas"}])
    opts.add_to(p.add_argument_group("cross-model check"), _CROSS_MODEL)
    generation = p.add_argument_group("generation")
    opts.add_to(generation, _DECODING)
    generation.add_argument("--model-a", help="load model A from here instead of the run's record")
    generation.add_argument("--model-b", help="load model B from here instead of the run's record")
    opts.add_to(generation, _LOADING)
    opts.add_to(p.add_argument_group("scoring"), _SCORING)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-save", action="store_true", help="do not write RUN/steering/")
    p.add_argument("--no-progress", action="store_true")


def steer_config(args: argparse.Namespace, score: str | None) -> SteerConfig:
    """The :class:`SteerConfig` the parsed options ask for (``score``: ``--score`` or the
    prompt suite's default rule)."""
    from crossdiff.steering.config import SteerConfig

    values = options().values(args)
    values["score"] = score
    values["model_specs"] = {k: v for k, v in (("a", args.model_a), ("b", args.model_b)) if v}
    return SteerConfig(**values)


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
