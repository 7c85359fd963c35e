"""``crossdiff compare RUN``: which exclusive features of the reference come back in the others.

Reads the reference ``RUN/crosscoder`` and every complete member in ``RUN/crosscoders/`` (or
the ones named), encodes the same held-out store rows with each (the eval split first, topped
up from the train split when it is small; huge-norm rows left out as everywhere else), matches
the reference's A- and B-exclusive features one to one against each member's
(:mod:`crossdiff.recurrence.matching`) and writes

```
RUN/recurrence/
  recurrence.parquet   one row per exclusive feature of the reference (RECURRENCE_COLUMNS)
  recurrence.json      members, settings, rows used, the k-of-N histogram per model
```

Why a separate stage and not part of ``analyze``: it needs the members, which cost N more
trainings; a run without them is complete without it, and the views return None / "".
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossdiff.errors import CrossdiffError
from crossdiff.paths import RunPaths
from crossdiff.recurrence.matching import (
    MODELS,
    MatchConfig,
    finite_or_none,
    match_crosscoders,
    scipy_available,
)
from crossdiff.recurrence.members import Member, list_members, reference_member

RECURRENCE_FILE = "recurrence.parquet"
META_FILE = "recurrence.json"
FORMAT_NAME = "crossdiff-recurrence"
FORMAT_VERSION = 1

RECURRENCE_COLUMNS: dict[str, str] = {
    "feature": "feature index in the reference crosscoder (RUN/crosscoder)",
    "klass": "'A' or 'B': the exclusive block it belongs to",
    "active": "activations on the compared rows (the reference's own)",
    "recurs": "k: how many of the other crosscoders hold a match",
    "n_others": "N: how many other crosscoders were compared",
    "matched": "per other crosscoder (recurrence.json 'members' order): its matched feature "
    "index, -1 when none",
    "cosine": "per other crosscoder: decoder cosine with the match (NaN when none)",
    "correlation": "per other crosscoder: activation correlation with the match (NaN when "
    "none or when either fired fewer than min_active times)",
    "best_cosine": "per other crosscoder: best decoder cosine with any of its exclusive "
    "features of the same model (how near a miss was)",
    "best_correlation": "per other crosscoder: best activation correlation with any of them",
}


@dataclass
class RecurrenceResult:
    """``RUN/recurrence``: the table (pyarrow) and its metadata."""

    table: Any
    meta: dict[str, Any]
    folder: Path

    def recurs(self) -> dict[int, int]:
        """{reference feature: k}."""
        return dict(
            zip(self.table["feature"].to_pylist(), self.table["recurs"].to_pylist(), strict=True)
        )

    def row(self, feature: int) -> dict[str, Any] | None:
        import pyarrow.compute as pc

        hit = self.table.filter(pc.equal(self.table["feature"], int(feature)))
        return hit.to_pylist()[0] if hit.num_rows else None


def reference_fingerprint(folder: Path) -> str:
    """Changes when the reference is retrained (:func:`crossdiff.crosscoder.fit.fingerprint`)."""
    from crossdiff.crosscoder.fit import fingerprint

    return fingerprint(folder)


def held_out_rows(
    store: Any, ref: Any, n: int, *, batch_size: int = 4096
) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
    """Up to ``n`` raw rows (bf16) in store order: the eval split first, then the train split
    when the eval split is smaller; rows the reference calls huge-norm are left out."""
    parts_a, parts_b = [], []
    got = {"eval": 0, "train": 0, "dropped_high_norm": 0}
    have = 0
    for split in ("eval", "train"):
        if have >= n:
            break
        for x_a, x_b, _meta in store.iter_rows(batch_size, split=split, dtype=torch.float32):
            dev = ref.b_enc.device
            keep = ref.inlier_mask(
                ref.normalize(x_a.to(dev), "a"), ref.normalize(x_b.to(dev), "b")
            ).cpu()
            got["dropped_high_norm"] += int((~keep).sum())
            x_a, x_b = x_a[keep][: n - have], x_b[keep][: n - have]
            parts_a.append(x_a.to(torch.bfloat16))
            parts_b.append(x_b.to(torch.bfloat16))
            have += int(x_a.shape[0])
            got[split] += int(x_a.shape[0])
            if have >= n:
                break
    if not have:
        raise CrossdiffError(
            f"store {store.path} has no rows to compare on (all {got['dropped_high_norm']} "
            f"were huge-norm outliers, or it is empty); harvest more text"
        )
    return torch.cat(parts_a), torch.cat(parts_b), got


def _members(run: Path, names: list[str] | None) -> list[Member]:
    found = list_members(run)
    if names is None:
        chosen = found
    else:
        by_name = {m.name: m for m in found}
        missing = [x for x in names if x not in by_name]
        if missing:
            raise CrossdiffError(
                f"no complete crosscoder {missing} in {RunPaths(run).crosscoders} (complete: "
                f"{sorted(by_name) or 'none'}); train them with crossdiff train RUN --seeds N"
            )
        chosen = [by_name[x] for x in names]
    if not chosen:
        raise CrossdiffError(
            f"{RunPaths(run).crosscoders} holds no complete crosscoder to compare with; train "
            f"some first, e.g. crossdiff train {run} --seeds 5"
        )
    return chosen


def compare(
    run: str | Path,
    *,
    members: list[str] | None = None,
    config: MatchConfig | None = None,
    device: str = "cpu",
    progress: bool = True,
    log: Any = print,
) -> RecurrenceResult:
    """Match the reference's exclusive features against every member; write RUN/recurrence/.

    ``members``: folder names in ``RUN/crosscoders`` (default: every complete one).
    """
    import pyarrow.parquet as pq

    config = config or MatchConfig()
    config.validate()
    root = Path(run)
    paths = RunPaths(root)
    t0 = time.perf_counter()
    ref_m = reference_member(root)
    chosen = _members(root, members)
    ref, others = _load_crosscoders(ref_m, chosen, device, paths)
    store = paths.open_store()
    x_a, x_b, rows = held_out_rows(store, ref, config.rows)
    if progress:
        log(
            f"comparing {ref_m.path} with {len(others)} crosscoders on {x_a.shape[0]:,} rows "
            f"({rows['eval']:,} eval, {rows['train']:,} train)"
        )
    matches = match_crosscoders(ref, others, x_a, x_b, config)
    table, hist = _recurrence_table(matches, len(others))
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "reference": _member_dict(ref_m, ref),
        "reference_fingerprint": reference_fingerprint(ref_m.path),
        "n_features": int(ref.config.n_features),
        "members": [
            dict(
                _member_dict(m, o),
                matched_a=matches[j]["a"].n_matched,
                matched_b=matches[j]["b"].n_matched,
            )
            for j, (m, o) in enumerate(zip(chosen, others))
        ],
        "n_others": len(others),
        "config": config.to_dict(),
        "one_to_one": "scipy linear_sum_assignment"
        if config.one_to_one != "greedy" and scipy_available()
        else "greedy by descending score",
        "rows": dict(rows, used=int(x_a.shape[0])),
        "histogram": hist,
        "seconds": time.perf_counter() - t0,
        "columns": RECURRENCE_COLUMNS,
    }
    out = paths.recurrence
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (RECURRENCE_FILE + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(out / RECURRENCE_FILE)
    tmp = out / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(_json_safe(meta), indent=2) + "\n")
    tmp.replace(out / META_FILE)
    return RecurrenceResult(table, meta, out)


def _load_crosscoders(
    ref_m: Member, chosen: list[Member], device: str, paths: RunPaths
) -> tuple[Any, list[Any]]:
    """The reference and the members, in eval mode, checked to be comparable (exclusive
    features in the reference, the same widths everywhere): a step so that a wrong member
    fails before any row is encoded."""
    from crossdiff.crosscoder.model import Crosscoder

    ref = Crosscoder.from_pretrained(ref_m.path, device=device).eval()
    if not (ref.partition.n_a or ref.partition.n_b):
        raise CrossdiffError(
            f"the reference {ref_m.path} has no exclusive features (a standard crosscoder); "
            f"compare needs DFCs (crossdiff train --exclusive 0.05)"
        )
    others = [Crosscoder.from_pretrained(m.path, device=device).eval() for m in chosen]
    for m, o in zip(chosen, others):
        if (o.config.d_a, o.config.d_b) != (ref.config.d_a, ref.config.d_b):
            raise CrossdiffError(
                f"{m.path} has widths {o.config.d_a}/{o.config.d_b}, the reference "
                f"{ref.config.d_a}/{ref.config.d_b}: it was trained on another store; move it "
                f"out of {paths.crosscoders}"
            )
    return ref, others


def _recurrence_table(matches: list[dict[str, Any]], n_others: int) -> tuple[Any, dict]:
    """recurrence.parquet's table (one row per exclusive feature of the reference, A then B)
    and the k-of-N histogram per model: a step apart so that the file's schema reads in one
    place."""
    import pyarrow as pa

    cols: dict[str, list[Any]] = {name: [] for name in RECURRENCE_COLUMNS}
    hist: dict[str, dict[str, int]] = {}
    for m in MODELS:
        per = [mm[m] for mm in matches]
        first = per[0]
        matched = np.stack([p.matched for p in per], axis=1)
        k = (matched >= 0).sum(1)
        hist[m.upper()] = {str(j): int((k == j).sum()) for j in range(n_others + 1)}
        for i, feat in enumerate(first.ref_features.tolist()):
            cols["feature"].append(int(feat))
            cols["klass"].append(m.upper())
            cols["active"].append(int(first.ref_active[i]))
            cols["recurs"].append(int(k[i]))
            cols["n_others"].append(n_others)
            cols["matched"].append([int(p.matched[i]) for p in per])
            for name in ("cosine", "correlation", "best_cosine", "best_correlation"):
                cols[name].append([float(getattr(p, name)[i]) for p in per])
    types = {
        "feature": pa.int64(),
        "klass": pa.string(),
        "active": pa.int64(),
        "recurs": pa.int32(),
        "n_others": pa.int32(),
        "matched": pa.list_(pa.int64()),
    }
    table = pa.table(
        {n: pa.array(v, type=types.get(n, pa.list_(pa.float64()))) for n, v in cols.items()}
    )
    return table, hist


def _member_dict(m: Member, cc: Any) -> dict[str, Any]:
    p = cc.partition
    return {
        "name": m.name,
        "path": str(m.path),
        "seed": m.seed,
        "exclusive": m.exclusive,
        "n_a": p.n_a,
        "n_b": p.n_b,
        "n_features": int(cc.config.n_features),
    }


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, float):
        return finite_or_none(x)
    return x


def run_root(run: str | Path) -> Path:
    """A run folder, or the run above an analysis folder (``AnalysisResult.folder``), so the
    views take what the report and ``show`` already hold (:meth:`RunPaths.containing`)."""
    return RunPaths.containing(run).root


def has_recurrence(run: str | Path) -> bool:
    """Whether ``crossdiff compare`` has written RUN/recurrence (current or not)."""
    folder = RunPaths(run_root(run)).recurrence
    return (folder / RECURRENCE_FILE).is_file() and (folder / META_FILE).is_file()


def load_recurrence(run: str | Path, *, current_only: bool = True) -> RecurrenceResult | None:
    """RUN/recurrence (``run``: a run or its analysis folder) read back; None when absent,
    or (``current_only``) when the reference crosscoder was retrained since (its counts
    would name other features)."""
    import pyarrow.parquet as pq

    run = run_root(run)
    if not has_recurrence(run):
        return None
    folder = RunPaths(run).recurrence
    from crossdiff.formats import read_meta

    meta = read_meta(folder / META_FILE, FORMAT_NAME, FORMAT_VERSION, "crossdiff compare")
    if current_only:
        ref = RunPaths(run).crosscoder
        try:
            current = reference_fingerprint(ref)
        except OSError:
            return None
        if current != meta.get("reference_fingerprint"):
            return None
    return RecurrenceResult(pq.read_table(folder / RECURRENCE_FILE), meta, folder)
