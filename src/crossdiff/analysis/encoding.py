"""Feature activations as sparse triplets, for every activation mode, in inference mode.

The analysis never builds a dense (rows, features) matrix for BatchTopK/TopK crosscoders: with
131k features a 4096-row batch would be 2 GiB. ``encode_batch`` returns (rows, feats, vals)
sorted by row (then feature), plus the reconstructions when asked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from crossdiff.crosscoder.model import Crosscoder, SparseCodes


@dataclass
class EncodedBatch:
    rows: torch.Tensor  # (nnz,) row within the batch
    feats: torch.Tensor  # (nnz,) feature index
    vals: torch.Tensor  # (nnz,) activation (> 0)
    recon_a: torch.Tensor | None = None  # (B, d_a) normalized reconstruction
    recon_b: torch.Tensor | None = None


@torch.no_grad()
def encode_batch(
    cc: Crosscoder, x_a: torch.Tensor, x_b: torch.Tensor, *, recon: bool = False
) -> EncodedBatch:
    """Sparse activations of normalized inputs (the crosscoder must be in eval mode, so that
    BatchTopK uses its learned per-sample threshold)."""
    if cc.config.activation == "relu":
        f = cc.encode(x_a, x_b)
        rows, feats = torch.nonzero(f > 0, as_tuple=True)
        out = EncodedBatch(rows, feats, f[rows, feats])
        if recon:
            out.recon_a, out.recon_b = cc.decode(f)
        return out
    codes = cc.encode_sparse(x_a, x_b)
    keep = codes.vals > 0
    rows, feats, vals = codes.rows[keep], codes.feats[keep], codes.vals[keep].detach()
    out = EncodedBatch(rows, feats, vals)
    if recon:
        kept = SparseCodes(rows, feats, vals, codes.batch, codes.n_features, codes.min_score)
        out.recon_a, out.recon_b = cc.decode_sparse(kept)
    return out


def threshold_calibrated(cc: Crosscoder) -> bool:
    """Whether BatchTopK inference uses a learned threshold (else it falls back to the batch's
    own top-k, which makes activations depend on the batch)."""
    if cc.config.activation != "batchtopk":
        return True
    return not math.isnan(float(cc.threshold[0]))


@torch.no_grad()
def firing_thresholds(cc: Crosscoder, min_positive: torch.Tensor) -> torch.Tensor:
    """(F,) pre-activation a feature must exceed to fire, per feature, in inference mode.

    BatchTopK with a calibrated threshold fires when ``pre * selection_weight > threshold``,
    i.e. ``pre > threshold / selection_weight`` (designated shared features have their own
    threshold); ReLU fires above 0. TopK (and uncalibrated BatchTopK) has no per-feature rule,
    so the smallest activation the feature was seen with stands in (``min_positive``).
    """
    n = cc.config.n_features
    dev = cc.b_enc.device
    if cc.config.activation == "relu":
        return torch.zeros(n, device=dev)
    observed = torch.where(
        torch.isfinite(min_positive),
        min_positive.to(dev),
        torch.full((n,), float("inf"), device=dev),
    )
    if not threshold_calibrated(cc) or cc.config.activation == "topk":
        # strictly-greater test below: step just under the observed minimum
        return torch.nextafter(observed, torch.zeros_like(observed))
    weight = cc.selection_weight().float().clamp_min(1e-12)
    thr = torch.full((n,), max(float(cc.threshold[0]), 0.0), device=dev)
    p = cc.partition
    if p.n_designated and not math.isnan(float(cc.threshold[1])):
        thr[p.designated.start : p.designated.stop] = max(float(cc.threshold[1]), 0.0)
    return thr / weight
