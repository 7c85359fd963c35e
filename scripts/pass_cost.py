"""The fixed cost of one early-exit forward pass on the CPU (issue 20, item 5).

Times ``LoadedModel.capture`` to the middle layer for a few batch shapes, so the cost of a pass
that a smaller batch does not shrink (streaming the weights) can be read off: the
``harvest.batches.FORWARD_COST_TOKENS`` that decides how the harvest groups short windows.
Usage: ``HF_HUB_OFFLINE=1 python scripts/pass_cost.py [model]`` (default: the built-in SmolLM2).
"""

from __future__ import annotations

import sys
import time

import torch

from crossdiff.models import load_model

SHAPES = ((1, 8), (2, 8), (8, 64), (32, 64), (8, 256))


def seconds_per_pass(lm, layer: int, rows: int, length: int, passes: int = 10) -> float:
    ids = torch.randint(100, 5000, (rows, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    lm.capture(ids, mask, layer)  # warm-up
    t0 = time.perf_counter()
    for _ in range(passes):
        lm.capture(ids, mask, layer)
    return (time.perf_counter() - t0) / passes


def main() -> None:
    lm = load_model(sys.argv[1] if len(sys.argv) > 1 else "smollm2-135m-instruct")
    layer = lm.resolve_layer("middle")
    print(f"{lm.model_id}, layer {layer}, {torch.get_num_threads()} threads")
    for rows, length in SHAPES:
        s = seconds_per_pass(lm, layer, rows, length)
        rate = rows * length / s
        print(f"  {rows:>3} x {length:<4} {s * 1000:8.1f} ms/pass  {rate:8.0f} tokens/s")


if __name__ == "__main__":
    main()
