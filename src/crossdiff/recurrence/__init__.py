"""Rediscovery across runs: several crosscoders on one store, and which exclusive features of
the run's main crosscoder the others find again (docs/recurrence.md).

- :func:`train_members` (members.py): ``RUN/crosscoders/s<seed>-x<fraction>/`` beside the
  reference ``RUN/crosscoder/`` (``crossdiff train RUN --seeds N``);
- :func:`compare` (comparison.py): ``RUN/recurrence/`` (``crossdiff compare RUN``);
- :func:`match_crosscoders` (matching.py): the matching itself, on any rows;
- views.py: :func:`recurrence_column`, :func:`recurrence_html`, :func:`recurrence_lines`,
  :func:`recurrence_summary` for the feature table, report, ``show`` and the run summary.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module; imported on first use, so that importing the package (the CLI's
# --help reads crossdiff.recurrence.config) does not import torch
_EXPORTS: dict[str, str] = {
    "MatchConfig": "crossdiff.recurrence.config",
    "ModelMatch": "crossdiff.recurrence.matching",
    "match_crosscoders": "crossdiff.recurrence.matching",
    "Member": "crossdiff.recurrence.members",
    "list_members": "crossdiff.recurrence.members",
    "plan_members": "crossdiff.recurrence.members",
    "train_members": "crossdiff.recurrence.members",
    "RecurrenceResult": "crossdiff.recurrence.comparison",
    "compare": "crossdiff.recurrence.comparison",
    "has_recurrence": "crossdiff.recurrence.comparison",
    "load_recurrence": "crossdiff.recurrence.comparison",
    "recurrence_column": "crossdiff.recurrence.views",
    "recurrence_html": "crossdiff.recurrence.views",
    "recurrence_lines": "crossdiff.recurrence.views",
    "recurrence_summary": "crossdiff.recurrence.views",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'crossdiff.recurrence' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
