"""Both models' activations on one scale before training (``TrainConfig.normalization``): the
scales (and, when centred, the means) come from the source's exact moments when it has them
(a store does), else from a sample of batches.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from crossdiff.crosscoder.config import CrosscoderConfig
from crossdiff.crosscoder.sources import PairSource, source_moments
from crossdiff.crosscoder.train_config import TrainConfig
from crossdiff.errors import CrossdiffError
from crossdiff.store.moments import Moments, moments_of_arrays


def estimate_moments(source: PairSource, tc: TrainConfig) -> Moments:
    """Activation moments from ``scale_estimate_batches`` batches (a source without exact ones)."""
    it = source.batches(tc.batch_size, seed=tc.seed + 10_007)
    xs_a, xs_b = [], []
    for _, (xa, xb) in zip(range(tc.scale_estimate_batches), it):
        xs_a.append(xa.float())
        xs_b.append(xb.float())
    return moments_of_arrays(torch.cat(xs_a), torch.cat(xs_b))


def normalization_for(
    source: PairSource, config: CrosscoderConfig, tc: TrainConfig
) -> tuple[CrosscoderConfig, tuple[torch.Tensor, torch.Tensor] | None]:
    """The crosscoder config with its scales (and the means, when centred) for ``tc``."""
    if tc.normalization == "none":
        return dataclasses.replace(config, scale_a=1.0, scale_b=1.0, centered=False), None
    if tc.normalization == "median":
        scales = source.norm_scales() or estimate_scales(source, tc)
        config = dataclasses.replace(
            config, scale_a=float(scales[0]), scale_b=float(scales[1]), centered=False
        )
        return config, None
    moments = source_moments(source) or estimate_moments(source, tc)
    sa, sb = moments.centered_scales()
    config = dataclasses.replace(config, scale_a=float(sa), scale_b=float(sb), centered=True)
    return config, moments.as_tensors()


def estimate_scales(source: PairSource, tc: TrainConfig) -> tuple[float, float]:
    """Scales bringing each model's median norm to sqrt((d_a + d_b) / 2), from a sample."""
    it = source.batches(tc.batch_size, seed=tc.seed + 10_007)
    norms_a, norms_b = [], []
    for _, (xa, xb) in zip(range(tc.scale_estimate_batches), it):
        norms_a.append(xa.float().norm(dim=1))
        norms_b.append(xb.float().norm(dim=1))
    target = math.sqrt((source.d_a + source.d_b) / 2)
    med_a = float(torch.cat(norms_a).median())
    med_b = float(torch.cat(norms_b).median())
    if not (med_a > 0 and med_b > 0):
        raise CrossdiffError(
            f"median activation norms are {med_a} (A) and {med_b} (B); the data looks empty/zero"
        )
    return target / med_a, target / med_b
