"""Train a crosscoder on an activation store: the library call behind ``crossdiff train``.

Adds what a store-backed run needs around :func:`train_crosscoder`: the crosscoder's widths,
model ids and layers come from the store's manifest; checkpoints go to
``OUT/checkpoints/`` (so an interrupted run resumes); the final crosscoder is written to
``OUT/`` (``config.json`` + ``model.safetensors``) with a ``train_summary.json`` holding the
eval-split metrics; and a complete output is recognized and not retrained. Other stages
read that summary back through :func:`load_summary` (and :func:`fingerprint`), never by its
file name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossdiff.crosscoder.config import CrosscoderConfig
from crossdiff.crosscoder.model import CONFIG_FILE, WEIGHTS_FILE, Crosscoder
from crossdiff.crosscoder.train import train_crosscoder
from crossdiff.crosscoder.train_config import TrainConfig
from crossdiff.errors import CrossdiffError
from crossdiff.paths import CHECKPOINTS_DIR

SUMMARY_FILE = "train_summary.json"
CHECKPOINTS = CHECKPOINTS_DIR


def crosscoder_config_for_store(store: Any, **overrides: Any) -> CrosscoderConfig:
    """A CrosscoderConfig with widths and provenance from a store's manifest.

    ``n_features`` defaults to ``expansion`` (default 32, the paper's) x the larger width.
    """
    man = store.manifest
    expansion = overrides.pop("expansion", None) or 32
    n_features = overrides.pop("n_features", None) or expansion * max(man.d_a, man.d_b)
    exclusive = overrides.pop("exclusive", None)
    if exclusive is not None:
        overrides.setdefault("frac_exclusive_a", exclusive)
        overrides.setdefault("frac_exclusive_b", exclusive)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return CrosscoderConfig(
        d_a=man.d_a,
        d_b=man.d_b,
        n_features=n_features,
        model_a=man.model_a.model_id,
        model_b=man.model_b.model_id,
        layer_a=man.model_a.layer,
        layer_b=man.model_b.layer,
        extra={"store": str(Path(store.path).resolve())},
        **overrides,
    )


def is_complete(out: str | Path) -> bool:
    """True when ``out`` holds a finished crosscoder (weights, config and summary)."""
    out = Path(out)
    return all((out / name).is_file() for name in (CONFIG_FILE, WEIGHTS_FILE, SUMMARY_FILE))


@dataclass(frozen=True)
class TrainSummary:
    """``OUT/train_summary.json`` read back: the settings a crosscoder was trained with and
    its eval-split metrics. ``data`` is the whole record, for the keys named here and any
    other (``metrics_eval``, ``warnings``, ``train_seconds``, ...)."""

    data: dict[str, Any]

    @property
    def train_config(self) -> dict[str, Any]:
        """TrainConfig.to_dict() of the training ({} in a summary without one)."""
        return dict(self.data.get("train_config") or {})

    @property
    def requested_config(self) -> dict[str, Any]:
        """The CrosscoderConfig as requested (no scales or centring; {} when absent)."""
        return dict(self.data.get("requested_config") or {})

    @property
    def seed(self) -> int:
        """The training seed (0 when the summary does not record one)."""
        return int(self.train_config.get("seed", 0))

    @property
    def frac_exclusive_a(self) -> float:
        """The requested A-exclusive fraction (0 when the summary does not record one)."""
        return float(self.requested_config.get("frac_exclusive_a", 0.0))


def load_summary(out: str | Path) -> TrainSummary:
    """The train summary of crosscoder folder ``out`` (check :func:`is_complete` first: a
    missing file raises ``FileNotFoundError``)."""
    return TrainSummary(json.loads((Path(out) / SUMMARY_FILE).read_text()))


def fingerprint(out: str | Path) -> str:
    """Changes when the crosscoder in ``out`` is retrained: a hash of its summary and of its
    weight file's size and modification time (results derived from it record this)."""
    out = Path(out)
    w = (out / WEIGHTS_FILE).stat()
    h = hashlib.sha256((out / SUMMARY_FILE).read_bytes())
    h.update(f"{w.st_size}:{w.st_mtime_ns}".encode())
    return h.hexdigest()


def train_on_store(
    store_path: str | Path,
    out: str | Path,
    config: CrosscoderConfig | None = None,
    train: TrainConfig | None = None,
    *,
    eval_batches: int = 8,
    progress: bool = True,
    force: bool = False,
    callback: Any = None,
    **config_overrides: Any,
) -> Crosscoder:
    """Train on the store's train split, evaluate on its eval split, save to ``out``.

    If ``out`` already holds a complete crosscoder trained with the same configs, it is
    loaded and returned (pass ``force=True`` to retrain). A different config in a complete
    ``out`` is an error rather than a silent overwrite. ``callback`` is passed to
    :func:`train_crosscoder`.
    """
    from crossdiff.store import ActivationStore

    store = ActivationStore.open(store_path)
    if store.n_rows == 0:
        raise CrossdiffError(f"store {store_path} has no rows; run crossdiff harvest first")
    config = config or crosscoder_config_for_store(store, **config_overrides)
    train = train or TrainConfig()
    out = Path(out)
    if is_complete(out) and not force:
        return _trained_before(out, config, train)
    source = store.source("train")
    t0 = time.perf_counter()
    cc = train_crosscoder(
        source,
        config,
        train,
        checkpoint_dir=out / CHECKPOINTS,
        progress=progress,
        callback=callback,
    )
    seconds = time.perf_counter() - t0
    from crossdiff.runtime import distributed

    if distributed.rank() != 0:
        return cc  # under torchrun: rank 0 evaluates and writes; the weights are identical
    _evaluate_and_save(cc, store, source, out, config, train, seconds, eval_batches, progress)
    return cc


def _trained_before(out: Path, config: CrosscoderConfig, train: TrainConfig) -> Crosscoder:
    """The crosscoder of a complete ``out``, if it was trained with these configs: a step
    because reusing a finished output must never hide a change of settings."""
    summary = load_summary(out).data
    if summary.get("train_config") != train.to_dict() or summary.get(
        "requested_config"
    ) != _comparable(config):
        raise CrossdiffError(
            f"{out} already holds a crosscoder trained with other settings; pass another "
            f"output folder, or force=True / --force to overwrite it"
        )
    return Crosscoder.from_pretrained(out, device="cpu")


def _evaluate_and_save(
    cc: Crosscoder,
    store: Any,
    source: Any,
    out: Path,
    config: CrosscoderConfig,
    train: TrainConfig,
    seconds: float,
    eval_batches: int,
    progress: bool,
) -> None:
    """Rank 0's end of training: metrics on the eval split, the weights, then
    train_summary.json (written last: its presence marks a complete output)."""
    from crossdiff.crosscoder.metrics import evaluate, lopsided_warnings

    try:
        eval_source, eval_split = store.source("eval"), "eval"
    except CrossdiffError:  # a store too small to hold any eval document
        eval_source, eval_split = source, "train (the eval split is empty)"
    metrics = evaluate(
        cc,
        eval_source,
        n_batches=eval_batches,
        batch_size=min(train.batch_size, 4096),
    )
    cc.save_pretrained(out)
    warnings = lopsided_warnings(
        metrics.get("loss_share_b"),
        metrics.get("dead_frac_a") if cc.partition.n_a else None,
        metrics.get("dead_frac_b") if cc.partition.n_b else None,
        normalization=train.normalization,
    )
    if progress:
        for w in warnings:
            print(f"warning: {w}")
    summary = {
        "metrics_eval": metrics,
        "normalization": train.normalization,
        "warnings": warnings,
        "metrics_split": eval_split,
        "train_seconds": seconds,
        "train_config": train.to_dict(),
        "requested_config": _comparable(config),
        "store": str(Path(store.path).resolve()),
        "store_rows": store.n_rows,
    }
    tmp = out / (SUMMARY_FILE + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(out / SUMMARY_FILE)


def _comparable(config: CrosscoderConfig) -> dict[str, Any]:
    """The config as requested (scales and centring are filled in by training, so left out)."""
    d = dataclasses.asdict(config)
    d.pop("scale_a")
    d.pop("scale_b")
    d.pop("centered", None)
    return json.loads(json.dumps(d))
