"""Does an all-ones attention mask cost anything on full rows? (BENCHMARKS.md, Harvest).

Usage: HF_HUB_OFFLINE=1 python scripts/mask_cost.py
Times 8 x 256 random-token rows through each built-in model's early-exit forward to its middle
layer (bf16, CPU) with no mask and with an all-ones mask, alternating, and prints the medians
of 5 runs and whether the outputs are bit-equal.
"""

import time

import torch

from crossdiff.models import load_model

torch.manual_seed(0)
for name in ("smollm2-135m-instruct", "gemma3-270m"):
    lm = load_model(name, dtype="bfloat16", device="cpu")
    layer = lm.resolve_layer("middle")
    ids = torch.randint(100, 20000, (8, 256))
    ones = torch.ones_like(ids)
    for _ in range(2):  # warm-up
        lm.capture(ids, None, layer)
        lm.capture(ids, ones, layer)
    times: dict[str, list[float]] = {"no mask": [], "all-ones mask": []}
    for _ in range(5):
        for key, mask in (("no mask", None), ("all-ones mask", ones)):
            t0 = time.perf_counter()
            lm.capture(ids, mask, layer)
            times[key].append(time.perf_counter() - t0)
    same = torch.equal(lm.capture(ids, None, layer), lm.capture(ids, ones, layer))
    medians = {k: round(sorted(v)[len(v) // 2], 3) for k, v in times.items()}
    print(f"{name}: median s {medians}, bit-equal {same}")
