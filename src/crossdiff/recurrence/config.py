"""The matching rule's settings, importable without torch (the CLI's --help reads them)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from crossdiff.errors import CrossdiffError

RULES = ("both", "either", "cosine", "correlation")


@dataclass(frozen=True)
class MatchConfig:
    """When two exclusive features of two crosscoders count as the same feature."""

    min_cosine: float = 0.7
    """Decoder cosine (in the feature's own model) a match needs."""
    min_correlation: float = 0.5
    """Activation correlation over the held-out rows a match needs."""
    rule: str = "both"
    """'both' (cosine AND correlation; the default, see docs/recurrence.md for why),
    'either', or one signal alone ('cosine', 'correlation')."""
    rows: int = 16_384
    """Held-out store rows encoded by every crosscoder (eval split first)."""
    batch_size: int = 1024
    """Rows encoded at once (dense (batch, F) activations: lower it at very large F)."""
    min_active: int = 5
    """A feature firing fewer times than this on the rows has no usable correlation (NaN)."""
    one_to_one: str = "auto"
    """'auto' (scipy's linear_sum_assignment when scipy is installed, else greedy),
    'scipy' or 'greedy'."""

    def validate(self) -> None:
        """Raise CrossdiffError naming the bad value and the fix."""
        if self.rule not in RULES:
            raise CrossdiffError(f"match rule {self.rule!r}: use one of {', '.join(RULES)}")
        for name in ("min_cosine", "min_correlation"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and -1.0 <= float(v) <= 1.0):
                raise CrossdiffError(f"{name}={v!r} must be a number in [-1, 1]")
        for name in ("rows", "batch_size", "min_active"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise CrossdiffError(f"{name}={v!r} must be a positive integer")
        if self.one_to_one not in ("auto", "scipy", "greedy"):
            raise CrossdiffError(f"one_to_one={self.one_to_one!r}: use 'auto', 'scipy' or 'greedy'")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
