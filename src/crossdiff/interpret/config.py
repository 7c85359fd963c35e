"""``InterpretConfig``: every setting of ``crossdiff interpret`` in one typed dataclass."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from crossdiff.errors import CrossdiffError, reject_unknown_fields

HARM_CATEGORIES: tuple[str, ...] = (
    "bias",
    "censorship",
    "misalignment",
    "deception",
    "jailbreaks",
    "medical misinformation",
    "violence",
    "sexual content",
)
"""The harm screen's categories (METHOD.md §5)."""

INTERPRETABLE_AT = 0.8
"""Detection balanced accuracy at which a feature counts as interpretable (METHOD.md §5)."""

NEGATIVES: tuple[str, ...] = ("random", "hard", "mixed")
"""Kinds of non-activating contexts detection is scored against (``InterpretConfig.negatives``)."""


@dataclass
class InterpretConfig:
    """How to explain and score features. Defaults: the offline ``stats`` backend, the first 50
    reviewable candidates of each model plus 10 shared controls."""

    explainer: str = "stats"
    """Who writes explanations: ``stats`` (offline, deterministic contrastive statistics),
    ``hf:<model>`` (a local transformers chat model: built-in alias, folder or hub id) or
    ``openai:<base URL>#<model>`` (any OpenAI-compatible endpoint; its key is read from
    $CROSSDIFF_OPENAI_API_KEY, else $OPENAI_API_KEY: ``api_key_env``)."""
    judge: str = "same"
    """Who scores them (detection, fuzzing, harm screen): a backend spec as for ``explainer``,
    or ``same`` (the explainer's backend). ``stats`` scores by the explanation's terms."""
    max_features: int = 50
    """Reviewable exclusive candidates explained per model, in ranking order (0: none)."""
    shared: int = 10
    """Shared features explained as a control (a deterministic sample of alive ones)."""
    features: list[int] | None = None
    """Explain exactly these features instead (overrides max_features and shared)."""
    explain_examples: int = 12
    """At most this many activating examples (top and quantile-band ones, alternately) go into
    the explanation; the remaining ones are held out for scoring."""
    score_examples: int = 10
    """Held-out activating examples per score (detection adds as many non-activating contexts,
    fuzzing as many wrongly marked copies), so each score is over up to 2x this many."""
    pool_rows: int = 2000
    """Random store rows encoded once to find non-activating contexts for every feature."""
    negatives: str = "mixed"
    """What detection's non-activating contexts are: ``random`` (random tokens of the pool),
    ``hard`` (per held-out example a context with the same token where the feature is exactly
    0, so only the context tells them apart; a random one where none exists) or ``mixed``
    (every other held-out example gets a hard one, the rest random ones; the default). With
    ``hard`` and ``mixed`` the stats explainer's contrast also holds same-token contexts."""
    search_rows: int = 1_000_000
    """Store rows searched for same-token contexts (all of them up to this many, else a
    seeded sample); unused with ``negatives: random``."""
    context_chars: int = 160
    """Characters of context before the marked token shown to explainer and judge (after: a
    third of it)."""
    judge_batch: int = 5
    """Examples per judge request for LLM judges (the reply is one list of numbers)."""
    seed: int = 0
    """Seed of every sampling choice (shared controls, pool rows, decoys, shuffles)."""
    concurrency: int = 4
    """Features processed in parallel (threads; LLM requests in flight at most this many). The
    hf backend serialises its generate calls whatever this is."""
    timeout_s: float = 60.0
    """Seconds one LLM request may take before it is abandoned (then retried)."""
    retries: int = 3
    """Retries of a failed LLM request (timeouts, connection and server errors)."""
    backoff_s: float = 1.0
    """First retry waits this long; each further retry twice as long."""
    max_new_tokens: int = 120
    """Tokens an LLM may write for an explanation (judge replies get a small fixed budget)."""
    device: str = "auto"
    """Device of an ``hf:`` model ("auto", "cpu", "cuda", ...)."""
    dtype: str = "auto"
    """Dtype of an ``hf:`` model ("auto", "float32", "bfloat16", ...)."""
    api_key_env: str = "CROSSDIFF_OPENAI_API_KEY"
    """Environment variable holding the API key of an ``openai:`` endpoint (falls back to
    OPENAI_API_KEY, then "none", which local servers accept). Never given on the command line."""
    price_per_mtok: float = 0.0
    """Price per million tokens (input and output alike) for the cost estimate; 0: no price."""
    progress: bool = True
    """Show a progress bar."""
    cache: bool = True
    """Reuse (and write) cached LLM replies under RUN/interpret/cache/."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes recorded in interpret.json (not used by the computation)."""

    def validate(self) -> None:
        """Raise CrossdiffError naming the bad value and the fix."""
        for name in ("max_features", "shared", "pool_rows", "search_rows", "retries"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise CrossdiffError(f"{name}={value!r} must be a non-negative integer")
        for name in ("explain_examples", "score_examples", "judge_batch", "concurrency"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise CrossdiffError(f"{name}={value!r} must be a positive integer")
        if self.negatives not in NEGATIVES:
            raise CrossdiffError(
                f"negatives={self.negatives!r} must be one of {', '.join(NEGATIVES)}"
            )
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise CrossdiffError(f"max_new_tokens={self.max_new_tokens!r} must be >= 1")
        if self.context_chars < 10:
            raise CrossdiffError(f"context_chars={self.context_chars!r} must be at least 10")
        if not self.timeout_s > 0 or self.backoff_s < 0:
            raise CrossdiffError(
                f"timeout_s={self.timeout_s!r} must be > 0 and backoff_s={self.backoff_s!r} >= 0"
            )
        if self.features is not None and (
            not isinstance(self.features, list)
            or not all(isinstance(f, int) for f in self.features)
        ):
            raise CrossdiffError(f"features={self.features!r} must be a list of feature indices")

    @property
    def judge_spec(self) -> str:
        """The judge's backend spec with ``same`` resolved."""
        return self.explainer if self.judge in ("", "same") else self.judge

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InterpretConfig:
        """From a dict (e.g. the ``interpret`` section of a run config); unknown keys are an
        error, not silently ignored."""
        reject_unknown_fields(cls, data, "interpret config keys", list_known=True)
        return cls(**data)
