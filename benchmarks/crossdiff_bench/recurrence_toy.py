"""Rediscovery across seeds on the toy ground truth (issue 15; docs/recurrence.md).

Trains N DFCs (seeds 0..N-1) on ONE toy world at a reduced budget, matches the exclusive
features of seed 0 (the reference) against the others with :mod:`crossdiff.recurrence.matching`,
and asks the ground truth (:mod:`crossdiff_bench.toy_data`): among the reference's alive
exclusive-labelled features, how many are *false* (their own-model decoder row matches no
exclusive concept of that model at cosine > 0.83, as ``score_decoders`` counts them), overall
and among those found again in >= K of the others, and how many exclusive concepts the
recurring features still recover. It also prints how the two matching signals (decoder cosine,
activation correlation) separate pairs that learned the same concept from the rest, which is
how the default thresholds were chosen.

    python -m crossdiff_bench.recurrence_toy --seeds 5 --steps 700 --out /tmp/rec-toy

Crosscoders are saved under ``--out`` and reused when the command is rerun.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch

from crossdiff_bench.toy import ToyBenchConfig, crosscoder_config, train_config
from crossdiff_bench.toy_data import RECOVERY_COSINE, ToyConfig, ToySource, firing_counts

EVAL_SEED = 1_000_003


def _train_or_load(bc: ToyBenchConfig, source: ToySource, seed: int, out: Path):
    from crossdiff.crosscoder import Crosscoder
    from crossdiff.crosscoder.train import train_crosscoder

    folder = out / f"s{seed}-x{bc.exclusive:g}"
    if (folder / "model.safetensors").is_file():
        return Crosscoder.from_pretrained(folder), 0.0
    t0 = time.perf_counter()
    cc = train_crosscoder(
        source, crosscoder_config(bc, "dfc"), train_config(bc, seed, "dfc"), progress=False
    )
    cc.save_pretrained(folder)
    return cc, time.perf_counter() - t0


def _unit(w: torch.Tensor) -> torch.Tensor:
    w = w.detach().float().cpu()
    return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)


def ground_truth(cc, world, m: str) -> np.ndarray:
    """Per exclusive feature of model m: index of the m-only concept it matches (cosine >
    0.83, the best one), or -1 (a 'false' exclusive feature, score_decoders' definition)."""
    p = cc.partition
    block = p.a_exclusive if m == "a" else p.b_exclusive
    dirs = (world.directions_a if m == "a" else world.directions_b).cpu()
    cos = _unit(cc.decoder_weight(m)[block.start : block.stop]) @ dirs.T
    kind = torch.from_numpy(world.kinds == m.upper())
    cos[:, ~kind] = -2.0
    best, idx = cos.max(1)
    return np.where(best.numpy() > RECOVERY_COSINE, idx.numpy(), -1)


def main(argv: list[str] | None = None) -> int:
    from crossdiff.recurrence.matching import (
        MatchConfig,
        admissible_pairs,
        decoder_cosines,
        encode_exclusive,
        match_crosscoders,
    )

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--batch-size", type=int, default=2048)
    ap.add_argument("--rows", type=int, default=16384)
    ap.add_argument("--world-seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/crossdiff-recurrence-toy")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    bc = ToyBenchConfig(steps=args.steps, batch_size=args.batch_size, models=("dfc",))
    source = ToySource(dataclasses.replace(bc.toy, seed=args.world_seed))
    world = source.world
    ccs = []
    for seed in range(args.seeds):
        cc, secs = _train_or_load(bc, source, seed, out)
        print(f"seed {seed}: {f'trained in {secs:.0f} s' if secs else 'loaded'}", flush=True)
        ccs.append(cc.eval())
    xs = list(itertools.islice(source.batches(2048, seed=EVAL_SEED), -(-args.rows // 2048)))
    x_a = torch.cat([x[0] for x in xs])[: args.rows]
    x_b = torch.cat([x[1] for x in xs])[: args.rows]
    ref, others = ccs[0], ccs[1:]
    alive = {}
    counts = firing_counts(ref, source, n_batches=16, batch_size=2048, seed=EVAL_SEED + 1)
    gt = {m: [ground_truth(cc, world, m) for cc in ccs] for m in ("a", "b")}

    # 1. how the signals separate same-concept pairs from the rest (all ordered seed pairs)
    print("\nsignal separation (pairs of alive exclusive features, reference vs others):")
    same_cos, same_corr, diff_cos, diff_corr = [], [], [], []
    for j, o in enumerate(others, start=1):
        f_r = encode_exclusive(ref, x_a, x_b)
        f_o = encode_exclusive(o, x_a, x_b)
        for m in ("a", "b"):
            cos = decoder_cosines(ref, o, m)
            a, b = f_r[m].double().numpy(), f_o[m].double().numpy()
            a = (a - a.mean(0)) / np.where(a.std(0) > 0, a.std(0), np.nan)
            b = (b - b.mean(0)) / np.where(b.std(0) > 0, b.std(0), np.nan)
            corr = (a.T @ b) / a.shape[0]
            gr, go = gt[m][0], gt[m][j]
            same = (gr[:, None] >= 0) & (gr[:, None] == go[None, :])
            for i in range(len(gr)):
                if gr[i] >= 0 and same[i].any():
                    k = int(np.flatnonzero(same[i])[0])
                    same_cos.append(cos[i, k])
                    same_corr.append(corr[i, k])
                row_c = np.where(same[i], -np.inf, cos[i])
                row_r = np.where(same[i], -np.inf, np.nan_to_num(corr[i], nan=-np.inf))
                diff_cos.append(row_c.max())
                diff_corr.append(row_r.max())
    q = [0.05, 0.25, 0.5, 0.75, 0.95]

    def qs(v):
        v = np.asarray(v, dtype=float)
        v = v[np.isfinite(v)]
        return " ".join(f"{x:.2f}" for x in np.quantile(v, q)) if len(v) else "-"

    print(
        f"  same concept ({len(same_cos)} pairs): cos q05..q95 {qs(same_cos)}; corr {qs(same_corr)}"
    )
    print(f"  best other partner ({len(diff_cos)}): cos {qs(diff_cos)}; corr {qs(diff_corr)}")
    for name, cfg in [
        ("cos>=0.7 & r>=0.5", MatchConfig(rule="both")),
        ("cos>=0.7 | r>=0.5", MatchConfig(rule="either")),
        ("cos>=0.7", MatchConfig(rule="cosine")),
        ("r>=0.5", MatchConfig(rule="correlation")),
    ]:
        sc, sr = np.asarray(same_cos), np.nan_to_num(np.asarray(same_corr), nan=-1)
        dc, dr = np.asarray(diff_cos), np.nan_to_num(np.asarray(diff_corr), nan=-1)
        tp = admissible_pairs(sc, sr, cfg).mean()
        fp = admissible_pairs(dc, dr, cfg).mean()
        print(
            f"  {name:<18} admits {tp:.2f} of same-concept pairs, best wrong partner for "
            f"{fp:.2f} of features"
        )

    # 2. the table
    rows = []
    for name, cfg in [("both", MatchConfig(rule="both")), ("either", MatchConfig(rule="either"))]:
        t0 = time.perf_counter()
        matches = match_crosscoders(ref, others, x_a, x_b, cfg)
        secs = time.perf_counter() - t0
        for m in ("a", "b"):
            block = ref.partition.a_exclusive if m == "a" else ref.partition.b_exclusive
            alive_m = counts[block.start : block.stop] > 0
            alive[m] = alive_m
            k = sum((mm[m].matched >= 0).astype(int) for mm in matches)
            g = gt[m][0]
            n_concepts = int((world.kinds == m.upper()).sum())
            for label, sel in [
                ("all alive", alive_m),
                (f">= {len(others) - 1} of {len(others)}", alive_m & (k >= len(others) - 1)),
                (f"{len(others)} of {len(others)}", alive_m & (k >= len(others))),
                ("0 of others", alive_m & (k == 0)),
            ]:
                n = int(sel.sum())
                false = int((sel & (g < 0)).sum())
                recall = len(set(g[sel & (g >= 0)].tolist())) / n_concepts
                rows.append(
                    {
                        "rule": name,
                        "model": m.upper(),
                        "subset": label,
                        "features": n,
                        "false": false,
                        "false_share": false / n if n else float("nan"),
                        "recall": recall,
                        "match_s": secs,
                    }
                )
    print("\nrule    model subset            features  false  false share  recall")
    for r in rows:
        print(
            f"{r['rule']:<7} {r['model']:<5} {r['subset']:<17} {r['features']:>8} "
            f"{r['false']:>6} {r['false_share']:>12.2f} {r['recall']:>7.2f}"
        )
    print(f"matching time ({len(others)} others, {x_a.shape[0]} rows): {rows[0]['match_s']:.1f} s")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"config": vars(args), "rows": rows}, indent=2))
    _ = ToyConfig
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
