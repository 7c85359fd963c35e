"""One global batch spread over data-parallel ranks, and the statistics they must agree on.

Why: under ``torchrun`` each rank reads only rows ``rank, rank + world, ...`` of every global
batch. Whatever in a training step is a statistic of the *whole* batch must then be agreed
across ranks, or the result would depend on the number of ranks:

- the high-norm filter's per-model medians: every rank gathers the rows' norms (8 bytes a
  row) and takes the same medians one process would (:meth:`GlobalBatch.filtered`);
- BatchTopK's selection of the ``k x n`` largest scores of the global batch
  (:meth:`GlobalBatch.batch_topk`, exact: see there);
- the means of the loss, taken over the global row count (each rank's loss is its share, and
  the gradients are summed), and AuxK's normalization by the residual's variance over the
  global batch (:meth:`GlobalBatch.centred_sq_means`);
- the geometric-median decoder-bias init and dead-feature resampling use the whole batch:
  :meth:`GlobalBatch.gather` rebuilds it, in the single-process row order, at the steps where
  they run (step 0, resample steps).

Example (2 ranks, rank 1 of a batch of 6 rows): it reads rows 1, 3, 5; if the filter drops
global row 3, ``n_total`` is 5 on both ranks and rank 1 trains on rows 1 and 5.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from crossdiff.crosscoder.sparse import select_batch_topk
from crossdiff.runtime import distributed


@dataclass
class GlobalBatch:
    """Where this rank's rows sit in the global batch, after the high-norm filter.

    Two forms (crosscoder/hostsync.py): *compacted* (the CPU), where this rank's dropped rows
    are gone and ``sizes``/``order`` say where the kept ones sit; *static* (accelerators),
    where every row read stays, ``keep`` marks the kept ones and ``n_total`` is a device
    count, so that no step needs a host read to know how many rows survived."""

    rank: int
    world: int
    n_total: int | torch.Tensor
    """Rows of the global batch that survived the filter (the same on every rank; a device
    scalar in the static form)."""
    sizes: list[int] | None
    """Kept rows per rank (compacted form; None in the static form)."""
    order: torch.Tensor | None
    """Permutation taking the rank-ordered concatenation of kept rows to the batch order
    (compacted form)."""
    keep: torch.Tensor | None = None
    """Static form: (rows read,) bool, this rank's rows in the step."""
    read: list[int] | None = None
    """Static form: rows read per rank."""
    keep_all: torch.Tensor | None = None
    """Static form: the kept rows of every rank, in rank order (for :meth:`gather`)."""
    positions: torch.Tensor | None = None
    """Static form: the batch position of every rank's rows, in rank order."""

    @property
    def static(self) -> bool:
        return self.keep is not None

    @classmethod
    def filtered(
        cls,
        x_a: torch.Tensor,
        x_b: torch.Tensor,
        factor: float,
        batch_size: int,
        info: distributed.DistInfo,
        *,
        static: bool = False,
    ) -> tuple[GlobalBatch, torch.Tensor, torch.Tensor]:
        """This rank's normalized rows -> (the batch, its kept rows of A, of B).

        A row is kept when both its norms are within ``factor`` x the *global* batch median
        (0: no filter), exactly the rule :func:`crossdiff.crosscoder.train` applies to a whole
        batch in one process. ``static``: every row is returned, and the batch's ``keep``
        marks the kept ones.
        """
        world = info.world_size
        read = [len(range(r, batch_size, world)) for r in range(world)]
        norms = torch.stack([x_a.norm(dim=1), x_b.norm(dim=1)], dim=1)
        every = torch.cat(distributed.all_gather_rows(norms, read))
        if factor > 0:
            limit = factor * every.median(dim=0).values
            keep_all = (every <= limit).all(dim=1)
        else:
            keep_all = torch.ones(every.shape[0], dtype=torch.bool, device=every.device)
        positions = torch.cat(
            [torch.arange(r, batch_size, world, device=every.device) for r in range(world)]
        )
        per_rank = keep_all.split(read)
        if static:
            batch = cls(
                info.rank,
                world,
                keep_all.sum(),
                None,
                None,
                keep=per_rank[info.rank],
                read=read,
                keep_all=keep_all,
                positions=positions,
            )
            return batch, x_a, x_b
        sizes = [int(k.sum()) for k in per_rank]
        order = torch.argsort(positions[keep_all])
        batch = cls(info.rank, world, sum(sizes), sizes, order)
        keep = per_rank[info.rank]
        return batch, x_a[keep], x_b[keep]

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """The whole (filtered) batch of which ``x`` is this rank's part, in batch order (the
        static form reads the kept rows' count on the host: for the steps that need the
        whole batch, not for ordinary ones)."""
        if self.static:
            assert self.read is not None and self.keep_all is not None
            assert self.positions is not None
            every = torch.cat(distributed.all_gather_rows(x, self.read))
            kept = every[self.keep_all]
            return kept[torch.argsort(self.positions[self.keep_all])]
        assert self.sizes is not None and self.order is not None
        return torch.cat(distributed.all_gather_rows(x, self.sizes))[self.order]

    def batch_topk(
        self, scores: torch.Tensor, k: int, *, static: bool = False
    ) -> tuple[torch.Tensor, ...]:
        """This rank's entries among the ``k x n_total`` largest positive scores of the global
        batch, as (rows, feats) sorted by row, and the smallest selected score (NaN: none).

        Exact, with two small collectives: each rank's own ``(k x rows)``-th largest score
        ``t_r`` (0 when it has fewer positive ones); ``t = min_r t_r`` has at least
        ``k x n_total`` entries at or above it over all ranks, so the global selection lies
        among them. Their values are gathered (about ``k x n_total`` floats in all) and the
        ``k x n_total``-th largest is the threshold every rank applies. Ties at the threshold
        are all kept (floats: practically never).

        ``static`` (scores of rows outside ``keep`` already 0): (rows, feats, valid, cut)
        with shapes fixed by the rows read and k, and one collective: each rank's
        ``min(k x batch size, its entries)`` largest scores (no rank can own more of the
        global selection), all of them gathered; the ``k x n_total``-th largest positive one
        is the cut, and ``valid`` marks this rank's entries at or above it (the same entries).
        """
        if static:
            return self._batch_topk_static(scores, k)
        k_local = k * scores.shape[0]
        t_own = torch.full((1,), float("inf"), device=scores.device)
        if k_local > 0:
            rows, feats = select_batch_topk(scores, k_local)
            vals = scores[rows, feats]
            t_own.fill_(float(vals.min()) if vals.numel() == k_local else 0.0)
        t = float(distributed.all_min(t_own))
        mask = scores >= t if t > 0 else scores > 0
        rows, feats = torch.nonzero(mask, as_tuple=True)
        vals = scores[rows, feats]
        every = torch.cat(distributed.all_gather_rows(vals))
        k_total = k * self.n_total
        if every.numel() == 0:
            return rows, feats, scores.new_tensor(float("nan"))
        if every.numel() > k_total:
            cut = torch.topk(every, k_total, sorted=False).values.min()
            keep = vals >= cut
            rows, feats = rows[keep], feats[keep]
        else:
            cut = every.min()
        return rows, feats, cut

    def _batch_topk_static(
        self, scores: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        assert self.read is not None
        f = scores.shape[1]
        budget = k * sum(self.read)  # the most the global selection can hold
        takes = [min(budget, n * f) for n in self.read]
        vals, flat = torch.topk(scores.reshape(-1), takes[self.rank], sorted=False)
        every = torch.cat(distributed.all_gather_rows(vals, takes))
        nan = torch.full((), float("nan"), device=scores.device)
        if every.numel() == 0:
            valid = torch.zeros_like(vals, dtype=torch.bool)
            return flat // f, flat % f, valid, nan
        top = torch.topk(every, min(budget, every.numel()), sorted=True).values
        n_sel = torch.minimum(k * self.n_total, (top > 0).sum())
        # (indexing with a 0-dim tensor would read it on the host: gather instead)
        cut = top.gather(0, (n_sel - 1).clamp_min(0).reshape(1))[0]
        cut = torch.where(n_sel > 0, cut, nan)
        order = torch.argsort(flat)
        flat, vals = flat[order], vals[order]
        valid = (vals >= cut) & (vals > 0)
        return flat // f, flat % f, valid, cut

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` summed over ranks."""
        return distributed.all_sum(x)

    def centred_sq_means(self, *targets: torch.Tensor) -> list[torch.Tensor]:
        """Per target (n_local, d): mean over the global batch of |row - global mean|^2, from
        one all-reduce of sums (float64: the sums cancel)."""
        w = None if self.keep is None else self.keep.double().unsqueeze(1)
        parts = []
        for t in targets:
            t64 = t.detach().double()
            if w is not None:
                t64 = t64 * w  # a dropped row adds nothing to either sum
            parts += [t64.sum(0), t64.pow(2).sum().reshape(1)]
        sums = distributed.all_sum(torch.cat(parts))
        out, offset = [], 0
        n = self.n_total.clamp_min(1) if self.static else max(self.n_total, 1)  # type: ignore[union-attr, call-overload]
        for t in targets:
            d = t.shape[1]
            total, sq = sums[offset : offset + d], sums[offset + d]
            out.append(((sq - total.pow(2).sum() / n) / n).to(t.dtype))
            offset += d + 1
        return out

    def row_mean(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's share of the global mean of per-row values ``x`` (sum / n_total)."""
        if self.static:
            assert self.keep is not None and isinstance(self.n_total, torch.Tensor)
            return (x * self.keep).sum() / self.n_total.clamp_min(1)
        return x.sum() / max(self.n_total, 1)  # type: ignore[call-overload]
