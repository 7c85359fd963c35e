"""Quality metrics of a trained crosscoder, computed by streaming a source.

- FVE (fraction of variance explained) per model: 1 - sum ||x - x̂||^2 / sum ||x - mean(x)||^2
  over all evaluated rows (docs/METHOD.md §4 uses this definition). Pairs with a norm above
  ``outlier_factor`` x the typical normalized norm are left out, as training leaves them out
  of the loss (``Crosscoder.inlier_mask``); their fraction is reported as ``outlier_frac``.
- L0: mean active features per sample (inference mode: the learned BatchTopK threshold).
- Dead fraction per partition: features that never fired on the evaluated rows.
- Per-model decoder norms and the relative norm per feature.
- Loss share: each model's share of the summed variance of the normalized rows, i.e. of the
  loss of predicting the mean, which is the weight its variation has in training. With the
  paper's median scaling a model with a large constant offset (Gemma-3-270M) gets ~10% and its
  exclusive features die; :func:`lopsided_warnings` names that, and the cure.
"""

from __future__ import annotations

import torch

from crossdiff.crosscoder.model import Crosscoder
from crossdiff.crosscoder.sources import PairSource
from crossdiff.store.stats import HIGH_NORM_FACTOR


@torch.no_grad()
def evaluate(
    cc: Crosscoder,
    source: PairSource,
    *,
    n_batches: int = 8,
    batch_size: int = 2048,
    seed: int = 12345,
    device: str | torch.device | None = None,
    outlier_factor: float | None = HIGH_NORM_FACTOR,
) -> dict[str, float]:
    """Evaluate on ``n_batches`` batches of ``source`` (raw activations; normalized here)."""
    was_training = cc.training
    cc.eval()
    dev = torch.device(device) if device is not None else cc.b_enc.device
    sse = {"a": 0.0, "b": 0.0}
    total = {"a": torch.zeros((), dtype=torch.float64), "b": torch.zeros((), dtype=torch.float64)}
    sums: dict[str, torch.Tensor] = {}
    n_rows = 0
    n_seen = 0
    active = 0
    fired = torch.zeros(cc.config.n_features, dtype=torch.bool, device=dev)
    stream = source.batches(batch_size, seed=seed)
    for _, (xa, xb) in zip(range(n_batches), stream):
        xs = {
            "a": cc.normalize(xa.to(dev, torch.float32), "a"),
            "b": cc.normalize(xb.to(dev, torch.float32), "b"),
        }
        n_seen += xa.shape[0]
        if outlier_factor:
            keep = cc.inlier_mask(xs["a"], xs["b"], outlier_factor)
            xs = {m: x[keep] for m, x in xs.items()}
        if xs["a"].shape[0] == 0:
            continue
        out = cc(xs["a"], xs["b"])
        recon = {"a": out.recon_a, "b": out.recon_b}
        for m in ("a", "b"):
            sse[m] += float((xs[m] - recon[m]).double().pow(2).sum())
            s = xs[m].double().sum(0)
            sums[m] = sums.get(m, 0) + s
            total[m] = total[m] + xs[m].double().pow(2).sum().cpu()
        active += int((out.features > 0).sum())
        fired |= (out.features > 0).any(0)
        n_rows += xs["a"].shape[0]
    result: dict[str, float] = {
        "rows": float(n_rows),
        "outlier_frac": 1.0 - n_rows / max(n_seen, 1),
    }
    variances = {}
    for m in ("a", "b"):
        # total variance = sum ||x||^2 - n ||mean||^2
        var = float(total[m]) - float(sums[m].pow(2).sum()) / max(n_rows, 1) if n_rows else 0.0
        variances[m] = var
        result[f"fve_{m}"] = 1.0 - sse[m] / max(var, 1e-12)
        result[f"mse_{m}"] = sse[m] / max(n_rows, 1)
    result["loss_share_b"] = variances["b"] / max(variances["a"] + variances["b"], 1e-12)
    result["l0"] = active / max(n_rows, 1)
    p = cc.partition
    dead = (~fired).cpu()
    for name, rng in (("a", p.a_exclusive), ("b", p.b_exclusive), ("shared", p.shared)):
        n = len(rng)
        result[f"dead_frac_{name}"] = float(dead[rng.start : rng.stop].float().mean()) if n else 0.0
    result["dead_frac_all"] = float(dead.float().mean())
    if was_training:
        cc.train()
    return result


def relative_norm(cc: Crosscoder) -> torch.Tensor:
    """(F,) relative decoder norm |d_A| / (|d_A| + |d_B|) per feature (docs/METHOD.md §3)."""
    return cc.relative_norm().detach()


def decoder_norms(cc: Crosscoder) -> torch.Tensor:
    """(F, 2) per-model decoder norms."""
    return cc.decoder_norms().detach()


LOSS_SHARE_MIN = 0.25
"""Below this share of the loss weight a model's features have too little to win."""
DEAD_BLOCK_MAX = 0.5
"""An exclusive block with more than this fraction dead is reported."""


def lopsided_warnings(
    loss_share_b: float | None,
    dead_a: float | None,
    dead_b: float | None,
    *,
    normalization: str | None = None,
) -> list[str]:
    """Plain-language warnings for a one-sided diff: a model whose variation carries under a
    quarter of the loss, or an exclusive block more than half dead, with cause and fix."""
    out: list[str] = []
    fix = (
        "train with the 'centered' normalization (the default; --normalization centered)"
        if normalization != "centered"
        else "train longer or with a larger aux_alpha / shorter dead window"
    )
    if loss_share_b is not None:
        for m, share in (("A", 1 - loss_share_b), ("B", loss_share_b)):
            if share < LOSS_SHARE_MIN:
                out.append(
                    f"model {m} carries only {share:.0%} of the loss weight (its variation is "
                    f"light after scaling, e.g. a large constant offset), so its features have "
                    f"little loss to win; {fix}"
                )
    for m, dead in (("A", dead_a), ("B", dead_b)):
        if dead is not None and dead > DEAD_BLOCK_MAX:
            out.append(
                f"{dead:.0%} of model {m}'s exclusive features are dead: its list of "
                f"candidates is mostly empty, not evidence that {m} has nothing of its own; "
                f"{fix}"
            )
    return out
