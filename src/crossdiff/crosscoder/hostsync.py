"""A training step that never waits for the host: which path a step takes, and the check.

Why: on a GPU, reading a device value on the host (``.item()``, ``float(t)``, ``if t: ...``,
``nonzero`` or a boolean-mask index whose output size depends on the data, ...) stops the host
until the device has finished everything queued before it. The host then cannot queue the
next kernels while the device works, and every read costs a round trip of launch latency. Our
step did several such reads per step (BatchTopK's candidate count, the dead-feature test, the
threshold update, the high-norm filter's row count, the L0 for the log, ...).

Two paths, chosen by :func:`static_shapes`:

- **static** (any accelerator, and any device inside :func:`check_steps`): every shape in an
  ordinary step is a function of the batch size and k alone, and every decision stays on the
  device. The high-norm filter is a row mask (the rows stay, with weight 0 in every mean and
  score 0 in every selection); BatchTopK is a fixed-size top ``k x rows`` whose entries past
  the budget ``k x kept rows`` or at a zero score are marked invalid and enter the step with
  weight 0; AuxK takes a fixed ``aux_k`` per row among the dead features (the others masked
  to 0), and its term is multiplied by "any feature dead" instead of being skipped; the
  threshold EMA, the dead-feature counters and the kept-row count are tensor updates. What
  needs a host value (the log's metrics, a checkpoint, resampling, the geometric-median init)
  runs only at log, checkpoint, resample and first steps.
- **compacting** (the CPU): the same step with the data-dependent shapes it always had (rows
  dropped, candidates gathered above a sampled threshold). On the CPU the host *is* the
  device, so its reads cost nothing, and these algorithms are faster there (a top-k over the
  whole B x F matrix is single-threaded on the CPU); its numerics are unchanged.

Both select the same entries; the static path differs from the compacting one at float level
only (sums over masked rows, a CSR instead of a COO encoder gradient), tested.

The check: inside :func:`check_steps`, the trainer runs the static path on every device and
wraps each ordinary step (not a log, checkpoint, resample or first step) in :func:`step`,
which records every host read made from crossdiff's code: ``item``, ``tolist``,
``__bool__``, ``__int__``, ``__float__``, ``__index__``, ``__format__``, ``cpu``, ``numpy``,
``nonzero`` (also ``torch.nonzero``, ``argwhere``, one-argument ``torch.where``), ``unique``,
``masked_select``, indexing or assignment with a boolean mask or a 0-dim tensor,
``repeat_interleave`` without ``output_size``, ``torch.bincount`` and a COO
``torch.sparse.mm`` (both read a device value inside on CUDA). On CUDA it also turns on
``torch.cuda.set_sync_debug_mode`` for the step, which catches what the Python-level patches
cannot see (a synchronizing copy or kernel inside a library call); it uses the ``"warn"``
mode and records each warning with its Python location, so that one run on a lent GPU lists
every site instead of stopping at the first (``raise_on_sync=True`` uses ``"error"`` and
raises).
"""

from __future__ import annotations

import os
import sys
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
"""src/crossdiff: host reads made from files under it are recorded."""
_SYNC_WARNING = "synchronizing CUDA operation"


class HostSyncError(RuntimeError):
    """A host read inside an ordinary training step (``check_steps(raise_on_sync=True)``)."""


@dataclass
class SyncReport:
    """What :func:`check_steps` saw: the ordinary steps it checked and each host read."""

    steps_checked: int = 0
    syncs: list[str] = field(default_factory=list)
    """One entry per host read: ``"what at file:line (function)"``."""

    def sites(self) -> list[tuple[str, int]]:
        """Distinct host reads with their counts, most frequent first."""
        return Counter(self.syncs).most_common()

    def summary(self, limit: int = 8) -> str:
        if not self.syncs:
            return f"no host read in {self.steps_checked} ordinary steps"
        shown = "; ".join(f"{n} x {s}" for s, n in self.sites()[:limit])
        more = len(self.sites()) - limit
        tail = f"; and {more} more sites" if more > 0 else ""
        return f"{len(self.syncs)} host reads in {self.steps_checked} ordinary steps: {shown}{tail}"


@dataclass
class _Checker:
    report: SyncReport
    raise_on_sync: bool
    active: bool = False


_CHECKER: _Checker | None = None


def static_shapes(device: torch.device | torch.Tensor | str) -> bool:
    """Whether a training step on ``device`` takes the static path (module docstring): on
    any accelerator, and on every device while :func:`check_steps` is active."""
    if isinstance(device, torch.Tensor):
        device = device.device
    return torch.device(device).type != "cpu" or _CHECKER is not None


@contextmanager
def check_steps(*, raise_on_sync: bool = False) -> Iterator[SyncReport]:
    """Check the ordinary steps of every ``train_crosscoder`` run inside: the static path is
    taken on every device and each host read is recorded in the yielded report (or raises
    :class:`HostSyncError`, with ``raise_on_sync``)."""
    global _CHECKER
    if _CHECKER is not None:
        raise RuntimeError("check_steps() is already active")
    _CHECKER = _Checker(SyncReport(), raise_on_sync)
    try:
        yield _CHECKER.report
    finally:
        _CHECKER = None


@contextmanager
def step(ordinary: bool) -> Iterator[None]:
    """The trainer runs each step inside this: a no-op unless :func:`check_steps` is active
    and the step is ordinary; then host reads made during it are recorded."""
    checker = _CHECKER
    if checker is None or not ordinary or checker.active:
        yield
        return
    checker.active = True
    checker.report.steps_checked += 1
    restore = _patch(checker)
    try:
        with _cuda_sync_debug(checker):
            yield
    finally:
        restore()
        checker.active = False


# ---- recording ------------------------------------------------------------------------------
def _crossdiff_site(stack: list[traceback.FrameSummary]) -> str | None:
    """The innermost frame in crossdiff's own code, as 'file:line (function)'."""
    for frame in reversed(stack):
        path = os.path.abspath(frame.filename)
        if path.startswith(_PACKAGE_DIR) and not path.endswith("hostsync.py"):
            rel = os.path.relpath(path, os.path.dirname(_PACKAGE_DIR))
            return f"{rel}:{frame.lineno} ({frame.name})"
    return None


def _record(checker: _Checker, what: str, site: str) -> None:
    entry = f"{what} at {site}"
    checker.report.syncs.append(entry)
    if checker.raise_on_sync:
        raise HostSyncError(f"host read inside an ordinary training step: {entry}")


def _caller_in_crossdiff() -> str | None:
    """The site of the call being patched when it comes from crossdiff's code (frame 0 is
    this function, 1 the wrapper, 2 the caller)."""
    frame = sys._getframe(2)
    path = os.path.abspath(frame.f_code.co_filename)
    if path.startswith(_PACKAGE_DIR) and not path.endswith("hostsync.py"):
        rel = os.path.relpath(path, os.path.dirname(_PACKAGE_DIR))
        return f"{rel}:{frame.f_lineno} ({frame.f_code.co_name})"
    return None


def _reads_index(index: Any) -> bool:
    """An index whose result shape needs a device value on the host: a boolean mask (its
    count), or a 0-dim integer tensor (indexing with it reads it as a Python int)."""
    items = index if isinstance(index, tuple) else (index,)
    return any(
        isinstance(i, torch.Tensor) and (i.dtype == torch.bool or i.dim() == 0) for i in items
    )


def _patch(checker: _Checker) -> Callable[[], None]:
    """Wrap the host-reading methods and functions; returns what undoes it."""
    undo: list[Callable[[], None]] = []

    def wrap(owner: Any, name: str, flags: Callable[..., bool] | None = None) -> None:
        original = getattr(owner, name)
        own = owner.__dict__.get(name) if isinstance(owner, type) else None

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if flags is None or flags(*args, **kwargs):
                site = _caller_in_crossdiff()
                if site is not None:
                    _record(checker, f"{getattr(owner, '__name__', owner)}.{name}", site)
            return original(*args, **kwargs)

        setattr(owner, name, wrapper)

        def restore() -> None:
            if isinstance(owner, type) and own is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)

        undo.append(restore)

    tensor_reads = (
        "item", "tolist", "__bool__", "__int__", "__float__", "__index__", "__format__",
        "cpu", "numpy", "nonzero", "unique", "unique_consecutive", "masked_select", "argwhere",
    )  # fmt: skip
    for name in tensor_reads:
        wrap(torch.Tensor, name)
    wrap(torch.Tensor, "__getitem__", lambda self, index: _reads_index(index))
    wrap(torch.Tensor, "__setitem__", lambda self, index, value: _reads_index(index))
    for name in ("nonzero", "unique", "unique_consecutive", "masked_select", "argwhere"):
        wrap(torch, name)
    wrap(torch, "bincount")  # reads the maximum on the host (CUDA)
    wrap(torch, "where", lambda *a, **k: len(a) + len(k) == 1)  # where(cond) = nonzero

    def data_sized_repeats(*a: Any, **k: Any) -> bool:
        repeats = a[1] if len(a) > 1 else k.get("repeats")
        return isinstance(repeats, torch.Tensor) and "output_size" not in k

    wrap(torch, "repeat_interleave", data_sized_repeats)
    # a COO product coalesces first, which reads the new entry count on the host (CUDA)
    wrap(torch.sparse, "mm", lambda a, *rest, **k: a.layout == torch.sparse_coo)

    def restore_all() -> None:
        for fn in reversed(undo):
            fn()

    return restore_all


@contextmanager
def _cuda_sync_debug(checker: _Checker) -> Iterator[None]:
    """``torch.cuda.set_sync_debug_mode`` for the step, when CUDA is in use."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        yield
        return
    before = torch.cuda.get_sync_debug_mode()
    if checker.raise_on_sync:
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(before)
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("always", message=f".*{_SYNC_WARNING}")
        shown = warnings.showwarning

        def hook(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
            if _SYNC_WARNING in str(message):
                site = _crossdiff_site(traceback.extract_stack()[:-1])
                _record(checker, "CUDA sync", site or f"{filename}:{lineno}")
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = hook
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(before)
