"""Sparse building blocks of the crosscoder step: selection, gathered pre-activations, decoding.

Why not dense: with k of F features active per sample, a dense decoder multiplies mostly zeros,
and the encoder's weight gradient ``x^T @ grad_pre`` is dense in shape but has only ``B x k``
non-zero columns per row. Here the encoder forward is one dense matmul (needed to rank all
features), and everything after selection touches only the selected entries:

- :func:`select_batch_topk` / :func:`select_topk` return the selected ``(rows, feats)``;
- :class:`GatheredPreacts` yields their pre-activations with a backward pass that builds the
  encoder gradients by a sparse matrix product (cost ``nnz x d`` instead of ``B x F x d``);
- :func:`sparse_decode` is an ``embedding_bag`` over the selected decoder rows.

The ``*_static`` selections are the same selections with shapes fixed by the batch size and k
alone (crosscoder/hostsync.py): a fixed number of entries, with a ``valid`` mask instead of
compaction; :class:`GatheredPreacts` and :func:`sparse_decode` take ``static=True`` to handle
invalid entries as weight-0 entries instead of dropping them.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

#: Entries of the score matrix sampled to estimate a candidate threshold for batch top-k.
SAMPLE_SIZE = 1 << 16


def _sorted_by_row(rows: torch.Tensor, feats: torch.Tensor, n_features: int):
    key = rows * n_features + feats
    order = torch.argsort(key)
    return rows[order], feats[order]


def _coprime_stride(n_total: int, n_cols: int, target: int) -> int:
    """A stride near ``n_total / target`` that is coprime with the row length, so a strided
    sample of the flattened matrix visits every column (a stride dividing F would see only
    a few features)."""
    stride = max(1, n_total // target)
    while math.gcd(stride, n_cols) != 1:
        stride += 1
    return stride


def select_batch_topk(scores: torch.Tensor, k_total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k_total`` largest positive entries of a (B, F) score matrix, as (rows, feats).

    Exact, and fast: a strided sample of ~65k entries gives a threshold ``t`` placed so that
    about twice ``k_total`` entries of the full matrix exceed it; the candidates ``>= t`` are
    found in one pass and the top ``k_total`` is taken among them. That is exact whenever at
    least ``k_total`` candidates exist (the k-th largest value is then >= t), which is checked;
    otherwise the threshold is lowered, and as a last resort the full matrix is sorted. A
    per-row first stage (the obvious alternative) fails whenever one row owns more than its
    share of the budget, which BatchTopK allows and fresh crosscoders do on every batch.
    Returned sorted by row, then feature. Zero scores are never selected.
    """
    b, f = scores.shape
    n = b * f
    k_total = min(k_total, n)
    flat = scores.reshape(-1)
    if k_total > 0 and n > 4 * SAMPLE_SIZE and 8 * k_total < n:
        stride = _coprime_stride(n, f, SAMPLE_SIZE)
        sample = flat[::stride]
        expected = k_total * sample.numel() / n
        rank = int(2 * expected + 6 * math.sqrt(expected) + 16)
        for _ in range(3):
            if rank >= sample.numel():
                break
            t = float(torch.topk(sample, rank, sorted=False).values.min())
            mask = scores >= t if t > 0 else scores > 0
            rows, feats = torch.nonzero(mask, as_tuple=True)
            if rows.numel() >= k_total or t <= 0:
                vals = scores[rows, feats]
                top_vals, pos = torch.topk(vals, min(k_total, vals.numel()), sorted=False)
                keep = top_vals > 0
                return _sorted_by_row(rows[pos[keep]], feats[pos[keep]], f)
            rank *= 4
    top_vals, flat_idx = torch.topk(flat, k_total, sorted=False)
    keep = top_vals > 0
    flat_idx = flat_idx[keep]
    return _sorted_by_row(flat_idx // f, flat_idx % f, f)


def select_batch_topk_static(
    scores: torch.Tensor, k: int, n_rows: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`select_batch_topk` of ``k x n_rows`` entries (``n_rows`` a device count, e.g. of
    the rows the high-norm filter kept; default all ``B`` rows) without a host read: the
    ``k x B`` largest entries as ``(rows, feats, valid)``, sorted by row then feature, where
    ``valid`` marks the selected ones (within the budget and positive). The same set as
    :func:`select_batch_topk` (up to ties at the budget's edge); one top-k over the whole
    matrix, which is fast on a GPU (the published code does the same) and slow on a CPU."""
    b, f = scores.shape
    n_take = min(k * b, b * f)
    vals, flat = torch.topk(scores.reshape(-1), n_take, sorted=n_rows is not None)
    valid = vals > 0
    if n_rows is not None:  # vals are sorted: the first k x n_rows are the budget
        valid &= torch.arange(n_take, device=scores.device) < k * n_rows
    order = torch.argsort(flat)  # the flat index is row * F + feature
    flat = flat[order]
    return flat // f, flat % f, valid[order]


def select_topk_static(
    scores: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`select_topk` without compaction: ``k`` entries per row as ``(rows, feats,
    valid)``, sorted by row then feature; ``valid`` marks the positive ones."""
    b, f = scores.shape
    k = min(k, f)
    vals, feats = torch.topk(scores, k, dim=1, sorted=False)
    rows = torch.arange(b, device=scores.device).unsqueeze(1).expand(b, k)
    key = (rows * f + feats).reshape(-1)
    order = torch.argsort(key)
    key = key[order]
    return key // f, key % f, (vals > 0).reshape(-1)[order]


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
    x: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    g: torch.Tensor,
    n_cols: int,
    static: bool = False,
) -> torch.Tensor:
    """Gradient of ``W`` (d, n_cols) for ``out[n] = x[rows[n]] @ W[:, cols[n]]``: x^T @ G.

    Entries with ``cols < 0`` contribute nothing. ``static``: without a host read, as a CSR
    product whose row pointers come from a sorted search (a COO product coalesces first, which
    reads the number of distinct entries on the host on CUDA; dropping the ``cols < 0``
    entries would too); the entries are summed in another order than the COO product's, so
    the two differ at float level."""
    if static:
        sel = cols >= 0
        cols = cols.clamp_min(0)
        g = torch.where(sel, g, torch.zeros((), dtype=g.dtype, device=g.device))
        order = torch.argsort(cols * x.shape[0] + rows)
        cols, rows, g = cols[order], rows[order], g[order]
        crow = torch.searchsorted(cols, torch.arange(n_cols + 1, device=cols.device))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta")
            gmat = torch.sparse_csr_tensor(
                crow, rows, g.to(x.dtype), (n_cols, x.shape[0]), check_invariants=False
            )
        return (gmat @ x).t()
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
    def forward(ctx, values, x_a, x_b, w_a, w_b, b_enc, rows, cols_a, cols_b, feats, static=False):  # type: ignore[override]
        ctx.save_for_backward(x_a, x_b, rows, cols_a, cols_b, feats)
        ctx.n_cols = (w_a.shape[1], w_b.shape[1], b_enc.shape[0])
        ctx.dtypes = (w_a.dtype, w_b.dtype, b_enc.dtype)
        ctx.static = static
        return values.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x_a, x_b, rows, cols_a, cols_b, feats = ctx.saved_tensors
        n_a, n_b, n_f = ctx.n_cols
        g = grad.float()
        grad_wa = grad_wb = grad_b = None
        if ctx.needs_input_grad[3]:
            grad_wa = _weight_grad(x_a.float(), rows, cols_a, g, n_a, ctx.static)
            grad_wa = grad_wa.to(ctx.dtypes[0])
        if ctx.needs_input_grad[4]:
            grad_wb = _weight_grad(x_b.float(), rows, cols_b, g, n_b, ctx.static)
            grad_wb = grad_wb.to(ctx.dtypes[1])
        if ctx.needs_input_grad[5]:
            grad_b = torch.zeros(n_f, dtype=torch.float32, device=g.device)
            grad_b = grad_b.index_add_(0, feats, g).to(ctx.dtypes[2])
        return None, None, None, grad_wa, grad_wb, grad_b, None, None, None, None, None


def sparse_decode(
    rows: torch.Tensor,
    local: torch.Tensor,
    vals: torch.Tensor,
    weight: torch.Tensor,
    batch: int,
    *,
    static: bool = False,
) -> torch.Tensor:
    """Sum ``vals[n] * weight[local[n]]`` into output row ``rows[n]`` (rows sorted ascending).

    Entries with ``local < 0`` (features that do not write to this model) are skipped; with
    ``static`` they stay, with weight 0 (no data-dependent shape, no host read).
    """
    keep = local >= 0
    if static:
        local = local.clamp_min(0)
        vals = torch.where(keep, vals, torch.zeros((), dtype=vals.dtype, device=vals.device))
    else:
        rows, local, vals = rows[keep], local[keep], vals[keep]
    if rows.numel() == 0:
        return weight.new_zeros(batch, weight.shape[1]) + 0.0 * vals.sum()
    # each row's first entry (rows are sorted): the bag offsets, without bincount's host read
    offsets = torch.searchsorted(rows, torch.arange(batch, device=rows.device))
    return F.embedding_bag(
        local, weight, offsets, mode="sum", per_sample_weights=vals.to(weight.dtype)
    )
