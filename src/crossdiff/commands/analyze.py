"""``crossdiff analyze RUN``: feature table, examples and exclusivity check -> RUN/analysis/."""

from __future__ import annotations

import argparse


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
    p.add_argument("--top", type=int, dest="top_n", help="top examples per feature (default 20)")
    p.add_argument("--batch-size", type=int, help="rows per batch (default 4096)")
    p.add_argument("--rel-hi", type=float, help="standard: A-exclusive above this (default 0.9)")
    p.add_argument("--rel-lo", type=float, help="standard: B-exclusive below this (default 0.1)")
    p.add_argument("--probe-split", choices=["eval", "all"], help="rows of the check (eval)")
    p.add_argument("--eval-fraction", type=float, help="the store's eval split (as in training)")
    p.add_argument(
        "--max-r2",
        type=float,
        dest="exclusive_max_r2",
        help="refute exclusivity at held-out R^2 >= this (default 0.5)",
    )
    p.add_argument(
        "--contexts",
        choices=["exclusive", "all", "none"],
        dest="contexts_for",
        help="which features get example texts copied (default exclusive)",
    )
    p.add_argument("--max-rows", type=int, help="analyse only the first N rows")
    p.add_argument("--device", help="cpu, cuda, ... (default auto)")
    p.add_argument("--seed", type=int)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from crossdiff.analysis import AnalysisConfig, analyze

    fields = (
        "top_n",
        "batch_size",
        "rel_hi",
        "rel_lo",
        "probe_split",
        "eval_fraction",
        "exclusive_max_r2",
        "contexts_for",
        "max_rows",
        "device",
        "seed",
    )
    kw = {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}
    config = AnalysisConfig(progress=not args.no_progress, **kw)
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
            f"{k['untested']:,} untested, {k['refuted']:,} refuted by the other model"
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
