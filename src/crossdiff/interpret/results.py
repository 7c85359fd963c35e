"""The interpret folder's files and the typed loader.

```
RUN/interpret/
  explanations.parquet   one row per explained feature (COLUMNS)
  interpret.json         settings, counts, calls, timing, the review-first list
  cache/                 one JSON file per LLM request (SHA-256 of the request)
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from crossdiff.errors import CrossdiffError
from crossdiff.paths import RunPaths

TABLE_FILE = "explanations.parquet"
META_FILE = "interpret.json"
FORMAT_NAME = "crossdiff-interpret"
FORMAT_VERSION = 1

COLUMNS: dict[str, str] = {
    "feature": "feature index",
    "klass": "'A'/'B' exclusive candidate, 'S' shared control",
    "rank": "review rank in the analysis (0: not ranked)",
    "verdict": "the analysis's exclusivity verdict ('' for shared features)",
    "side": "whose tokenization the examples were shown in ('a'/'b')",
    "explanation": "the explanation (model output is data: shown escaped)",
    "top_terms": "distinctive terms (stats explainer: token, n-grams, ctx:word), else empty",
    "parse_status": "ok / unparsed / empty / error: ... / no examples",
    "n_explain": "activating examples the explanation was written from",
    "detection": "balanced accuracy telling held-out activating from non-activating tokens",
    "detection_ci_low": "Wilson 95% interval",
    "detection_ci_high": "",
    "detection_n": "examples the judge answered",
    "detection_hard_n": "hard negatives (same token, feature silent) among its non-activating "
    "contexts; the rest are random",
    "auroc": "detection AUROC of the judge's probabilities",
    "fuzzing": "balanced accuracy telling the right marked token from a wrongly marked one",
    "fuzzing_ci_low": "Wilson 95% interval",
    "fuzzing_ci_high": "",
    "fuzzing_n": "examples the judge answered",
    "fuzzing_auroc": "fuzzing AUROC",
    "judge_unparsed": "judge replies that did not parse (their examples are left out)",
    "harm_flagged": "the harm screen named at least one category",
    "harm_categories": "the categories it named",
    "harm_status": "ok / unparsed / error: ... / skipped",
    "interpretable": "detection >= 0.8",
    "explainer": "explainer backend",
    "judge": "judge backend",
}

SCHEMA = pa.schema(
    [
        ("feature", pa.int64()),
        ("klass", pa.string()),
        ("rank", pa.int64()),
        ("verdict", pa.string()),
        ("side", pa.string()),
        ("explanation", pa.string()),
        ("top_terms", pa.list_(pa.string())),
        ("parse_status", pa.string()),
        ("n_explain", pa.int64()),
        ("detection", pa.float64()),
        ("detection_ci_low", pa.float64()),
        ("detection_ci_high", pa.float64()),
        ("detection_n", pa.int64()),
        ("detection_hard_n", pa.int64()),
        ("auroc", pa.float64()),
        ("fuzzing", pa.float64()),
        ("fuzzing_ci_low", pa.float64()),
        ("fuzzing_ci_high", pa.float64()),
        ("fuzzing_n", pa.int64()),
        ("fuzzing_auroc", pa.float64()),
        ("judge_unparsed", pa.int64()),
        ("harm_flagged", pa.bool_()),
        ("harm_categories", pa.list_(pa.string())),
        ("harm_status", pa.string()),
        ("interpretable", pa.bool_()),
        ("explainer", pa.string()),
        ("judge", pa.string()),
    ]
)


@dataclass
class InterpretResult:
    """Explanations loaded from (or just written to) RUN/interpret."""

    folder: Path
    table: pa.Table
    meta: dict[str, Any]

    def rows(self) -> list[dict[str, Any]]:
        """All rows as dicts, in the file's order (review order)."""
        return self.table.to_pylist()

    def feature(self, index: int) -> dict[str, Any] | None:
        """One feature's row, or None when it was not explained."""
        for row in self.rows():
            if row["feature"] == int(index):
                return row
        return None

    @property
    def review_first(self) -> list[int]:
        """Features the harm screen flagged, in review order."""
        return [int(f) for f in self.meta.get("review_first", [])]


def interpret_folder(path: str | Path) -> Path:
    """Accept a run folder or an interpret folder; return the interpret folder."""
    p = Path(path)
    if (p / META_FILE).is_file():
        return p
    return RunPaths(p).interpret


def has_interpretations(path: str | Path) -> bool:
    """Whether ``crossdiff interpret`` has written its outputs there."""
    folder = interpret_folder(path)
    return (folder / META_FILE).is_file() and (folder / TABLE_FILE).is_file()


def load_interpretations(path: str | Path) -> InterpretResult:
    """Read what :func:`crossdiff.interpret.interpret` wrote (run or interpret folder)."""
    folder = interpret_folder(path)
    if not has_interpretations(path):
        raise CrossdiffError(
            f"no explanations at {folder}; run `crossdiff interpret {Path(path)}` first"
        )
    from crossdiff.formats import read_meta

    meta = read_meta(folder / META_FILE, FORMAT_NAME, FORMAT_VERSION, "crossdiff interpret")
    return InterpretResult(folder, pq.read_table(folder / TABLE_FILE), meta)
