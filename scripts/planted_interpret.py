"""Explain the planted benchmark's found features with `crossdiff interpret` (stats backend).

Usage: python scripts/planted_interpret.py PLANTED_JSON OUT_DIR [NEGATIVES [N_RANDOM]]
(PLANTED_JSON from `crossdiff bench planted --json-out`; NEGATIVES random / hard / mixed, the
default mixed; N_RANDOM default 10). For each DFC seed it makes a run folder of symlinks
(store, crosscoder, analysis), explains the found praise / refusal features and N_RANDOM random
alive, not near-dead features of the same block, and prints (seed, concept, feature,
explanation, detection, random median, random max, random >= 0.8). BENCHMARKS.md reports its
output.
"""

import glob
import json
import os
import random
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq

with open(sys.argv[1]) as fh:
    d = json.load(fh)
data = glob.glob(os.path.join(d["work_dir"], "pair-*", "data-*"))[0]
root = sys.argv[2]
negatives = sys.argv[3] if len(sys.argv) > 3 else "mixed"
n_random = int(sys.argv[4]) if len(sys.argv) > 4 else 10
out = []
for r in d["crosscoders"]:
    if r["kind"] != "dfc":
        continue
    seed = r["seed"]
    src = r["run"]
    run = os.path.join(root, f"s{seed}")
    os.makedirs(run, exist_ok=True)
    for name, target in (
        ("store", f"{data}/store"),
        ("crosscoder", f"{src}/crosscoder"),
        ("analysis", f"{src}/analysis"),
    ):
        if not os.path.exists(f"{run}/{name}"):
            os.symlink(target, f"{run}/{name}")
    t = pq.read_table(f"{src}/analysis/features.parquet").to_pydict()
    k = np.array(t["klass"])
    alive = ~np.array(t["dead"])
    nd = np.array(t["near_dead"])
    rng = random.Random(seed)
    found = {c: r["concepts"][c]["feature"] for c in ("praise", "refusal")}
    rand = {}
    for c, m in (("praise", "A"), ("refusal", "B")):
        pool = [int(i) for i in np.flatnonzero((k == m) & alive & ~nd) if int(i) != found[c]]
        rand[c] = rng.sample(pool, n_random)
    feats = sorted({*found.values(), *rand["praise"], *rand["refusal"]})
    subprocess.run(
        [
            sys.executable,
            "-m",
            "crossdiff",
            "interpret",
            run,
            "--features",
            ",".join(map(str, feats)),
            "--negatives",
            negatives,
            "--no-progress",
        ],
        check=True,
        capture_output=True,
    )
    e = pq.read_table(f"{run}/interpret/explanations.parquet").to_pydict()
    by = {f: i for i, f in enumerate(e["feature"])}
    for c in ("praise", "refusal"):
        i = by[found[c]]
        rd = [e["detection"][by[f]] for f in rand[c] if f in by]
        out.append(
            (
                seed,
                c,
                found[c],
                e["explanation"][i][:90],
                e["detection"][i],
                float(np.nanmedian(rd)),
                float(np.nanmax(rd)),
                int(sum(x >= 0.8 for x in rd)),
            )
        )
for o in out:
    print(o)
