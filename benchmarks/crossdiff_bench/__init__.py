"""crossdiff's benchmarks, run by ``crossdiff bench NAME``; each prints its parameters and the
machine (results: BENCHMARKS.md).

They live beside the product, not inside it: the ``crossdiff-bench`` distribution in
``benchmarks/`` (``pip install -e benchmarks/``; ``scripts/install.sh`` installs it). The
``crossdiff bench`` command calls :func:`register` when this package is importable.
"""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS: dict[str, str] = {
    "toy": "crossdiff_bench.toy",
    "train-speed": "crossdiff_bench.train_speed",
    "harvest": "crossdiff_bench.harvest",
    "analysis": "crossdiff_bench.analysis",
    "planted": "crossdiff_bench.planted",
    "finetune": "crossdiff_bench.finetune",
    "scale": "crossdiff_bench.scale",
    "gpu": "crossdiff_bench.gpu",
}
"""Benchmark name -> module; each module defines ``register(subparsers)``."""


def register(sub: argparse._SubParsersAction) -> None:
    """Add every benchmark's subcommand to ``sub`` (a failing import is raised, not skipped)."""
    for module_name in BENCHMARKS.values():
        importlib.import_module(module_name).register(sub)
