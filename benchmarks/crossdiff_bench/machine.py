"""Describe the machine a benchmark ran on, so every reported number names its hardware."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Any


def describe_machine() -> str:
    """One line: CPU model, core count, torch version and the accelerator if any."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    parts = [f"{cpu}", f"{os.cpu_count()} cores", f"torch {torch.__version__}"]
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name(0)}")
    parts.append(f"{torch.get_num_threads()} threads")
    return ", ".join(parts)


def start_run(cfg: Any, name: str) -> tuple[Path, dict[str, Any]]:
    """The opening of a benchmark run: torch's threads set from ``cfg.threads``, the work
    folder (``cfg.work_dir``, default ``$CROSSDIFF_CACHE/<name>``), and the results dict with
    the machine, the config and the folder, both lines printed to stderr when
    ``cfg.progress``."""
    import torch

    from crossdiff.models import default_cache_dir

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    work = Path(cfg.work_dir) if cfg.work_dir else default_cache_dir() / name
    results: dict[str, Any] = {
        "machine": describe_machine(),
        "config": cfg.to_dict(),
        "work_dir": str(work),
    }
    if cfg.progress:
        print(f"machine: {results['machine']}", file=sys.stderr, flush=True)
        print(f"work folder: {work}", file=sys.stderr, flush=True)
    return work, results


def add_run_options(p: Any, name: str) -> None:
    """The options every benchmark run opened by :func:`start_run` takes: its work folder,
    torch's threads, a JSON copy of the results, and no progress bars."""
    p.add_argument("--work-dir", help=f"cache/work folder (default $CROSSDIFF_CACHE/{name})")
    p.add_argument("--threads", type=int, help="torch threads")
    p.add_argument("--json-out", help="write the results as JSON here")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
