"""Which features belong to which model: the index layout of a crosscoder's dictionary.

Feature indices are stable and documented: ``[0, n_a)`` are A-exclusive, ``[n_a, n_a + n_b)``
B-exclusive, and the rest shared, with the designated shared features (DSF), if any, as the
last ``n_designated`` shared indices. Every output of crossdiff names features by these indices.

>>> p = FeaturePartition(n_features=10, n_a=1, n_b=2)
>>> p.labels().tolist()
['A', 'B', 'B', 'S', 'S', 'S', 'S', 'S', 'S', 'S']
>>> p.writes_to("a")[:4].tolist()
[True, False, False, True]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from crossdiff.errors import CrossdiffError

MODELS = ("a", "b")


def check_model(m: str) -> str:
    """Normalize a model name ('a'/'b', any case) or raise a clear error."""
    key = str(m).lower()
    if key not in MODELS:
        raise CrossdiffError(f"model {m!r} is not 'a' or 'b'")
    return key


@dataclass(frozen=True)
class FeaturePartition:
    """Index ranges of the A-exclusive, B-exclusive, shared and designated-shared features."""

    n_features: int
    n_a: int
    n_b: int
    n_designated: int = 0

    @property
    def n_shared(self) -> int:
        return self.n_features - self.n_a - self.n_b

    @property
    def a_exclusive(self) -> range:
        return range(0, self.n_a)

    @property
    def b_exclusive(self) -> range:
        return range(self.n_a, self.n_a + self.n_b)

    @property
    def shared(self) -> range:
        """All shared features, designated ones included."""
        return range(self.n_a + self.n_b, self.n_features)

    @property
    def designated(self) -> range:
        return range(self.n_features - self.n_designated, self.n_features)

    def labels(self) -> np.ndarray:
        """'A', 'B' or 'S' per feature index."""
        out = np.full(self.n_features, "S", dtype="<U1")
        out[: self.n_a] = "A"
        out[self.n_a : self.n_a + self.n_b] = "B"
        return out

    def label(self, feature: int) -> str:
        """'A-exclusive', 'B-exclusive', 'designated shared' or 'shared' for one index."""
        self.check_index(feature)
        if feature < self.n_a:
            return "A-exclusive"
        if feature < self.n_a + self.n_b:
            return "B-exclusive"
        if feature >= self.n_features - self.n_designated:
            return "designated shared"
        return "shared"

    def check_index(self, feature: int) -> int:
        if not 0 <= int(feature) < self.n_features:
            raise CrossdiffError(
                f"feature {feature} out of range: the crosscoder has {self.n_features} features "
                f"(0-{self.n_features - 1})"
            )
        return int(feature)

    def writes_to(self, m: str) -> np.ndarray:
        """Boolean mask: features with a decoder into model m."""
        m = check_model(m)
        mask = np.ones(self.n_features, dtype=bool)
        if m == "a":
            mask[self.b_exclusive.start : self.b_exclusive.stop] = False
        else:
            mask[: self.n_a] = False
        return mask

    def local_index(self, m: str) -> torch.Tensor:
        """Map global feature index -> row of model m's own parameter block (-1: none).

        Model A's block holds [A-exclusive, shared] in that order; model B's [B-exclusive,
        shared]. Designated shared features are the tail of the shared part.
        """
        m = check_model(m)
        idx = torch.full((self.n_features,), -1, dtype=torch.long)
        n_own = self.n_a if m == "a" else self.n_b
        own_start = 0 if m == "a" else self.n_a
        idx[own_start : own_start + n_own] = torch.arange(n_own)
        idx[self.n_a + self.n_b :] = torch.arange(n_own, n_own + self.n_shared)
        return idx
