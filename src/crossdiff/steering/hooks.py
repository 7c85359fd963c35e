"""Per-row steering functions for ``LoadedModel.steering(layer, fn)``.

One batched ``generate`` call runs every (prompt, alpha) pair as one row, so the function
applied to the hooked layer's output ``hidden`` (batch, positions, width) changes each row by
its own amount:

- add mode: ``hidden[r] += coef[r] x v`` with ``coef[r] = alpha_r x s_max`` and ``v`` the
  feature's decoder row in the model's own (raw) scale: docs/METHOD.md §5's
  ``x' = x + alpha x s_max x d_i``, at every position, prompt and generated tokens alike.
  ``coef = 0`` adds an exact zero, so alpha = 0 reproduces the unsteered model bit for bit.
- add mode with nulls (:func:`add_rows_fn`): each row has its own direction too.
- clamp mode: ``hidden[r, t] += (target[r] - f(hidden[r, t])) x v``, where ``f`` is the
  feature's activation read by the crosscoder's encoder from this model's (normalized) residual
  stream: the feature's part of the crosscoder's reconstruction is replaced by the target
  value, and everything the crosscoder does not explain (its error term) is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from crossdiff.errors import CrossdiffError
from crossdiff.steering.activation import FeatureReader

HiddenFn = Callable[[torch.Tensor], torch.Tensor]


def _check_batch(hidden: torch.Tensor, rows: int) -> None:
    if hidden.shape[0] != rows:
        raise CrossdiffError(
            f"steering expected {rows} rows in the batch but the layer saw {hidden.shape[0]}; "
            "beam search and other batch-expanding decoders are not supported"
        )


def add_fn(vector: torch.Tensor, coefs: Sequence[float]) -> HiddenFn:
    """``hidden[r] + coefs[r] x vector`` for each batch row r (vector in raw scale, (d,))."""
    coefs = list(coefs)
    return add_rows_fn(vector.reshape(1, -1).expand(len(coefs), -1), coefs)


def clamp_fn(
    reader: FeatureReader,
    side: str,
    normalize: Callable[[torch.Tensor], torch.Tensor],
    vector: torch.Tensor,
    targets: Sequence[float],
) -> HiddenFn:
    """Set the feature's activation to ``targets[r]`` at every position of row r.

    ``side`` ("a"/"b") is the steered model; ``normalize`` maps its raw residual rows to the
    crosscoder's normalized space (``Crosscoder.normalize``: centring, if any, and scale);
    ``vector`` its decoder row in raw scale. The activation is read from this model's residual
    stream only: for a shared feature the other model's normalized side counts as zero, which
    for a centred crosscoder means "the other model at its mean".
    """
    target_cpu = torch.as_tensor(list(targets), dtype=torch.float32)
    vec_cpu = vector.detach().float().cpu()
    cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def fn(hidden: torch.Tensor) -> torch.Tensor:
        _check_batch(hidden, target_cpu.shape[0])
        if hidden.device not in cache:
            cache[hidden.device] = (target_cpu.to(hidden.device), vec_cpu.to(hidden.device))
        target, vec = cache[hidden.device]
        b, t, d = hidden.shape
        x = normalize(hidden.detach().float().reshape(b * t, d))
        current = reader(x_a=x) if side == "a" else reader(x_b=x)
        diff = target[:, None] - current.reshape(b, t)
        delta = diff[..., None] * vec[None, None, :]
        return hidden + delta.to(hidden.dtype)

    return fn


def add_rows_fn(vectors: torch.Tensor, coefs: Sequence[float]) -> HiddenFn:
    """``hidden[r] + coefs[r] x vectors[r]``: a direction of its own per batch row ((rows, d),
    raw scale), for sweeping null features in the same ``generate`` call as the feature."""
    coef = torch.as_tensor(list(coefs), dtype=torch.float32)
    delta_f32 = (coef[:, None] * vectors.detach().float().cpu())[:, None, :]
    cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def fn(hidden: torch.Tensor) -> torch.Tensor:
        _check_batch(hidden, delta_f32.shape[0])
        key = (hidden.device, hidden.dtype)
        if key not in cache:
            cache[key] = delta_f32.to(device=hidden.device, dtype=hidden.dtype)
        return hidden + cache[key]

    return fn
