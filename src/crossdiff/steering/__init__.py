"""Steering: amplify or suppress a crosscoder feature while a model generates (docs/METHOD.md §5).

The package is named ``steering`` (not ``steer``) so that the public function
``crossdiff.steer`` is never shadowed by a submodule of the same name.

- :func:`steer` (api.py): the one call behind ``crossdiff steer``, its settings one
  :class:`SteerConfig` (config.py); :mod:`.sweep` runs the plan on one loaded model;
- :class:`SteeringResult` (result.py): generations, table, JSON, plot;
- :mod:`.stitch`: the linear map between the two models for the cross-model check;
- :mod:`.scoring`: regex/keyword rules and an LLM judge that turn generations into rates;
- :mod:`.evidence`: coherence of every generation, the random-feature null, effects, verdict;
- :mod:`.activation`, :mod:`.hooks`, :mod:`.generation`: one feature's activation, the
  per-row steering functions, and batched generation.
"""

from __future__ import annotations

from crossdiff.steering.activation import FeatureReader
from crossdiff.steering.api import plan_models, save_result, score_result, steer
from crossdiff.steering.config import DEFAULT_ALPHAS, SteerConfig
from crossdiff.steering.generation import GenerationSettings
from crossdiff.steering.result import ModelSteering, SteeringResult
from crossdiff.steering.scoring import (
    CallableScorer,
    KeywordScorer,
    LLMJudge,
    RegexScorer,
    make_scorer,
)
from crossdiff.steering.stitch import LinearMap, fit_linear_map, fit_store_map

__all__ = [
    "DEFAULT_ALPHAS",
    "CallableScorer",
    "FeatureReader",
    "GenerationSettings",
    "KeywordScorer",
    "LLMJudge",
    "LinearMap",
    "ModelSteering",
    "RegexScorer",
    "SteerConfig",
    "SteeringResult",
    "fit_linear_map",
    "fit_store_map",
    "make_scorer",
    "plan_models",
    "save_result",
    "score_result",
    "steer",
]
