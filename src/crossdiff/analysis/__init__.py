"""Analysis of a trained crosscoder: feature table, examples, exclusivity check.

- :func:`analyze` (pipeline.py): one streaming pass over the store -> RUN/analysis/;
- :func:`load_analysis` (results.py): read it back (features, examples, metadata).

The report and ``crossdiff show``, which read this package's results, are the report
package's; nothing here imports it. ``build_report``, ``render_report``, ``show_feature`` and
``format_feature`` are still found here, for code written when they lived here: each is
looked up in the report package on first use (``__getattr__``).
"""

from __future__ import annotations

import importlib
from typing import Any

from crossdiff.analysis.config import AnalysisConfig
from crossdiff.analysis.pipeline import analyze
from crossdiff.analysis.results import AnalysisResult, load_analysis

_MOVED = ("build_report", "format_feature", "render_report", "show_feature")
"""Names that moved to the report package: looked up there when asked for, so that this
package imports nothing of it."""

__all__ = [
    "AnalysisConfig",
    "AnalysisResult",
    "analyze",
    "load_analysis",
]


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module("crossdiff.report"), name)
    raise AttributeError(f"module 'crossdiff.analysis' has no attribute {name!r}")
