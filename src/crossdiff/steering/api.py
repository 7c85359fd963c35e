"""``crossdiff.steer``: turn one feature up or down while a model generates (docs/METHOD.md §5).

Flow: open the run (crosscoder, store manifest, s_max), decide which model(s) to steer, build
each model's steering direction (its decoder row in raw scale, or for the cross-model check the
push-forward of the source's row through a fitted linear map), generate every (prompt, alpha)
row in batched ``generate`` calls with per-row steering (random null features of the same class
in the same calls, when asked; :mod:`.sweep`), measure every generation's coherence with the
unsteered model, score the generations (the given rule, else the feature's explanation's top
terms when ``crossdiff interpret`` ran), compute the evidence and verdict (:mod:`.evidence`),
save ``RUN/steering/feature-<i>.json``. Models are loaded one at a time and released after use,
so steering both 8B models of a pair needs the memory of one. The settings of a call are one
:class:`~crossdiff.steering.config.SteerConfig`.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from crossdiff.errors import CrossdiffError
from crossdiff.steering.config import (
    CROSS_NORMS,
    DEFAULT_ALPHAS,
    MODEL_CHOICES,
    MODES,
    SteerConfig,
    check_alphas,
)
from crossdiff.steering.context import RunContext
from crossdiff.steering.evidence import (
    coherence_rule,
    evaluate_result,
    explanation_scorer,
    pick_nulls,
)
from crossdiff.steering.generation import Prompt
from crossdiff.steering.result import ModelSteering, SteeringResult, plot_path, result_path
from crossdiff.steering.scoring import make_scorer, rates
from crossdiff.steering.stitch import LinearMap, load_or_fit_map
from crossdiff.steering.sweep import Sweep, steer_model, steering_fn

if TYPE_CHECKING:
    from crossdiff.models import LoadedModel

__all__ = [  # the names other modules import from here (DEFAULT_ALPHAS and the choices too)
    "CROSS_NORMS",
    "DEFAULT_ALPHAS",
    "MODEL_CHOICES",
    "MODES",
    "SteerConfig",
    "plan_models",
    "plot_path",
    "result_path",
    "save_result",
    "score_result",
    "steer",
    "steering_fn",
]

Plan = list[tuple[str, str]]
"""[(side, direction)] to steer, direction "decoder" or "mapped from <side>" (plan_models)."""


def other(side: str) -> str:
    return "b" if side == "a" else "a"


def plan_models(partition, feature: int, model: str, cross_model: bool) -> Plan:
    """[(side, direction)] to steer: direction "decoder" or "mapped from <side>".

    An exclusive feature is steered in its own model; asking for the other model is an error
    that points at the cross-model check. A shared feature: "auto" and "both" steer both,
    "a"/"b" one. ``cross_model`` steers the source (the feature's own model, or ``model`` for a
    shared feature, A by default) and the other model with the mapped direction.
    """
    key = str(model).lower()
    if key not in MODEL_CHOICES:
        raise CrossdiffError(f"model {model!r} is not one of {', '.join(MODEL_CHOICES)}")
    label = partition.label(feature)
    own = "a" if label == "A-exclusive" else "b" if label == "B-exclusive" else None
    if cross_model:
        if own is not None:
            source = own
        else:
            source = key if key in ("a", "b") else "a"
        return [(source, "decoder"), (other(source), f"mapped from {source}")]
    if own is not None:
        if key in ("auto", own):
            return [(own, "decoder")]
        o = other(own).upper()
        raise CrossdiffError(
            f"feature {feature} is {label}: it reads and writes only model {own.upper()}, so it "
            f"has no decoder direction in model {o} and cannot be steered there (model={model!r}). "
            f"To test whether model {o} has the concept anyway, run the cross-model check: "
            f"`crossdiff steer RUN --feature {feature} --cross-model` (API: "
            f"steer(..., cross_model=True)); it maps the feature's direction into model {o} with "
            f"a linear map fitted on the store's paired activations and steers both models."
        )
    if key in ("auto", "both"):
        return [("a", "decoder"), ("b", "decoder")]
    return [(key, "decoder")]


def _check_prompts(prompts: Sequence[Prompt] | str) -> list[Prompt]:
    if isinstance(prompts, str):
        prompts = [prompts]
    out = list(prompts)
    if not out:
        raise CrossdiffError("give at least one prompt (--prompt TEXT or --prompts FILE)")
    for i, p in enumerate(out):
        if isinstance(p, str):
            if not p.strip():
                raise CrossdiffError(f"prompt {i} is empty")
        elif not (isinstance(p, list) and p and all(isinstance(m, dict) for m in p)):
            raise CrossdiffError(
                f"prompt {i} must be a string or a list of chat messages, got {type(p).__name__}"
            )
    return out


def _check_feature(feature: object, n_features: int) -> int:
    if isinstance(feature, bool) or not isinstance(feature, (int, str)):
        raise CrossdiffError(f"feature must be an integer index, got {feature!r}")
    try:
        index = int(feature)
    except ValueError as error:
        raise CrossdiffError(f"feature must be an integer index, got {feature!r}") from error
    if not 0 <= index < n_features:
        raise CrossdiffError(
            f"feature {index} out of range: the crosscoder has {n_features} features "
            f"(0-{n_features - 1})"
        )
    return index


def _klass(label: str) -> str:
    return {"A-exclusive": "A", "B-exclusive": "B"}.get(label, "S")


def _release(lm: LoadedModel) -> None:
    device = lm.device
    del lm
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def steer(
    run: str | Path,
    feature: int,
    config: SteerConfig | None = None,
    *,
    prompts: Sequence[Prompt] | str,
    loaded_models: Mapping[str, LoadedModel] | None = None,
    save: bool = True,
    progress: bool = False,
    **settings: Any,
) -> SteeringResult:
    """Steer feature ``feature`` of run ``run`` while the model(s) answer ``prompts``.

    ``config`` holds every setting (:class:`SteerConfig`: alphas, mode, models, decoding,
    nulls, scoring, the cross-model map); ``settings`` are SteerConfig fields by name, applied
    over it, for the short form ``steer(run, 17, prompts=[...], alphas=[-4, 0, 4])``.

    Add mode (default) adds ``alpha x s_max x d`` to the residual stream at the crosscoder's
    layer, at every position (``d``: the feature's decoder row in the model's own scale); clamp
    mode sets the feature's activation to ``alpha x s_max`` (or to the absolute
    ``clamp_value``\\ s) at every position. ``loaded_models`` passes already loaded models
    ({"a": lm}) instead of loading them from the run's manifest. With ``save`` the result goes
    to ``RUN/steering/feature-<i>.json`` (and a score plot beside it).
    """
    cfg = (config or SteerConfig()).replace(**settings)
    prompt_list = _check_prompts(prompts)
    scorer = (
        make_scorer(
            cfg.score,
            judge_url=cfg.judge_url,
            judge_model=cfg.judge_model,
            api_key_env=cfg.judge_key_env,
        )
        if cfg.score is not None
        else None
    )
    ctx = RunContext.open(run, model_specs=dict(cfg.model_specs or {}))
    cc = ctx.crosscoder
    index = _check_feature(feature, cc.config.n_features)
    plan = plan_models(cc.partition, index, cfg.model, cfg.cross_model)
    notes: list[str] = []
    value, source = _feature_s_max(ctx, index, cfg.s_max, notes, progress)
    sweep = _sweep(cfg, index, value, prompt_list)
    directions, lmap, cross_info = _directions(ctx, index, plan, cfg, notes, progress)
    null_vectors, null_settings = _null_vectors(ctx, index, plan, lmap, cfg, sweep.mode, notes)
    if scorer is None and cfg.explanation_score:
        scorer = explanation_scorer(ctx.paths.root, index)
        if scorer is not None:
            notes.append(f"scored with the feature's explanation's top terms ({scorer.name})")
    models = _steer_models(ctx, plan, directions, null_vectors, sweep, cfg, loaded_models, progress)
    result = _result(ctx, sweep, models, source, cfg, cross_info, notes, null_settings)
    if scorer is not None:
        score_result(result, scorer)
    else:
        evaluate_result(result)
    if save:
        save_result(result, ctx.paths.steering)
    return result


def _feature_s_max(
    ctx: RunContext, index: int, given: float | None, notes: list[str], progress: bool
) -> tuple[float, str]:
    """The feature's s_max (given, or from the analysis table, the cache or the store) and
    where it came from; a dead feature is an error, since alpha x s_max x d would be zero."""
    if given is not None:
        value, source, dead = float(given), "given", False
    else:
        value, source, dead = ctx.s_max(index, progress=progress)
    if value <= 0:
        raise CrossdiffError(
            f"feature {index} is dead: its largest activation on the store is {value:g} "
            f"(s_max, from {source}), so alpha x s_max x d is zero and steering would change "
            "nothing. Pick a live feature (the analysis table lists s_max per feature), or pass "
            "s_max=... (--s-max) to steer its direction at a scale you choose."
        )
    if dead:
        notes.append(f"the analysis marks feature {index} as dead (s_max {value:g} nonetheless)")
    return value, source


def _sweep(cfg: SteerConfig, index: int, s_max: float, prompts: list[Prompt]) -> Sweep:
    """The grid every model is steered over: absolute clamp values turn into alphas (and
    clamp mode), clamp-mode alphas into clamp values."""
    mode = cfg.mode
    clamp_values = cfg.clamp_values()
    if clamp_values is not None:
        mode = "clamp"
        alphas = [v / s_max for v in clamp_values]
    else:
        alphas = check_alphas(cfg.alphas)
        if mode == "clamp":
            clamp_values = [a * s_max for a in alphas]
    return Sweep(
        index,
        s_max,
        mode,
        alphas,
        clamp_values,
        prompts,
        cfg.generation(),
        cfg.batch_size,
        cfg.batched,
    )


def _directions(
    ctx: RunContext, index: int, plan: Plan, cfg: SteerConfig, notes: list[str], progress: bool
) -> tuple[dict[str, torch.Tensor], LinearMap | None, dict[str, Any] | None]:
    """Each steered model's direction in raw scale: the feature's decoder row, and for the
    cross-model check its image in the other model (with the map and what it retained)."""
    cc = ctx.crosscoder
    raw_decoders = {m: cc.decoder_weight(m, raw_scale=True)[index].detach().float() for m in "ab"}
    directions: dict[str, torch.Tensor] = {}
    for side, direction in plan:
        if direction == "decoder":
            directions[side] = raw_decoders[side]
    if not cfg.cross_model:
        return directions, None, None
    src, tgt = plan[0][0], plan[1][0]
    lmap, cached = load_or_fit_map(
        ctx.store(),
        ctx.paths.steering,
        src,
        ridge=cfg.map_ridge,
        max_rows=cfg.map_rows,
        max_norm_ratio=cfg.map_max_norm_ratio,
        refit=cfg.refit_map,
        progress=progress,
    )
    directions[tgt], cross_info = _mapped_direction(
        ctx, index, lmap, src, tgt, directions[src], cfg.cross_norm
    )
    cross_info = {**lmap.settings(), "cached": cached, **cross_info}
    med_s, med_t = ctx.sides[src].median_norm, ctx.sides[tgt].median_norm
    if med_s is None or med_t is None:
        notes.append("the store has no norm statistics; relative norms use 1.0")
    return directions, lmap, cross_info


def _mapped_direction(
    ctx: RunContext,
    index: int,
    lmap: LinearMap,
    src: str,
    tgt: str,
    vector: torch.Tensor,
    cross_norm: str,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """The source direction pushed through the map into model ``tgt``: as long, relative to
    the target's median norm, as the source's ("relative"), or as mapped ("map"); with the
    share of relative length the map retained."""
    pushed = lmap.push_forward(vector)
    med_s, med_t = ctx.sides[src].median_norm, ctx.sides[tgt].median_norm
    rel_src = float(vector.norm()) / (med_s or 1.0)
    rel_tgt = float(pushed.norm()) / (med_t or 1.0)
    retained = rel_tgt / rel_src if rel_src > 0 else float("nan")
    if cross_norm == "relative" and float(pushed.norm()) > 0:
        mapped = pushed * (rel_src * (med_t or 1.0) / float(pushed.norm()))
    else:
        mapped = pushed
    if float(mapped.norm()) == 0:
        raise CrossdiffError(
            f"the linear map sends feature {index}'s direction to zero in model "
            f"{tgt.upper()}; the map cannot transfer it"
        )
    info = {
        "norm": cross_norm,
        "retained": retained,
        "pushed_norm": float(pushed.norm()),
        "source_median_norm": med_s,
        "target_median_norm": med_t,
    }
    return mapped, info


def _null_vectors(
    ctx: RunContext,
    index: int,
    plan: Plan,
    lmap: LinearMap | None,
    cfg: SteerConfig,
    mode: str,
    notes: list[str],
) -> tuple[dict[str, list[tuple[int, torch.Tensor]]], dict[str, Any] | None]:
    """The random null features' directions in each steered model (drawn from the feature's
    class, mapped like the feature for the cross-model side) and how they were drawn."""
    null_vectors: dict[str, list[tuple[int, torch.Tensor]]] = {side: [] for side, _ in plan}
    if cfg.nulls and mode != "add":
        notes.append("null features are swept in add mode only; none in clamp mode")
        return null_vectors, None
    if not cfg.nulls:
        return null_vectors, None
    cc = ctx.crosscoder
    chosen, null_note = pick_nulls(ctx.paths.root, index, cfg.nulls, cfg.null_seed)
    if null_note:
        notes.append(null_note)
    all_dec = {m: cc.decoder_weight(m, raw_scale=True).detach().float() for m in "ab"}
    for side, direction in plan:
        if direction != "decoder" and not cfg.cross_nulls:
            continue
        for j in chosen:
            if direction == "decoder":
                vec = all_dec[side][j]
            else:
                assert lmap is not None
                vec = lmap.push_forward(all_dec[plan[0][0]][j])
            if float(vec.norm()) > 0:
                null_vectors[side].append((j, vec))
    null_settings = {
        "requested": cfg.nulls,
        "seed": cfg.null_seed,
        "features": chosen,
        "pool": f"alive features of class {_klass(cc.partition.label(index))} "
        "(analysis table), not the feature itself",
        "norm": "each null's added vector has the feature's norm at every alpha",
        "cross_model": cfg.cross_nulls,
    }
    return null_vectors, null_settings


def _steer_models(
    ctx: RunContext,
    plan: Plan,
    directions: dict[str, torch.Tensor],
    null_vectors: dict[str, list[tuple[int, torch.Tensor]]],
    sweep: Sweep,
    cfg: SteerConfig,
    loaded_models: Mapping[str, LoadedModel] | None,
    progress: bool,
) -> list[ModelSteering]:
    """Every planned model's sweep, one model in memory at a time: a model this call loaded
    is released before the next loads (the caller's ``loaded_models`` are kept)."""
    from crossdiff.models import load_model

    results: list[ModelSteering] = []
    for side, direction in plan:
        own = loaded_models is not None and side in loaded_models
        if own:
            lm = loaded_models[side]  # type: ignore[index]
        else:
            lm = load_model(ctx.sides[side].load_spec(), dtype=cfg.dtype, device=cfg.device)
        try:
            model_result = steer_model(
                lm,
                ctx,
                side,
                direction,
                directions[side],
                sweep,
                null_vectors=null_vectors.get(side, []),
                progress=progress,
            )
        finally:
            if not own:
                _release(lm)
        results.append(model_result)
    return results


def _result(
    ctx: RunContext,
    sweep: Sweep,
    models: list[ModelSteering],
    s_max_source: str,
    cfg: SteerConfig,
    cross_info: dict[str, Any] | None,
    notes: list[str],
    null_settings: dict[str, Any] | None,
) -> SteeringResult:
    """The call's result before scoring, with the settings that shaped its generations."""
    settings = sweep.settings
    return SteeringResult(
        run=str(ctx.paths.root),
        feature=sweep.feature,
        partition=ctx.crosscoder.partition.label(sweep.feature),
        s_max=sweep.s_max,
        s_max_source=s_max_source,
        mode=sweep.mode,
        alphas=sweep.alphas,
        prompts=sweep.prompts,
        models=models,
        settings={
            "max_new_tokens": settings.max_new_tokens,
            "do_sample": settings.do_sample,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "seed": settings.seed,
            "chat": settings.chat,
            "batch_size": cfg.batch_size,
            "dtype": cfg.dtype,
            "device": cfg.device,
        },
        clamp_values=sweep.clamp_values,
        cross_model=cross_info,
        notes=notes,
        created=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        coherence_rule=coherence_rule(),
        null_settings=null_settings,
    )


def score_result(result: SteeringResult, scorer) -> SteeringResult:
    """Fill in per-alpha rates and per-(prompt, alpha) scores for every model (in place)."""
    scorer = make_scorer(scorer)
    texts = [p if isinstance(p, str) else p[-1]["content"] for p in result.prompts]
    for m in result.models:
        m.rates, m.scores = rates(scorer, texts, m.generations)
        for null in m.nulls or []:
            null["rates"], null["scores"] = rates(scorer, texts, null["generations"])
    result.scorer = scorer.name
    return evaluate_result(result)


def save_result(result: SteeringResult, steering_dir: str | Path) -> Path:
    """Write the result JSON (and the score plot, when scored) into ``steering_dir``."""
    steering_dir = Path(steering_dir)
    svg = result.plot_svg()
    if svg is not None:
        path = plot_path(steering_dir, result.feature)
        steering_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(svg, encoding="utf-8")
        result.plot_path = path
    return result.save(result_path(steering_dir, result.feature))
