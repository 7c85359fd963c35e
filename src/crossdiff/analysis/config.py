"""Settings of ``crossdiff analyze``: one typed dataclass, saved into ``analysis.json``.

Every number the analysis pass, the exclusivity check and the ranking use lives here, with the
reason for its default, so a run folder records exactly what produced its feature table.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from crossdiff.errors import CrossdiffError, reject_unknown_fields
from crossdiff.store.stats import HIGH_NORM_FACTOR


@dataclass
class AnalysisConfig:
    """How to analyse a trained crosscoder over its activation store."""

    top_n: int = 20
    """Strongest activations kept per feature (the published method shows top examples)."""
    sample_size: int = 64
    """Uniform random sample of each feature's activations kept while streaming (bottom-k of a
    hash of (row, feature)); the quantile-band examples are drawn from it."""
    quantile_bands: int = 4
    """Bands of equal probability mass over a feature's activation distribution (4 = quartiles)
    from which weaker examples are shown, so an auditor sees typical activations, not only the
    maximum (reviewers called top-only examples cherry-picked)."""
    per_band: int = 3
    """Examples drawn per quantile band."""
    batch_size: int = 4096
    """Rows per streamed batch (memory ~ batch x (d_a + d_b + k) floats)."""
    rel_hi: float = 0.9
    """Standard crosscoders: relative decoder norm above this labels a feature A-exclusive
    (docs/METHOD.md §3: 0.9 for real models, 0.8 for the toy)."""
    rel_lo: float = 0.1
    """Standard crosscoders: relative decoder norm below this labels a feature B-exclusive."""
    min_count: int = 5
    """A feature with fewer activations than this over the analysed rows is near-dead and left
    out of the ranking (its examples cannot show a pattern)."""
    min_frequency: float = 1e-6
    """...or with an activation frequency below this."""
    outlier_factor: float | None = HIGH_NORM_FACTOR
    """Leave out pairs whose normalized norm exceeds this x the typical norm (the rule that
    keeps them out of training; see Crosscoder.inlier_mask); None keeps every pair."""
    eval_fraction: float | None = None
    """Fraction of documents in the store's eval split (held out from crosscoder training);
    None = the store's default (``crossdiff.store.reader.DEFAULT_EVAL_FRACTION``). Must match
    what training used."""
    probe_split: Literal["crossfit", "eval", "all"] = "crossfit"
    """Rows the exclusivity check uses: 'crossfit' (default: every row of the store, each
    scored by maps fitted on the other ``probe_folds`` folds of documents, so every candidate
    is judged on all its activations), 'eval' (the store's eval split only: few rows) or
    'all' (all documents, one fit/test cut)."""
    probe_folds: int = 5
    """Folds of documents for 'crossfit' (memory: probe_folds + 1 sets of d x d moments)."""
    probe_test_fraction: float = 0.25
    """Share of the probe documents kept apart to score the probe (a second hash of the
    document index); the rest fits it."""
    probe_test_rows: int = 32768
    """At most this many test rows are kept in memory (bf16) for the scoring step; bounded so
    memory does not grow with the store."""
    map_sources: tuple[str, ...] = ()
    """Corpus sources (comma-separated on the command line: the ``source`` of the store's
    documents, as ``crossdiff store info`` lists them, e.g. ``builtin:wiki``, a file's name)
    whose documents alone fit the check's cross-model map; empty: every document. The test
    rows are all documents either way. Why: a map fitted on the audit's own prompts learns
    what one model does *in reply to* a trigger both models see (the fine-tuned model's
    refusal, predicted from the other model's reading of the question) and refutes it; a map
    fitted on general text carries how the two models correspond in general
    (docs/analysis-report.md)."""
    mapped_output: bool = False
    """DFC across architectures (no shared residual basis): read the output check through the
    cross-model map: along an exclusive feature's own decoder direction, does the other model's
    activation, mapped into the feature's model, carry what the feature writes when it fires
    (``out_beta_mapped / out_beta_own``)? A feature the other model predicts but whose output
    it lacks becomes 'conditional', as the shared-basis output check does for a fine-tune.
    Meant with ``map_sources``: a map fitted on the audit's prompts learns the behaviour
    itself (docs/analysis-report.md)."""
    ridge: float = 1e-3
    """Ridge penalty of the cross-model map, relative to the mean variance per dimension of the
    predicting model (scale-free)."""
    exclusive_max_r2: float = 0.5
    """The check refutes an exclusive label when the other model predicts the feature's
    activation with held-out R^2 at or above this (it explains at least half its variance)."""
    latent_scaling_max: float = 0.5
    """Standard crosscoders: latent scaling ratio (other / own) at or above this also refutes."""
    shared_controls: int = 256
    """Shared features also put through the check as a control group (their cross-model R^2
    shows what "the other model has it" looks like on this pair of models)."""
    min_test_active: int = 10
    """A feature needs this many activations among the probe's test rows to be checked; else
    its check is 'untested'."""
    tokenization_min_share: float = 0.3
    """A candidate is flagged 'tokenization' when at least this share of its top examples, or
    of its activation mass, sits at word-internal positions (the shared end falls inside a
    word: the tokenizers split it differently) ..."""
    tokenization_min_ratio: float = 3.0
    """... and that share is at least this many times the store's base rate; or when the
    tokenization descriptors plus the other model explain its activation (R^2 >=
    exclusive_max_r2) while the other model alone does not. Never on a same-tokenizer pair."""
    twin_min_corr: float = 0.5
    """An A-exclusive and a B-exclusive feature whose activations correlate at least this much
    over the same rows are 'twins': one shared concept split in two (both get verdict 'twin')."""
    contexts_for: Literal["exclusive", "all", "none"] = "exclusive"
    """Which features get their example texts copied into examples.parquet: 'exclusive'
    (exclusive candidates: what the report shows), 'all', or 'none'. Provenance (row, document,
    offsets) is always written; ``crossdiff show`` reads texts from the store when absent."""
    context_before: int = 240
    """Characters of context kept before the activating token."""
    context_after: int = 80
    """Characters kept after it."""
    seed: int = 0
    """Seeds the example sampling hash (the analysis is deterministic given the seed)."""
    device: str = "auto"
    """'auto' (cuda if available), 'cpu', 'cuda', ..."""
    max_rows: int | None = None
    """Analyse only the first N rows of the store (quick looks); None = all."""
    progress: bool = True
    """Show progress bars."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise CrossdiffError naming the bad value and the fix."""
        for name in ("top_n", "sample_size", "quantile_bands", "batch_size", "probe_test_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CrossdiffError(f"analysis {name}={value!r} must be a positive integer")
        for name in (
            "per_band",
            "min_count",
            "min_test_active",
            "shared_controls",
            "context_before",
            "context_after",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise CrossdiffError(f"analysis {name}={value!r} must be an integer >= 0")
        if not 0.0 <= self.rel_lo < self.rel_hi <= 1.0:
            raise CrossdiffError(
                f"relative norm thresholds rel_lo={self.rel_lo}, rel_hi={self.rel_hi}: need "
                "0 <= rel_lo < rel_hi <= 1 (real models: 0.1 / 0.9)"
            )
        if self.probe_split not in ("crossfit", "eval", "all"):
            raise CrossdiffError(
                f"probe_split={self.probe_split!r}: use 'crossfit', 'eval' or 'all'"
            )
        if not isinstance(self.probe_folds, int) or self.probe_folds < 2:
            raise CrossdiffError(f"probe_folds={self.probe_folds!r} must be an integer >= 2")
        for name in ("tokenization_min_share", "twin_min_corr"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise CrossdiffError(f"analysis {name}={value!r} must be in (0, 1]")
        if not self.tokenization_min_ratio >= 1.0:
            raise CrossdiffError(
                f"tokenization_min_ratio={self.tokenization_min_ratio!r} must be >= 1"
            )
        if not 0.0 < self.probe_test_fraction < 1.0:
            raise CrossdiffError(
                f"probe_test_fraction={self.probe_test_fraction!r} must be in (0, 1)"
            )
        if self.eval_fraction is not None and not 0.0 < self.eval_fraction < 1.0:
            raise CrossdiffError(f"eval_fraction={self.eval_fraction!r} must be in (0, 1)")
        if not self.ridge > 0:
            raise CrossdiffError(f"ridge={self.ridge!r} must be positive")
        if self.outlier_factor is not None and not self.outlier_factor > 0:
            raise CrossdiffError(
                f"analysis outlier_factor={self.outlier_factor!r} must be positive (or None)"
            )
        for name in ("exclusive_max_r2", "latent_scaling_max", "min_frequency"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise CrossdiffError(f"analysis {name}={value!r} must be in [0, 1]")
        if self.contexts_for not in ("exclusive", "all", "none"):
            raise CrossdiffError(
                f"contexts_for={self.contexts_for!r}: use 'exclusive', 'all' or 'none'"
            )
        if not isinstance(self.map_sources, (list, tuple)) or not all(
            isinstance(x, str) and x for x in self.map_sources
        ):
            raise CrossdiffError(
                f"map_sources={self.map_sources!r} must be a list of corpus source names "
                "(crossdiff store info lists them), or empty for every document"
            )
        self.map_sources = tuple(self.map_sources)
        if self.max_rows is not None and self.max_rows < 1:
            raise CrossdiffError(f"max_rows={self.max_rows!r} must be a positive integer or None")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AnalysisConfig:
        reject_unknown_fields(cls, data, "analysis config fields")
        return cls(**data)
