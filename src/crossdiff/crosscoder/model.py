"""The crosscoder: one dictionary over two models' residual streams, with exclusive blocks.

Parameters are held per model and per block, never as dense matrices with masked zeros:
model A's encoder has columns only for the A-exclusive and shared features, and its decoder
rows only for those; likewise for B. An A-exclusive feature therefore *cannot* read x_B or
write x̂_B: there is no weight through which it could (docs/METHOD.md §3, DFC).

Layout (see :mod:`crossdiff.crosscoder.partition`): feature indices are
``[A-exclusive | B-exclusive | shared (… | designated shared)]``.

All methods work on *normalized* activations: ``(raw - mean_m) x scale_m`` for a centred
crosscoder (``config.centered``; the means are buffers saved with the weights), ``raw x
scale_m`` otherwise. :meth:`Crosscoder.normalize` maps raw to normalized,
:meth:`Crosscoder.denormalize` maps a reconstruction back to the raw space (the mean goes back
as an explicit offset), and :meth:`decoder_weight` can return the decoder in the model's own
(raw) scale for steering: a direction, which the offset does not change.

Size: the Crosscoder's forward, loss and normalization must agree bit for bit between the
CPU path and the static accelerator path, which are kept side by side to be read together.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from crossdiff.crosscoder import hostsync
from crossdiff.crosscoder.config import CrosscoderConfig
from crossdiff.crosscoder.partition import FeaturePartition, check_model
from crossdiff.crosscoder.sparse import (
    GatheredPreacts,
    select_batch_topk,
    select_batch_topk_static,
    select_threshold,
    select_topk,
    select_topk_static,
    sparse_decode,
)
from crossdiff.errors import CrossdiffError
from crossdiff.store.stats import HIGH_NORM_FACTOR

if TYPE_CHECKING:
    from crossdiff.crosscoder.global_batch import GlobalBatch

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class SparseCodes:
    """Active features of a batch as coordinates: ``vals[n]`` is feature ``feats[n]`` of
    sample ``rows[n]`` (sorted by row). ``group`` is 0 (main) or 1 (designated shared)."""

    rows: torch.Tensor
    feats: torch.Tensor
    vals: torch.Tensor
    batch: int
    n_features: int
    min_score: torch.Tensor  # per group: smallest selected score (for the inference threshold)

    def dense(self) -> torch.Tensor:
        out = self.vals.new_zeros(self.batch, self.n_features)
        return out.index_put((self.rows, self.feats), self.vals)


@dataclass
class CrosscoderOutput:
    features: torch.Tensor  # (B, F) dense feature activations
    recon_a: torch.Tensor  # (B, d_a) normalized reconstruction of model A
    recon_b: torch.Tensor  # (B, d_b)


@dataclass
class LossOutput:
    """One training step's loss and what the trainer needs to keep its running statistics."""

    total: torch.Tensor
    recon: torch.Tensor  # sum over models of mean squared error (summed over dims)
    recon_a: torch.Tensor
    recon_b: torch.Tensor
    aux: torch.Tensor  # AuxK term (already weighted)
    l1: torch.Tensor  # ReLU-mode sparsity penalty (already weighted)
    fired: torch.Tensor  # (F,) bool: features active at least once in this batch
    l0: float | torch.Tensor  # mean active features per sample (a device scalar on the static
    # path, crosscoder/hostsync.py, read only at log steps)
    min_score: torch.Tensor | None  # per threshold group, for the BatchTopK threshold EMA
    var_a: torch.Tensor  # summed variance of the batch (for FVE)
    var_b: torch.Tensor


def _weighted_mean(x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-row values ``x`` over the rows where ``w`` (0/1 per row) is 1 (all: None)."""
    if w is None:
        return x.mean()
    return (x * w).sum() / w.sum().clamp_min(1)


def _normalized_mse(
    pred: torch.Tensor, target: torch.Tensor, w: torch.Tensor | None = None
) -> torch.Tensor:
    """MSE of pred vs target, relative to predicting target's mean (OpenAI's AuxK form); over
    the rows where ``w`` is 1 (all: None)."""
    if w is None:
        denom = (target - target.mean(0, keepdim=True)).pow(2).sum(-1).mean().clamp_min(1e-12)
        return (pred - target).pow(2).sum(-1).mean() / denom
    col = w.unsqueeze(1)
    mean = (target * col).sum(0, keepdim=True) / w.sum().clamp_min(1)
    denom = _weighted_mean((target - mean).pow(2).sum(-1), w).clamp_min(1e-12)
    return _weighted_mean((pred - target).pow(2).sum(-1), w) / denom


def _aux_mse(
    ea: torch.Tensor,
    ta: torch.Tensor,
    eb: torch.Tensor,
    tb: torch.Tensor,
    batch: GlobalBatch | None,
    w: torch.Tensor | None = None,
) -> torch.Tensor:
    """Both models' normalized AuxK MSE; over the global batch when it is spread over ranks
    (the denominators are then the global residual variances, from one all-reduce)."""
    if batch is None:
        return _normalized_mse(ea, ta, w) + _normalized_mse(eb, tb, w)
    den_a, den_b = batch.centred_sq_means(ta, tb)
    num_a = batch.row_mean((ea - ta).pow(2).sum(-1))
    num_b = batch.row_mean((eb - tb).pow(2).sum(-1))
    return num_a / den_a.clamp_min(1e-12) + num_b / den_b.clamp_min(1e-12)


def _row_mean(
    x: torch.Tensor, batch: GlobalBatch | None, w: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of per-row values: of this batch (its rows where ``w`` is 1), or this rank's
    share of the global batch's."""
    return _weighted_mean(x, w) if batch is None else batch.row_mean(x)


def _centred_sq_sum(x: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """Summed squared distance of the rows (where ``w`` is 1) to their mean (for FVE)."""
    if w is None:
        return (x - x.mean(0)).pow(2).sum()
    col = w.unsqueeze(1)
    mean = (x * col).sum(0) / w.sum().clamp_min(1)
    return ((x - mean).pow(2) * col).sum()


class Crosscoder(nn.Module):
    """A standard crosscoder, Dedicated Feature Crosscoder or DSF crosscoder (by config)."""

    def __init__(self, config: CrosscoderConfig, *, seed: int = 0) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.partition = FeaturePartition(
            config.n_features, config.n_exclusive_a, config.n_exclusive_b, config.n_designated
        )
        p = self.partition
        n_dsf = p.n_designated
        self.n_enc_a = p.n_a + p.n_shared
        self.n_enc_b = p.n_b + p.n_shared
        self.W_enc_a = nn.Parameter(torch.empty(config.d_a, self.n_enc_a))
        self.W_enc_b = nn.Parameter(torch.empty(config.d_b, self.n_enc_b))
        self.b_enc = nn.Parameter(torch.zeros(config.n_features))
        self.W_dec_a = nn.Parameter(torch.empty(self.n_enc_a - n_dsf, config.d_a))
        self.W_dec_b = nn.Parameter(torch.empty(self.n_enc_b - n_dsf, config.d_b))
        self.W_dec_dsf = nn.Parameter(torch.empty(n_dsf, config.d_a))
        self.b_dec_a = nn.Parameter(torch.zeros(config.d_a))
        self.b_dec_b = nn.Parameter(torch.zeros(config.d_b))
        # BatchTopK inference threshold per group (main, designated); NaN = not calibrated.
        self.register_buffer("threshold", torch.full((2,), float("nan")))
        # Per-dimension means removed before scaling (centred crosscoders only: persistent
        # then, so they are saved; absent from files of uncentred ones, which load unchanged).
        self.register_buffer("mean_a", torch.zeros(config.d_a), persistent=config.centered)
        self.register_buffer("mean_b", torch.zeros(config.d_b), persistent=config.centered)
        self.register_buffer("local_a", p.local_index("a"), persistent=False)
        self.register_buffer("local_b", p.local_index("b"), persistent=False)
        # the features that write to each model, as indices (a boolean mask would be turned
        # into indices, a host read on a GPU, at every decode)
        self.register_buffer("writes_a", torch.nonzero(self.local_a >= 0)[:, 0], persistent=False)
        self.register_buffer("writes_b", torch.nonzero(self.local_b >= 0)[:, 0], persistent=False)
        self.reset_parameters(seed)

    # ---- initialisation ------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """Paper init: decoder rows random with norm ``init_decoder_norm`` for every model
        (exclusive and shared alike), encoder = decoder transposed, biases zero."""
        gen = torch.Generator().manual_seed(seed)
        norm = self.config.init_decoder_norm

        def rows(n: int, d: int) -> torch.Tensor:
            w = torch.randn(n, d, generator=gen)
            return w / w.norm(dim=1, keepdim=True).clamp_min(1e-12) * norm

        self.W_dec_a.copy_(rows(*self.W_dec_a.shape))
        self.W_dec_b.copy_(rows(*self.W_dec_b.shape))
        self.W_dec_dsf.copy_(rows(*self.W_dec_dsf.shape))
        self.W_enc_a.copy_(self._full_dec("a").t())
        self.W_enc_b.copy_(self._full_dec("b").t())
        self.b_enc.zero_()
        self.b_dec_a.zero_()
        self.b_dec_b.zero_()
        self.threshold.fill_(float("nan"))

    # ---- weights views -------------------------------------------------------------------
    def _full_dec(self, m: str) -> torch.Tensor:
        """Model m's decoder rows for its own block [exclusive, shared(, designated)]."""
        own = self.W_dec_a if m == "a" else self.W_dec_b
        if self.partition.n_designated == 0:
            return own
        return torch.cat([own, self.W_dec_dsf], dim=0)

    def _enc(self, m: str) -> torch.Tensor:
        return self.W_enc_a if m == "a" else self.W_enc_b

    def _local(self, m: str) -> torch.Tensor:
        return self.local_a if m == "a" else self.local_b

    def _bias(self, m: str) -> torch.Tensor:
        return self.b_dec_a if m == "a" else self.b_dec_b

    def decoder_weight(self, m: str, *, raw_scale: bool = False) -> torch.Tensor:
        """(F, d_m) decoder rows into model m; zero rows for features that do not write to m.

        With ``raw_scale=True`` the rows are in the model's own activation scale (divided by
        the normalization scale), which is what steering adds to the residual stream.
        """
        m = check_model(m)
        local = self._local(m)
        full = self._full_dec(m)
        out = full.new_zeros(self.config.n_features, full.shape[1])
        mask = local >= 0
        out[mask] = full[local[mask]]
        if raw_scale:
            out = out / self.scale(m)
        return out

    def encoder_weight(self, m: str) -> torch.Tensor:
        """(d_m, F) encoder columns reading model m; zero columns for features that do not."""
        m = check_model(m)
        local = self._local(m)
        enc = self._enc(m)
        out = enc.new_zeros(enc.shape[0], self.config.n_features)
        mask = local >= 0
        out[:, mask] = enc[:, local[mask]]
        return out

    def decoder_norms(self) -> torch.Tensor:
        """(F, 2): per-feature decoder norm into model A and into model B (0 where absent)."""
        cols = []
        for m in ("a", "b"):
            local = self._local(m)
            norms = self._full_dec(m).norm(dim=1)
            cols.append(torch.where(local >= 0, norms[local.clamp_min(0)], norms.new_zeros(())))
        return torch.stack(cols, dim=1)

    def relative_norm(self) -> torch.Tensor:
        """(F,): |d_A| / (|d_A| + |d_B|): 1 = writes only A, 0 = only B (docs/METHOD.md §3)."""
        n = self.decoder_norms()
        return n[:, 0] / (n[:, 0] + n[:, 1]).clamp_min(1e-12)

    def selection_weight(self) -> torch.Tensor:
        """(F,) factor that turns activations into the scores BatchTopK/TopK rank by."""
        mode = self.config.selection_norm
        if mode == "none":
            return torch.ones(self.config.n_features, device=self.b_enc.device)
        n = self.decoder_norms()
        return n.norm(dim=1) if mode == "l2" else n.sum(dim=1)

    def scale(self, m: str) -> float:
        return self.config.scale_a if check_model(m) == "a" else self.config.scale_b

    def inlier_mask(
        self, x_a: torch.Tensor, x_b: torch.Tensor, factor: float = HIGH_NORM_FACTOR
    ) -> torch.Tensor:
        """(B,) bool: pairs whose *normalized* norms are both within ``factor`` x the typical
        norm sqrt((d_a + d_b) / 2) (the store-wide median after normalization).

        Training drops pairs above 2x the batch median (docs/METHOD.md §2); evaluation and analysis
        use this batch-independent form of the same rule, so that the few huge-norm positions
        (e.g. SmolLM2's first token, ~130x the median) neither dominate FVE nor become every
        feature's top example. With ``TrainConfig.normalization='none'`` the scales are 1 and the
        reference norm is only nominal.
        """
        ref = factor * math.sqrt((self.config.d_a + self.config.d_b) / 2)
        return (x_a.norm(dim=1) <= ref) & (x_b.norm(dim=1) <= ref)

    def offset(self, m: str) -> torch.Tensor:
        """(d_m,) the raw-space mean removed before scaling (zeros if not centred)."""
        return self.mean_a if check_model(m) == "a" else self.mean_b

    @torch.no_grad()
    def set_offsets(self, mean_a: torch.Tensor, mean_b: torch.Tensor) -> None:
        """Set the raw-space means of a centred crosscoder (done once, before training)."""
        if not self.config.centered:
            raise CrossdiffError("set_offsets needs a centred crosscoder (config.centered=True)")
        self.mean_a.copy_(torch.as_tensor(mean_a, dtype=torch.float32))
        self.mean_b.copy_(torch.as_tensor(mean_b, dtype=torch.float32))

    def normalize(self, x: torch.Tensor, m: str) -> torch.Tensor:
        """Raw activations of model m -> the normalized space the crosscoder works in."""
        if self.config.centered:
            return (x - self.offset(m).to(x.dtype)) * self.scale(m)
        return x * self.scale(m)

    def denormalize(self, x: torch.Tensor, m: str) -> torch.Tensor:
        """Normalized vectors (e.g. a reconstruction) of model m -> its raw activation space."""
        out = x / self.scale(m)
        if self.config.centered:
            out = out + self.offset(m).to(out.dtype)
        return out

    # ---- encoding ------------------------------------------------------------------------
    def _check_inputs(self, x_a: torch.Tensor, x_b: torch.Tensor) -> None:
        cfg = self.config
        if x_a.ndim != 2 or x_b.ndim != 2:
            raise CrossdiffError(
                f"expected 2-D batches (batch, width), got shapes {tuple(x_a.shape)} and "
                f"{tuple(x_b.shape)}"
            )
        if x_a.shape[1] != cfg.d_a or x_b.shape[1] != cfg.d_b:
            raise CrossdiffError(
                f"width mismatch: the crosscoder expects d_a={cfg.d_a}, d_b={cfg.d_b} but the "
                f"batch has {x_a.shape[1]} and {x_b.shape[1]}; check which model/layer the data "
                f"came from (or swap A and B)"
            )
        if x_a.shape[0] != x_b.shape[0]:
            raise CrossdiffError(
                f"paired batches differ in length: {x_a.shape[0]} rows of A vs {x_b.shape[0]} of B"
            )

    def preacts(
        self, x_a: torch.Tensor, x_b: torch.Tensor, compute_dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """(B, F) pre-activations: exclusive features see only their model, shared both."""
        p = self.partition
        cd = compute_dtype or self.W_enc_a.dtype
        ya = x_a.to(cd) @ self.W_enc_a.to(cd)
        yb = x_b.to(cd) @ self.W_enc_b.to(cd)
        # one (B, F) output written in place: a cat of the blocks plus a bias add would
        # allocate three more B x F temporaries, which costs more than the copies themselves
        pre = torch.empty(
            x_a.shape[0], self.config.n_features, dtype=torch.float32, device=ya.device
        )
        pre[:, : p.n_a] = ya[:, : p.n_a]
        pre[:, p.n_a : p.n_a + p.n_b] = yb[:, : p.n_b]
        shared = pre[:, p.n_a + p.n_b :]
        shared.copy_(ya[:, p.n_a :])
        shared.add_(yb[:, p.n_b :])
        return pre.add_(self.b_enc.float())

    def _groups(self, k: int) -> list[tuple[slice, int]]:
        """Feature slices that select independently, with their per-sample k."""
        p, cfg = self.partition, self.config
        if p.n_designated == 0:
            return [(slice(0, cfg.n_features), k)]
        k_dsf = max(1, round(cfg.dsf_k_factor * k * p.n_designated / cfg.n_features))
        k_main = max(1, k - k_dsf)
        split = cfg.n_features - p.n_designated
        return [(slice(0, split), k_main), (slice(split, cfg.n_features), k_dsf)]

    def select(
        self,
        pre: torch.Tensor,
        *,
        k: int | None = None,
        use_threshold: bool = False,
        batch: GlobalBatch | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Choose the active (rows, feats) from pre-activations; also the per-group minimum
        selected score. ``use_threshold`` applies the calibrated BatchTopK threshold; with
        ``batch`` (data-parallel training) BatchTopK selects over the global batch."""
        cfg = self.config
        k = k or cfg.k
        with torch.no_grad():
            scores = pre.clamp_min(0).mul_(self.selection_weight().float())
            all_rows, all_feats, mins = [], [], []
            for gi, (sl, kg) in enumerate(self._groups(k)):
                s = scores[:, sl]
                if cfg.activation == "topk":
                    rows, feats = select_topk(s, kg)
                elif use_threshold and not math.isnan(thr := float(self.threshold[gi])):
                    rows, feats = select_threshold(s, thr)
                elif batch is not None:
                    rows, feats, low = batch.batch_topk(s, kg)
                    mins.append(low)
                    all_rows.append(rows)
                    all_feats.append(feats + sl.start)
                    continue
                else:
                    rows, feats = select_batch_topk(s, kg * s.shape[0])
                sel_scores = s[rows, feats]
                mins.append(sel_scores.min() if sel_scores.numel() else s.new_tensor(float("nan")))
                all_rows.append(rows)
                all_feats.append(feats + sl.start)
            rows = torch.cat(all_rows)
            feats = torch.cat(all_feats)
            if len(all_rows) > 1:
                order = torch.argsort(rows * cfg.n_features + feats)
                rows, feats = rows[order], feats[order]
            return rows, feats, torch.stack(mins)

    @torch.no_grad()
    def _select_static(
        self,
        pre: torch.Tensor,
        k: int,
        batch: GlobalBatch | None,
        keep: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`select` of the training loss on the static path (crosscoder/hostsync.py):
        ``(rows, feats, valid, min_score)`` with ``k x rows`` entries per group whatever the
        data, ``valid`` marking the selected ones; rows outside ``keep`` are never selected
        and do not count in the budget."""
        cfg = self.config
        scores = pre.clamp_min(0).mul_(self.selection_weight().float())
        if keep is not None:
            scores.mul_(keep.unsqueeze(1))
        n_rows = None if keep is None else keep.sum()
        nan = torch.full((), float("nan"), device=pre.device)
        all_rows, all_feats, all_valid, mins = [], [], [], []
        for sl, kg in self._groups(k):
            s = scores[:, sl]
            if cfg.activation == "topk":
                rows, feats, valid = select_topk_static(s, kg)
                low = None
            elif batch is not None:
                rows, feats, valid, low = batch.batch_topk(s, kg, static=True)
            else:
                rows, feats, valid = select_batch_topk_static(s, kg, n_rows)
                low = None
            if low is None:
                if rows.numel() == 0:  # no rows at all (a shape, not a value)
                    low = nan
                else:
                    picked = torch.where(valid, s[rows, feats], float("inf")).amin()
                    low = torch.where(valid.any(), picked, nan)
            mins.append(low)
            all_rows.append(rows)
            all_feats.append(feats + sl.start)
            all_valid.append(valid)
        rows, feats, valid = torch.cat(all_rows), torch.cat(all_feats), torch.cat(all_valid)
        if len(all_rows) > 1:
            order = torch.argsort(rows * cfg.n_features + feats)
            rows, feats, valid = rows[order], feats[order], valid[order]
        return rows, feats, valid, torch.stack(mins)

    def _gather(self, pre, x_a, x_b, rows, feats, static: bool = False) -> torch.Tensor:
        return GatheredPreacts.apply(
            pre[rows, feats].detach(),
            x_a,
            x_b,
            self.W_enc_a,
            self.W_enc_b,
            self.b_enc,
            rows,
            self.local_a[feats],
            self.local_b[feats],
            feats,
            static,
        )

    def encode_sparse(
        self,
        x_a: torch.Tensor,
        x_b: torch.Tensor,
        *,
        k: int | None = None,
        use_threshold: bool | None = None,
        compute_dtype: torch.dtype | None = None,
    ) -> SparseCodes:
        """Sparse feature activations of normalized inputs (TopK / BatchTopK modes).

        ``use_threshold`` defaults to ``not self.training``: in eval mode BatchTopK uses the
        threshold learned during training (per-sample, batch-independent), falling back to
        the batch's own top-k while the threshold is uncalibrated.
        """
        if self.config.activation == "relu":
            raise CrossdiffError("encode_sparse is for topk/batchtopk; use encode() for relu")
        self._check_inputs(x_a, x_b)
        if use_threshold is None:
            use_threshold = not self.training
        with torch.no_grad():
            pre = self.preacts(x_a, x_b, compute_dtype)
        rows, feats, mins = self.select(pre, k=k, use_threshold=use_threshold)
        vals = self._gather(pre, x_a, x_b, rows, feats)
        return SparseCodes(rows, feats, vals, x_a.shape[0], self.config.n_features, mins)

    def encode(self, x_a: torch.Tensor, x_b: torch.Tensor, *, k: int | None = None) -> torch.Tensor:
        """(B, F) dense feature activations of normalized inputs."""
        if self.config.activation == "relu":
            self._check_inputs(x_a, x_b)
            return self.preacts(x_a, x_b).clamp_min(0)
        return self.encode_sparse(x_a, x_b, k=k).dense()

    # ---- decoding ------------------------------------------------------------------------
    def decode(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense features (B, F) -> normalized reconstructions of both models."""
        out = []
        for m in ("a", "b"):
            own = self.writes_a if m == "a" else self.writes_b
            dec = self._full_dec(m).index_select(0, self._local(m)[own])
            out.append(f.index_select(1, own) @ dec + self._bias(m))
        return out[0], out[1]

    def decode_sparse(self, codes: SparseCodes, *, bias: bool = True, static: bool = False):
        """Sparse codes -> normalized reconstructions of both models (fast path; ``static``:
        without a data-dependent shape, see :func:`~crossdiff.crosscoder.sparse.sparse_decode`)."""
        out = []
        for m in ("a", "b"):
            r = sparse_decode(
                codes.rows,
                self._local(m)[codes.feats],
                codes.vals,
                self._full_dec(m),
                codes.batch,
                static=static,
            )
            out.append(r + self._bias(m) if bias else r)
        return out[0], out[1]

    def forward(self, x_a: torch.Tensor, x_b: torch.Tensor) -> CrosscoderOutput:
        if self.config.activation == "relu":
            f = self.encode(x_a, x_b)
            ra, rb = self.decode(f)
            return CrosscoderOutput(f, ra, rb)
        codes = self.encode_sparse(x_a, x_b)
        ra, rb = self.decode_sparse(codes)
        return CrosscoderOutput(codes.dense(), ra, rb)

    # ---- training loss -------------------------------------------------------------------
    def loss(
        self,
        x_a: torch.Tensor,
        x_b: torch.Tensor,
        *,
        k: int | None = None,
        dead_mask: torch.Tensor | None = None,
        aux_k: int = 0,
        aux_alpha: float = 0.0,
        l1_coeff: float = 0.0,
        compute_dtype: torch.dtype | None = None,
        batch: GlobalBatch | None = None,
        keep: torch.Tensor | None = None,
        static: bool | None = None,
    ) -> LossOutput:
        """Training loss on a normalized batch: both models' reconstruction errors (squared
        L2 per sample, averaged), plus AuxK on dead features (top-k modes) or the
        decoder-norm-weighted L1 penalty (relu mode). Selection is by batch top-k (not the
        threshold), as in training. With ``batch`` the rows are this rank's part of a global
        batch: selection and AuxK's normalization are global and the loss is this rank's
        share of the global mean (its gradients are summed over ranks).

        ``keep`` (B,) bool: the rows in the loss (the high-norm filter's; None: all); the
        others are as if absent. ``static`` (default: :func:`hostsync.static_shapes` of the
        batch's device): the path whose shapes are fixed by B and k and that reads nothing on
        the host (crosscoder/hostsync.py); the other path drops rows and entries instead."""
        self._check_inputs(x_a, x_b)
        if static is None:
            static = hostsync.static_shapes(x_a)
        if keep is not None and not static:
            x_a, x_b, keep = x_a[keep], x_b[keep], None
        w = None if keep is None else keep.to(x_a.dtype)
        var_a = _centred_sq_sum(x_a, w)
        var_b = _centred_sq_sum(x_b, w)
        if self.config.activation == "relu":
            return self._relu_loss(
                x_a, x_b, w, batch, l1_coeff, compute_dtype, static, var_a, var_b
            )
        zero = x_a.new_zeros(())
        pre, codes, valid = self._loss_codes(x_a, x_b, k, batch, keep, compute_dtype, static)
        ra, rb = self.decode_sparse(codes, static=static)
        la = _row_mean((ra - x_a).pow(2).sum(-1), batch, w)
        lb = _row_mean((rb - x_b).pow(2).sum(-1), batch, w)
        if valid is None:
            fired = torch.zeros(self.config.n_features, dtype=torch.bool, device=x_a.device)
            fired[codes.feats] = True
        else:
            hits = torch.zeros(self.config.n_features, dtype=torch.int32, device=x_a.device)
            fired = hits.index_add_(0, codes.feats, valid.to(torch.int32)) > 0
        aux = zero
        # static: no host read; a dead mask is given every step, the term counts if one is dead
        if (
            aux_alpha > 0
            and aux_k > 0
            and dead_mask is not None
            and (static or bool(dead_mask.any()))
        ):
            ea, eb = self._auxk_decode(pre, x_a, x_b, codes, dead_mask, aux_k, keep, static)
            targets = (x_a - ra).detach(), (x_b - rb).detach()
            aux = aux_alpha * _aux_mse(ea, targets[0], eb, targets[1], batch, w)
            if static:
                aux = aux * dead_mask.any()
        n = codes.batch
        if valid is None:
            l0 = codes.rows.numel() / max(1, n)
        else:
            l0 = valid.sum() / (n if keep is None else keep.sum().clamp_min(1))
        mins = codes.min_score
        return LossOutput(la + lb + aux, la + lb, la, lb, aux, zero, fired, l0, mins, var_a, var_b)

    def _relu_loss(
        self,
        x_a: torch.Tensor,
        x_b: torch.Tensor,
        w: torch.Tensor | None,
        batch: GlobalBatch | None,
        l1_coeff: float,
        compute_dtype: torch.dtype | None,
        static: bool,
        var_a: torch.Tensor,
        var_b: torch.Tensor,
    ) -> LossOutput:
        """:meth:`loss` in relu mode (arguments as there, after its ``keep`` handling): a step
        apart because this mode selects nothing and pays for sparsity with the L1 penalty."""
        zero = x_a.new_zeros(())
        pre = self.preacts(x_a, x_b, compute_dtype)
        f = pre.clamp_min(0)
        if w is not None:
            f = f * w.unsqueeze(1)
        ra, rb = self.decode(f)
        la = _row_mean((ra - x_a).pow(2).sum(-1), batch, w)
        lb = _row_mean((rb - x_b).pow(2).sum(-1), batch, w)
        l1 = l1_coeff * _row_mean((f * self.decoder_norms().sum(1)).sum(-1), batch, w)
        fired = (f > 0).any(0)
        counts = (f > 0).sum(-1).float()
        l0: float | torch.Tensor = _weighted_mean(counts, w) if static else float(counts.mean())
        return LossOutput(la + lb + l1, la + lb, la, lb, zero, l1, fired, l0, None, var_a, var_b)

    def _loss_codes(
        self,
        x_a: torch.Tensor,
        x_b: torch.Tensor,
        k: int | None,
        batch: GlobalBatch | None,
        keep: torch.Tensor | None,
        compute_dtype: torch.dtype | None,
        static: bool,
    ) -> tuple[torch.Tensor, SparseCodes, torch.Tensor | None]:
        """The training loss's selection (top-k modes): ``(pre-activations, codes, valid)``;
        on the static path the codes have a fixed number of entries and ``valid`` marks the
        selected ones (None on the other path). A step because it is where the two paths
        differ most."""
        with torch.no_grad():
            pre = self.preacts(x_a, x_b, compute_dtype)
        valid = None
        if static:
            rows, feats, valid, mins = self._select_static(pre, k or self.config.k, batch, keep)
            vals = self._gather(pre, x_a, x_b, rows, feats, static=True) * valid
        else:
            rows, feats, mins = self.select(pre, k=k, use_threshold=False, batch=batch)
            vals = self._gather(pre, x_a, x_b, rows, feats)
        codes = SparseCodes(rows, feats, vals, x_a.shape[0], self.config.n_features, mins)
        return pre, codes, valid

    def _auxk_decode(
        self,
        pre: torch.Tensor,
        x_a: torch.Tensor,
        x_b: torch.Tensor,
        codes: SparseCodes,
        dead_mask: torch.Tensor,
        aux_k: int,
        keep: torch.Tensor | None,
        static: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """AuxK's reconstructions (no bias) from the top ``aux_k`` dead features per row: their
        error on the residual is the AuxK term. A step because it is a second selection and
        decode, with its own static path."""
        if static:
            with torch.no_grad():
                dead_pre = pre.clamp_min(0).mul_(dead_mask)
                if keep is not None:
                    dead_pre.mul_(keep.unsqueeze(1))
                arows, afeats, avalid = select_topk_static(dead_pre, aux_k)
            avals = self._gather(pre, x_a, x_b, arows, afeats, static=True) * avalid
        else:
            dead = torch.nonzero(dead_mask, as_tuple=True)[0]
            with torch.no_grad():
                dead_pre = pre[:, dead].clamp_min(0)
                arows, apos = select_topk(dead_pre, min(aux_k, dead.numel()))
            afeats = dead[apos]
            avals = self._gather(pre, x_a, x_b, arows, afeats)
        acodes = SparseCodes(arows, afeats, avals, codes.batch, codes.n_features, codes.min_score)
        return self.decode_sparse(acodes, bias=False, static=static)

    # ---- persistence ---------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (no pickle) to folder ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        tmp = path / (WEIGHTS_FILE + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": "crossdiff-crosscoder"})
        tmp.replace(path / WEIGHTS_FILE)
        cfg_tmp = path / (CONFIG_FILE + ".tmp")
        cfg_tmp.write_text(json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n")
        cfg_tmp.replace(path / CONFIG_FILE)
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device = "cpu") -> Crosscoder:
        """Load a crosscoder saved by :meth:`save_pretrained` (safetensors only; no pickle)."""
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / WEIGHTS_FILE).is_file():
            raise CrossdiffError(
                f"no crosscoder at {path}: expected {CONFIG_FILE} and {WEIGHTS_FILE} there"
            )
        config = CrosscoderConfig.load(path / CONFIG_FILE)
        model = cls(config)
        state = load_file(str(path / WEIGHTS_FILE))
        model.load_checked_state(state, source=str(path))
        return model.to(device).eval()

    def load_checked_state(self, state: dict[str, torch.Tensor], *, source: str) -> None:
        """load_state_dict with an error that names the mismatching tensor and shapes."""
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise CrossdiffError(
                f"{source} does not match this crosscoder: missing {missing}, unexpected "
                f"{unexpected}; it was saved by a different config"
            )
        for name, tensor in own.items():
            if tuple(state[name].shape) != tuple(tensor.shape):
                raise CrossdiffError(
                    f"{source}: tensor {name} has shape {tuple(state[name].shape)} but the config "
                    f"gives {tuple(tensor.shape)}; the file and config.json disagree"
                )
        self.load_state_dict(state)
