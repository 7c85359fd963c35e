"""Describe the machine a benchmark ran on, so every reported number names its hardware."""

from __future__ import annotations

import os
import platform


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
