"""File and folder names of a run folder, in one place (docs/ARCHITECTURE.md "A run folder").

```
RUN/
  config.yaml        the resolved configuration of `crossdiff run`
  store/             paired activations (crossdiff.store)
  crosscoder/        config.json + model.safetensors (+ checkpoints/ while training)
  crosscoders/NAME/  more crosscoders on the same store (other seeds / exclusive fractions,
                     e.g. s1-x0.05), each laid out like crosscoder/ (crossdiff.recurrence)
  recurrence/        recurrence.parquet + recurrence.json: which reference features the
                     other crosscoders found again (crossdiff.recurrence)
  analysis/          features.parquet + analysis.json + examples.parquet
  steering/          one JSON file per steered feature (crossdiff.steer)
  interpret/         explanations.parquet + interpret.json (+ cache/ of LLM replies)
  report/index.html  the self-contained auditor's page
```
"""

from __future__ import annotations

from pathlib import Path

RUN_CONFIG = "config.yaml"
STORE_DIR = "store"
CROSSCODER_DIR = "crosscoder"
CHECKPOINTS_DIR = "checkpoints"
ANALYSIS_DIR = "analysis"
STEERING_DIR = "steering"
INTERPRET_DIR = "interpret"
INTERPRET_CACHE_DIR = "cache"
CROSSCODERS_DIR = "crosscoders"
RECURRENCE_DIR = "recurrence"
REPORT_DIR = "report"
REPORT_FILE = "index.html"


class RunPaths:
    """Paths inside one run folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def config(self) -> Path:
        return self.root / RUN_CONFIG

    @property
    def store(self) -> Path:
        return self.root / STORE_DIR

    @property
    def crosscoder(self) -> Path:
        return self.root / CROSSCODER_DIR

    @property
    def checkpoints(self) -> Path:
        return self.root / CROSSCODER_DIR / CHECKPOINTS_DIR

    @property
    def crosscoders(self) -> Path:
        """Further crosscoders on the same store, one folder each (rediscovery across runs)."""
        return self.root / CROSSCODERS_DIR

    def member(self, name: str) -> Path:
        """The folder of further crosscoder ``name`` (e.g. ``s1-x0.05``)."""
        return self.root / CROSSCODERS_DIR / name

    @property
    def recurrence(self) -> Path:
        """Which of the reference's exclusive features the other crosscoders found again."""
        return self.root / RECURRENCE_DIR

    @property
    def analysis(self) -> Path:
        return self.root / ANALYSIS_DIR

    @property
    def steering(self) -> Path:
        return self.root / STEERING_DIR

    @property
    def report(self) -> Path:
        return self.root / REPORT_DIR / REPORT_FILE

    @property
    def interpret(self) -> Path:
        """Explanations and scores of features (crossdiff.interpret)."""
        return self.root / INTERPRET_DIR

    @property
    def interpret_cache(self) -> Path:
        """On-disk cache of LLM replies, one JSON file per request hash."""
        return self.root / INTERPRET_DIR / INTERPRET_CACHE_DIR
