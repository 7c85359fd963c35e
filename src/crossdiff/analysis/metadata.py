"""analysis.json: what an analysis was made from and what it found, in one small file."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from crossdiff.analysis.config import AnalysisConfig
from crossdiff.analysis.encoding import threshold_calibrated
from crossdiff.analysis.ranking import VERDICTS
from crossdiff.analysis.results import FORMAT_NAME, FORMAT_VERSION
from crossdiff.crosscoder.model import Crosscoder

if TYPE_CHECKING:
    from crossdiff.analysis.pipeline import PassState


def versions() -> dict[str, str]:
    import pyarrow

    from crossdiff import __version__

    return {"crossdiff": __version__, "torch": torch.__version__, "pyarrow": pyarrow.__version__}


def diagnostics(
    store: Any, cc: Crosscoder, fve: dict[str, Any], partitions: dict[str, Any]
) -> dict[str, Any]:
    """What tells a lopsided diff: each model's outlier ratio gamma = |mean| / |std| and
    offset share (store moments), its share of the loss weight under this crosscoder's
    normalization, and the warnings of ``crosscoder.metrics.lopsided_warnings``."""
    from crossdiff.crosscoder.metrics import lopsided_warnings
    from crossdiff.errors import CrossdiffError

    out: dict[str, Any] = {"normalization": "centered" if cc.config.centered else "scaled"}
    try:
        mom = store.moments()
        out.update(mom.summary())
        out["loss_share_b_median_scaling"] = _median_share(store, mom)
    except CrossdiffError:
        pass
    share = fve.get("loss_share_b")
    out["loss_share_b"] = share

    def dead(name: str) -> float | None:
        part = partitions.get(name) or {}
        return 1.0 - part["alive"] / part["size"] if part.get("size") else None

    out["warnings"] = lopsided_warnings(
        share,
        dead("a_exclusive"),
        dead("b_exclusive"),
        normalization="centered" if cc.config.centered else "median",
    )
    return out


def _median_share(store: Any, mom: Any) -> float | None:
    """B's loss share had the paper's median scaling been used (for comparison)."""
    scales = store.norm_scales()
    return None if scales is None else mom.loss_share(*scales)[1]


def build_meta(
    store: Any,
    cc: Crosscoder,
    config: AnalysisConfig,
    kind: str,
    part: np.ndarray,
    klass: np.ndarray,
    alive: np.ndarray,
    near_dead: np.ndarray,
    verdict: np.ndarray,
    state: PassState,
    fve: dict[str, Any],
    check_info: dict[str, Any],
) -> dict[str, Any]:
    """analysis.json's content: what the analysis read, what it found, and its settings."""
    man = store.manifest
    partitions = _partitions(cc, alive, near_dead, state)
    cov = man.coverage()
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        "versions": versions(),
        "models": {side: _model_info(getattr(man, f"model_{side}")) for side in ("a", "b")},
        "store": {
            "path": str(Path(store.path).resolve()),
            "rows": man.rows,
            "documents": man.documents_consumed,
            "content_tokens_a": cov["content_tokens_a"],
            "content_tokens_b": cov["content_tokens_b"],
            "status": man.status,
        },
        "rows_analysed": state.rows,
        "outlier_rows_left_out": state.outliers,
        "crosscoder": {
            "kind": kind,
            "n_features": cc.config.n_features,
            "activation": cc.config.activation,
            "k": cc.config.k,
            "threshold_calibrated": threshold_calibrated(cc),
            "scale_a": cc.config.scale_a,
            "scale_b": cc.config.scale_b,
            "centered": cc.config.centered,
        },
        "eval": fve,
        "diagnostics": diagnostics(store, cc, fve, partitions),
        "dead_fraction": float(1.0 - alive.mean()),
        "partitions": partitions,
        "classes": _classes(klass, alive, near_dead, verdict),
        "check": {**check_info, "tokenization": state.tokenization_info},
        "where": {**state.where_info, "store": store.composition()},
        "config": config.to_dict(),
    }


def _model_info(info: Any) -> dict[str, Any]:
    """What analysis.json says of one model (from the store's manifest): the report and
    ``show`` name models by it without opening the store."""
    return {
        "model_id": info.model_id,
        "spec": info.spec,
        "revision": info.revision,
        "layer": info.layer,
        "n_layers": info.n_layers,
        "d_model": info.d_model,
        "tokenizer": info.tokenizer.name,
    }


def _partitions(
    cc: Crosscoder, alive: np.ndarray, near_dead: np.ndarray, state: PassState
) -> dict[str, dict[str, int]]:
    """Size, live, near-dead and activation counts per partition of the index layout: a step
    because the diagnostics read them as well as the report."""
    p = cc.partition
    partitions = {}
    for name, rng in (
        ("a_exclusive", p.a_exclusive),
        ("b_exclusive", p.b_exclusive),
        ("shared", range(p.n_a + p.n_b, p.n_features - p.n_designated)),
        ("designated_shared", p.designated),
    ):
        sl = slice(rng.start, rng.stop)
        partitions[name] = {
            "size": len(rng),
            "alive": int(alive[sl].sum()),
            "near_dead": int(near_dead[sl].sum()),
            "activations": int(state.stats.count[sl].sum()),
        }
    return partitions


def _classes(
    klass: np.ndarray, alive: np.ndarray, near_dead: np.ndarray, verdict: np.ndarray
) -> dict[str, dict[str, int]]:
    """Per class (A, B, S): its size, how many are alive and reviewable, and the count of
    each verdict: the exclusivity check's table in the report."""
    classes = {}
    for c in ("A", "B", "S"):
        sel = klass == c
        classes[c] = {
            "size": int(sel.sum()),
            "alive": int((sel & alive).sum()),
            "reviewable": int((sel & alive & ~near_dead).sum()),
            **{v: int((verdict[sel] == v).sum()) for v in VERDICTS},
        }
    return classes
