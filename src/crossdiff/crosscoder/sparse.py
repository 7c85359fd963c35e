"""Sparse building blocks of the crosscoder step: selection, gathered pre-activations, decoding.

Why not dense: with k of F features active per sample, a dense decoder multiplies mostly zeros,
and the encoder's weight gradient ``x^T @ grad_pre`` is dense in shape but has only ``B x k``
non-zero columns per row. Here the encoder forward is one dense matmul (needed to rank all
features), and everything after selection touches only the selected entries:

- :func:`select_batch_topk` / :func:`select_topk` return the selected ``(rows, feats)``;
- :class:`GatheredPreacts` yields their pre-activations with a backward pass that builds the
  encoder gradients by a sparse matrix product (cost ``nnz x d`` instead of ``B x F x d``);
- :func:`sparse_decode` is an ``embedding_bag`` over the selected decoder rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Candidates kept per row in the first stage of the two-stage batch top-k, as a multiple of k.
FIRST_STAGE_MULT = 4


def _sorted_by_row(rows: torch.Tensor, feats: torch.Tensor, n_features: int):
    key = rows * n_features + feats
    order = torch.argsort(key)
    return rows[order], feats[order]


def select_batch_topk(scores: torch.Tensor, k_total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k_total`` largest positive entries of a (B, F) score matrix, as (rows, feats).

    Exact, and fast: a per-row top-(4k) first, then a top-k over those candidates, which is
    exact unless some row had all of its candidates selected (then we redo it on the full
    matrix). Returned sorted by row, then feature. Zero scores are never selected.
    """
    b, f = scores.shape
    k_total = min(k_total, b * f)
    per_row = min(f, max(1, FIRST_STAGE_MULT * -(-k_total // b)))
    if per_row < f:
        cand_vals, cand_idx = torch.topk(scores, per_row, dim=1, sorted=False)
        top_vals, top_pos = torch.topk(cand_vals.flatten(), k_total, sorted=False)
        rows = top_pos // per_row
        counts = torch.bincount(rows, minlength=b)
        if int(counts.max()) < per_row:
            feats = cand_idx.flatten()[top_pos]
            keep = top_vals > 0
            return _sorted_by_row(rows[keep], feats[keep], f)
    top_vals, flat = torch.topk(scores.flatten(), k_total, sorted=False)
    keep = top_vals > 0
    flat = flat[keep]
    return _sorted_by_row(flat // f, flat % f, f)


def select_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest positive entries of every row, as (rows, feats) sorted by row."""
    b, f = scores.shape
    k = min(k, f)
    vals, feats = torch.topk(scores, k, dim=1, sorted=False)
    rows = torch.arange(b, device=scores.device).unsqueeze(1).expand(b, k)
    keep = vals > 0
    return _sorted_by_row(rows[keep], feats[keep], f)


def select_threshold(scores: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Entries above a fixed threshold (BatchTopK at inference), as (rows, feats)."""
    rows, feats = torch.nonzero(scores > max(threshold, 0.0), as_tuple=True)
    return rows, feats  # nonzero is row-major, so already sorted by row then feature


def _weight_grad(
    x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, g: torch.Tensor, n_cols: int
) -> torch.Tensor:
    """Gradient of ``W`` (d, n_cols) for ``out[n] = x[rows[n]] @ W[:, cols[n]]``: x^T @ G."""
    sel = cols >= 0
    rows, cols, g = rows[sel], cols[sel], g[sel]
    gmat = torch.sparse_coo_tensor(
        torch.stack([cols, rows]),
        g.to(x.dtype),
        (n_cols, x.shape[0]),
        check_invariants=False,
    )
    return torch.sparse.mm(gmat, x).t()


class GatheredPreacts(torch.autograd.Function):
    """Pre-activations of selected (row, feature) entries, with sparse encoder gradients.

    ``values`` are the already computed pre-activations (from the dense forward used for
    selection); the forward returns them unchanged, and the backward routes their gradient to
    both models' encoder columns and the encoder bias without any dense (B, F) tensor.
    ``cols_a``/``cols_b`` give each entry's column in model A's / B's encoder (-1: that model's
    encoder does not feed this feature).
    """

    @staticmethod
    def forward(ctx, values, x_a, x_b, w_a, w_b, b_enc, rows, cols_a, cols_b, feats):  # type: ignore[override]
        ctx.save_for_backward(x_a, x_b, rows, cols_a, cols_b, feats)
        ctx.n_cols = (w_a.shape[1], w_b.shape[1], b_enc.shape[0])
        ctx.dtypes = (w_a.dtype, w_b.dtype, b_enc.dtype)
        return values.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x_a, x_b, rows, cols_a, cols_b, feats = ctx.saved_tensors
        n_a, n_b, n_f = ctx.n_cols
        g = grad.float()
        grad_wa = grad_wb = grad_b = None
        if ctx.needs_input_grad[3]:
            grad_wa = _weight_grad(x_a.float(), rows, cols_a, g, n_a).to(ctx.dtypes[0])
        if ctx.needs_input_grad[4]:
            grad_wb = _weight_grad(x_b.float(), rows, cols_b, g, n_b).to(ctx.dtypes[1])
        if ctx.needs_input_grad[5]:
            grad_b = torch.zeros(n_f, dtype=torch.float32, device=g.device)
            grad_b = grad_b.index_add_(0, feats, g).to(ctx.dtypes[2])
        return None, None, None, grad_wa, grad_wb, grad_b, None, None, None, None


def sparse_decode(
    rows: torch.Tensor,
    local: torch.Tensor,
    vals: torch.Tensor,
    weight: torch.Tensor,
    batch: int,
) -> torch.Tensor:
    """Sum ``vals[n] * weight[local[n]]`` into output row ``rows[n]`` (rows sorted ascending).

    Entries with ``local < 0`` (features that do not write to this model) are skipped.
    """
    keep = local >= 0
    rows, local, vals = rows[keep], local[keep], vals[keep]
    if rows.numel() == 0:
        return weight.new_zeros(batch, weight.shape[1]) + 0.0 * vals.sum()
    counts = torch.bincount(rows, minlength=batch)
    offsets = torch.cumsum(counts, 0) - counts
    return F.embedding_bag(
        local, weight, offsets, mode="sum", per_sample_weights=vals.to(weight.dtype)
    )
