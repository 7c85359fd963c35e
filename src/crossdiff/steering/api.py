"""``crossdiff.steer``: turn one feature up or down while a model generates (docs/METHOD.md §5).

Flow: open the run (crosscoder, store manifest, s_max), decide which model(s) to steer, build
each model's steering direction (its decoder row in raw scale, or for the cross-model check the
push-forward of the source's row through a fitted linear map), generate every (prompt, alpha)
row in batched ``generate`` calls with per-row steering (random null features of the same class
in the same calls, when asked), measure every generation's coherence with the unsteered model,
score the generations (the given rule, else the feature's explanation's top terms when
``crossdiff interpret`` ran), compute the evidence and verdict (:mod:`.evidence`), save
``RUN/steering/feature-<i>.json``. Models are loaded one at a time and released after use, so
steering both 8B models of a pair needs the memory of one.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from crossdiff.errors import CrossdiffError
from crossdiff.steering.activation import FeatureReader
from crossdiff.steering.context import RunContext
from crossdiff.steering.evidence import (
    coherence_rule,
    evaluate_result,
    explanation_scorer,
    measure,
    pick_nulls,
)
from crossdiff.steering.generation import (
    GenerationSettings,
    Prompt,
    generate_rows,
    prompt_ids,
)
from crossdiff.steering.hooks import add_fn, add_rows_fn, clamp_fn
from crossdiff.steering.result import ModelSteering, SteeringResult
from crossdiff.steering.scoring import DEFAULT_KEY_ENV, make_scorer, rates
from crossdiff.steering.stitch import (
    DEFAULT_MAX_NORM_RATIO,
    DEFAULT_MAX_ROWS,
    DEFAULT_RIDGE,
    load_or_fit_map,
)

if TYPE_CHECKING:
    from crossdiff.models import LoadedModel

DEFAULT_ALPHAS: tuple[float, ...] = (-4.0, -2.0, 0.0, 2.0, 4.0)
MODEL_CHOICES = ("auto", "a", "b", "both")
MODES = ("add", "clamp")
CROSS_NORMS = ("relative", "map")


def other(side: str) -> str:
    return "b" if side == "a" else "a"


def plan_models(partition, feature: int, model: str, cross_model: bool) -> list[tuple[str, str]]:
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


def _check_alphas(alphas: Sequence[float]) -> list[float]:
    try:
        values = [float(a) for a in alphas]
    except (TypeError, ValueError) as error:
        raise CrossdiffError(f"alphas must be numbers, got {alphas!r}") from error
    if not values:
        raise CrossdiffError("give at least one alpha, e.g. alphas=[-4, -2, 0, 2, 4]")
    bad = [a for a in values if not math.isfinite(a)]
    if bad:
        raise CrossdiffError(f"alphas must be finite numbers, got {bad}")
    return values


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


def _rendering(lm: LoadedModel, chat: bool) -> str:
    if not chat:
        return "plain text"
    return "chat template" if lm.has_chat_template else "plain chat rendering (no template)"


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
    *,
    prompts: Sequence[Prompt] | str,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    model: str = "auto",
    mode: str = "add",
    clamp_value: float | Sequence[float] | None = None,
    cross_model: bool = False,
    cross_norm: str = "relative",
    max_new_tokens: int = GenerationSettings.max_new_tokens,
    do_sample: bool = GenerationSettings.do_sample,
    temperature: float = GenerationSettings.temperature,
    top_p: float = GenerationSettings.top_p,
    seed: int = GenerationSettings.seed,
    chat: bool = GenerationSettings.chat,
    batch_size: int = 32,
    batched: bool = True,
    s_max: float | None = None,
    score: str | Callable[[str, str], Any] | None = None,
    explanation_score: bool = True,
    nulls: int = 0,
    null_seed: int = 0,
    judge_url: str | None = None,
    judge_model: str | None = None,
    judge_key_env: str = DEFAULT_KEY_ENV,
    map_ridge: float = DEFAULT_RIDGE,
    map_rows: int | None = DEFAULT_MAX_ROWS,
    map_max_norm_ratio: float | None = DEFAULT_MAX_NORM_RATIO,
    refit_map: bool = False,
    model_specs: Mapping[str, str] | None = None,
    loaded_models: Mapping[str, LoadedModel] | None = None,
    dtype: str = "auto",
    device: str = "auto",
    save: bool = True,
    progress: bool = False,
) -> SteeringResult:
    """Steer feature ``feature`` of run ``run`` while the model(s) answer ``prompts``.

    Add mode (default) adds ``alpha x s_max x d`` to the residual stream at the crosscoder's
    layer, at every position (``d``: the feature's decoder row in the model's own scale); clamp
    mode sets the feature's activation to ``alpha x s_max`` (or to the absolute
    ``clamp_value``\\ s) at every position. ``model``: "auto" (the feature's own model, both for a
    shared feature), "a", "b" or "both". ``cross_model``: also steer the other model with the
    direction mapped through a linear map fitted on the store (the exclusivity test).
    ``score``: a rule (``regex:P``, ``keywords:a,b``, ``judge:CRITERION`` with ``judge_url`` and
    ``judge_model``) or a callable ``(prompt, generation) -> score``. ``loaded_models`` passes
    already loaded models ({"a": lm}) instead of loading them from the run's manifest. With
    ``save`` the result goes to ``RUN/steering/feature-<i>.json`` (and a score plot beside it).
    Without ``score``, ``explanation_score`` scores with the feature's explanation's top terms
    (a keyword rule) when ``crossdiff interpret`` has explained it. ``nulls``: also sweep that
    many random alive features of the same class (add mode; seeded by ``null_seed`` and the
    feature), each pushed with the feature's added-vector norm, for the verdict
    (docs/steering.md "Evidence").
    """
    if mode not in MODES:
        raise CrossdiffError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    if cross_norm not in CROSS_NORMS:
        raise CrossdiffError(f"cross_norm {cross_norm!r} is not one of {', '.join(CROSS_NORMS)}")
    prompt_list = _check_prompts(prompts)
    settings = GenerationSettings(max_new_tokens, do_sample, temperature, top_p, seed, chat)
    settings.validate()
    scorer = (
        make_scorer(score, judge_url=judge_url, judge_model=judge_model, api_key_env=judge_key_env)
        if score is not None
        else None
    )
    if isinstance(nulls, bool) or not isinstance(nulls, int) or nulls < 0:
        raise CrossdiffError(f"nulls must be a whole number >= 0, got {nulls!r}")

    ctx = RunContext.open(run, model_specs=dict(model_specs or {}))
    cc = ctx.crosscoder
    index = _check_feature(feature, cc.config.n_features)
    plan = plan_models(cc.partition, index, model, cross_model)
    if mode == "clamp" and cross_model:
        raise CrossdiffError(
            "clamp mode needs the crosscoder's encoder in the steered model, and a mapped "
            "direction has none; use mode='add' for the cross-model check"
        )

    # ---- s_max and the settings grid -------------------------------------------------------
    notes: list[str] = []
    if s_max is not None:
        if not (math.isfinite(float(s_max)) and float(s_max) > 0):
            raise CrossdiffError(f"s_max must be a positive number, got {s_max}")
        value, source, dead = float(s_max), "given", False
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
    clamp_values: list[float] | None = None
    if clamp_value is not None:
        raw = [clamp_value] if isinstance(clamp_value, (int, float)) else list(clamp_value)
        clamp_values = _check_alphas(raw)
        mode = "clamp"
        alpha_list = [v / value for v in clamp_values]
    else:
        alpha_list = _check_alphas(alphas)
        if mode == "clamp":
            clamp_values = [a * value for a in alpha_list]

    # ---- directions --------------------------------------------------------------------------
    raw_decoders = {m: cc.decoder_weight(m, raw_scale=True)[index].detach().float() for m in "ab"}
    directions: dict[str, torch.Tensor] = {}
    cross_info: dict[str, Any] | None = None
    for side, direction in plan:
        if direction == "decoder":
            directions[side] = raw_decoders[side]
    lmap = None
    if cross_model:
        src, tgt = plan[0][0], plan[1][0]
        lmap, cached = load_or_fit_map(
            ctx.store(),
            ctx.paths.steering,
            src,
            ridge=map_ridge,
            max_rows=map_rows,
            max_norm_ratio=map_max_norm_ratio,
            refit=refit_map,
            progress=progress,
        )
        pushed = lmap.push_forward(directions[src])
        med_s, med_t = ctx.sides[src].median_norm, ctx.sides[tgt].median_norm
        rel_src = float(directions[src].norm()) / (med_s or 1.0)
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
        directions[tgt] = mapped
        cross_info = {
            **lmap.settings(),
            "cached": cached,
            "norm": cross_norm,
            "retained": retained,
            "pushed_norm": float(pushed.norm()),
            "source_median_norm": med_s,
            "target_median_norm": med_t,
        }
        if med_s is None or med_t is None:
            notes.append("the store has no norm statistics; relative norms use 1.0")

    # ---- null features and the default scorer ------------------------------------------------
    null_vectors: dict[str, list[tuple[int, torch.Tensor]]] = {side: [] for side, _ in plan}
    null_settings: dict[str, Any] | None = None
    if nulls and mode != "add":
        notes.append("null features are swept in add mode only; none in clamp mode")
    elif nulls:
        chosen, null_note = pick_nulls(ctx.paths.root, index, nulls, null_seed)
        if null_note:
            notes.append(null_note)
        all_dec = {m: cc.decoder_weight(m, raw_scale=True).detach().float() for m in "ab"}
        for side, direction in plan:
            for j in chosen:
                if direction == "decoder":
                    vec = all_dec[side][j]
                else:
                    assert lmap is not None
                    vec = lmap.push_forward(all_dec[plan[0][0]][j])
                if float(vec.norm()) > 0:
                    null_vectors[side].append((j, vec))
        null_settings = {
            "requested": nulls,
            "seed": null_seed,
            "features": chosen,
            "pool": f"alive features of class {_klass(cc.partition.label(index))} "
            "(analysis table), not the feature itself",
            "norm": "each null's added vector has the feature's norm at every alpha",
        }
    if scorer is None and explanation_score:
        scorer = explanation_scorer(ctx.paths.root, index)
        if scorer is not None:
            notes.append(f"scored with the feature's explanation's top terms ({scorer.name})")

    # ---- generate, model by model -------------------------------------------------------------
    from crossdiff.models import load_model

    rows = [(p, a) for p in range(len(prompt_list)) for a in range(len(alpha_list))]
    results: list[ModelSteering] = []
    for side, direction in plan:
        info = ctx.sides[side]
        own = loaded_models is not None and side in loaded_models
        if own:
            lm = loaded_models[side]  # type: ignore[index]
        else:
            lm = load_model(info.load_spec(), dtype=dtype, device=device)
        try:
            model_result = _steer_one(
                lm,
                ctx,
                side,
                direction,
                directions[side],
                index,
                value,
                mode,
                alpha_list,
                clamp_values,
                prompt_list,
                rows,
                settings,
                null_vectors=null_vectors.get(side, []),
                batch_size=batch_size,
                batched=batched,
                progress=progress,
            )
        finally:
            if not own:
                _release(lm)
        results.append(model_result)

    result = SteeringResult(
        run=str(ctx.paths.root),
        feature=index,
        partition=cc.partition.label(index),
        s_max=value,
        s_max_source=source,
        mode=mode,
        alphas=alpha_list,
        prompts=prompt_list,
        models=results,
        settings={
            "max_new_tokens": settings.max_new_tokens,
            "do_sample": settings.do_sample,
            "temperature": settings.temperature,
            "top_p": settings.top_p,
            "seed": settings.seed,
            "chat": settings.chat,
            "batch_size": batch_size,
            "dtype": dtype,
            "device": device,
        },
        clamp_values=clamp_values,
        cross_model=cross_info,
        notes=notes,
        created=datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
        coherence_rule=coherence_rule(),
        null_settings=null_settings,
    )
    if scorer is not None:
        score_result(result, scorer)
    else:
        evaluate_result(result)
    if save:
        save_result(result, ctx.paths.steering)
    return result


def _steer_one(
    lm: LoadedModel,
    ctx: RunContext,
    side: str,
    direction: str,
    vector: torch.Tensor,
    feature: int,
    s_max: float,
    mode: str,
    alphas: list[float],
    clamp_values: list[float] | None,
    prompts: list[Prompt],
    rows: list[tuple[int, int]],
    settings: GenerationSettings,
    *,
    null_vectors: Sequence[tuple[int, torch.Tensor]] = (),
    batch_size: int,
    batched: bool,
    progress: bool,
) -> ModelSteering:
    info = ctx.sides[side]
    if lm.d_model != info.d_model:
        raise CrossdiffError(
            f"model {side.upper()} '{lm.model_id}' has width {lm.d_model}, but the crosscoder was "
            f"trained on width {info.d_model}; load the model the run was harvested with"
        )
    if info.layer is None:
        raise CrossdiffError(
            f"the run does not record model {side.upper()}'s layer (no store manifest and no "
            f"layer_{side} in the crosscoder config); it cannot be steered at the right place"
        )
    layer = lm.resolve_layer(info.layer)
    notes: list[str] = []
    if info.revision and lm.revision and info.revision != lm.revision:
        notes.append(
            f"loaded revision {lm.revision} differs from the harvested revision {info.revision}"
        )
    pseqs = [prompt_ids(lm, p, settings.chat) for p in prompts]
    seqs = [pseqs[p] for p, _ in rows]
    reader = None
    # null rows: (prompt, alpha, null k) for every non-zero alpha (alpha 0 is the same row)
    null_rows = [
        (p, a, k)
        for k in range(len(null_vectors))
        for p in range(len(prompts))
        for a in range(len(alphas))
        if alphas[a] != 0
    ]
    norm = float(vector.norm())
    if mode == "add":
        values = [alphas[a] * s_max for _, a in rows]
    else:
        reader = FeatureReader(ctx.crosscoder, feature)
        if not reader.fast:  # the full encoder runs per position: keep it beside the model
            ctx.crosscoder.to(lm.device)
            notes.append(
                f"clamp mode reads the feature with the full encoder ({reader.method}); slower"
            )
        if not ctx.crosscoder.partition.label(feature).endswith("exclusive"):
            notes.append(
                "shared feature: clamp mode reads its activation from this model's residual "
                "stream alone (the other model's contribution counts as zero), an approximation"
            )
        assert clamp_values is not None
        values = [clamp_values[a] for _, a in rows]

    def make_fn(idx: list[int]):
        return steering_fn(ctx, side, vector, feature, mode, [values[i] for i in idx], reader)

    if null_rows:  # one direction per row: the feature's, then each null's (matched norm)
        vectors = torch.stack([vector.float()] + [v.float() for _, v in null_vectors])
        which = [0] * len(rows) + [k + 1 for _, _, k in null_rows]
        coefs = values + [
            alphas[a] * s_max * norm / float(null_vectors[k][1].norm()) for _, a, k in null_rows
        ]
        seqs = seqs + [pseqs[p] for p, _, _ in null_rows]

        def make_fn(idx: list[int]):
            return add_rows_fn(vectors[[which[i] for i in idx]], [coefs[i] for i in idx])

    out = generate_rows(
        lm,
        layer,
        seqs,
        make_fn,
        settings,
        batch_size=batch_size,
        batched=batched,
        progress=progress,
        desc=f"steer {side.upper()}",
    )
    grid = [[""] * len(alphas) for _ in prompts]
    toks: list[list[list[int]]] = [[[] for _ in alphas] for _ in prompts]
    for (p, a), text, ids in zip(rows, out.texts, out.tokens):
        grid[p][a] = text
        toks[p][a] = ids
    coherence, reference = measure(lm, alphas, pseqs, toks, grid)
    null_results = None
    if null_vectors and mode == "add":
        null_results = []
        n_main = len(rows)
        for k, (j, vec) in enumerate(null_vectors):
            g = [list(row) for row in grid]  # alpha 0 is shared with the feature's sweep
            t = [list(row) for row in toks]
            for r, (p, a, kk) in enumerate(null_rows):
                if kk == k:
                    g[p][a] = out.texts[n_main + r]
                    t[p][a] = out.tokens[n_main + r]
            null_coh, _ = measure(lm, alphas, pseqs, t, g, reference)
            null_results.append(
                {
                    "feature": int(j),
                    "vector_norm": float(vec.norm()),
                    "coefs": [a * s_max * norm / float(vec.norm()) for a in alphas],
                    "generations": g,
                    "coherence": null_coh,
                    "rates": None,
                    "scores": None,
                }
            )
    return ModelSteering(
        model=side,
        model_id=lm.model_id,
        layer=layer,
        direction=direction,
        vector_norm=float(vector.norm()),
        median_norm=info.median_norm,
        rendering=_rendering(lm, settings.chat),
        generations=grid,
        batched=out.batched,
        notes=notes + out.notes,
        coherence=coherence,
        nulls=null_results,
    )


def steering_fn(
    ctx: RunContext,
    side: str,
    vector: torch.Tensor,
    feature: int,
    mode: str,
    values: Sequence[float],
    reader: FeatureReader | None = None,
):
    """The function ``steer`` applies to the hooked layer's output, one value per batch row.

    add: ``values`` are the coefficients ``alpha x s_max`` of ``vector`` (raw scale); clamp:
    the target activations of ``feature`` (read through the crosscoder from model ``side``).
    """
    if mode == "add":
        return add_fn(vector, values)
    if mode == "clamp":
        reader = reader or FeatureReader(ctx.crosscoder, feature)
        cc = ctx.crosscoder
        return clamp_fn(reader, side, lambda x: cc.normalize(x, side), vector, values)
    raise CrossdiffError(f"mode {mode!r} is not one of {', '.join(MODES)}")


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


def result_path(steering_dir: Path, feature: int) -> Path:
    return Path(steering_dir) / f"feature-{feature}.json"


def plot_path(steering_dir: Path, feature: int) -> Path:
    return Path(steering_dir) / f"feature-{feature}-score.svg"


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
