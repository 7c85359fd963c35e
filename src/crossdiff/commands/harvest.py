"""``crossdiff harvest``: aligned activations of two models on a corpus, into a store."""

from __future__ import annotations

import argparse
import functools

from crossdiff import configcli
from crossdiff.configcli import ConfigOptions, Flag
from crossdiff.errors import CrossdiffError

_SUFFIXES = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9}


def parse_count(text: str) -> int:
    """``"2000"``, ``"50k"``, ``"1.5M"``, ``"1e6"`` -> int (for --tokens)."""
    raw = text.strip().lower().replace("_", "").replace(",", "")
    scale = 1
    if raw and raw[-1] in _SUFFIXES:
        scale, raw = _SUFFIXES[raw[-1]], raw[:-1]
    try:
        value = float(raw) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a count; use e.g. 20000, 50k or 1.5M"
        ) from None
    if value != int(value) or value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive whole number")
    return int(value)


@functools.cache
def options() -> ConfigOptions:
    """The options of ``crossdiff harvest``: every HarvestConfig field but ``block_batches``."""
    from crossdiff.harvest.config import LITERAL_SPECIALS, PAIR_POSITIONS, HarvestConfig

    return ConfigOptions(
        HarvestConfig,
        flags={
            "tokens": Flag(
                type=parse_count,
                help="stop after this many aligned pairs (e.g. 200k); default: the whole corpus",
            ),
            # kept as typed (not int_or_str): the manifest records the layer spec as given
            "layer_a": Flag(type=str),
            "layer_b": Flag(type=str),
            "literal_specials": Flag(choices=LITERAL_SPECIALS),
            "pair_positions": Flag(choices=PAIR_POSITIONS),
            "progress": Flag(name="--quiet", help="no progress bar or summary"),
        },
        exclude={
            "block_batches": "shapes the rows (a store is extended only with the same); set by "
            "the Python API or a run config's harvest section",
        },
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "harvest",
        help="run two models on a corpus and store their aligned activations",
        description=(
            "Run models A and B on the same documents, pair the token positions where both have "
            "read the same text, and store both models' residual stream at those positions "
            "(bf16, sharded, resumable). Rerun the same command to resume an interrupted "
            "harvest; it reports when the store is complete. Under `torchrun --nproc_per_node "
            "N -m crossdiff harvest ...` the documents are split over the ranks, each writing "
            "its own shards into the one store (docs/harvest-store.md)."
        ),
    )
    configcli.defer(p, lambda parser: options().add_to(parser))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossdiff.harvest import harvest
    from crossdiff.runtime import distributed

    config = options().build(args)
    store = harvest(config)
    distributed.shutdown()  # under torchrun: leave the process group cleanly (no-op otherwise)
    if store.n_rows == 0:
        raise CrossdiffError(
            f"no aligned pairs were found in {store.n_documents} documents of {args.corpus!r}; "
            "check that the corpus holds text both models can read"
        )
    return 0
