"""``crossdiff bench NAME``: benchmarks that live in ``crossdiff.bench``.

Each benchmark module in :data:`BENCHMARKS` defines ``register(subparsers)``.
"""

from __future__ import annotations

import argparse
import importlib

# benchmark name -> module; a missing module (not built yet) is skipped.
BENCHMARKS: dict[str, str] = {
    "toy": "crossdiff.bench.toy",
    "train-speed": "crossdiff.bench.train_speed",
    "harvest": "crossdiff.bench.harvest",
    "analysis": "crossdiff.bench.analysis",
    "planted": "crossdiff.bench.planted",
    "scale": "crossdiff.bench.scale",
}


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("bench", help="run a benchmark (toy, train-speed, harvest, ...)")
    bench_sub = parser.add_subparsers(dest="bench", metavar="BENCH")
    for module_name in BENCHMARKS.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        module.register(bench_sub)
