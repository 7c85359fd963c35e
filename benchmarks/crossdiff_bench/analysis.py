"""``crossdiff bench analysis``: is the exclusivity check right, and what does analysis cost?

**check** (toy ground truth, :mod:`crossdiff_bench.toy_data`): train the toy benchmark's DFC
and standard crosscoder at its default budget (:mod:`crossdiff_bench.toy`), label features
exclusive the published way (DFC partition; relative decoder norm 0.8/0.2 for standard), then
run our exclusivity check on held-out toy streams (fit: ``fit_rows``, score:
``test_rows``, the analysis default) and relabel 'refuted' candidates as shared. Reported: the
false-positive fraction among alive features still labelled exclusive, and the exclusive-concept
recall, before and after; a sweep of the R^2 threshold; and the same with two alternatives
(a plain ridge probe on the activation itself, and latent scaling alone for standard
crosscoders), so the choice of method is measured, not asserted.

**scale**: synthetic stores written with the real store writer at two sizes, a crosscoder of
realistic size whose BatchTopK threshold is calibrated to fire ``k`` features per row, and
:func:`crossdiff.analysis.analyze` run in a fresh process per store, so each peak RSS belongs
to one analysis. Reported: time per million pairs of the streaming pass, peak memory at both
sizes (flat = bounded), and the extrapolation to a 10M-pair store.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
FIT_SEED, TEST_SEED, ALIVE_SEED = 2_000_003, 3_000_003, 1_000_003


# ---- check: the exclusivity check against toy ground truth ----------------------------------
class LinearProbe:
    """The plain alternative: ridge from the other model's activations straight to each
    candidate's (sparse) activation. Uncentered accumulators with an intercept column; toy
    widths only."""

    def __init__(self, cc: Any, feats: np.ndarray, side: list[str], ridge: float) -> None:
        import torch

        self.cc = cc
        dev = cc.b_enc.device
        self.ridge = ridge
        self.groups = []
        for m in ("a", "b"):
            cols = np.flatnonzero(np.array(side) == m)
            if cols.size == 0:
                continue
            d = cc.config.d_b if m == "a" else cc.config.d_a  # predictors: the other model
            self.groups.append(
                {
                    "m": m,
                    "cols": cols,
                    "feats": torch.as_tensor(feats[cols], device=dev),
                    "zz": torch.zeros(d + 1, d + 1, dtype=torch.float64, device=dev),
                    "zy": torch.zeros(d + 1, cols.size, dtype=torch.float64, device=dev),
                }
            )
        n = len(feats)
        self.stats = {
            k: torch.zeros(n, dtype=torch.float64, device=dev) for k in ("sf", "sf2", "sse")
        }
        self.n = 0

    @staticmethod
    def _z(x: Any) -> Any:
        import torch

        return torch.cat([x.float(), x.new_ones(x.shape[0], 1).float()], dim=1)

    def _target(self, enc: Any, batch: int, feats: Any) -> Any:
        import torch

        col_of = torch.full((self.cc.config.n_features,), -1, device=feats.device)
        col_of[feats] = torch.arange(len(feats), device=feats.device)
        c = col_of[enc.feats]
        keep = c >= 0
        y = torch.zeros(batch, len(feats), device=feats.device)
        y[enc.rows[keep], c[keep]] = enc.vals[keep].float()
        return y

    def fit_update(self, x_a: Any, x_b: Any, enc: Any) -> None:
        for g in self.groups:
            z = self._z(x_b if g["m"] == "a" else x_a)
            y = self._target(enc, x_a.shape[0], g["feats"])
            g["zz"] += (z.T @ z).double()
            g["zy"] += (z.T @ y).double()

    def solve(self) -> None:
        import torch

        for g in self.groups:
            zz = g["zz"]
            d = zz.shape[0] - 1
            lam = self.ridge * float(torch.diagonal(zz)[:d].sum()) / max(d, 1)
            reg = torch.eye(d + 1, dtype=zz.dtype, device=zz.device) * lam
            reg[d, d] = 0.0
            g["w"] = torch.linalg.solve(zz + reg, g["zy"]).float()

    def test_update(self, x_a: Any, x_b: Any, enc: Any) -> None:
        self.n += x_a.shape[0]
        for g in self.groups:
            z = self._z(x_b if g["m"] == "a" else x_a)
            y = self._target(enc, x_a.shape[0], g["feats"]).double()
            pred = (z @ g["w"]).double()
            cols = g["cols"]
            self.stats["sf"][cols] += y.sum(0)
            self.stats["sf2"][cols] += y.pow(2).sum(0)
            self.stats["sse"][cols] += (y - pred).pow(2).sum(0)

    def r2(self) -> np.ndarray:
        sst = self.stats["sf2"] - self.stats["sf"].pow(2) / max(self.n, 1)
        r2 = 1.0 - self.stats["sse"] / sst.clamp_min(1e-30)
        return np.where(sst.cpu().numpy() > 0, r2.cpu().numpy(), np.nan)


def _score_with(
    world: Any,
    cc: Any,
    labels: np.ndarray,
    alive: np.ndarray,
    cand: np.ndarray,
    r2: np.ndarray,
    active: np.ndarray,
    ls: np.ndarray,
    max_r2: float,
    max_ls: float,
    min_active: int,
    keep_untested: bool,
) -> dict[str, Any]:
    from crossdiff.analysis.config import AnalysisConfig
    from crossdiff.analysis.ranking import verdicts
    from crossdiff_bench.toy_data import score_decoders

    cfg = AnalysisConfig(
        exclusive_max_r2=max_r2, latent_scaling_max=max_ls, min_test_active=min_active
    )
    v = verdicts(np.ones(len(cand), dtype=bool), r2, active, ls, cfg)
    relabelled = labels.copy()
    dropped = (v == "refuted") if keep_untested else (v != "confirmed")
    relabelled[cand[dropped]] = "S"
    s = score_decoders(
        world, cc.decoder_weight("a"), cc.decoder_weight("b"), relabelled, alive=alive
    )
    return {
        "false_positive": s.false_positive,
        "recall_exclusive_a": s.recall_exclusive_a,
        "recall_exclusive_b": s.recall_exclusive_b,
        "recall_exclusive": (s.recall_exclusive_a + s.recall_exclusive_b) / 2,
        "labelled": s.labelled_a + s.labelled_b,
        "refuted": int((v == "refuted").sum()),
        "untested": int((v == "untested").sum()),
    }


def check_one(
    bc: Any,
    kind: str,
    source: Any,
    seed: int,
    *,
    fit_rows: int,
    test_rows: int,
    ridge: float,
    thresholds: tuple[float, ...],
    min_active: int,
    progress: bool,
    save_dir: str | Path | None = None,
    load_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Train one toy crosscoder (or load it from ``load_dir``/KIND-sSEED), run the check, and
    score every variant against ground truth."""
    import torch

    from crossdiff.analysis.encoding import encode_batch, firing_thresholds
    from crossdiff.analysis.exclusivity import (
        CrossMoments,
        CrossPredictionScorer,
        LatentScaling,
        fit_stitch_maps,
    )
    from crossdiff.crosscoder import Crosscoder
    from crossdiff.crosscoder.train import train_crosscoder
    from crossdiff_bench.toy import crosscoder_config, train_config
    from crossdiff_bench.toy_data import crosscoder_labels, firing_counts, score_decoders

    name = f"{kind}-s{seed}"
    t0 = time.perf_counter()
    if load_dir is not None and (Path(load_dir) / name).is_dir():
        cc = Crosscoder.from_pretrained(Path(load_dir) / name, device=bc.device).eval()
        train_s = float("nan")  # not trained here
    else:
        cc = train_crosscoder(
            source, crosscoder_config(bc, kind), train_config(bc, seed, kind), progress=progress
        ).eval()
        train_s = time.perf_counter() - t0
        if save_dir is not None:
            cc.save_pretrained(Path(save_dir) / name)
    dev = cc.b_enc.device
    labels = crosscoder_labels(cc, hi=bc.rel_hi, lo=bc.rel_lo)
    alive = (
        firing_counts(
            cc, source, n_batches=bc.eval_batches, batch_size=bc.batch_size, seed=ALIVE_SEED + seed
        )
        > 0
    )
    world = source.world
    base = score_decoders(
        world, cc.decoder_weight("a"), cc.decoder_weight("b"), labels, alive=alive
    )
    cand = np.flatnonzero((labels != "S") & alive)
    side = ["a" if labels[i] == "A" else "b" for i in cand]
    standard = kind != "dfc"
    t1 = time.perf_counter()
    bs = bc.batch_size
    moments = CrossMoments(cc.config.d_a, cc.config.d_b, dev)
    min_pos = torch.full((cc.config.n_features,), float("inf"), device=dev)
    latent = LatentScaling(cc, torch.as_tensor(cand), side) if standard and cand.size else None
    probe = LinearProbe(cc, cand, side, ridge)
    with torch.no_grad():
        for x_a, x_b in itertools.islice(
            source.batches(bs, seed=FIT_SEED + seed), math.ceil(fit_rows / bs)
        ):
            xa = cc.normalize(x_a.to(dev).float(), "a")
            xb = cc.normalize(x_b.to(dev).float(), "b")
            moments.update(xa, xb)
            enc = encode_batch(cc, xa, xb, recon=latent is not None)
            min_pos.scatter_reduce_(0, enc.feats, enc.vals.float(), reduce="amin")
            if latent is not None:
                latent.update(enc.rows, enc.feats, enc.vals, xa - enc.recon_a, xb - enc.recon_b)
            probe.fit_update(xa, xb, enc)
        maps = fit_stitch_maps(moments, ridge)
        probe.solve()
        scorer = CrossPredictionScorer(
            cc, maps, torch.as_tensor(cand, dtype=torch.long), side, firing_thresholds(cc, min_pos)
        )
        for x_a, x_b in itertools.islice(
            source.batches(bs, seed=TEST_SEED + seed), math.ceil(test_rows / bs)
        ):
            xa = cc.normalize(x_a.to(dev).float(), "a")
            xb = cc.normalize(x_b.to(dev).float(), "b")
            scorer.update(xa, xb)
            probe.test_update(xa, xb, encode_batch(cc, xa, xb))
    check_s = time.perf_counter() - t1
    r2 = scorer.r2().cpu().numpy()
    active = scorer.active.cpu().numpy()
    probe_r2 = probe.r2()
    ls = latent.ratio().cpu().numpy() if latent is not None else np.full(cand.size, np.nan)
    nan = np.full(cand.size, np.nan)
    variants: dict[str, dict[str, Any]] = {}
    for tau in thresholds:
        for keep, tag in ((False, "confirmed"), (True, "not refuted")):
            common = {"min_active": min_active, "keep_untested": keep}
            variants[f"{tag}: cross_r2<{tau}"] = _score_with(
                world, cc, labels, alive, cand, r2, active, nan, tau, 1.0, **common
            )
            variants[f"{tag}: linear_probe<{tau}"] = _score_with(
                world, cc, labels, alive, cand, probe_r2, active, nan, tau, 1.0, **common
            )
            if standard:
                variants[f"{tag}: cross_r2,ls<{tau}"] = _score_with(
                    world, cc, labels, alive, cand, r2, active, ls, tau, tau, **common
                )
    per_candidate = [
        {
            "feature": int(f),
            "side": sd,
            "cross_r2": float(a),
            "linear_probe_r2": float(b),
            "ls_ratio": float(c),
            "test_active": int(n),
        }
        for f, sd, a, b, c, n in zip(cand, side, r2, probe_r2, ls, active)
    ]
    return {
        "model": kind,
        "seed": seed,
        "n_features": bc.n_features,
        "train_s": train_s,
        "check_s": check_s,
        "candidates": int(cand.size),
        "map_fve_b_to_a": maps.fve_ba,
        "map_fve_a_to_b": maps.fve_ab,
        "base": {
            "false_positive": base.false_positive,
            "recall_exclusive_a": base.recall_exclusive_a,
            "recall_exclusive_b": base.recall_exclusive_b,
            "recall_exclusive": (base.recall_exclusive_a + base.recall_exclusive_b) / 2,
            "labelled": base.labelled_a + base.labelled_b,
        },
        "variants": variants,
        "candidates_detail": per_candidate,
    }


def run_check(args: argparse.Namespace) -> list[dict[str, Any]]:
    from crossdiff_bench.toy import ToyBenchConfig
    from crossdiff_bench.toy_data import ToyConfig, ToySource

    toy = ToyConfig()
    if args.small:  # a quick look on a laptop: smaller world and budget (not the target)
        toy = ToyConfig(n_concepts=512, d_a=64, d_b=64, calibration_samples=4096)
    bc = ToyBenchConfig(toy=toy, device=args.device)
    if args.small:
        bc = dataclasses.replace(bc, n_features=256, steps=args.steps or 800, batch_size=1024)
    elif args.steps:
        bc = dataclasses.replace(bc, steps=args.steps)
    print(
        f"check: toy world {toy.n_concepts} concepts in {toy.d_a}/{toy.d_b} dims, "
        f"F={bc.n_features}, k={bc.k}, {bc.steps} steps of {bc.batch_size}; fit "
        f"{args.fit_rows:,} rows, test {args.test_rows:,} rows, ridge {args.ridge}"
    )
    rows = []
    for seed in range(args.seed, args.seed + args.seeds):
        # no code cache: each crosscoder sees each batch once, and on CPU the cache's small
        # tensors fragment the heap (RSS grows ~16 MB per step at the default budget)
        source = ToySource(dataclasses.replace(bc.toy, seed=seed), cache_mb=0, device=bc.device)
        for kind in args.models.split(","):
            row = check_one(
                bc,
                kind,
                source,
                seed,
                fit_rows=args.fit_rows,
                test_rows=args.test_rows,
                ridge=args.ridge,
                thresholds=tuple(args.thresholds),
                min_active=args.min_active,
                progress=not args.no_progress,
                save_dir=args.save_crosscoders,
                load_dir=args.load_crosscoders,
            )
            rows.append(row)
            print(format_check_row(row, args.threshold), flush=True)
    print(format_check_summary(rows, args.threshold))
    return rows


def format_check_row(row: dict[str, Any], tau: float) -> str:
    b = row["base"]
    v = row["variants"][f"confirmed: cross_r2<{tau}"]
    return (
        f"  seed {row['seed']} {row['model']:<8}: labelled exclusive {b['labelled']} -> "
        f"{v['labelled']}; false positives {b['false_positive']:.2f} -> "
        f"{v['false_positive']:.2f}; exclusive recall {b['recall_exclusive']:.2f} -> "
        f"{v['recall_exclusive']:.2f} (train {row['train_s']:.0f} s, check {row['check_s']:.1f} s)"
    )


def _mean(values: list[float]) -> float:
    """Mean over the finite values (NaN, silently, when there are none)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def format_check_summary(rows: list[dict[str, Any]], tau: float) -> str:
    lines = [
        "",
        f"mean over seeds; the tool's default: 'confirmed: cross_r2<{tau}' (labelled exclusive "
        f"after the check = confirmed: tested on >= min_active held-out activations and not "
        f"refuted); 'not refuted' keeps untested features too",
        f"{'model':<9}{'variant':<30}{'false pos.':>11}{'recall':>8}{'d recall':>9}{'labelled':>9}",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        rs = [r for r in rows if r["model"] == model]
        base_fp = _mean([r["base"]["false_positive"] for r in rs])
        base_rec = _mean([r["base"]["recall_exclusive"] for r in rs])
        base_lab = _mean([r["base"]["labelled"] for r in rs])
        lines.append(
            f"{model:<9}{'published labels':<26}{base_fp:>11.3f}{base_rec:>8.3f}"
            f"{'':>9}{base_lab:>9.1f}"
        )
        for name in rs[0]["variants"]:
            fp = _mean([r["variants"][name]["false_positive"] for r in rs])
            rec = _mean([r["variants"][name]["recall_exclusive"] for r in rs])
            lab = _mean([r["variants"][name]["labelled"] for r in rs])
            lines.append(
                f"{'':<9}{name:<30}{fp:>11.3f}{rec:>8.3f}{rec - base_rec:>+9.3f}{lab:>9.1f}"
            )
    lines.append(
        "false pos.: fraction of alive features labelled exclusive that match no exclusive "
        "concept of their model (cos > 0.83); recall: mean of A- and B-only concept recall by "
        "features labelled exclusive; 'refuted' candidates are relabelled shared."
    )
    return "\n".join(lines)


# ---- scale: time and memory of the analysis pass ---------------------------------------------
def calibrated_crosscoder(store: Any, n_features: int, k: int, exclusive: float, seed: int) -> Any:
    """A random-init DFC of the store's widths whose inference threshold fires ~k per row."""
    import torch

    from crossdiff.crosscoder import Crosscoder, CrosscoderConfig

    scales = store.norm_scales() or (1.0, 1.0)
    cfg = CrosscoderConfig.dfc(
        store.d_a,
        store.d_b,
        n_features,
        exclusive=exclusive,
        k=k,
        scale_a=scales[0],
        scale_b=scales[1],
    )
    cc = Crosscoder(cfg, seed=seed).eval()
    x_a, x_b, _ = next(store.iter_rows(2048))
    with torch.no_grad():
        pre = cc.preacts(cc.normalize(x_a, "a"), cc.normalize(x_b, "b"))
        scores = pre.clamp_min(0) * cc.selection_weight()
        kth = torch.topk(scores.flatten(), k * scores.shape[0]).values[-1]
        cc.threshold[0] = float(kth)
    return cc


def measure(store: str, crosscoder: str, out: str, device: str, batch_size: int) -> dict[str, Any]:
    """One analysis in this process; its timing and peak memory (run in a fresh process)."""
    import torch

    from crossdiff.analysis import AnalysisConfig, analyze

    if device.startswith("cuda"):
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
    res = analyze(
        store=store,
        crosscoder=crosscoder,
        out=out,
        config=AnalysisConfig(device=device, progress=False, batch_size=batch_size),
    )
    t = dict(res.meta["timing"])
    t["rows"] = res.meta["rows_analysed"]
    t["gpu_peak_mib"] = (
        torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None
    )
    t["analysis_mib"] = sum(p.stat().st_size for p in Path(out).iterdir()) / 2**20
    t["check_fit_rows"] = res.meta["check"].get("fit_rows")
    return t


def run_scale(args: argparse.Namespace) -> list[dict[str, Any]]:
    from crossdiff.store import ActivationStore
    from crossdiff_bench.synthetic import write_synthetic_store

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="cd-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"scale: widths {args.d_a}/{args.d_b}, F={args.n_features}, k={args.k}, batch "
        f"{args.batch_size}, device {args.device}, stores in {work}"
    )
    rows = []
    cc_dir = work / "crosscoder"
    try:
        for pairs in args.pairs:
            path = work / f"store-{pairs}"
            if path.exists():
                shutil.rmtree(path)
            t0 = time.perf_counter()
            words = 512
            store = write_synthetic_store(
                path,
                n_docs=math.ceil(pairs / words),
                words_per_doc=words,
                d_a=args.d_a,
                d_b=args.d_b,
                seed=1,
                progress=not args.no_progress,
            )
            write_s = time.perf_counter() - t0
            if not cc_dir.exists():
                calibrated_crosscoder(store, args.n_features, args.k, 0.05, 0).save_pretrained(
                    cc_dir
                )
            cmd = [
                sys.executable,
                "-m",
                "crossdiff_bench.analysis",
                "measure",
                str(path),
                str(cc_dir),
                str(work / f"analysis-{pairs}"),
                args.device,
                str(args.batch_size),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise RuntimeError(f"analysis of {path} failed:\n{proc.stderr[-3000:]}")
            t = json.loads(proc.stdout.strip().splitlines()[-1])
            size = sum(p.stat().st_size for p in ActivationStore.open(path).path.iterdir())
            t.update(pairs=store.n_rows, store_gib=size / 2**30, write_s=write_s)
            rows.append(t)
            print(format_scale_row(t), flush=True)
            if not args.keep:
                shutil.rmtree(path)
    finally:
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print(format_scale_summary(rows))
    return rows


def format_scale_row(t: dict[str, Any]) -> str:
    per_m = t["pass_seconds"] / t["pairs"] * 1e6
    gpu = f", GPU peak {t['gpu_peak_mib']:,.0f} MiB" if t.get("gpu_peak_mib") else ""
    return (
        f"  {t['pairs']:>11,} pairs ({t['store_gib']:.2f} GiB store, written in "
        f"{t['write_s']:.0f} s): pass {t['pass_seconds']:.1f} s = {per_m:.1f} s per 1M pairs "
        f"({t['pairs_per_second']:,.0f} pairs/s); check {t['check_seconds']:.1f} s, examples "
        f"{t['examples_seconds']:.1f} s, total {t['total_seconds']:.1f} s; peak RSS "
        f"{t['peak_rss_mib']:,.0f} MiB{gpu}; analysis folder {t['analysis_mib']:.1f} MiB"
    )


def format_scale_summary(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    big = max(rows, key=lambda t: t["pairs"])
    per_m = big["pass_seconds"] / big["pairs"] * 1e6
    fixed = big["total_seconds"] - big["pass_seconds"]
    rss = [t["peak_rss_mib"] for t in rows]
    lines = [
        "",
        f"time per million pairs (pass, largest store): {per_m:.1f} s",
        f"peak RSS across sizes: {', '.join(f'{r:,.0f}' for r in rss)} MiB "
        f"({'flat' if max(rss) < 1.25 * min(rss) else 'NOT flat'} from "
        f"{min(t['pairs'] for t in rows):,} to {big['pairs']:,} pairs)",
        f"10M pairs (extrapolated, same widths/F/device): pass ~{10 * per_m:.0f} s + "
        f"~{fixed:.0f} s check/examples/FVE (these do not grow with the store: the check's "
        f"rows are capped), peak memory ~{max(rss):,.0f} MiB "
        f"(+ {rows[-1].get('gpu_peak_mib') or 0:,.0f} MiB GPU)",
    ]
    return "\n".join(lines)


# ---- CLI -----------------------------------------------------------------------------------
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analysis",
        help="exclusivity check vs toy ground truth; analysis time and memory per 1M pairs",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--part", choices=["check", "scale", "all"], default="all")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--json-out", help="write all results here")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    g = p.add_argument_group("check (toy ground truth)")
    g.add_argument("--models", default="dfc,standard", help="comma-separated: dfc,standard,dsf")
    g.add_argument("--seeds", type=int, default=1)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--steps", type=int, help="override the toy benchmark's training steps")
    g.add_argument("--small", action="store_true", help="a small world and budget (quick look)")
    g.add_argument("--fit-rows", type=int, default=65536)
    g.add_argument("--test-rows", type=int, default=32768)
    g.add_argument("--ridge", type=float, default=1e-3)
    g.add_argument("--threshold", type=float, default=0.5, help="R^2 that refutes (default 0.5)")
    g.add_argument("--thresholds", type=float, nargs="+", default=list(DEFAULT_THRESHOLDS))
    g.add_argument("--min-active", type=int, default=10)
    g.add_argument("--save-crosscoders", help="save the trained toy crosscoders here")
    g.add_argument("--load-crosscoders", help="reuse crosscoders saved by --save-crosscoders")
    g = p.add_argument_group("scale (synthetic stores)")
    g.add_argument("--pairs", type=int, nargs="+", default=[250_000, 1_000_000])
    g.add_argument("--d-a", type=int, default=576, help="default: SmolLM2-135M's width")
    g.add_argument("--d-b", type=int, default=640, help="default: Gemma-3-270M's width")
    g.add_argument("--n-features", type=int, default=20480, help="default 32 x 640")
    g.add_argument("--k", type=int, default=200)
    g.add_argument("--batch-size", type=int, default=4096)
    g.add_argument("--workdir", help="where to write the stores (default: a temp folder)")
    g.add_argument("--keep", action="store_true", help="keep the stores")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from crossdiff_bench.machine import describe_machine

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.threshold not in args.thresholds:
        args.thresholds = sorted({*args.thresholds, args.threshold})
    print(f"crossdiff bench analysis on {describe_machine()}")
    print(f"parameters: {json.dumps({k: v for k, v in vars(args).items() if k != 'func'})}")
    results: dict[str, Any] = {"machine": describe_machine()}
    if args.part in ("check", "all"):
        results["check"] = run_check(args)
    if args.part in ("scale", "all"):
        results["scale"] = run_scale(args)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2, default=float) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m crossdiff_bench.analysis [OPTIONS]``: the benchmark without the full CLI;
    ``... measure STORE CC OUT DEVICE BATCH`` is the internal one-analysis-per-process step."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["measure"]:
        if len(argv) != 6:
            sys.exit("usage: python -m crossdiff_bench.analysis measure STORE CC OUT DEVICE BATCH")
        print(json.dumps(measure(*argv[1:5], int(argv[5]))))
        return 0
    parser = argparse.ArgumentParser(prog="python -m crossdiff_bench.analysis")
    register(parser.add_subparsers(dest="bench"))
    args = parser.parse_args(["analysis", *argv])
    args.command = "bench"
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
