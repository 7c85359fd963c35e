"""The paper's two model pairs as ready-to-run ``crossdiff run`` configs, with their costs.

Jiralerspong & Bricken diff Llama-3.1-8B-Instruct against Qwen3-8B, and GPT-OSS-20B against
DeepSeek-R1-0528-Qwen3-8B (docs/METHOD.md §1). crossdiff ships one YAML run config per pair in
``crossdiff/data/published/`` (package data), found by name::

    crossdiff run --config llama31-8b-instruct-vs-qwen3-8b --out runs/llama-vs-qwen

Each file is an ordinary run config (merged over the ``default`` preset, like any ``--config``)
plus an ``about`` section that no stage reads: the facts about both models the choices rest on
(hub id, layer count, width, parameters) and an estimate of what the run costs (disk, GPU
memory, GPU hours). The estimate is written out in the file so a user can read it before
downloading 60 GB of weights; :func:`check_published` recomputes it here with the formulas of
:func:`estimate`, so a file edited by hand cannot drift from them unnoticed (a test runs it on
every shipped file, offline).

>>> from crossdiff.published import check_published, published_names
>>> from crossdiff.run import load_config
>>> for name in published_names():  # doctest: +SKIP
...     info = check_published(load_config(name))
...     print(name, info.estimate.disk_tb, "TB")
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossdiff.errors import CrossdiffError, reject_unknown_fields

if TYPE_CHECKING:
    from crossdiff.crosscoder.train_config import TrainConfig
    from crossdiff.run import RunConfig

PUBLISHED_PACKAGE = "crossdiff.data"
PUBLISHED_FOLDER = "published"
SUFFIX = ".yaml"

BF16_BYTES = 2
"""Bytes per stored activation value (the store is bf16) and per model weight (bf16)."""
TRAIN_BYTES_PER_PARAM = 16
"""fp32 weight + fp32 gradient + Adam's two fp32 moments, per crosscoder parameter."""
GIB = 2**30
TB = 1e12
REL_TOLERANCE = 0.02
"""Written-out estimates are rounded for reading; they must match the formulas within 2%."""


@dataclass
class ModelFacts:
    """What the config's choices for one model rest on (from the model's hub config.json)."""

    hub_id: str
    """The model's Hugging Face hub id; must equal the run config's model_a / model_b."""
    n_layers: int
    """num_hidden_layers: the layer index must lie in 0 .. n_layers - 1."""
    d_model: int
    """hidden_size: the width of the stored residual stream."""
    params_billion: float
    """All parameters (every expert of a mixture of experts), in billions: the bf16 weights
    the harvest holds in GPU memory."""
    active_params_per_layer_billion: float
    """Parameters one token passes through in one decoder layer (for a mixture of experts, only
    the routed experts), in billions: the harvest's compute per token and layer."""
    layer_reason: str
    """Why this layer: the paper's, or crossdiff's documented default where the paper is silent."""


@dataclass
class Estimate:
    """What one run of the config costs, by :func:`estimate`'s formulas (each field says which)."""

    rows: int
    """Aligned pairs harvested (harvest.tokens)."""
    activation_bytes: int
    """rows x (d_a + d_b) x 2 bytes: the bf16 activations on disk (the store's bulk)."""
    disk_tb: float
    """activation_bytes in TB (1e12 bytes); per-row provenance (44 bytes) and the documents'
    JSONL come on top (about 1%)."""
    harvest_gpu_memory_gib: float
    """At least both models' bf16 weights (params x 2 bytes), plus the activations of one batch
    of windows up to the harvested layer."""
    tokens_per_row: float
    """Tokens each model reads per stored pair (positions that do not pair, chat template
    tokens): an assumption, about 1.25 on crossdiff's own harvests."""
    effective_tflops: float
    """Sustained bf16 throughput assumed for the harvest's forward passes, in TFLOP/s."""
    harvest_gpu_hours_compute: float
    """Compute lower bound: rows x tokens_per_row x 2 x (the layers up to the harvested one x
    active params per layer), summed over both models, at effective_tflops. Real harvests spend
    more (tokenization and alignment on the CPU, padding, writing the store)."""
    harvest_gpu_hours_plan: float
    """What to plan for: the paper's cache took 3 H100 x ~24 h per pair (docs/METHOD.md §3)."""
    train_gpu_memory_gib: float
    """At least the crosscoder's parameters x 16 bytes (fp32 weight, gradient, two Adam
    moments), plus the batch's activations (measured: ~36 GiB in all at the published shape on
    an H100, BENCHMARKS.md)."""
    train_samples_per_second: float
    """Training throughput assumed: measured at the published shape on one H100 for widths
    4096/4096 (BENCHMARKS.md), scaled by 8192 / (d_a + d_b) for other widths."""
    train_gpu_hours: float
    """train.steps x train.batch_size / train_samples_per_second, in hours."""
    gpu: str
    """The GPU the numbers are for."""


@dataclass
class PublishedAbout:
    """The ``about`` section of a shipped config (no stage reads it; RUN/config.yaml keeps it)."""

    pair: str
    """The pair in words."""
    source: str
    """Where the pair and its settings come from."""
    corpus_note: str
    """How the config's corpus differs from the paper's, and how to get closer."""
    models: dict[str, ModelFacts]
    """'a' and 'b': the facts about each model."""
    estimate: Estimate
    """The cost of one run."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PublishedAbout:
        reject_unknown_fields(cls, data, "keys in the config's 'about' section", list_known=True)
        models = data.get("models") or {}
        if sorted(models) != ["a", "b"]:
            raise CrossdiffError(
                f"'about.models' must name models 'a' and 'b', got {sorted(models)}"
            )
        for side, facts in models.items():
            reject_unknown_fields(ModelFacts, facts, f"keys in about.models.{side}")
        reject_unknown_fields(Estimate, data.get("estimate") or {}, "keys in about.estimate")
        try:
            return cls(
                **{
                    **data,
                    "models": {side: ModelFacts(**facts) for side, facts in models.items()},
                    "estimate": Estimate(**data["estimate"]),
                }
            )
        except (TypeError, KeyError) as exc:
            raise CrossdiffError(f"the config's 'about' section is incomplete: {exc}") from None


# ---- where the files are -------------------------------------------------------------------
def _folder() -> Any:
    return files(PUBLISHED_PACKAGE).joinpath(PUBLISHED_FOLDER)


def published_names() -> list[str]:
    """Names of the shipped run configs (the file names without ``.yaml``), sorted."""
    return sorted(
        entry.name.removesuffix(SUFFIX)
        for entry in _folder().iterdir()
        if entry.name.endswith(SUFFIX)
    )


def published_path(name: str) -> Path:
    """The file of shipped config ``name``; a CrossdiffError listing the names if unknown."""
    if name not in published_names():
        raise CrossdiffError(
            f"config file {name} does not exist, and it is not a shipped config either "
            f"(shipped: {', '.join(published_names())}); pass a YAML file or one of those names"
        )
    return Path(str(_folder().joinpath(name + SUFFIX)))


# ---- the formulas --------------------------------------------------------------------------
def crosscoder_params(d_a: int, d_b: int, n_features: int, exclusive: float) -> int:
    """Parameters of a DFC with fraction ``exclusive`` of the features exclusive to each model.

    Exclusivity by construction: model m's encoder columns and decoder rows exist only for its
    exclusive and the shared features, so each model holds 2 x (n_excl + n_shared) x d_m
    weights; plus the encoder bias (F) and both decoder biases.
    """
    from crossdiff.crosscoder.config import CrosscoderConfig

    cfg = CrosscoderConfig.dfc(d_a, d_b, n_features, exclusive=exclusive)
    reads_a = cfg.n_exclusive_a + cfg.n_shared
    reads_b = cfg.n_exclusive_b + cfg.n_shared
    return 2 * (reads_a * d_a + reads_b * d_b) + n_features + d_a + d_b


def estimate(
    a: ModelFacts,
    b: ModelFacts,
    layer_a: int,
    layer_b: int,
    *,
    rows: int,
    n_features: int,
    exclusive: float,
    steps: int,
    batch_size: int,
    tokens_per_row: float,
    effective_tflops: float,
    reference_samples_per_second: float,
) -> dict[str, float]:
    """The estimate's computed fields (see :class:`Estimate` for each formula), unrounded."""
    activation_bytes = rows * (a.d_model + b.d_model) * BF16_BYTES
    flops_per_row = (
        tokens_per_row
        * 2
        * 1e9
        * (
            (layer_a + 1) * a.active_params_per_layer_billion
            + (layer_b + 1) * b.active_params_per_layer_billion
        )
    )
    weights = (a.params_billion + b.params_billion) * 1e9 * BF16_BYTES
    rate = reference_samples_per_second * 8192 / (a.d_model + b.d_model)
    params = crosscoder_params(a.d_model, b.d_model, n_features, exclusive)
    return {
        "activation_bytes": activation_bytes,
        "disk_tb": activation_bytes / TB,
        "harvest_gpu_memory_gib": weights / GIB,  # lower bound
        "harvest_gpu_hours_compute": rows * flops_per_row / (effective_tflops * 1e12) / 3600,
        "train_gpu_memory_gib": params * TRAIN_BYTES_PER_PARAM / GIB,  # lower bound
        "train_samples_per_second": rate,
        "train_gpu_hours": steps * batch_size / rate / 3600,
    }


REFERENCE_SAMPLES_PER_SECOND = 10_226.0
"""Our training loop at the published shape (F 131,072, widths 4096/4096, k 200, batch 2048,
bf16) on one H100 (BENCHMARKS.md, before the batch top-k rewrite): the rate the estimates use."""

LOWER_BOUNDS = ("harvest_gpu_memory_gib", "train_gpu_memory_gib")
"""Estimate fields whose formula is a floor: the written value may be larger (overheads)."""


# ---- validation ----------------------------------------------------------------------------
def _close(written: float, computed: float) -> bool:
    return math.isclose(written, computed, rel_tol=REL_TOLERANCE)


def check_published(cfg: RunConfig) -> PublishedAbout:
    """Check a shipped config against its ``about`` section and every stage's config; offline.

    Checks: the model ids are the hub ids of ``about.models``; both layers lie within the layer
    counts written there; every stage section builds that stage's config (unknown keys are
    errors); the harvest and training sizes are the ones the estimate is for; and every number
    of the estimate matches :func:`estimate` (floors may be exceeded). Returns the parsed
    ``about`` section; raises a CrossdiffError naming the first mismatch.
    """
    from crossdiff.models.layers import resolve_layer

    about = PublishedAbout.from_dict(cfg.about)
    a, b = about.models["a"], about.models["b"]
    for side, model_id, facts in (("a", cfg.model_a, a), ("b", cfg.model_b, b)):
        if model_id != facts.hub_id:
            raise CrossdiffError(
                f"model_{side} is {model_id!r} but about.models.{side}.hub_id is "
                f"{facts.hub_id!r}; make them the same"
            )
    layer_a = resolve_layer(cfg.layer_a, a.n_layers, a.hub_id)
    layer_b = resolve_layer(cfg.layer_b, b.n_layers, b.hub_id)
    train, n_features, exclusive = _check_stage_configs(cfg, a, b)
    est = about.estimate
    if cfg.harvest.get("tokens") != est.rows:
        raise CrossdiffError(
            f"harvest.tokens is {cfg.harvest.get('tokens')} but the estimate is for "
            f"{est.rows} rows; make them the same"
        )
    computed = estimate(
        a,
        b,
        layer_a,
        layer_b,
        rows=est.rows,
        n_features=n_features,
        exclusive=exclusive,
        steps=train.steps,
        batch_size=train.batch_size,
        tokens_per_row=est.tokens_per_row,
        effective_tflops=est.effective_tflops,
        reference_samples_per_second=REFERENCE_SAMPLES_PER_SECOND,
    )
    _check_estimate(est, computed)
    return about


def _check_stage_configs(
    cfg: RunConfig, a: ModelFacts, b: ModelFacts
) -> tuple[TrainConfig, int, float]:
    """Every stage section builds its stage's config (unknown keys are errors); returns the
    train config and the crosscoder's size, which the estimate is computed for. A step because
    it checks the config file against the code, not against the ``about`` section."""
    from crossdiff.analysis import AnalysisConfig
    from crossdiff.crosscoder.config import CrosscoderConfig
    from crossdiff.crosscoder.train_config import TrainConfig
    from crossdiff.harvest import HarvestConfig

    cc_keys = {k for k in cfg.crosscoder if k not in ("expansion", "exclusive")}
    for section, cls, keys in (
        ("harvest", HarvestConfig, set(cfg.harvest)),
        ("crosscoder", CrosscoderConfig, cc_keys),
        ("train", TrainConfig, set(cfg.train)),
        ("analysis", AnalysisConfig, set(cfg.analysis)),
    ):
        reject_unknown_fields(cls, dict.fromkeys(keys), f"keys in the '{section}' section")
    HarvestConfig(
        model_a=cfg.model_a,
        model_b=cfg.model_b,
        corpus=cfg.corpus,
        out="unused",
        layer_a=cfg.layer_a,
        layer_b=cfg.layer_b,
        **cfg.harvest,
    )
    train = TrainConfig(**cfg.train)
    cc = dict(cfg.crosscoder)
    cc.pop("expansion", None)
    exclusive = float(cc.pop("exclusive", 0.05))
    n_features = int(cc.pop("n_features", 32 * max(a.d_model, b.d_model)))
    CrosscoderConfig.dfc(a.d_model, b.d_model, n_features, exclusive=exclusive, **cc)
    AnalysisConfig(**cfg.analysis)
    return train, n_features, exclusive


def _check_estimate(est: Estimate, computed: dict[str, float]) -> None:
    """Every written number of ``about.estimate`` against its formula (``computed``, from
    :func:`estimate`): exact for the bytes, within REL_TOLERANCE otherwise, floors may be
    exceeded; the planned harvest hours may not fall below its compute bound."""
    if est.activation_bytes != computed["activation_bytes"]:
        raise CrossdiffError(
            f"about.estimate.activation_bytes is {est.activation_bytes} but rows x (d_a + d_b) "
            f"x 2 is {computed['activation_bytes']}"
        )
    for name, value in computed.items():
        written = float(getattr(est, name))
        floor = name in LOWER_BOUNDS
        if (floor and written < value * (1 - REL_TOLERANCE)) or (
            not floor and not _close(written, value)
        ):
            relation = "at least" if floor else "about"
            raise CrossdiffError(
                f"about.estimate.{name} is {written} but its formula gives {relation} "
                f"{value:.4g} (crossdiff.published.estimate); write the computed value"
            )
    if est.harvest_gpu_hours_plan < est.harvest_gpu_hours_compute:
        raise CrossdiffError(
            f"about.estimate.harvest_gpu_hours_plan ({est.harvest_gpu_hours_plan}) is below "
            f"the compute lower bound ({est.harvest_gpu_hours_compute})"
        )
