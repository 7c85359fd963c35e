"""Where training batches come from: the ``PairSource`` interface and an in-memory source.

A source yields an infinite, deterministic stream of paired batches of *raw* activations; the
trainer applies the normalization scales. Determinism plus ``skip`` is what makes resuming a
run exact: a run resumed at step s asks for ``batches(..., skip=s)`` and sees exactly the
batches an uninterrupted run would have seen. The on-disk activation store implements the
same interface (``ActivationStore.source()``).

Under ``torchrun`` a rank wants only its rows ``rank::world`` of each global batch
(:func:`rank_batches`); a source that can read just those (both sources here) offers
``batches(..., part=(rank, world))``, and any other source is read whole and sliced.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from crossdiff.errors import CrossdiffError
from crossdiff.store.moments import Moments, moments_of_arrays


@runtime_checkable
class PairSource(Protocol):
    """Paired activations of two models, one row per aligned position."""

    d_a: int
    d_b: int

    def batches(
        self, batch_size: int, *, seed: int = 0, skip: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Infinite stream of (x_a, x_b) float32 raw batches, deterministic given
        (batch_size, seed); ``skip=n`` is the same stream without its first n batches."""
        ...

    def norm_scales(self) -> tuple[float, float] | None:
        """Scales that bring each model's median norm to sqrt((d_a + d_b) / 2), if known."""
        ...


def source_moments(source: PairSource) -> Moments | None:
    """The source's activation moments when it can give them exactly (a store, an array
    source), else None (the trainer then estimates them from a sample)."""
    fn = getattr(source, "moments", None)
    return fn() if callable(fn) else None


def rank_batches(
    source: PairSource, batch_size: int, *, seed: int = 0, skip: int = 0, part: tuple[int, int]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Rows ``rank, rank + world, ...`` of every batch of ``source.batches(batch_size,
    seed=seed, skip=skip)``, where ``part = (rank, world)``.

    Read directly where the source supports ``part`` (it then reads about 1/world of each
    batch); otherwise every batch is read whole and sliced (correct, but every rank reads it).
    """
    rank, world = part
    if world == 1:
        return source.batches(batch_size, seed=seed, skip=skip)
    if getattr(source, "reads_parts", False):
        return source.batches(batch_size, seed=seed, skip=skip, part=part)  # type: ignore[call-arg]
    return (
        (x_a[rank::world], x_b[rank::world])
        for x_a, x_b in source.batches(batch_size, seed=seed, skip=skip)
    )


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The row order of one epoch: a fresh permutation per (seed, epoch)."""
    return np.random.default_rng([seed, epoch]).permutation(n)


class ArraySource:
    """A source over two in-memory arrays (notebooks, tests): shuffled every epoch."""

    reads_parts = True
    """``batches(..., part=(rank, world))`` indexes only that rank's rows."""

    def __init__(
        self,
        x_a: torch.Tensor | np.ndarray,
        x_b: torch.Tensor | np.ndarray,
        *,
        scales: tuple[float, float] | None = None,
    ) -> None:
        x_a = torch.as_tensor(x_a)
        x_b = torch.as_tensor(x_b)
        if x_a.ndim != 2 or x_b.ndim != 2:
            raise CrossdiffError(
                f"ArraySource needs 2-D arrays (rows, width); got {tuple(x_a.shape)} and "
                f"{tuple(x_b.shape)}"
            )
        if x_a.shape[0] != x_b.shape[0]:
            raise CrossdiffError(
                f"ArraySource: x_a has {x_a.shape[0]} rows but x_b has {x_b.shape[0]}; rows must "
                f"be paired (row i of both = the same aligned position)"
            )
        if x_a.shape[0] == 0:
            raise CrossdiffError("ArraySource: the arrays are empty")
        self.x_a, self.x_b = x_a, x_b
        self.d_a, self.d_b = int(x_a.shape[1]), int(x_b.shape[1])
        self._scales = scales
        self._moments: Moments | None = None

    def __len__(self) -> int:
        return int(self.x_a.shape[0])

    def norm_scales(self) -> tuple[float, float] | None:
        return self._scales

    def moments(self) -> Moments:
        """Exact moments of the arrays (inlier rule as for a store), computed once."""
        if self._moments is None:
            self._moments = moments_of_arrays(self.x_a, self.x_b)
        return self._moments

    def batches(
        self, batch_size: int, *, seed: int = 0, skip: int = 0, part: tuple[int, int] = (0, 1)
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The shuffled stream; ``part=(rank, world)``: rows ``rank::world`` of each batch."""
        rank, world = part
        for idx in self._indices(batch_size, seed, skip):
            if world > 1:
                idx = idx[rank::world]
            yield self.x_a[idx].float(), self.x_b[idx].float()

    def _indices(self, batch_size: int, seed: int, skip: int) -> Iterator[torch.Tensor]:
        """Row indices of each batch: epochs of fresh permutations, batches run across them."""
        n = len(self)
        pos = skip * batch_size
        epoch, offset = divmod(pos, n)
        perm = epoch_permutation(n, seed, epoch)
        while True:
            parts: list[np.ndarray] = []
            need = batch_size
            while need:
                take = perm[offset : offset + need]
                parts.append(take)
                need -= len(take)
                offset += len(take)
                if offset >= n:
                    epoch, offset = epoch + 1, 0
                    perm = epoch_permutation(n, seed, epoch)
            yield torch.from_numpy(np.concatenate(parts))
