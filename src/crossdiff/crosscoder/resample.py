"""Resampling dead features: give a feature that has stopped firing a fresh start where the
crosscoder reconstructs worst.

Why (measured on the default pair, BENCHMARKS.md): with BatchTopK ranking candidates by
activation x decoder norm, a feature that loses the competition early gets no reconstruction
gradient, its decoder norm drifts down (Gemma-3-270M's dead exclusive features: median norm
0.30 against 0.68 for its live ones and 1.42 for shared ones), so its score stays under the
inference threshold even where its pre-activation is positive: a death spiral AuxK does not
undo within the short budgets crossdiff's presets use (3,000 steps: 64% of B's exclusive block
dead after centring alone). Resampling, as in Anthropic's 2023 dictionary-learning work and
the published crosscoder code's ancestors, breaks the spiral.

What happens at a resampling step (``TrainConfig.resample_every``, until
``resample_until`` of the run, so resampled features have time to settle before the decay):

- the dead features are those that have not fired for ``dead_window`` samples (the AuxK rule);
- for each, a row of the current batch is drawn with probability proportional to the squared
  reconstruction error *of the models the feature writes* (an A-exclusive feature: A's error
  only; a shared one: both, concatenated), with a generator seeded by (seed, step), so the run
  stays deterministic and resumes bit-exactly;
- its decoder rows become that error's direction at the median decoder norm of the live
  features of its block, its encoder columns the same direction scaled to ``encoder_scale`` x
  the live encoder columns' median norm, its encoder bias 0, and its Adam moments are reset.

Exclusivity is untouched: an exclusive feature has parameters only for its own model, and only
those are rewritten. Designated shared (tied) features are not resampled.
"""

from __future__ import annotations

import torch

from crossdiff.crosscoder.model import Crosscoder

ENCODER_SCALE = 0.2
"""Resampled encoder columns start at this x the live columns' median norm (Anthropic's
choice): strong enough to fire where the direction is, weak enough not to swamp others."""


def _median_norm(rows: torch.Tensor, fallback: float) -> float:
    """Median L2 norm of the rows (the block's live features), or ``fallback`` if none."""
    if rows.shape[0] == 0:
        return fallback
    return float(rows.norm(dim=1).median())


@torch.no_grad()
def resample_dead(
    model: Crosscoder,
    opt: torch.optim.Optimizer,
    dead: torch.Tensor,
    x_a: torch.Tensor,
    x_b: torch.Tensor,
    *,
    seed: int,
    step: int,
) -> int:
    """Re-initialise the features where ``dead`` (F,) is True from normalized batch rows;
    returns how many were resampled."""
    p = model.partition
    dead = dead.clone()
    dead[p.designated.start : p.designated.stop] = False
    feats = torch.nonzero(dead, as_tuple=True)[0]
    if feats.numel() == 0 or x_a.shape[0] == 0:
        return 0
    was_training = model.training
    model.eval()
    codes = model.encode_sparse(x_a, x_b, use_threshold=False)
    ra, rb = model.decode_sparse(codes)
    model.train(was_training)
    err = {"a": x_a - ra, "b": x_b - rb}
    sq = {m: e.pow(2).sum(1).double() for m, e in err.items()}
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))
    live = ~dead
    touched: list[tuple[torch.nn.Parameter, str, torch.Tensor]] = []
    for block, writes in (
        (p.a_exclusive, ("a",)),
        (p.b_exclusive, ("b",)),
        (range(p.n_a + p.n_b, p.n_features - p.n_designated), ("a", "b")),
    ):
        sel = feats[(feats >= block.start) & (feats < block.stop)]
        if sel.numel() == 0:
            continue
        weight = sum(sq[m] for m in writes).cpu()
        if not bool((weight > 0).any()):
            continue
        rows = torch.multinomial(
            weight / weight.sum(), sel.numel(), replacement=True, generator=gen
        )
        rows = rows.to(x_a.device)
        direction = torch.cat([err[m][rows] for m in writes], dim=1)
        direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
        block_mask = torch.zeros_like(live)
        block_mask[block.start : block.stop] = True
        offset = 0
        for m in writes:
            d = model.config.d_a if m == "a" else model.config.d_b
            part = direction[:, offset : offset + d]
            offset += d
            local = model._local(m)
            dec = model.W_dec_a if m == "a" else model.W_dec_b
            enc = model._enc(m)
            live_local = local[block_mask & live]
            dec_norm = _median_norm(dec[live_local], model.config.init_decoder_norm)
            enc_norm = _median_norm(enc[:, live_local].t(), model.config.init_decoder_norm)
            idx = local[sel]
            # this model's part of the unit direction (a shared feature's parts keep the
            # models' relative strength; sqrt(#models) brings a balanced part back to norm 1)
            part = part * (len(writes) ** 0.5)
            dec[idx] = part * dec_norm
            enc[:, idx] = (part * enc_norm * ENCODER_SCALE).t()
            touched.append((dec, "rows", idx))
            touched.append((enc, "cols", idx))
        model.b_enc[sel] = 0.0
        touched.append((model.b_enc, "rows", sel))
    for param, kind, idx in touched:
        state = opt.state.get(param)
        if not state:
            continue
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                if kind == "rows":
                    state[key][idx] = 0.0
                else:
                    state[key][:, idx] = 0.0
    return int(feats.numel())
