"""The run folder's contract: where each stage's output lives, and how to read it back.

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
  steering/          feature-<i>.json per steered feature (crossdiff.steering)
  interpret/         explanations.parquet + interpret.json (+ cache/ of LLM replies)
  report/index.html  the self-contained auditor's page
```

:class:`RunPaths` names every folder here; the files inside a stage's folder are named by
the stage that writes them (``analysis/results.py``, ``interpret/results.py``,
``recurrence/comparison.py``, ``steering/result.py``, ``crosscoder/model.py``,
``store/manifest.py``), next to the code that writes and reads them. A stage that needs
another stage's output asks :class:`RunPaths` for it (``load_analysis()``,
``open_store()``, ``load_steering(i)``, ...), which hands it over to that stage's own typed
loader, so no stage spells another stage's file names or parses its files. The loaders are
imported inside the methods: this module imports nothing of the stages, so any of them can
import it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    import pyarrow as pa

    from crossdiff.analysis.results import AnalysisResult
    from crossdiff.crosscoder.model import Crosscoder
    from crossdiff.interpret.results import InterpretResult
    from crossdiff.recurrence.comparison import RecurrenceResult
    from crossdiff.steering.result import SteeringResult
    from crossdiff.store import ActivationStore

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
    """Paths inside one run folder, and the typed loaders of what its stages wrote."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @classmethod
    def containing(cls, path: str | Path) -> RunPaths:
        """The run of ``path``: a run folder itself, or the run above a stage folder
        (``RUN/analysis``, ``RUN/interpret``) that holds its stage's output, so views can take
        the folder a loaded result carries (``AnalysisResult.folder``)."""
        from crossdiff.analysis.results import META_FILE as ANALYSIS_META
        from crossdiff.interpret.results import META_FILE as INTERPRET_META

        p = Path(path)
        own = {ANALYSIS_DIR: ANALYSIS_META, INTERPRET_DIR: INTERPRET_META}
        return cls(p.parent if p.name in own and (p / own[p.name]).is_file() else p)

    # ---- folders -------------------------------------------------------------------------
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

    def recorded_config(self) -> dict[str, Any] | None:
        """What ``crossdiff run`` recorded in RUN/config.yaml, None when no run made this
        folder (:func:`crossdiff.run.recorded_config`)."""
        from crossdiff.run import recorded_config

        return recorded_config(self.root)

    # ---- the store -----------------------------------------------------------------------
    def has_store(self) -> bool:
        """Whether RUN/store holds a store (its manifest is written); harvest resumes one."""
        from crossdiff.store.manifest import MANIFEST_NAME

        return (self.store / MANIFEST_NAME).is_file()

    def open_store(self) -> ActivationStore:
        """RUN/store opened and checked (:meth:`crossdiff.store.ActivationStore.open`: a
        missing or damaged store is a clear error naming what to do)."""
        from crossdiff.store import ActivationStore

        return ActivationStore.open(self.store)

    # ---- the crosscoder ------------------------------------------------------------------
    def has_crosscoder(self) -> bool:
        """Whether RUN/crosscoder holds trained weights (training writes them last)."""
        from crossdiff.crosscoder.model import WEIGHTS_FILE

        return (self.crosscoder / WEIGHTS_FILE).is_file()

    def load_crosscoder(self, *, device: str = "cpu") -> Crosscoder:
        """RUN/crosscoder in eval mode (:meth:`crossdiff.crosscoder.Crosscoder.from_pretrained`;
        an error names the files it expected when none was trained)."""
        from crossdiff.crosscoder.model import Crosscoder

        return Crosscoder.from_pretrained(self.crosscoder, device=device)

    # ---- analysis ------------------------------------------------------------------------
    def has_analysis(self) -> bool:
        """Whether ``crossdiff analyze`` wrote all of RUN/analysis (it writes at the end)."""
        from crossdiff.analysis.results import has_analysis

        return has_analysis(self.root)

    def load_analysis(self) -> AnalysisResult:
        """RUN/analysis read back (:func:`crossdiff.analysis.results.load_analysis`; an error
        says to run ``crossdiff analyze`` when it is missing)."""
        from crossdiff.analysis.results import load_analysis

        return load_analysis(self.root)

    def load_feature_columns(self, columns: Sequence[str]) -> pa.Table | None:
        """Those of ``columns`` that RUN/analysis's feature table has, None without one
        (:func:`crossdiff.analysis.results.read_feature_columns`: no examples read, no
        metadata needed)."""
        from crossdiff.analysis.results import read_feature_columns

        return read_feature_columns(self.root, columns)

    # ---- interpret -----------------------------------------------------------------------
    def has_interpretations(self) -> bool:
        """Whether ``crossdiff interpret`` wrote RUN/interpret."""
        from crossdiff.interpret.results import has_interpretations

        return has_interpretations(self.root)

    def load_interpretations(self) -> InterpretResult:
        """RUN/interpret read back (:func:`crossdiff.interpret.results.load_interpretations`;
        an error says to run ``crossdiff interpret`` when it is missing)."""
        from crossdiff.interpret.results import load_interpretations

        return load_interpretations(self.root)

    # ---- recurrence ----------------------------------------------------------------------
    def load_recurrence(self, *, current_only: bool = True) -> RecurrenceResult | None:
        """RUN/recurrence read back, None when ``crossdiff compare`` has not run, or
        (``current_only``) when the reference crosscoder changed since
        (:func:`crossdiff.recurrence.comparison.load_recurrence`)."""
        from crossdiff.recurrence.comparison import load_recurrence

        return load_recurrence(self.root, current_only=current_only)

    # ---- steering ------------------------------------------------------------------------
    def steering_file(self, feature: int) -> Path:
        """Where ``crossdiff steer`` saves feature ``feature``'s result."""
        from crossdiff.steering.result import result_path

        return result_path(self.steering, feature)

    def steered_features(self) -> list[int]:
        """The features with a saved steering result, in index order."""
        from crossdiff.steering.result import steered_features

        return steered_features(self.steering)

    def load_steering(self, feature: int) -> SteeringResult | None:
        """Feature ``feature``'s steering result, None when it was not steered; a damaged
        file is an error naming it (:meth:`crossdiff.steering.result.SteeringResult.load`)."""
        from crossdiff.steering.result import load_result

        return load_result(self.steering, feature)
