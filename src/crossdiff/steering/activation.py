"""One feature's activation, computed from one or both models' residual streams.

Steering in clamp mode needs "how strongly is feature i active at this position" inside a
forward hook, for every position of every generated token, and ``s_max`` needs the same over a
whole store. Encoding the full dictionary (131,072 features in the paper) for that is wasteful
when the crosscoder's selection is per sample and depends on feature i alone:

- ReLU crosscoders: ``f_i = relu(pre_i)``;
- BatchTopK with a calibrated inference threshold (any trained crosscoder): ``f_i = pre_i``
  where ``relu(pre_i) x selection weight_i`` exceeds the threshold of i's group, else 0.

Only those two cases are computed from feature i's encoder column alone (a dot product per
position). TopK crosscoders, and BatchTopK ones whose threshold was never calibrated, select
among all features of a sample, so the full encoder runs; the uncalibrated BatchTopK case then
keeps each position's own top k (the per-sample meaning of the batch top-k), one position at a
time, so the result never depends on which other rows happen to share the batch.

``FeatureReader`` is tested against ``Crosscoder.encode`` for every case.
"""

from __future__ import annotations

import math

import torch

from crossdiff.crosscoder.model import Crosscoder
from crossdiff.errors import CrossdiffError


class FeatureReader:
    """Computes feature ``feature``'s activation from normalized residual streams.

    Either side may be left out (``None``), which reads it as zeros: for a shared feature that is
    the single-model approximation clamp mode uses (documented in docs/steering.md).
    """

    def __init__(self, crosscoder: Crosscoder, feature: int) -> None:
        self.cc = crosscoder
        self.feature = crosscoder.partition.check_index(feature)
        p = crosscoder.partition
        cfg = crosscoder.config
        with torch.no_grad():
            self.columns: dict[str, torch.Tensor | None] = {}
            for m, weight in (("a", crosscoder.W_enc_a), ("b", crosscoder.W_enc_b)):
                col = int(p.local_index(m)[self.feature])
                self.columns[m] = weight[:, col].detach().float() if col >= 0 else None
            self.bias = float(crosscoder.b_enc[self.feature])
            self.weight = float(crosscoder.selection_weight()[self.feature])
        self._device_columns: dict[tuple[str, torch.device], torch.Tensor] = {}
        group = 1 if self.feature in p.designated else 0
        self.threshold = float(crosscoder.threshold[group])
        if cfg.activation == "relu":
            self.method = "relu"
        elif cfg.activation == "batchtopk" and not math.isnan(self.threshold):
            self.method = "threshold"
        elif cfg.activation == "topk":
            self.method = "topk"
        else:
            self.method = "per-row topk"

    @property
    def fast(self) -> bool:
        """True when the activation needs only this feature's encoder column."""
        return self.method in ("relu", "threshold")

    def _rows(self, x_a: torch.Tensor | None, x_b: torch.Tensor | None) -> int:
        present = [x for x in (x_a, x_b) if x is not None]
        if not present:
            raise CrossdiffError("FeatureReader needs the residual stream of at least one model")
        for x in present:
            if x.ndim != 2:
                raise CrossdiffError(f"expected (rows, width) activations, got {tuple(x.shape)}")
        return int(present[0].shape[0])

    def _column_on(self, m: str, device: torch.device) -> torch.Tensor | None:
        """Feature i's encoder column for model m on ``device`` (copied once per device)."""
        col = self.columns[m]
        if col is None or col.device == device:
            return col
        key = (m, device)
        if key not in self._device_columns:
            self._device_columns[key] = col.to(device)
        return self._device_columns[key]

    def preact(self, x_a: torch.Tensor | None, x_b: torch.Tensor | None) -> torch.Tensor:
        """(N,) pre-activation of the feature (missing sides read as zero)."""
        n = self._rows(x_a, x_b)
        out = None
        for m, x in (("a", x_a), ("b", x_b)):
            col = self._column_on(m, x.device) if x is not None else None
            if x is None or col is None:
                continue
            term = x.float() @ col
            out = term if out is None else out + term
        if out is None:  # the given side has no encoder column for this feature
            device = (x_a if x_a is not None else x_b).device  # type: ignore[union-attr]
            out = torch.zeros(n, device=device)
        return out + self.bias

    def __call__(
        self, x_a: torch.Tensor | None = None, x_b: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(N,) float32 activation of the feature for N normalized rows."""
        with torch.no_grad():
            if self.method in ("relu", "threshold"):
                pre = self.preact(x_a, x_b)
                if self.method == "relu":
                    return pre.clamp_min(0)
                score = pre.clamp_min(0) * self.weight
                return torch.where(score > max(self.threshold, 0.0), pre, torch.zeros_like(pre))
            n = self._rows(x_a, x_b)
            cfg = self.cc.config
            ref = x_a if x_a is not None else x_b
            assert ref is not None
            device = self.cc.b_enc.device  # the full encoder runs where the crosscoder is
            xa = (
                x_a.float().to(device)
                if x_a is not None
                else torch.zeros(n, cfg.d_a, device=device)
            )
            xb = (
                x_b.float().to(device)
                if x_b is not None
                else torch.zeros(n, cfg.d_b, device=device)
            )
            if self.method == "topk":
                return self._column(xa, xb).to(ref.device)
            # Uncalibrated BatchTopK: each row alone, so its batch top-k is its own top-k.
            rows = [self._column(xa[r : r + 1], xb[r : r + 1]) for r in range(n)]
            return torch.cat(rows).to(ref.device)

    def _column(self, x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
        codes = self.cc.encode_sparse(x_a, x_b, use_threshold=False)
        out = torch.zeros(x_a.shape[0], device=x_a.device)
        hit = codes.feats == self.feature
        out[codes.rows[hit]] = codes.vals[hit].float()
        return out
