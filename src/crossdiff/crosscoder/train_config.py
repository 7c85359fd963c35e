"""How to train a crosscoder: :class:`TrainConfig` and the schedule it defines (learning rate,
k annealing, the AuxK and dead-window defaults, the compute dtype).

Its own file because the CLI, the run config, the published presets and checkpoints read it
without the training loop (crosscoder/train.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from crossdiff.crosscoder.config import CrosscoderConfig
from crossdiff.errors import CrossdiffError, reject_unknown_fields
from crossdiff.store.stats import HIGH_NORM_FACTOR

NORMALIZATIONS = ("centered", "median", "none")


@dataclass
class TrainConfig:
    """How to train (the paper's values as defaults, docs/METHOD.md §3)."""

    steps: int = 100_000
    """Optimizer steps."""
    batch_size: int = 2048
    """Aligned pairs per step (before the high-norm filter)."""
    lr: float = 1e-4
    """Adam learning rate after warm-up."""
    warmup_steps: int = 1000
    """Linear warm-up from 0 to lr."""
    decay_fraction: float = 0.2
    """Linear decay to 0 over this last fraction of the steps (0 = constant lr)."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas."""
    k_anneal_from: int | None = 1000
    """Start k here and lower it linearly to the crosscoder's k (None: no annealing)."""
    k_anneal_steps: int = 5000
    """Steps over which k is annealed."""
    aux_alpha: float = 0.03
    """Weight of the AuxK loss (0 disables it)."""
    aux_k: int | None = None
    """Dead features used by AuxK per sample; None = min(512, max(d_a, d_b) // 2)."""
    dead_window_tokens: int | None = None
    """A feature is dead after this many training samples without firing; None = auto:
    min(10M, max(10 x batch_size, 5% of all training samples)), so AuxK also acts in short
    runs (the published code hard-coded 10M tokens)."""
    l1_coeff: float = 1.0
    """ReLU mode only: weight of the decoder-norm-weighted L1 penalty."""
    resample_every: int | None = None
    """Every N steps, re-initialise features dead for a whole dead window at directions of
    high reconstruction error (crosscoder/resample.py); None = never (the paper). The presets
    of ``crossdiff run`` turn it on: at their short budgets it is what keeps the exclusive
    blocks alive (BatchTopK's norm-weighted ranking otherwise locks out features whose
    decoder shrank)."""
    resample_until: float = 0.7
    """No resampling after this fraction of the steps (resampled features need time to settle
    before the learning-rate decay)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    high_norm_factor: float = HIGH_NORM_FACTOR
    """Drop pairs whose norm exceeds this x the batch median (0 disables)."""
    normalization: str = "centered"
    """How both models' activations are put on one scale before training (set from the
    source, or estimated from a sample): 'centered' (default: subtract each model's mean,
    then scale its root mean squared centred norm to sqrt((d_a + d_b) / 2), so both models'
    variation weighs equally in the loss; store/moments.py), 'median' (the paper: one scalar
    per model bringing its median norm there, no centring) or 'none'."""
    scale_estimate_batches: int = 8
    """Batches used to estimate the normalization when the source does not provide it."""
    exclusive_init: str = "residual"
    """How exclusive features start: 'residual' (at directions of what one model has and the
    other does not linearly predict; crosscoder/init.py) or 'random' (the paper). On the toy
    benchmark 'residual' lifts the DFC's exclusive recall from ~0.2 to ~0.7 (BENCHMARKS.md)."""
    init_samples: int | None = None
    """Pairs drawn (beyond the training stream) for the 'residual' initialisation; None =
    max(16,384, 32 x the larger exclusive block), so every exclusive feature has candidates."""
    seed: int = 0
    """Seeds the weights' initialisation and the data order."""
    device: str = "auto"
    """'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ..."""
    compute_dtype: str = "auto"
    """Dtype of the encoder matmul: 'float32', 'bfloat16', or 'auto' (bf16 on CUDA, else fp32).
    Weights and optimizer state stay float32."""
    checkpoint_every: int = 1000
    """Write a resumable checkpoint every N steps (when a checkpoint folder is given)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    log_every: int = 50
    """Append metrics to train_log.jsonl and refresh the progress bar every N steps."""

    def validate(self) -> None:
        positive = ("steps", "batch_size", "k_anneal_steps", "checkpoint_every", "log_every")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise CrossdiffError(f"train {name}={value!r} must be a positive integer")
        if not self.lr > 0:
            raise CrossdiffError(f"train lr={self.lr!r} must be positive")
        if not 0 <= self.decay_fraction <= 1:
            raise CrossdiffError(f"train decay_fraction={self.decay_fraction!r} must be in [0, 1]")
        if self.warmup_steps < 0:
            raise CrossdiffError(f"train warmup_steps={self.warmup_steps!r} must be >= 0")
        if self.exclusive_init not in ("random", "residual"):
            raise CrossdiffError(
                f"train exclusive_init={self.exclusive_init!r}: use 'random' or 'residual'"
            )
        if self.init_samples is not None and (
            not isinstance(self.init_samples, int) or self.init_samples < 2
        ):
            raise CrossdiffError(f"train init_samples={self.init_samples!r} must be an int >= 2")
        if self.resample_every is not None and (
            not isinstance(self.resample_every, int) or self.resample_every < 1
        ):
            raise CrossdiffError(
                f"train resample_every={self.resample_every!r} must be a positive integer or None"
            )
        if not 0.0 <= self.resample_until <= 1.0:
            raise CrossdiffError(f"train resample_until={self.resample_until!r} must be in [0, 1]")
        if self.normalization not in NORMALIZATIONS:
            raise CrossdiffError(
                f"train normalization={self.normalization!r}: use one of "
                f"{', '.join(map(repr, NORMALIZATIONS))}"
            )
        if self.compute_dtype not in ("auto", "float32", "bfloat16"):
            raise CrossdiffError(
                f"compute_dtype={self.compute_dtype!r}: use 'auto', 'float32' or 'bfloat16'"
            )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        if "adam_betas" in data:
            data["adam_betas"] = tuple(data["adam_betas"])
        if "normalize" in data and "normalization" not in data:  # saved before 'centered'
            data["normalization"] = "median" if data.pop("normalize") else "none"
        reject_unknown_fields(cls, data, "train config fields")
        return cls(**data)


def resolve_compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype of the encoder matmul for ``TrainConfig.compute_dtype`` on ``device``."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def annealed_k(step: int, k: int, tc: TrainConfig) -> int:
    """k at this step: linear from k_anneal_from down to k over k_anneal_steps."""
    if tc.k_anneal_from is None or tc.k_anneal_from <= k or step >= tc.k_anneal_steps:
        return k
    frac = step / tc.k_anneal_steps
    return round(tc.k_anneal_from + (k - tc.k_anneal_from) * frac)


def lr_at(step: int, tc: TrainConfig) -> float:
    if tc.warmup_steps and step < tc.warmup_steps:
        return tc.lr * (step + 1) / tc.warmup_steps
    decay_start = tc.steps * (1 - tc.decay_fraction)
    if tc.decay_fraction > 0 and step >= decay_start:
        return tc.lr * max(0.0, (tc.steps - step) / (tc.steps - decay_start))
    return tc.lr


def default_aux_k(cfg: CrosscoderConfig) -> int:
    return min(512, max(cfg.d_a, cfg.d_b) // 2)


def default_dead_window(tc: TrainConfig) -> int:
    return min(10_000_000, max(10 * tc.batch_size, tc.steps * tc.batch_size // 20))
