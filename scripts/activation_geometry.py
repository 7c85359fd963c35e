"""How each model's activations in a store are shaped: linear predictability and offsets.

Why: the crosscoder's loss adds both models' squared errors after scaling each model to the
same median norm. If one model's activations are mostly a constant offset (its mean vector),
its *variation*, which is what features must explain, weighs far less in that loss than the
other model's, and its exclusive features get little to do. This prints, on the first
``--rows`` inlier rows of a store (pairs above 2x either model's median norm left out, as in
training): the held-out linear FVE of each model from the other (ridge), the share of
variance in the top principal components, and the mean row norm against the norm of the mean.

    python scripts/activation_geometry.py runs/default/store [--rows 80000]
"""

from __future__ import annotations

import argparse

import torch

from crossdiff.ridge import ridge_solve
from crossdiff.store import ActivationStore


def load_rows(path: str, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    store = ActivationStore.open(path)
    xs_a, xs_b, n = [], [], 0
    for x_a, x_b, _ in store.iter_rows(8192):
        xs_a.append(x_a.double())
        xs_b.append(x_b.double())
        n += x_a.shape[0]
        if n >= rows:
            break
    x_a, x_b = torch.cat(xs_a)[:rows], torch.cat(xs_b)[:rows]
    n_a, n_b = x_a.norm(dim=1), x_b.norm(dim=1)
    keep = (n_a < 2 * n_a.median()) & (n_b < 2 * n_b.median())
    return x_a[keep], x_b[keep]


def linear_fve(x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> float:
    """Held-out (last quarter of a shuffle) fraction of y's variance a ridge map from x explains."""
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
    fit, test = perm[: len(perm) * 3 // 4], perm[len(perm) * 3 // 4 :]
    mx, my = x[fit].mean(0), y[fit].mean(0)
    xf = x[fit] - mx
    w, _ = ridge_solve(xf.T @ xf, xf.T @ (y[fit] - my), 1e-3)
    err = ((y[test] - ((x[test] - mx) @ w + my)) ** 2).sum()
    return 1.0 - float(err / ((y[test] - y[test].mean(0)) ** 2).sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("store")
    p.add_argument("--rows", type=int, default=80000)
    args = p.parse_args()
    x_a, x_b = load_rows(args.store, args.rows)
    print(f"{x_a.shape[0]:,} inlier rows, widths {x_a.shape[1]} / {x_b.shape[1]}")
    b_from_a, a_from_b = linear_fve(x_a, x_b), linear_fve(x_b, x_a)
    print(f"linear FVE of B from A: {b_from_a:.3f}; of A from B: {a_from_b:.3f}")
    for name, x in (("A", x_a), ("B", x_b)):
        centered = x - x.mean(0)
        ev = torch.linalg.eigvalsh(centered.T @ centered / x.shape[0]).flip(0)
        share = [float(ev[:k].sum() / ev.sum()) for k in (1, 10, 50)]
        mean_sq = float(x.pow(2).sum(1).mean())
        offset = float(x.mean(0).pow(2).sum()) / mean_sq
        print(
            f"{name}: variance in the top 1/10/50 principal components {share[0]:.3f} / "
            f"{share[1]:.3f} / {share[2]:.3f}; mean row norm {float(x.norm(dim=1).mean()):.1f}, "
            f"norm of the mean {float(x.mean(0).norm()):.1f}: the constant offset is "
            f"{offset:.1%} of the mean squared norm, variation {1 - offset:.1%}"
        )


if __name__ == "__main__":
    main()
