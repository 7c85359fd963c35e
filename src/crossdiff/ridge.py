"""The ridge solve that crossdiff's linear maps share (exclusivity check, residual init,
the steering's cross-model map, planted-benchmark probe): one place for how the penalty is
scaled."""

from __future__ import annotations

import torch


def ridge_solve(
    gram: torch.Tensor, rhs: torch.Tensor, rel: float, *, min_lam: float = 0.0
) -> tuple[torch.Tensor, float]:
    """Solve ``(gram + lam I) w = rhs`` with ``lam = rel x`` the mean diagonal of ``gram``
    (at least ``min_lam``, so that ``rel = 0`` on a singular gram still solves).

    Scaling the penalty by the mean per-dimension variance makes ``rel`` mean the same at
    every width and activation scale. Returns ``(w, lam)``.
    """
    d = gram.shape[0]
    lam = max(rel * float(torch.diagonal(gram).sum()) / max(d, 1), min_lam)
    eye = torch.eye(d, dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram + lam * eye, rhs), lam
