"""crossdiff: diff two language models of different architectures with crosscoders.

The public API is imported lazily so that ``import crossdiff`` stays cheap (no torch or
transformers import until a name that needs them is used).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "CrossdiffError": "crossdiff.errors",
    "Crosscoder": "crossdiff.crosscoder.model",
    "CrosscoderConfig": "crossdiff.crosscoder.config",
    "FeaturePartition": "crossdiff.crosscoder.partition",
    "TrainConfig": "crossdiff.crosscoder.train_config",
    "train_crosscoder": "crossdiff.crosscoder.train",
    "ArraySource": "crossdiff.crosscoder.sources",
    "PairSource": "crossdiff.crosscoder.sources",
    "load_model": "crossdiff.models",
    "LoadedModel": "crossdiff.models",
    "ActivationStore": "crossdiff.store",
    "harvest": "crossdiff.harvest",
    "HarvestConfig": "crossdiff.harvest",
    "analyze": "crossdiff.analysis",
    "AnalysisConfig": "crossdiff.analysis",
    "load_analysis": "crossdiff.analysis",
    "build_report": "crossdiff.report",
    "show_feature": "crossdiff.report",
    "compare": "crossdiff.recurrence",
    "train_members": "crossdiff.recurrence",
    "steer": "crossdiff.steering",
    "SteeringResult": "crossdiff.steering",
    "SteerConfig": "crossdiff.steering",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'crossdiff' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
