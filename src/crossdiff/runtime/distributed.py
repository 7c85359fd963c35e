"""Data-parallel crosscoder training under ``torchrun`` (gloo on CPU, NCCL on GPUs).

Why data parallel and how: a crosscoder at the published size (F = 131,072, widths 4096) fits
on one GPU, but 100k steps take a day; ranks that each process a slice of every batch and
sum their gradients cut that by the number of GPUs. ``train_crosscoder`` turns this on by
itself when it runs under ``torchrun`` with more than one process (``WORLD_SIZE > 1``):

- every rank reads only its own rows ``rank, rank + world, ...`` of each global batch
  (:func:`crossdiff.crosscoder.sources.rank_batches`; the shuffle plan is a function of the
  source and the seed, so no rank needs the others' rows to know which are its own);
- whatever in a step is a statistic of the whole batch is agreed across ranks
  (:mod:`crossdiff.crosscoder.global_batch`): the high-norm filter's medians, BatchTopK's
  k x n selection over the *global* batch (exact), the loss means and AuxK's normalization,
  so the result does not depend on the number of ranks beyond float noise (tested: 1 vs 2
  ranks);
- each rank's loss is its share of the global mean, so the gradients are *summed* with one
  all-reduce per step (a flattened buffer that also carries which features fired) before
  clipping, and every rank takes the identical Adam step; weights are broadcast from rank 0
  at the start, so ranks cannot drift;
- rank 0 alone writes checkpoints, logs and the final crosscoder; the others wait at a barrier.

This is what PyTorch's ``DistributedDataParallel`` does for an ordinary module; the explicit
all-reduce is used because the crosscoder's training step is ``model.loss(...)`` with a custom
sparse backward, not a ``forward`` call that DDP's hooks are built around.

The harvest (``crossdiff.harvest``) joins the same way and uses :func:`all_gather_json` /
:func:`broadcast_json` for its small control messages (block sizes, shard entries, rank 0's
decisions), so ranks agree on every decision without a shared file they would have to poll.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from crossdiff.errors import CrossdiffError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` as torchrun sets it (1 when not under torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise CrossdiffError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer; launch with torchrun"
        ) from None


def setup(device_type: str) -> DistInfo | None:
    """Join (or reuse) the process group when launched with several processes; None alone."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), _local_rank())
    if env_world_size() <= 1:
        return None
    if not dist.is_available():
        raise CrossdiffError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":  # NCCL wants each rank on its own GPU before the group forms
        torch.cuda.set_device(_local_rank())
    dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), _local_rank())


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def rank_device(device: torch.device, info: DistInfo | None) -> torch.device:
    """One GPU per local rank; CPU ranks share the CPU."""
    if info is not None and device.type == "cuda" and device.index is None:
        return torch.device("cuda", info.local_rank)
    return device


def broadcast_module(module: torch.nn.Module) -> None:
    """Every parameter and buffer of rank 0 to all ranks."""
    for t in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(t.data, src=0)


def sum_gradients(params: list[torch.nn.Parameter], extra: torch.Tensor) -> torch.Tensor:
    """Sum the ranks' gradients in place, in one all-reduce, and return the sum of ``extra``.

    Each rank's loss is already its share of the global batch mean (rows / global count), so
    the sum is the gradient one process would get. ``extra`` (e.g. the (F,) count of ranks a
    feature fired on) rides in the same buffer instead of costing a second collective.
    """
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    flat = torch.cat([g.reshape(-1) for g in grads] + [extra.to(grads[0].dtype).reshape(-1)])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n
    return flat[offset:].view_as(extra)


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks (a new tensor; ``x`` is left as it is)."""
    y = x.clone()
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y


def all_min(x: torch.Tensor) -> torch.Tensor:
    """Elementwise minimum of ``x`` over ranks (a new tensor)."""
    y = x.clone()
    dist.all_reduce(y, op=dist.ReduceOp.MIN)
    return y


def all_gather_rows(x: torch.Tensor, sizes: list[int] | None = None) -> list[torch.Tensor]:
    """Every rank's ``x`` (rows may differ in number), in rank order.

    ``sizes`` (rows per rank) saves the collective that learns them when they are known.
    Rows are padded to the largest rank's count, since collectives move equal shapes.
    """
    world = dist.get_world_size()
    if sizes is None:
        n = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
        parts_n = [torch.zeros_like(n) for _ in range(world)]
        dist.all_gather(parts_n, n)
        sizes = [int(v) for v in parts_n]
    width = max(sizes)
    padded = x.new_zeros((width, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return [p[:s] for p, s in zip(parts, sizes)]


def min_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """Elementwise minimum over ranks (NaN, meaning 'nothing selected', loses to numbers)."""
    y = torch.where(torch.isnan(x), torch.full_like(x, float("inf")), x).clone()
    dist.all_reduce(y, op=dist.ReduceOp.MIN)
    return torch.where(torch.isinf(y), torch.full_like(y, float("nan")), y)


def rank() -> int:
    """This process's rank in the joined group; 0 when no group is joined (one process)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _message_device() -> torch.device:
    """Where collective buffers must live: NCCL only moves CUDA tensors, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _encode(obj: Any, device: torch.device) -> torch.Tensor:
    data = json.dumps(obj, separators=(",", ":")).encode("utf-8")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)  # never empty


def _decode(buf: torch.Tensor, size: int) -> Any:
    return json.loads(buf[:size].cpu().numpy().tobytes().decode("utf-8"))


def all_gather_json(obj: Any) -> list[Any]:
    """Every rank's JSON-serializable ``obj``, in rank order (one group must be joined).

    For small control messages. JSON rather than ``all_gather_object``, whose pickles would be
    the only ones in a package that keeps pickle out of everything it reads.
    """
    device = _message_device()
    buf = _encode(obj, device)
    world = dist.get_world_size()
    size = torch.tensor([buf.numel()], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    width = max(int(s) for s in sizes)
    padded = torch.zeros(width, dtype=torch.uint8, device=device)
    padded[: buf.numel()] = buf
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return [_decode(p, int(s)) for p, s in zip(parts, sizes)]


def broadcast_json(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (the others' ``obj`` is ignored)."""
    device = _message_device()
    buf = _encode(obj, device) if dist.get_rank() == src else None
    size = torch.tensor([0 if buf is None else buf.numel()], dtype=torch.long, device=device)
    dist.broadcast(size, src=src)
    if buf is None:
        buf = torch.empty(int(size), dtype=torch.uint8, device=device)
    dist.broadcast(buf, src=src)
    return _decode(buf, int(size))


def barrier(info: DistInfo | None) -> None:
    if info is not None:
        dist.barrier()


def shutdown() -> None:
    """Leave the process group cleanly (a barrier first), if one was joined. Without it, the
    first rank to exit can close its sockets under another rank's gloo threads (SIGABRT)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
