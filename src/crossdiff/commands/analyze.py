"""``crossdiff analyze RUN``: feature table, examples and exclusivity check -> RUN/analysis/."""

from __future__ import annotations

import argparse
import functools

from crossdiff import configcli
from crossdiff.configcli import ConfigOptions, Flag


def parse_sources(text: str) -> tuple[str, ...]:
    """``--map-sources builtin:wiki,builtin:chats`` -> the tuple (empty text: every document)."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


@functools.cache
def options() -> ConfigOptions:
    """AnalysisConfig on ``crossdiff analyze``: the settings one tunes per run; the method's
    own thresholds are left to a run config's analysis section."""
    from crossdiff.analysis.config import AnalysisConfig

    method = "not on the command line: a run config's analysis section or the Python API"
    return ConfigOptions(
        AnalysisConfig,
        flags={
            "top_n": Flag(name="--top"),
            # 'crossfit', the default, has no option of its own (as before)
            "probe_split": Flag(choices=("eval", "all")),
            "exclusive_max_r2": Flag(name="--max-r2"),
            "contexts_for": Flag(name="--contexts"),
            "map_sources": Flag(type=parse_sources, metavar="SOURCES"),
        },
        exclude={
            name: method
            for name in (
                "sample_size",
                "quantile_bands",
                "per_band",
                "min_count",
                "min_frequency",
                "outlier_factor",
                "probe_folds",
                "probe_test_fraction",
                "probe_test_rows",
                "ridge",
                "latent_scaling_max",
                "shared_controls",
                "min_test_active",
                "tokenization_min_share",
                "tokenization_min_ratio",
                "twin_min_corr",
                "context_before",
                "context_after",
            )
        },
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="feature table, top examples and exclusivity check of a trained crosscoder",
        description="Stream the run's store through its crosscoder once: per-feature statistics "
        "(frequency, mean, s_max, decoder norms, class), top and quantile-band examples, and the "
        "exclusivity check (does the other model predict an 'exclusive' feature?). Writes "
        "RUN/analysis/{features.parquet,examples.parquet,analysis.json}.",
    )
    p.add_argument("run", help="run folder (reads RUN/store and RUN/crosscoder)")
    p.add_argument("--store", help="store folder (default RUN/store)")
    p.add_argument("--crosscoder", help="crosscoder folder (default RUN/crosscoder)")
    p.add_argument("--out", help="output folder (default RUN/analysis)")
    configcli.defer(p, lambda parser: options().add_to(parser))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossdiff.analysis import analyze

    config = options().build(args)
    result = analyze(
        args.run, store=args.store, crosscoder=args.crosscoder, out=args.out, config=config
    )
    print(summary(result))
    return 0


def summary(result) -> str:
    """A one-screen summary of an analysis."""
    m = result.meta
    ev = m.get("eval", {})
    lines = [
        f"analysis written to {result.folder}",
        f"  {m['rows_analysed']:,} pairs, {m['crosscoder']['n_features']:,} features "
        f"({m['crosscoder']['kind']}); dead {100 * m['dead_fraction']:.1f}%; FVE A "
        f"{ev.get('fve_a', float('nan')):.3f}, B {ev.get('fve_b', float('nan')):.3f} "
        f"({ev.get('split')} split)",
    ]
    for c in ("A", "B"):
        k = m["classes"][c]
        lines.append(
            f"  {c}-exclusive candidates: {k['size']:,} ({k['alive']:,} alive, "
            f"{k['reviewable']:,} reviewable): {k['confirmed']:,} confirmed, "
            + (f"{k['conditional']:,} conditional, " if k.get("conditional") else "")
            + f"{k['untested']:,} untested, {k['refuted']:,} refuted by the other model"
        )
    chk = m.get("check", {})
    for key in ("skipped", "warning"):
        if chk.get(key):
            lines.append(f"  check {key}: {chk[key]}")
    t = m["timing"]
    lines.append(
        f"  {t['total_seconds']:.1f} s ({t['pairs_per_second']:,.0f} pairs/s in the pass), "
        f"peak memory {t['peak_rss_mib']:,.0f} MiB"
    )
    lines.append(f"  next: crossdiff report {result.folder.parent}  |  crossdiff show RUN FEATURE")
    return "\n".join(lines)
