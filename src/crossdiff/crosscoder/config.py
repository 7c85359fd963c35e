"""Configuration of a crosscoder: shapes, partition, sparsity.

One dataclass describes every member of the family (docs/METHOD.md §3): the standard crosscoder
(no exclusive features), the Dedicated Feature Crosscoder (DFC, exclusive blocks per model)
and designated shared features (DSF, tied decoders). It is saved as ``config.json`` beside
the weights, so a crosscoder loads without the run folder.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from crossdiff.errors import CrossdiffError, reject_unknown_fields

Activation = Literal["batchtopk", "topk", "relu"]
SelectionNorm = Literal["l2", "sum", "none"]

CONFIG_VERSION = 1


@dataclass
class CrosscoderConfig:
    """Everything needed to build a crosscoder (not how to train it: see ``TrainConfig``)."""

    d_a: int
    """Residual width of model A."""
    d_b: int
    """Residual width of model B."""
    n_features: int
    """Dictionary size F (the paper: 131,072 = 32 x 4096)."""
    frac_exclusive_a: float = 0.05
    """Fraction of F reserved for features that read and write only model A (paper: 5%)."""
    frac_exclusive_b: float = 0.05
    """Fraction of F reserved for features that read and write only model B."""
    frac_designated_shared: float = 0.0
    """Fraction of F that are designated shared features (DSF): shared features whose decoder is
    one vector used for both models. Requires d_a == d_b."""
    activation: Activation = "batchtopk"
    """Sparsity: 'batchtopk' (k x batch largest in the batch, threshold at inference),
    'topk' (k per sample), or 'relu' (ReLU + decoder-norm-weighted L1, the 2024 crosscoder)."""
    k: int = 200
    """Average active features per sample for batchtopk/topk (the paper: 200)."""
    dsf_k_factor: float = 2.0
    """DSF only: the designated set gets its own top-k budget of dsf_k_factor x its proportional
    share of k (the paper's best: 2x); the remaining features share the rest of k."""
    selection_norm: SelectionNorm = "l2"
    """How BatchTopK/TopK rank candidates: activation x decoder norm, where the norm is
    'l2' = sqrt(|d_A|^2 + |d_B|^2) (the length of what the feature writes into the concatenated
    residuals, so exclusive and shared features compete on equal terms), 'sum' = |d_A| + |d_B|
    (the paper; an exclusive feature then competes at about half the scale of a shared one),
    or 'none' (activation alone)."""
    threshold_beta: float = 0.999
    """EMA factor of the BatchTopK inference threshold."""
    init_decoder_norm: float = 0.4
    """Initial norm of every decoder row of every model (paper: 0.4); the encoder starts as the
    decoder transposed. The same for standard, DFC and DSF, so they start comparable."""
    scale_a: float = 1.0
    """Multiply model A's (centred, if ``centered``) raw activations by this before encoding:
    the 'centered' normalization brings the root mean squared centred norm, the 'median' one
    the median norm, to sqrt((d_a + d_b) / 2). Decoded outputs are in the same scaled space."""
    scale_b: float = 1.0
    """Same for model B."""
    centered: bool = False
    """Subtract each model's per-dimension mean (the buffers ``mean_a``/``mean_b`` saved with
    the weights) before scaling: normalized = (raw - mean) x scale (the ``centered``
    normalization, ``TrainConfig.normalization``). False for crosscoders saved before it
    existed and for the paper's ``median`` scaling: normalized = raw x scale."""
    model_a: str | None = None
    """Optional: the model A this crosscoder was trained on (id), for provenance."""
    model_b: str | None = None
    """Optional: model B (id)."""
    layer_a: int | None = None
    """Optional: the layer of model A whose residual stream this reads."""
    layer_b: int | None = None
    """Optional: the layer of model B."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form provenance (e.g. the store path); saved, never interpreted."""

    def __post_init__(self) -> None:
        self.validate()

    # ---- presets -------------------------------------------------------------------------
    @classmethod
    def standard(cls, d_a: int, d_b: int, n_features: int, **kw: Any) -> CrosscoderConfig:
        """The standard crosscoder: every feature reads and writes both models."""
        return cls(d_a, d_b, n_features, frac_exclusive_a=0.0, frac_exclusive_b=0.0, **kw)

    @classmethod
    def dfc(
        cls, d_a: int, d_b: int, n_features: int, exclusive: float = 0.05, **kw: Any
    ) -> CrosscoderConfig:
        """The Dedicated Feature Crosscoder with ``exclusive`` of F per model (paper: 0.05)."""
        return cls(
            d_a, d_b, n_features, frac_exclusive_a=exclusive, frac_exclusive_b=exclusive, **kw
        )

    @classmethod
    def dsf(
        cls, d_a: int, d_b: int, n_features: int, designated: float = 0.05, **kw: Any
    ) -> CrosscoderConfig:
        """Standard crosscoder plus designated shared features with tied decoders (DSF)."""
        return cls(
            d_a,
            d_b,
            n_features,
            frac_exclusive_a=0.0,
            frac_exclusive_b=0.0,
            frac_designated_shared=designated,
            **kw,
        )

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def n_exclusive_a(self) -> int:
        return round(self.frac_exclusive_a * self.n_features)

    @property
    def n_exclusive_b(self) -> int:
        return round(self.frac_exclusive_b * self.n_features)

    @property
    def n_designated(self) -> int:
        return round(self.frac_designated_shared * self.n_features)

    @property
    def n_shared(self) -> int:
        """Shared features, designated ones included."""
        return self.n_features - self.n_exclusive_a - self.n_exclusive_b

    def validate(self) -> None:
        """Raise CrossdiffError naming the bad value and the fix."""
        for name in ("d_a", "d_b", "n_features", "k"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise CrossdiffError(f"{name}={value!r} must be a positive integer")
        for name in ("frac_exclusive_a", "frac_exclusive_b", "frac_designated_shared"):
            value = getattr(self, name)
            if not 0.0 <= float(value) < 1.0:
                raise CrossdiffError(f"{name}={value!r} must be a fraction in [0, 1)")
        if self.activation not in ("batchtopk", "topk", "relu"):
            raise CrossdiffError(
                f"activation={self.activation!r} is unknown; use 'batchtopk', 'topk' or 'relu'"
            )
        if self.selection_norm not in ("l2", "sum", "none"):
            raise CrossdiffError(
                f"selection_norm={self.selection_norm!r} is unknown; use 'l2', 'sum' or 'none'"
            )
        if self.n_exclusive_a + self.n_exclusive_b + self.n_designated > self.n_features:
            raise CrossdiffError(
                f"partition does not fit: {self.n_exclusive_a} A-exclusive + {self.n_exclusive_b} "
                f"B-exclusive + {self.n_designated} designated shared features > n_features="
                f"{self.n_features}; lower the fractions (they must sum to less than 1)"
            )
        if self.n_designated and self.d_a != self.d_b:
            raise CrossdiffError(
                f"designated shared features tie decoders across models and need equal widths, "
                f"but d_a={self.d_a} and d_b={self.d_b}; set frac_designated_shared=0"
            )
        if self.n_designated and self.activation == "relu":
            raise CrossdiffError(
                "designated shared features use a separate top-k budget; use activation "
                "'batchtopk' or 'topk' with frac_designated_shared > 0"
            )
        if self.activation != "relu" and self.k > self.n_features:
            raise CrossdiffError(f"k={self.k} exceeds n_features={self.n_features}; lower k")
        if not 0.0 < self.threshold_beta < 1.0:
            raise CrossdiffError(f"threshold_beta={self.threshold_beta!r} must be in (0, 1)")
        for name in ("scale_a", "scale_b", "init_decoder_norm"):
            value = float(getattr(self, name))
            if not value > 0 or value != value or value == float("inf"):
                raise CrossdiffError(f"{name}={value!r} must be a positive finite number")

    # ---- serialization -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["config_version"] = CONFIG_VERSION
        data["partition_sizes"] = {
            "a_exclusive": self.n_exclusive_a,
            "b_exclusive": self.n_exclusive_b,
            "shared": self.n_shared,
            "designated_shared": self.n_designated,
        }
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CrosscoderConfig:
        data = dict(data)
        version = data.pop("config_version", CONFIG_VERSION)
        if version > CONFIG_VERSION:
            raise CrossdiffError(
                f"crosscoder config version {version} is newer than this crossdiff supports "
                f"({CONFIG_VERSION}); upgrade crossdiff"
            )
        data.pop("partition_sizes", None)
        reject_unknown_fields(cls, data, "crosscoder config fields", suffix="; is this file ours?")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CrosscoderConfig:
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            raise CrossdiffError(f"no crosscoder config at {path}") from None
        except json.JSONDecodeError as exc:
            raise CrossdiffError(f"{path} is not valid JSON: {exc}") from None
        return cls.from_dict(data)
