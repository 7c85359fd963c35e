"""``SteerConfig``: every setting of one :func:`crossdiff.steer` call, each default written once.

``crossdiff steer``'s flags, the run config's ``steer:`` section and the Python API all end in
one of these, so a setting means the same thing and has the same default wherever it is given.
What is not a setting stays an argument of :func:`crossdiff.steer`: the run folder, the feature,
the prompts, models already loaded, whether to save, and progress bars.

A config checks itself when it is made (:meth:`SteerConfig.validate`), so a bad value is an
error naming it before any model is loaded or any store row is read.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from crossdiff.errors import CrossdiffError, reject_unknown_fields
from crossdiff.steering.generation import GenerationSettings
from crossdiff.steering.scoring import DEFAULT_KEY_ENV
from crossdiff.steering.stitch import DEFAULT_MAX_NORM_RATIO, DEFAULT_MAX_ROWS, DEFAULT_RIDGE

DEFAULT_ALPHAS: tuple[float, ...] = (-4.0, -2.0, 0.0, 2.0, 4.0)
"""The steering strengths swept by default, as multiples of the feature's s_max."""
MODEL_CHOICES = ("auto", "a", "b", "both")
"""Which model(s) to steer (see :attr:`SteerConfig.model`)."""
MODES = ("add", "clamp")
"""How the feature is imposed (see :attr:`SteerConfig.mode`)."""
CROSS_NORMS = ("relative", "map")
"""How long the mapped direction is (see :attr:`SteerConfig.cross_norm`)."""


def check_alphas(alphas: Any) -> list[float]:
    """``alphas`` (or clamp values) as a non-empty list of finite floats, or an error naming
    the bad ones."""
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


def _choice(name: str, value: object, choices: Sequence[str], *, lower: bool = False) -> None:
    key = str(value).lower() if lower else value
    if key not in choices:
        raise CrossdiffError(f"{name} {value!r} is not one of {', '.join(choices)}")


@dataclass
class SteerConfig:
    """How to steer one feature: strengths, mode, models, decoding, nulls, scoring, map fit."""

    # ---- what is steered, and how hard ------------------------------------------------------
    alphas: Sequence[float] = DEFAULT_ALPHAS
    """Steering strengths, as multiples of the feature's s_max (its largest activation on the
    store): add mode adds ``alpha x s_max x d`` (``d`` the decoder row in the model's own
    scale); alpha 0 is the unsteered model. Ignored when ``clamp_value`` is given."""
    model: str = "auto"
    """Model(s) to steer: "auto" (the feature's own; both for a shared feature), "a", "b" or
    "both". An exclusive feature cannot be steered in the other model (use ``cross_model``)."""
    mode: str = "add"
    """"add" (add the scaled decoder direction at every position) or "clamp" (set the
    feature's activation to ``alpha x s_max`` at every position)."""
    clamp_value: float | Sequence[float] | None = None
    """Absolute activation value(s) to clamp the feature to; implies clamp mode and replaces
    ``alphas`` (each becomes ``value / s_max``)."""
    s_max: float | None = None
    """The feature's s_max, given instead of read from the analysis table or the store."""

    # ---- the cross-model check --------------------------------------------------------------
    cross_model: bool = False
    """Also steer the other model along the feature's direction pushed through a linear map
    fitted on the store's paired activations (the exclusivity test; add mode only)."""
    cross_norm: str = "relative"
    """Length of the mapped direction: "relative" (as long, relative to the target's median
    activation norm, as the source's is to its own) or "map" (as the map sends it)."""
    map_ridge: float = DEFAULT_RIDGE
    """Relative ridge strength of the map's fit (times the source covariance's mean trace)."""
    map_rows: int | None = DEFAULT_MAX_ROWS
    """Store rows the map is fitted on (None: all)."""
    map_max_norm_ratio: float | None = DEFAULT_MAX_NORM_RATIO
    """Rows with a norm above this multiple of the median are left out of the fit (None: none)."""
    refit_map: bool = False
    """Fit the map again even when one with the same settings is cached in RUN/steering."""

    # ---- decoding ---------------------------------------------------------------------------
    max_new_tokens: int = GenerationSettings.max_new_tokens
    """Tokens generated per (prompt, alpha) row (fewer if the model ends its answer)."""
    do_sample: bool = GenerationSettings.do_sample
    """Sample instead of greedy decoding."""
    temperature: float = GenerationSettings.temperature
    """Sampling temperature (sampling only)."""
    top_p: float = GenerationSettings.top_p
    """Nucleus sampling mass (sampling only)."""
    seed: int = GenerationSettings.seed
    """Seed of the random generator for sampling, set before every generate call."""
    chat: bool = GenerationSettings.chat
    """Render each prompt as a user turn through the model's chat template; False feeds it as
    a plain document."""
    batch_size: int = 32
    """Rows per ``generate`` call (the null features' rows share the calls)."""
    batched: bool = True
    """Generate rows in batches; False generates one row at a time."""

    # ---- evidence and scoring ---------------------------------------------------------------
    nulls: int = 0
    """Random alive features of the same class swept too, each pushed with the feature's
    added-vector norm, as the null of the verdict (add mode only; docs/steering.md)."""
    null_seed: int = 0
    """Seed of the null features' draw (combined with the feature index)."""
    cross_nulls: bool = True
    """Also sweep the null features in the other model, mapped like the feature (the
    cross-model side's own null band). False steers only the feature there, which saves
    ``nulls x (len(alphas) - 1)`` generations per prompt in that model when only its
    unsteered-vs-steered change is read."""
    score: str | Callable[[str, str], Any] | None = None
    """Behaviour scorer: a rule (``regex:P``, ``keywords:a,b``, ``builtin:SUITE``,
    ``judge:CRITERION``) or a callable ``(prompt, generation) -> score``; None: see
    ``explanation_score``."""
    explanation_score: bool = True
    """Without ``score``, score with the feature's explanation's top terms (a keyword rule)
    when ``crossdiff interpret`` has explained it."""
    judge_url: str | None = None
    """OpenAI-compatible API base of the ``judge:`` scorer, e.g. http://localhost:8000/v1."""
    judge_model: str | None = None
    """Model name the judge endpoint serves."""
    judge_key_env: str = DEFAULT_KEY_ENV
    """Environment variable holding the judge's API key."""

    # ---- loading the models -----------------------------------------------------------------
    model_specs: dict[str, str] = field(default_factory=dict)
    """Where to load model "a" / "b" from instead of the run's record ({"a": SPEC})."""
    dtype: str = "auto"
    """dtype the models are loaded in ("auto": the model loader's choice)."""
    device: str = "auto"
    """Device the models are loaded on ("auto": the model loader's choice)."""

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], what: str = "steer config keys", *, suffix: str = ""
    ) -> SteerConfig:
        """A config from a mapping (a YAML section); unknown keys are an error listing the
        known ones, so a typo is never a silently ignored setting."""
        reject_unknown_fields(cls, data, what, suffix=suffix, list_known=True)
        return cls(**data)

    def replace(self, **changes: Any) -> SteerConfig:
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes)

    def generation(self) -> GenerationSettings:
        """The decoding settings of every generate call."""
        return GenerationSettings(
            self.max_new_tokens, self.do_sample, self.temperature, self.top_p, self.seed, self.chat
        )

    def validate(self) -> None:
        """Raise a CrossdiffError naming the first bad setting and what to do."""
        _choice("mode", self.mode, MODES)
        _choice("cross_norm", self.cross_norm, CROSS_NORMS)
        _choice("model", self.model, MODEL_CHOICES, lower=True)
        self.generation().validate()
        if isinstance(self.nulls, bool) or not isinstance(self.nulls, int) or self.nulls < 0:
            raise CrossdiffError(f"nulls must be a whole number >= 0, got {self.nulls!r}")
        bs = self.batch_size
        if isinstance(bs, bool) or not isinstance(bs, int) or bs < 1:
            raise CrossdiffError(f"batch_size must be at least 1, got {bs!r}")
        if self.s_max is not None:
            try:
                ok = math.isfinite(float(self.s_max)) and float(self.s_max) > 0
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise CrossdiffError(f"s_max must be a positive number, got {self.s_max}")
        if self.clamp_value is not None:
            self.clamp_values()
        else:
            check_alphas(self.alphas)
        if self.mode == "clamp" and self.cross_model:
            raise CrossdiffError(
                "clamp mode needs the crosscoder's encoder in the steered model, and a mapped "
                "direction has none; use mode='add' for the cross-model check"
            )

    def clamp_values(self) -> list[float] | None:
        """``clamp_value`` as a checked list (None when not given)."""
        if self.clamp_value is None:
            return None
        value = self.clamp_value
        raw = [value] if isinstance(value, (int, float)) else list(value)
        return check_alphas(raw)
