"""A Dedicated Feature Crosscoder done the published way, as the baseline for speed benchmarks.

The published code holds *dense* per-model matrices over all F features (encoder d_m x F,
decoder F x d_m), keeps exclusivity by zeroing the gradients of the forbidden blocks after
every backward pass (an A-exclusive feature's B column and B row), decodes densely
(``f @ W_dec``, with f a mostly-zero B x F matrix) and selects with a dense BatchTopK over the
flattened B x F scores. Our :class:`crossdiff.Crosscoder` holds only the allowed blocks and
computes everything after the selection sparsely; this module exists so that
``crossdiff bench train-speed`` can time both on the same shapes, the same batch and the same
initial weights, and check that they compute the same loss.

The loss is the same function as :meth:`crossdiff.Crosscoder.loss` (sum over models of the
per-sample squared error, averaged over the batch, plus alpha x AuxK with OpenAI's
normalized MSE), written with dense tensors. Designated shared features (DSF) are not
supported: the reference is a DFC (or, with empty exclusive sets, a standard crosscoder).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from crossdiff.errors import CrossdiffError


@dataclass
class ReferenceLoss:
    total: Tensor
    recon: Tensor
    aux: Tensor
    l0: float


def _normalized_mse(pred: Tensor, target: Tensor) -> Tensor:
    denom = (target - target.mean(0, keepdim=True)).pow(2).sum(-1).mean().clamp_min(1e-12)
    return (pred - target).pow(2).sum(-1).mean() / denom


class ReferenceDFC(nn.Module):
    """Dense DFC: full (d_m, F) encoders and (F, d_m) decoders; forbidden blocks kept at zero
    by :meth:`mask_gradients` (call it between ``backward()`` and ``optimizer.step()``)."""

    def __init__(
        self,
        d_a: int,
        d_b: int,
        n_features: int,
        n_exclusive_a: int,
        n_exclusive_b: int,
        *,
        k: int,
        selection_norm: str = "l2",
    ) -> None:
        super().__init__()
        if n_exclusive_a + n_exclusive_b > n_features:
            raise CrossdiffError(
                f"reference DFC: {n_exclusive_a} + {n_exclusive_b} exclusive features exceed "
                f"n_features={n_features}"
            )
        if selection_norm not in ("l2", "sum", "none"):
            raise CrossdiffError(f"selection_norm={selection_norm!r}: use 'l2', 'sum' or 'none'")
        self.k = k
        self.selection_norm = selection_norm
        self.n_features = n_features
        self.W_enc_a = nn.Parameter(torch.zeros(d_a, n_features))
        self.W_enc_b = nn.Parameter(torch.zeros(d_b, n_features))
        self.b_enc = nn.Parameter(torch.zeros(n_features))
        self.W_dec_a = nn.Parameter(torch.zeros(n_features, d_a))
        self.W_dec_b = nn.Parameter(torch.zeros(n_features, d_b))
        self.b_dec_a = nn.Parameter(torch.zeros(d_a))
        self.b_dec_b = nn.Parameter(torch.zeros(d_b))
        # which features each model's weights may use (A-exclusive block first, then B's)
        allowed_a = torch.ones(n_features, dtype=torch.bool)
        allowed_a[n_exclusive_a : n_exclusive_a + n_exclusive_b] = False
        allowed_b = torch.ones(n_features, dtype=torch.bool)
        allowed_b[:n_exclusive_a] = False
        self.register_buffer("allowed_a", allowed_a)
        self.register_buffer("allowed_b", allowed_b)

    @classmethod
    @torch.no_grad()
    def from_crosscoder(cls, cc: Any) -> ReferenceDFC:
        """The same crosscoder in the dense layout (same weights, zeros where forbidden)."""
        cfg = cc.config
        if cc.partition.n_designated:
            raise CrossdiffError(
                "the reference DFC has no designated shared features; benchmark a DFC or a "
                "standard crosscoder (frac_designated_shared=0)"
            )
        ref = cls(
            cfg.d_a,
            cfg.d_b,
            cfg.n_features,
            cc.partition.n_a,
            cc.partition.n_b,
            k=cfg.k,
            selection_norm=cfg.selection_norm,
        )
        ref.W_enc_a.copy_(cc.encoder_weight("a"))
        ref.W_enc_b.copy_(cc.encoder_weight("b"))
        ref.b_enc.copy_(cc.b_enc)
        ref.W_dec_a.copy_(cc.decoder_weight("a"))
        ref.W_dec_b.copy_(cc.decoder_weight("b"))
        ref.b_dec_a.copy_(cc.b_dec_a)
        ref.b_dec_b.copy_(cc.b_dec_b)
        return ref.to(cc.b_enc.device)

    @torch.no_grad()
    def mask_gradients(self) -> None:
        """Zero the gradients of forbidden blocks: the published way of keeping exclusivity."""
        for w_enc, w_dec, allowed in (
            (self.W_enc_a, self.W_dec_a, self.allowed_a),
            (self.W_enc_b, self.W_dec_b, self.allowed_b),
        ):
            if w_enc.grad is not None:
                w_enc.grad.mul_(allowed)
            if w_dec.grad is not None:
                w_dec.grad.mul_(allowed[:, None])

    def selection_weight(self) -> Tensor:
        if self.selection_norm == "none":
            return torch.ones(self.n_features, device=self.b_enc.device)
        na = self.W_dec_a.norm(dim=1)
        nb = self.W_dec_b.norm(dim=1)
        if self.selection_norm == "l2":
            return torch.sqrt(na.square() + nb.square())
        return na + nb

    def preacts(self, x_a: Tensor, x_b: Tensor, compute_dtype: torch.dtype | None = None) -> Tensor:
        cd = compute_dtype or self.W_enc_a.dtype
        pre = (x_a.to(cd) @ self.W_enc_a.to(cd)).float() + (
            x_b.to(cd) @ self.W_enc_b.to(cd)
        ).float()
        return pre + self.b_enc

    def loss(
        self,
        x_a: Tensor,
        x_b: Tensor,
        *,
        k: int | None = None,
        dead_mask: Tensor | None = None,
        aux_k: int = 0,
        aux_alpha: float = 0.0,
        compute_dtype: torch.dtype | None = None,
    ) -> ReferenceLoss:
        """Dense BatchTopK training loss on a normalized batch (same function as ours)."""
        k = k or self.k
        cd = compute_dtype or self.W_dec_a.dtype
        batch = x_a.shape[0]
        pre = self.preacts(x_a, x_b, compute_dtype)
        acts = pre.relu()
        with torch.no_grad():
            scores = acts * self.selection_weight()
            top_vals, top_idx = scores.flatten().topk(min(k * batch, scores.numel()), sorted=False)
            mask = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
            mask[top_idx[top_vals > 0]] = True
            mask = mask.view_as(scores)
        f = acts * mask
        ra = (f.to(cd) @ self.W_dec_a.to(cd)).float() + self.b_dec_a
        rb = (f.to(cd) @ self.W_dec_b.to(cd)).float() + self.b_dec_b
        recon = (ra - x_a).pow(2).sum(-1).mean() + (rb - x_b).pow(2).sum(-1).mean()
        aux = recon.new_zeros(())
        if aux_alpha > 0 and aux_k > 0 and dead_mask is not None and bool(dead_mask.any()):
            n_dead = int(dead_mask.sum())
            dead_acts = acts * dead_mask
            vals, idx = dead_acts.topk(min(aux_k, n_dead), dim=1, sorted=False)
            f_aux = torch.zeros_like(acts).scatter(1, idx, vals)
            ea = (f_aux.to(cd) @ self.W_dec_a.to(cd)).float()
            eb = (f_aux.to(cd) @ self.W_dec_b.to(cd)).float()
            aux = aux_alpha * (
                _normalized_mse(ea, (x_a - ra).detach()) + _normalized_mse(eb, (x_b - rb).detach())
            )
        return ReferenceLoss(recon + aux, recon, aux, float(mask.sum()) / batch)
