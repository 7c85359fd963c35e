"""Data-driven initialisation of the exclusive features: start them where only one model is.

Why: with the paper's random initialisation, a model's exclusive block sees, as its training
signal, whatever that model's reconstruction still misses. When the dictionary is smaller
than the number of concepts, that residual is dominated by the many shared concepts the
shared block has no room for, so exclusive features drift into mixtures of those and the
rarer truly exclusive directions are learned late or never (the paper notes exclusive
features are learned later than shared ones; our toy sweep found 75-85% of exclusive
features false with random init).

What only model A has is, by definition, the part of A's activation that B does not
predict. So before training we fit a ridge map from B to A on a sample, take the residual
``r = x_a - f(x_b)``, and keep the samples whose residual is *present in A* (``<x_a, r>/|r|``
large: A has something B does not, rather than B having something A lacks, which leaves a
residual of the opposite kind). A few rounds of spherical k-means on those residual
directions give up to ``n_A`` distinct directions; the A-exclusive decoder rows start there
(at the paper's initial norm, encoder = decoder transposed, as for every other feature).
Training then refines them like any feature; nothing is frozen, and exclusivity still holds by
construction. Features for which no direction is found keep their random start.

This is a linear test, as the exclusivity check in the analysis is: a concept that B
carries nonlinearly looks exclusive to it. It only chooses the starting point.
"""

from __future__ import annotations

import torch

from crossdiff.ridge import ridge_solve

#: Candidate residual directions examined per exclusive feature.
CANDIDATES_PER_FEATURE = 32
#: Two directions closer than this cosine are one direction for the greedy seeding.
DEDUPE_COS = 0.7


def ridge_residual(
    x_own: torch.Tensor, x_other: torch.Tensor, ridge: float = 1e-3
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centered ``x_own`` and its residual after the best ridge prediction from ``x_other``.

    ``ridge`` is relative to the mean eigenvalue of ``x_other``'s covariance, so it means the
    same at every width and scale.
    """
    xo = x_own.double() - x_own.double().mean(0)
    xt = x_other.double() - x_other.double().mean(0)
    w, _ = ridge_solve(xt.T @ xt, xt.T @ xo, ridge)
    return xo, xo - xt @ w


def exclusive_directions(
    x_own: torch.Tensor,
    x_other: torch.Tensor,
    n: int,
    *,
    ridge: float = 1e-3,
    iters: int = 10,
) -> torch.Tensor:
    """Up to ``n`` unit directions (rows) of what ``x_own`` has and ``x_other`` does not
    linearly predict, ordered by how much of the residual they carry. Deterministic."""
    if n <= 0 or x_own.shape[0] < 2:
        return x_own.new_zeros(0, x_own.shape[1])
    xo, res = ridge_residual(x_own, x_other, ridge)
    norms = res.norm(dim=1)
    present = (xo * res).sum(1) / norms.clamp_min(1e-12)  # residual energy that is in own
    m = min(res.shape[0], CANDIDATES_PER_FEATURE * n)
    score, idx = torch.topk(present, m)
    keep = score > 0
    score, idx = score[keep], idx[keep]
    if idx.numel() == 0:
        return x_own.new_zeros(0, x_own.shape[1])
    dirs = res[idx] / norms[idx].unsqueeze(1).clamp_min(1e-12)
    c = _greedy_seeds(dirs, n)
    # spherical k-means, weighted by the residual energy present in own
    weight = score.unsqueeze(1)
    mass = torch.zeros(c.shape[0], dtype=c.dtype, device=c.device)
    for _ in range(iters):
        assign = (dirs @ c.T).argmax(1)
        total = torch.zeros_like(c).index_add_(0, assign, dirs * weight)
        mass = torch.zeros_like(mass).index_add_(0, assign, score)
        length = total.norm(dim=1, keepdim=True)
        c = torch.where(length > 0, total / length.clamp_min(1e-12), c)
    order = torch.argsort(mass, descending=True)
    return c[order].to(x_own.dtype)


def _greedy_seeds(dirs: torch.Tensor, n: int, chunk: int = 1024) -> torch.Tensor:
    """Up to ``n`` rows of ``dirs`` (in order) none of which is within DEDUPE_COS of an
    earlier one. Chunked, so that at the published size (thousands of exclusive features,
    hundreds of thousands of candidates) it is a few matrix products, not a Python loop over
    every candidate against every seed."""
    seeds = dirs.new_zeros(0, dirs.shape[1])
    for start in range(0, dirs.shape[0], chunk):
        if seeds.shape[0] >= n:
            break
        block = dirs[start : start + chunk]
        if seeds.shape[0]:
            block = block[(block @ seeds.T).max(dim=1).values <= DEDUPE_COS]
        if block.shape[0] == 0:
            continue
        close = (block @ block.T) > DEDUPE_COS
        keep: list[int] = []
        taken = torch.zeros(block.shape[0], dtype=torch.bool)
        close_cpu = close.cpu()
        for i in range(block.shape[0]):
            if taken[i]:
                continue
            keep.append(i)
            taken |= close_cpu[i]
            if seeds.shape[0] + len(keep) >= n:
                break
        seeds = torch.cat([seeds, block[keep]])
    return seeds[:n]


@torch.no_grad()
def init_exclusive_from_residuals(
    model, x_a: torch.Tensor, x_b: torch.Tensor, *, ridge: float = 1e-3
) -> tuple[int, int]:
    """Point each model's exclusive features at :func:`exclusive_directions` of a normalized
    paired sample (decoder rows at the initial norm, encoder columns the same). Returns how
    many features of A and of B were set."""
    p = model.partition
    norm = model.config.init_decoder_norm
    done = []
    for m, own, other, n in (("a", x_a, x_b, p.n_a), ("b", x_b, x_a, p.n_b)):
        dirs = exclusive_directions(own, other, n, ridge=ridge).to(own.device)
        j = dirs.shape[0]
        if j:
            dec = model.W_dec_a if m == "a" else model.W_dec_b
            enc = model.W_enc_a if m == "a" else model.W_enc_b
            # the model's own block is [exclusive | shared(...)], so its first n rows are the
            # exclusive features
            dec[:j] = (dirs * norm).to(dec.dtype)
            enc[:, :j] = dec[:j].T
        done.append(j)
    return done[0], done[1]
