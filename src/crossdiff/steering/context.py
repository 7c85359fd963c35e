"""What steering needs from a run folder: the crosscoder, both models, their layers, and s_max.

The crosscoder says how to steer (decoder rows, partition, normalization scales); the store's
manifest says which models and layers it was trained on (the crosscoder's own config repeats
the model ids and layers as provenance, used when the store is gone); the analysis table gives
each feature's ``s_max``, the largest activation it reached on the store. Without that table,
``s_max`` of the one feature asked for is computed by streaming the store once and cached in
``RUN/steering/s_max.json`` (keyed by the crosscoder file and the store's row count, so a
retrained crosscoder or a grown store is never served a stale value).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from crossdiff.crosscoder.model import WEIGHTS_FILE, Crosscoder
from crossdiff.errors import CrossdiffError
from crossdiff.paths import RunPaths

if TYPE_CHECKING:
    import pyarrow as pa

S_MAX_CACHE = "s_max.json"
STREAM_BATCH_ROWS = 4096


@dataclass
class Side:
    """One model of the pair as the run knows it."""

    key: str  # "a" or "b"
    spec: str | None  # as the user gave it at harvest time
    model_id: str | None  # resolved identity (absolute path, hub id, builtin:alias)
    revision: str | None
    layer: int | None  # resolved index of the decoder layer the crosscoder reads
    d_model: int
    median_norm: float | None  # median L2 norm of the raw activations in the store

    def load_spec(self) -> str:
        """What to pass to ``load_model``: the resolved identity where it can be loaded as is."""
        if self.model_id and (self.model_id.startswith("builtin:") or Path(self.model_id).exists()):
            return self.model_id
        if self.spec:
            return self.spec
        if self.model_id:
            return self.model_id
        raise CrossdiffError(
            f"the run does not say which model is model {self.key.upper()} (no store manifest, "
            f"and the crosscoder config has no model_{self.key}); pass it explicitly "
            f"(--model-{self.key} SPEC, or model_specs={{'{self.key}': SPEC}})"
        )


@dataclass
class RunContext:
    """A run folder opened for steering."""

    paths: RunPaths
    crosscoder: Crosscoder
    sides: dict[str, Side]
    store_path: Path | None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def open(
        cls,
        run: str | Path,
        *,
        model_specs: dict[str, str] | None = None,
        layers: dict[str, int] | None = None,
    ) -> RunContext:
        paths = RunPaths(run)
        if not paths.root.is_dir():
            raise CrossdiffError(f"run folder {paths.root} does not exist")
        if not paths.has_crosscoder():
            raise CrossdiffError(
                f"run {paths.root} has no trained crosscoder ({paths.crosscoder / WEIGHTS_FILE} "
                "is missing); train one first: crossdiff train RUN"
            )
        cc = paths.load_crosscoder()
        cfg = cc.config
        store_path = _find_store(paths, cfg.extra.get("store"))
        manifest = None
        if store_path is not None:
            from crossdiff.store.manifest import Manifest

            manifest = Manifest.load(store_path)
        sides: dict[str, Side] = {}
        for key in ("a", "b"):
            d_model = cfg.d_a if key == "a" else cfg.d_b
            if manifest is not None:
                info = getattr(manifest, f"model_{key}")
                if info.d_model != d_model:
                    raise CrossdiffError(
                        f"the store at {store_path} holds model {key.upper()} with width "
                        f"{info.d_model}, but the crosscoder in {paths.crosscoder} expects "
                        f"{d_model}; the run folder mixes two runs"
                    )
                median = manifest.norm_stats.get(key, {}).get("median")
                side = Side(
                    key,
                    info.spec,
                    info.model_id,
                    info.revision,
                    info.layer,
                    d_model,
                    float(median) if median else None,
                )
            else:
                side = Side(
                    key,
                    None,
                    getattr(cfg, f"model_{key}"),
                    None,
                    getattr(cfg, f"layer_{key}"),
                    d_model,
                    None,
                )
            if model_specs and model_specs.get(key):
                side.spec, side.model_id, side.revision = model_specs[key], None, None
            if layers and layers.get(key) is not None:
                side.layer = int(layers[key])
            sides[key] = side
        return cls(paths, cc, sides, store_path)

    # ---- the store -----------------------------------------------------------------------
    def store(self):
        """The run's activation store, or a clear error where it has none."""
        from crossdiff.store import ActivationStore

        if self.store_path is None:
            raise CrossdiffError(
                f"run {self.paths.root} has no activation store ({self.paths.store} is missing), "
                "which this step needs; harvest it again (crossdiff harvest) or pass the value "
                "it would compute (e.g. s_max=...)"
            )
        return ActivationStore.open(self.store_path)

    # ---- s_max ---------------------------------------------------------------------------
    def s_max(self, feature: int, *, progress: bool = False) -> tuple[float, str, bool]:
        """(s_max, where it came from, dead flag) for one feature.

        Order: the analysis table (``RUN/analysis/features.parquet``), then the steering cache,
        then one streaming pass over the store (cached afterwards).
        """
        from crossdiff.analysis.results import FEATURES_FILE

        table = self.paths.load_feature_columns(("feature", "s_max", "dead"))
        if table is not None:
            found = _s_max_from_table(table, feature)
            if found is not None:
                where = self.paths.analysis / FEATURES_FILE
                return found[0], f"analysis table {where}", found[1]
        key = _crosscoder_key(self.paths)
        cache_path = self.paths.steering / S_MAX_CACHE
        store = self.store()
        cache = _read_cache(cache_path)
        if cache.get("crosscoder") == key and cache.get("store_rows") == store.n_rows:
            value = cache.get("values", {}).get(str(feature))
            if value is not None:
                return float(value), f"streamed over {store.n_rows:,} store rows (cached)", False
        else:
            cache = {"crosscoder": key, "store_rows": store.n_rows, "values": {}}
        value = stream_s_max(self.crosscoder, store, feature, progress=progress)
        cache["values"][str(feature)] = value
        self.paths.steering.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(cache, indent=2, sort_keys=True) + "\n")
        tmp.replace(cache_path)
        return value, f"streamed over {store.n_rows:,} store rows (no analysis table)", False


def _find_store(paths: RunPaths, recorded: object) -> Path | None:
    from crossdiff.store.manifest import MANIFEST_NAME

    if paths.has_store():
        return paths.store
    if isinstance(recorded, str) and (Path(recorded) / MANIFEST_NAME).is_file():
        return Path(recorded)
    return None


def _crosscoder_key(paths: RunPaths) -> str:
    st = (paths.crosscoder / WEIGHTS_FILE).stat()
    return f"{st.st_size}-{st.st_mtime_ns}"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _s_max_from_table(table: pa.Table, feature: int) -> tuple[float, bool] | None:
    """(s_max, dead) of one feature from the analysis table's columns (those of feature,
    s_max, dead it has); None if it lacks s_max or the feature."""
    columns = table.column_names
    if "s_max" not in columns:
        return None
    if "feature" in columns:
        features = table.column("feature").to_pylist()
        try:
            row = features.index(feature)
        except ValueError:
            return None
    else:
        row = feature
        if row >= table.num_rows:
            return None
    value = table.column("s_max")[row].as_py()
    dead = bool(table.column("dead")[row].as_py()) if "dead" in columns else False
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value), dead


def stream_s_max(crosscoder: Crosscoder, store, feature: int, *, progress: bool = False) -> float:
    """The largest activation of one feature over the store's rows (one pass), leaving out
    huge-norm pairs as training and analysis do (``Crosscoder.inlier_mask``)."""
    import torch

    from crossdiff.steering.activation import FeatureReader

    reader = FeatureReader(crosscoder, feature)
    best = 0.0
    rows = store.iter_rows(STREAM_BATCH_ROWS)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=store.n_rows, desc=f"s_max of feature {feature}", unit="row")
    device = crosscoder.b_enc.device
    with torch.no_grad():
        for x_a, x_b, _meta in rows:
            x_a = crosscoder.normalize(x_a.to(device), "a")
            x_b = crosscoder.normalize(x_b.to(device), "b")
            keep = crosscoder.inlier_mask(x_a, x_b)
            x_a, x_b = x_a[keep], x_b[keep]
            if reader.fast:
                act = reader(x_a, x_b)
            else:  # the crosscoder's own batch semantics, as in training and analysis
                act = crosscoder.encode(x_a, x_b)[:, feature]
            if act.numel():
                best = max(best, float(act.max()))
            if bar is not None:
                bar.update(int(x_a.shape[0]))
    if bar is not None:
        bar.close()
    return best
