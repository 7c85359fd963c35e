"""One model's sweep: every (prompt, alpha) row, and the null features' rows, generated with
per-row steering in shared batched calls, then gathered into grids and measured for coherence.

:func:`crossdiff.steer` plans a call once (the feature's strength, the alphas, each model's
direction, the null features); :func:`steer_model` runs that plan on one loaded model, so each
model can be released before the next one loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from crossdiff.errors import CrossdiffError
from crossdiff.steering.activation import FeatureReader
from crossdiff.steering.config import MODES
from crossdiff.steering.context import RunContext, Side
from crossdiff.steering.evidence import measure
from crossdiff.steering.generation import (
    GenerationOutput,
    GenerationSettings,
    Prompt,
    generate_rows,
    prompt_ids,
)
from crossdiff.steering.hooks import add_fn, add_rows_fn, clamp_fn
from crossdiff.steering.result import ModelSteering

if TYPE_CHECKING:
    from crossdiff.models import LoadedModel

NullVectors = Sequence[tuple[int, torch.Tensor]]
"""(null feature index, its direction in the steered model) for every null feature."""


@dataclass(frozen=True)
class Sweep:
    """What every steered model of one call shares: the feature, its strength and the grid."""

    feature: int
    s_max: float
    mode: str
    alphas: list[float]
    clamp_values: list[float] | None
    prompts: list[Prompt]
    settings: GenerationSettings
    batch_size: int
    batched: bool

    @property
    def rows(self) -> list[tuple[int, int]]:
        """(prompt, alpha) of every row of the feature's own sweep, prompt-major."""
        return [(p, a) for p in range(len(self.prompts)) for a in range(len(self.alphas))]

    def null_rows(self, n_nulls: int) -> list[tuple[int, int, int]]:
        """(prompt, alpha, null k) of the null rows: every non-zero alpha of every null (alpha
        0 is the same row for every direction, so the feature's own serves them all)."""
        return [
            (p, a, k)
            for k in range(n_nulls)
            for p in range(len(self.prompts))
            for a in range(len(self.alphas))
            if self.alphas[a] != 0
        ]


def steer_model(
    lm: LoadedModel,
    ctx: RunContext,
    side: str,
    direction: str,
    vector: torch.Tensor,
    sweep: Sweep,
    *,
    null_vectors: NullVectors = (),
    progress: bool,
) -> ModelSteering:
    """Steer model ``side`` (loaded as ``lm``) along ``vector`` over the whole grid, null rows
    in the same generate calls, and measure the coherence of every generation."""
    info = ctx.sides[side]
    layer, notes = _steered_layer(lm, info, side)
    pseqs = [prompt_ids(lm, p, sweep.settings.chat) for p in sweep.prompts]
    rows = sweep.rows
    null_rows = sweep.null_rows(len(null_vectors))
    values, reader = _row_values(ctx, lm, sweep, rows, notes)
    seqs = [pseqs[p] for p, _ in rows]
    if null_rows:
        seqs = seqs + [pseqs[p] for p, _, _ in null_rows]
    out = generate_rows(
        lm,
        layer,
        seqs,
        _row_steering(ctx, side, vector, sweep, values, reader, null_vectors, null_rows),
        sweep.settings,
        batch_size=sweep.batch_size,
        batched=sweep.batched,
        progress=progress,
        desc=f"steer {side.upper()}",
    )
    grid, toks = _grids(sweep, rows, out.texts, out.tokens)
    coherence, reference = measure(lm, sweep.alphas, pseqs, toks, grid)
    null_results = None
    if null_vectors and sweep.mode == "add":
        null_results = _null_results(
            lm, sweep, pseqs, grid, toks, out, null_rows, null_vectors, vector, reference
        )
    return ModelSteering(
        model=side,
        model_id=lm.model_id,
        layer=layer,
        direction=direction,
        vector_norm=float(vector.norm()),
        median_norm=info.median_norm,
        rendering=_rendering(lm, sweep.settings.chat),
        generations=grid,
        batched=out.batched,
        notes=notes + out.notes,
        coherence=coherence,
        nulls=null_results,
    )


def _steered_layer(lm: LoadedModel, info: Side, side: str) -> tuple[int, list[str]]:
    """The decoder layer to hook in ``lm``, and notes on it; errors where ``lm`` is not the
    model the crosscoder was trained on, or the run does not say where it reads."""
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
    return layer, notes


def _row_values(
    ctx: RunContext,
    lm: LoadedModel,
    sweep: Sweep,
    rows: list[tuple[int, int]],
    notes: list[str],
) -> tuple[list[float], FeatureReader | None]:
    """Each own row's steering value (add: the coefficient ``alpha x s_max``; clamp: the
    target activation) and, in clamp mode, the reader of the feature's activation."""
    if sweep.mode == "add":
        return [sweep.alphas[a] * sweep.s_max for _, a in rows], None
    feature = sweep.feature
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
    assert sweep.clamp_values is not None
    return [sweep.clamp_values[a] for _, a in rows], reader


def _row_steering(
    ctx: RunContext,
    side: str,
    vector: torch.Tensor,
    sweep: Sweep,
    values: list[float],
    reader: FeatureReader | None,
    null_vectors: NullVectors,
    null_rows: list[tuple[int, int, int]],
):
    """``make_fn(row indices)`` for :func:`generate_rows`: the feature's steering on its own
    rows, and with null rows one direction per row (the feature's, then each null's, pushed
    with the feature's norm)."""
    if not null_rows:

        def make_fn(idx: list[int]):
            return steering_fn(
                ctx, side, vector, sweep.feature, sweep.mode, [values[i] for i in idx], reader
            )

        return make_fn
    alphas, s_max, norm = sweep.alphas, sweep.s_max, float(vector.norm())
    vectors = torch.stack([vector.float()] + [v.float() for _, v in null_vectors])
    which = [0] * len(values) + [k + 1 for _, _, k in null_rows]
    coefs = values + [
        alphas[a] * s_max * norm / float(null_vectors[k][1].norm()) for _, a, k in null_rows
    ]

    def make_rows_fn(idx: list[int]):
        return add_rows_fn(vectors[[which[i] for i in idx]], [coefs[i] for i in idx])

    return make_rows_fn


def _grids(
    sweep: Sweep, rows: list[tuple[int, int]], texts: list[str], tokens: list[list[int]]
) -> tuple[list[list[str]], list[list[list[int]]]]:
    """The own rows' texts and token ids as ``[prompt][alpha]`` grids."""
    grid = [[""] * len(sweep.alphas) for _ in sweep.prompts]
    toks: list[list[list[int]]] = [[[] for _ in sweep.alphas] for _ in sweep.prompts]
    for (p, a), text, ids in zip(rows, texts, tokens):
        grid[p][a] = text
        toks[p][a] = ids
    return grid, toks


def _null_results(
    lm: LoadedModel,
    sweep: Sweep,
    pseqs: list[list[int]],
    grid: list[list[str]],
    toks: list[list[list[int]]],
    out: GenerationOutput,
    null_rows: list[tuple[int, int, int]],
    null_vectors: NullVectors,
    vector: torch.Tensor,
    reference: Any,
) -> list[dict[str, Any]]:
    """One record per null feature: its generations (alpha 0 shared with the feature's own
    sweep), their coherence against the same unsteered reference, and its coefficients."""
    alphas, s_max, norm = sweep.alphas, sweep.s_max, float(vector.norm())
    n_main = len(sweep.rows)
    results = []
    for k, (j, vec) in enumerate(null_vectors):
        g = [list(row) for row in grid]  # alpha 0 is shared with the feature's sweep
        t = [list(row) for row in toks]
        for r, (p, a, kk) in enumerate(null_rows):
            if kk == k:
                g[p][a] = out.texts[n_main + r]
                t[p][a] = out.tokens[n_main + r]
        null_coh, _ = measure(lm, alphas, pseqs, t, g, reference)
        results.append(
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
    return results


def _rendering(lm: LoadedModel, chat: bool) -> str:
    if not chat:
        return "plain text"
    return "chat template" if lm.has_chat_template else "plain chat rendering (no template)"


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
