"""Analysis of a trained crosscoder: feature table, examples, exclusivity check, report.

- :func:`analyze` (pipeline.py): one streaming pass over the store -> RUN/analysis/;
- :func:`load_analysis` (results.py): read it back (features, examples, metadata);
- :func:`build_report` (report.py): RUN/report/index.html;
- :func:`show_feature` (show.py): one feature's evidence as terminal text.
"""

from __future__ import annotations

from crossdiff.analysis.config import AnalysisConfig
from crossdiff.analysis.pipeline import analyze
from crossdiff.analysis.report import build_report, render_report
from crossdiff.analysis.results import AnalysisResult, load_analysis
from crossdiff.analysis.show import format_feature, show_feature

__all__ = [
    "AnalysisConfig",
    "AnalysisResult",
    "analyze",
    "build_report",
    "format_feature",
    "load_analysis",
    "render_report",
    "show_feature",
]
